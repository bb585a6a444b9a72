// Grouped-query attention over the fp16 KV ring buffer of cache/gpu_plain.py.
//
// The layout is cache/plain.py's (see ops/cpu/attention.py for the reference):
//
//   k     [n_kv, cap, D]   fp16 bits      v  [n_kv, cap, Dv] fp16 bits, rows vs apart (vs = Dv; MLA's
//                                             latent reads V through K's rows: v = k + D - Dv, vs = D)
//   kpos  [cap] int32, absolute position of the token in each slot, -1 = empty
//
// Slots are position-addressed, so masks are decided per slot from positions:
// a key at pk is visible to a query at pq when 0 <= pk <= pq and, for a sliding
// window w > 0, pq - pk < w; a negative window -c is Llama 4's chunked attention
// (llama.cpp's LLAMA_SWA_TYPE_CHUNKED): pk >= pq - pq % c, the start of the
// query's chunk of c positions.  Only slots [0, n_slots) are looked at.
//
//   kv_store_f16             write new K/V rows (float32 -> fp16) into the ring
//   attn_decode_partial_f16  decode: flash-decoding (split-K).  A few queries
//   attn_decode_reduce         cannot fill a GPU, so the cache is cut into
//                              chunks of slots; each block does one chunk's
//                              softmax for all query heads of one KV head
//                              (K/V are read once per group), and a second
//                              kernel merges the chunks' (max, sum, output).
//   (the decode's arithmetic is attn_decode.cuh's, batch_attention.cu's too)
//   attn_prefill_f16         prefill: flash-attention tiles; a block holds a
//                              tile of queries of one head and streams K/V
//                              tiles through shared memory with an online
//                              softmax, skipping tiles no query can see.
//
// Two per-head extras, each behind a flag (a model without them runs the same
// instructions as before, the pointers never read):
//   alibi [n_head]  ALiBi's slope: head h's score for a key at pk from a query at
//                   pq gets slope_h * (pk - pq), after the scale and the softcap
//                   (llama.cpp's soft_max_ext with its -|pq - pk| mask);
//   sinks [n_head]  gpt-oss's learned sink logit: exp(sink_h - m) joins the
//                   softmax's denominator (m: the max over the visible keys,
//                   the exponent clamped at 80 as the CPU's), adding no value.
#include "common.cuh"
#include "attn_tile.cuh"
#include "attn_decode.cuh"

// ------------------------------------------------------------------ store
// grid (T * n_kv), block 128.  One block per (token, kv head); the caller makes
// sure no two tokens of a batch share a slot (T <= cap).
extern "C" __global__ void kv_store_f16(const float* __restrict__ k_new, // [T, n_kv, D]
                                        const float* __restrict__ v_new, // [T, n_kv, Dv]
                                        const int* __restrict__ pos,     // [T]
                                        u16* __restrict__ k_cache,       // [n_kv, cap, D]
                                        u16* __restrict__ v_cache,       // [n_kv, cap, Dv]
                                        int* __restrict__ kpos,          // [cap]
                                        int n_kv, int D, int Dv, int cap) {
    const int t = blockIdx.x / n_kv, h = blockIdx.x % n_kv;
    kv_store_row(k_new, v_new, t, h, pos[t], k_cache, v_cache, kpos, n_kv, D, Dv, cap);
}

// ------------------------------------------------------------------ decode
// grid (n_split, n_kv, T), block 128,
// dynamic shared: (gqa * D + gqa * AD_CHUNK) floats, gqa = n_head / n_kv.
// Writes, per (token, head, split): the chunk's max score m, sum of exp(s - m)
// l, and the unnormalised output sum_j exp(s_j - m) v_j.  A chunk where no
// slot is visible gets m = -inf, l = 0, o = 0.  direct (n_split == 1, up to
// AD_CHUNK slots): the output itself, o / l, into out, as attn_decode_reduce
// would write it; short contexts then need no reduce launch.
extern "C" __global__ void __launch_bounds__(128) attn_decode_partial_f16(
    const float* __restrict__ q,    // [T, n_head, D]
    const u16* __restrict__ k,      // [n_kv, cap, D]
    const u16* __restrict__ v,      // [n_kv, cap, Dv]
    const int* __restrict__ kpos,   // [cap]
    const int* __restrict__ qpos,   // [T]
    float* __restrict__ part_o,     // [T, n_head, n_split, Dv]
    float* __restrict__ part_m,     // [T, n_head, n_split]
    float* __restrict__ part_l,     // [T, n_head, n_split]
    float* __restrict__ out,        // [T, n_head, Dv], written when direct
    const float* __restrict__ alibi,  // [n_head] ALiBi slopes, read when has_alibi
    const float* __restrict__ sinks,  // [n_head] sink logits, read when has_sinks (direct: here; else the reduce's)
    int n_slots, int cap, int n_head, int n_kv, int D, int Dv, int window, float scale, float softcap, int direct,
    int has_alibi, int has_sinks, int vs) {
    extern __shared__ float smem[];
    const int gqa = n_head / n_kv;
    const int split = blockIdx.x, kh = blockIdx.y, t = blockIdx.z, n_split = gridDim.x;
    const size_t ph = (size_t)t * n_head + kh * gqa;  // the group's heads are adjacent
    attn_decode_split(smem, q + ph * D, k, v, kpos, qpos[t], kh, split, n_split, n_slots, cap, gqa, D, Dv, vs, window,
                      scale, softcap, alibi + kh * gqa, has_alibi, sinks + kh * gqa, has_sinks, part_o, part_m, part_l,
                      ph, out + ph * Dv, direct);
}

// grid (n_head, T), block 128, dynamic shared: n_split floats.
// out = sum_s exp(m_s - M) o_s / (sum_s exp(m_s - M) l_s [+ exp(sink - M)]),  M = max_s m_s;
// 0 when no slot was visible at all (as the CPU kernel).
extern "C" __global__ void attn_decode_reduce(const float* __restrict__ part_o, // [T, n_head, n_split, Dv]
                                              const float* __restrict__ part_m, // [T, n_head, n_split]
                                              const float* __restrict__ part_l, // [T, n_head, n_split]
                                              float* __restrict__ out,          // [T, n_head, Dv]
                                              const float* __restrict__ sinks,  // [n_head], read when has_sinks
                                              int n_head, int n_split, int Dv, int has_sinks) {
    extern __shared__ float wts[];  // [n_split] weight of each split
    __shared__ float scratch[WARP];
    const size_t th = (size_t)blockIdx.y * n_head + blockIdx.x;
    attn_decode_merge<true>(part_m + th * n_split, part_l + th * n_split, part_o + th * n_split * Dv, n_split, Dv,
                            sinks + blockIdx.x, has_sinks, out + th * Dv, scratch, wts);
}

// ------------------------------------------------------------------ prefill
// The text's mask for attn_tile.cuh: causal, windowed or chunked (visible), with ALiBi and sinks behind flags.
struct PrefillMask {
    int window, has_alibi, has_sinks;
    float slope, sink;  // head h's, read only behind their flags

    __device__ __forceinline__ bool tile(int pk, int qmin, int qmax) const {
        // (chunked: the first query's chunk starts first, as the positions increase)
        return pk >= 0 && pk <= qmax && (window == 0 || (window > 0 ? qmin - pk < window : pk >= qmin - qmin % -window));
    }
    __device__ __forceinline__ bool see(int pk, int pq) const { return visible(pk, pq, window); }
    __device__ __forceinline__ float score(float s, int pk, int pq) const {
        return has_alibi ? s + slope * (float)(pk - pq) : s;
    }
    __device__ __forceinline__ float denom(float l, float m) const { return l + (has_sinks ? sink_term(sink, m) : 0.0f); }
};

// grid (ceil(T/BQ), n_head), block 128, dynamic shared as attn_tile.cuh says.
extern "C" __global__ void __launch_bounds__(128) attn_prefill_f16(
    const float* __restrict__ q,   // [T, n_head, D]
    const u16* __restrict__ k,     // [n_kv, cap, D]
    const u16* __restrict__ v,     // [n_kv, cap, Dv]
    const int* __restrict__ kpos,  // [cap]
    const int* __restrict__ qpos,  // [T], increasing
    float* __restrict__ out,       // [T, n_head, Dv]
    const float* __restrict__ alibi,  // [n_head] ALiBi slopes, read when has_alibi
    const float* __restrict__ sinks,  // [n_head] sink logits, read when has_sinks
    int T, int n_slots, int cap, int n_head, int n_kv, int D, int Dv, int window, float scale,
    float softcap, int BQ, int BKV, int has_alibi, int has_sinks, int vs) {
    extern __shared__ float smem[];
    const int h = blockIdx.y;
    const PrefillMask mask{window, has_alibi, has_sinks, has_alibi ? alibi[h] : 0.0f, has_sinks ? sinks[h] : 0.0f};
    attn_tile_f16(smem, q, k, v, kpos, qpos, out, T, n_slots, cap, n_head, n_kv, D, Dv, scale, softcap, BQ, BKV, mask, vs);
}
