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

#define AD_CHUNK 128  // slots per decode split
#define AD_MAX_D 256  // head_dim held in registers by the decode scores loop (8 per lane)

__device__ __forceinline__ bool visible(int pk, int pq, int window) {
    return pk >= 0 && pk <= pq && (window == 0 || (window > 0 ? pq - pk < window : pk >= pq - pq % -window));
}

// The sink's share of a softmax denominator whose visible scores peak at m (none visible: nothing to add, the
// output is 0 as without a sink).
__device__ __forceinline__ float sink_term(float sink, float m) {
    return m == NEG_INF ? 0.0f : __expf(fminf(sink - m, 80.0f));
}

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
    const int p = pos[t];
    const int slot = p % cap;
    const float* ks = k_new + ((size_t)t * n_kv + h) * D;
    const float* vs = v_new + ((size_t)t * n_kv + h) * Dv;
    u16* kd = k_cache + ((size_t)h * cap + slot) * D;
    u16* vd = v_cache + ((size_t)h * cap + slot) * Dv;
    for (int d = threadIdx.x; d < D; d += blockDim.x) kd[d] = f2h(ks[d]);
    for (int d = threadIdx.x; d < Dv; d += blockDim.x) vd[d] = f2h(vs[d]);
    if (h == 0 && threadIdx.x == 0) kpos[slot] = p;
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
    float* qs = smem;             // [gqa, D]
    float* sc = smem + gqa * D;   // [gqa, AD_CHUNK] scores, then probabilities
    const int split = blockIdx.x, kh = blockIdx.y, t = blockIdx.z, n_split = gridDim.x;
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, n_warps = blockDim.x / WARP;
    const int j0 = split * AD_CHUNK;
    const int nj = min(AD_CHUNK, n_slots - j0);
    const int pq = qpos[t];

    const float* qg = q + ((size_t)t * n_head + kh * gqa) * D;  // the group's heads are adjacent
    for (int i = threadIdx.x; i < gqa * D; i += blockDim.x) qs[i] = qg[i];
    __syncthreads();

    // scores: one warp per slot; the lane's share of the key stays in registers
    // while it is dotted with every query head of the group
    for (int jj = warp; jj < nj; jj += n_warps) {
        const int j = j0 + jj;
        if (!visible(kpos[j], pq, window)) {
            for (int g = lane; g < gqa; g += WARP) sc[g * AD_CHUNK + jj] = NEG_INF;
            continue;
        }
        const u16* kr = k + ((size_t)kh * cap + j) * D;
        float kreg[AD_MAX_D / WARP];
#pragma unroll
        for (int r = 0; r < AD_MAX_D / WARP; ++r) {
            const int d = lane + WARP * r;
            kreg[r] = d < D ? h2f(kr[d]) : 0.0f;
        }
        for (int g = 0; g < gqa; ++g) {
            float s = 0.0f;
#pragma unroll
            for (int r = 0; r < AD_MAX_D / WARP; ++r) {
                const int d = lane + WARP * r;
                if (d < D) s += qs[g * D + d] * kreg[r];
            }
            s = warp_sum(s) * scale;
            if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
            if (has_alibi) s += alibi[kh * gqa + g] * (float)(kpos[j] - pq);
            if (lane == 0) sc[g * AD_CHUNK + jj] = s;
        }
    }
    __syncthreads();

    chunk_softmax(sc, AD_CHUNK, gqa, nj, part_m, part_l, ((size_t)t * n_head + kh * gqa) * n_split + split, n_split);
    __syncthreads();

    // P @ V: threads over (head, d), so a row of V is read coalesced
    for (int i = threadIdx.x; i < gqa * Dv; i += blockDim.x) {
        const int g = i / Dv, d = i % Dv;
        const float* pg = sc + g * AD_CHUNK;
        const u16* vc = v + ((size_t)kh * cap + j0) * vs + d;
        float acc = 0.0f;
        for (int jj = 0; jj < nj; ++jj) {
            const float p = pg[jj];
            if (p != 0.0f) acc += p * h2f(vc[(size_t)jj * vs]);
        }
        const size_t th = (size_t)t * n_head + kh * gqa + g;
        if (direct) {  // part_l (and part_m) of this head were written before the barrier above
            const float l = part_l[th] + (has_sinks ? sink_term(sinks[kh * gqa + g], part_m[th]) : 0.0f);
            out[th * Dv + d] = acc * (l > 0.0f ? 1.0f / l : 0.0f);
        } else {
            part_o[(th * n_split + split) * Dv + d] = acc;
        }
    }
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
    const float* m = part_m + th * n_split;
    const float* l = part_l + th * n_split;
    float mx = NEG_INF;
    for (int s = threadIdx.x; s < n_split; s += blockDim.x) mx = fmaxf(mx, m[s]);
    mx = warp_max(mx);  // block max: per warp, then over the warps' results
    if (threadIdx.x % WARP == 0) scratch[threadIdx.x / WARP] = mx;
    __syncthreads();
    mx = NEG_INF;
    for (int w = 0; w < (int)(blockDim.x / WARP); ++w) mx = fmaxf(mx, scratch[w]);
    float lsum = 0.0f;
    for (int s = threadIdx.x; s < n_split; s += blockDim.x) {
        const float e = (mx == NEG_INF || m[s] == NEG_INF) ? 0.0f : __expf(m[s] - mx);
        wts[s] = e;
        lsum += e * l[s];
    }
    lsum = block_sum(lsum, scratch);  // its leading __syncthreads also publishes wts
    if (has_sinks) lsum += sink_term(sinks[blockIdx.x], mx);
    const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
    for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < n_split; ++s) acc += wts[s] * part_o[(th * n_split + s) * Dv + d];
        out[th * Dv + d] = acc * inv;
    }
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
