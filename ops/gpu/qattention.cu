// Decode attention over the compressed KV cache of cache/compressed.py, read in place.
//
// The CUDA twin of attend_decode_q in ops/cpu/qattention.py (the reference:
// same masks, logit order softcap -> + logw, float32 softmax).  One layer's
// slots j in [0, N), N = F + C0 + C1, live in three areas (kvq.cuh):
//
//   [0, F)             fp16 sinks + residual window   k16 [n_kv, F, D] fp16 bits
//   [F, F + C0)        quantized pool 0                codes/meta/lut, widths wk0 / wv0
//   [F + C0, N)        quantized pool 1 (C1 may be 0)  widths wk1 / wv1
//
//   kpos [P, N] int32  absolute position per slot, -1 = empty; P = 1 when every
//                      KV head keeps the same tokens, else P = n_kv
//   logw [n_kv, N]     log merge weights added to the logits (KeepKV), optional
//   alibi [n_head]     ALiBi's slopes, optional: logit += slope_h * (pk - pq), pk the slot's
//                      stored position (llama.cpp's soft_max_ext max_bias; attention.cu's alibi)
//
// A key at pk is visible to a query at pq when 0 <= pk <= pq and, for a
// sliding window w > 0, pq - pk < w; for a negative window -c (Llama 4's
// chunked attention) pk >= pq - pq % c, as attention.cu's visible().
//
//   qattn_decode_partial  flash-decoding: a few queries cannot fill a GPU, so
//                         the slots are cut into chunks; a block does one
//                         chunk's softmax for all query heads of one KV head
//                         (each row is dequantized once per group), writing
//                         (max, sum, unnormalised output) for attn_decode_reduce
//                         in attention.cu to merge.  Values are dequantized in
//                         the dot-product loops: no float copy of the cache.
//   qattn_decode_probs    optional: the attention probabilities summed over the
//                         GQA group and the T queries, per slot (what eviction
//                         policies score with), from the logits the partial
//                         kernel kept and the chunks' (max, sum).
#include "kvq.cuh"

#define QA_CHUNK 128  // slots per decode split
#define QA_MAX_D 256  // key head_dim held in registers by the scores loop (8 per lane); wider keys (MLA's latent,
                      // 576; Gemma 4's 512) take it in passes of QA_MAX_D, their partial sums kept in sc

__device__ __forceinline__ bool qa_visible(int pk, int pq, int window) {
    return pk >= 0 && pk <= pq && (window == 0 || (window > 0 ? pq - pk < window : pk >= pq - pq % -window));
}

// grid (n_split, n_kv * n_hb, T), block 128,
// dynamic shared: (hb * D + hb * QA_CHUNK) floats, hb = ceil(gqa / n_hb), gqa = n_head / n_kv; static: 4 KiB of LUTs.
// A block takes query heads [hg * hb, +hb) of its KV head's gqa (n_hb > 1: MLA's one KV head for all the model's
// heads, whose queries and logits would not fit in shared memory at once; n_hb = 1 is one block a KV head).
// Per (token, head, split): the chunk's max logit m, sum of exp(s - m) l, and
// sum_j exp(s_j - m) v_j; a chunk where nothing is visible gets m = -inf, l = 0, o = 0.
extern "C" __global__ void __launch_bounds__(128) qattn_decode_partial(
    const float* __restrict__ q,     // [T, n_head, D] float32, in the cache's (rotated) basis
    const int* __restrict__ qpos,    // [T] int32
    const u16* __restrict__ k16,     // [n_kv, F, D] fp16 bits
    const u16* __restrict__ v16,     // [n_kv, F, Dv] fp16 bits
    const u8* __restrict__ kc0,      // [n_kv, C0, D * wk0 / 8] uint8 key codes of pool 0
    const u8* __restrict__ km0,      // [n_kv, C0, D / G, 2] uint8 (scale code, zero code); empty at 16 bits
    const u8* __restrict__ vc0,      // [n_kv, C0, Dv * wv0 / 8] uint8
    const u8* __restrict__ vm0,      // [n_kv, C0, Dv / G, 2] uint8
    const u8* __restrict__ kc1,      // [n_kv, C1, D * wk1 / 8] uint8: pool 1 likewise
    const u8* __restrict__ km1,      // [n_kv, C1, D / G, 2] uint8
    const u8* __restrict__ vc1,      // [n_kv, C1, Dv * wv1 / 8] uint8
    const u8* __restrict__ vm1,      // [n_kv, C1, Dv / G, 2] uint8
    const float* __restrict__ luts,  // [4, 256] float32: klut0, vlut0, klut1, vlut1
    const int* __restrict__ kpos,    // [P, N] int32, -1 = empty
    const float* __restrict__ logw,  // [n_kv, N] float32 (read only when use_logw)
    float* __restrict__ part_o,      // [T, n_head, n_split, Dv]
    float* __restrict__ part_m,      // [T, n_head, n_split]
    float* __restrict__ part_l,      // [T, n_head, n_split]
    float* __restrict__ scores,      // [T, n_head, N] logits, -inf when masked (written only when write_scores)
    int F, int C0, int C1, int n_head, int n_kv, int D, int Dv, int G, int wk0, int wv0, int wk1, int wv1,
    int P, int use_logw, int write_scores, int window, float scale, float softcap,
    const float* __restrict__ alibi,  // [n_head] float32 ALiBi slopes (read only when use_alibi)
    int use_alibi) {
    extern __shared__ float smem[];
    __shared__ float lut_s[4 * 256];  // the four scale tables: indexed by data, so keep them on chip
    const int n_hb = gridDim.y / n_kv, hb = (n_head / n_kv + n_hb - 1) / n_hb, hg = blockIdx.y % n_hb;
    const int h0 = (blockIdx.y / n_hb) * (n_head / n_kv) + hg * hb;  // this block's first query head
    const int gqa = min(hb, n_head / n_kv - hg * hb);                 // and how many
    const int N = F + C0 + C1;
    float* qs = smem;           // [gqa, D]
    float* sc = smem + hb * D;  // [gqa, QA_CHUNK] logits, then probabilities
    const int split = blockIdx.x, kh = blockIdx.y / n_hb, t = blockIdx.z, n_split = gridDim.x;
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, n_warps = blockDim.x / WARP;
    const int j0 = split * QA_CHUNK;
    const int nj = min(QA_CHUNK, N - j0);
    const int pq = qpos[t];
    const int* prow = kpos + (size_t)(P > 1 ? kh : 0) * N;

    const float* qg = q + ((size_t)t * n_head + h0) * D;  // the group's heads are adjacent
    for (int i = threadIdx.x; i < gqa * D; i += blockDim.x) qs[i] = qg[i];
    for (int i = threadIdx.x; i < 4 * 256; i += blockDim.x) lut_s[i] = luts[i];
    __syncthreads();
    const int lgG = kvq_log2_exact(G);
    const KVQArea ka{k16, kc0, km0, kc1, km1, lut_s, lut_s + 512, F, C0, C1, D, G, wk0, wk1, lgG};
    const KVQArea va{v16, vc0, vm0, vc1, vm1, lut_s + 256, lut_s + 768, F, C0, C1, Dv, G, wv0, wv1, lgG};

    // logits: one warp per slot; the lane's share of the dequantized key stays
    // in registers while it is dotted with every query head of the group
    for (int jj = warp; jj < nj; jj += n_warps) {
        const int j = j0 + jj;
        if (!qa_visible(prow[j], pq, window)) {
            for (int g = lane; g < gqa; g += WARP) {
                sc[g * QA_CHUNK + jj] = NEG_INF;
                if (write_scores) scores[((size_t)t * n_head + h0 + g) * N + j] = NEG_INF;
            }
            continue;
        }
        const KVQRow kr = kvq_row(ka, kh, j);
        const float lw = use_logw ? logw[(size_t)kh * N + j] : 0.0f;
        for (int d0 = 0; d0 < D; d0 += QA_MAX_D) {  // (one pass for keys up to QA_MAX_D wide)
            float kreg[QA_MAX_D / WARP];
#pragma unroll
            for (int r = 0; r < QA_MAX_D / WARP; ++r) {
                const int d = d0 + lane + WARP * r;
                kreg[r] = d < D ? kvq_value(kr, G, lgG, d) : 0.0f;
            }
            const bool last = d0 + QA_MAX_D >= D;
            for (int g = 0; g < gqa; ++g) {
                float s = 0.0f;
#pragma unroll
                for (int r = 0; r < QA_MAX_D / WARP; ++r) {
                    const int d = d0 + lane + WARP * r;
                    if (d < D) s += qs[g * D + d] * kreg[r];
                }
                s = warp_sum(s);
                // the earlier passes' sum: lane 0 keeps it in the slot's logit (only lane 0's s is written)
                if (d0 > 0 && lane == 0) s += sc[g * QA_CHUNK + jj];
                if (!last) {
                    if (lane == 0) sc[g * QA_CHUNK + jj] = s;
                    continue;
                }
                s *= scale;
                if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
                s += lw;
                if (use_alibi) s += alibi[h0 + g] * (float)(prow[j] - pq);
                if (lane == 0) {
                    sc[g * QA_CHUNK + jj] = s;
                    if (write_scores) scores[((size_t)t * n_head + h0 + g) * N + j] = s;
                }
            }
        }
    }
    __syncthreads();

    chunk_softmax(sc, QA_CHUNK, gqa, nj, part_m, part_l, ((size_t)t * n_head + h0) * n_split + split, n_split);
    __syncthreads();

    // P @ V: threads over (head, d), so the lanes read a row's codes together;
    // each visible row is dequantized where it is used
    for (int i = threadIdx.x; i < gqa * Dv; i += blockDim.x) {
        const int g = i / Dv, d = i % Dv;
        const float* pg = sc + g * QA_CHUNK;
        float acc = 0.0f;
        for (int jj = 0; jj < nj; ++jj) {
            const float p = pg[jj];
            if (p != 0.0f) acc += p * kvq_value(kvq_row(va, kh, j0 + jj), G, lgG, d);
        }
        part_o[(((size_t)t * n_head + h0 + g) * n_split + split) * Dv + d] = acc;
    }
}

// grid (ceil(N / 128), n_kv), block 128, dynamic shared: 2 * T * gqa floats.
// acc[kh, j] = sum over the T queries and the gqa query heads of KV head kh of
// softmax probability of slot j (0 for masked slots, and where nothing was
// visible).  Written, not added: the caller adds it into its accumulator.
// has_sinks: a head's sink logit (gpt-oss) takes its share of the denominator,
// as attn_decode_reduce's, so the slots' probabilities sum to less than one.
extern "C" __global__ void qattn_decode_probs(const float* __restrict__ scores,  // [T, n_head, N] logits
                                              const float* __restrict__ part_m,  // [T, n_head, n_split]
                                              const float* __restrict__ part_l,  // [T, n_head, n_split]
                                              float* __restrict__ acc,           // [n_kv, N]
                                              const float* __restrict__ sinks,   // [n_head], read when has_sinks
                                              int T, int n_head, int n_kv, int N, int n_split, int has_sinks) {
    extern __shared__ float smem[];
    const int gqa = n_head / n_kv, kh = blockIdx.y, n_rows = T * gqa;
    float* mx_s = smem;            // [T * gqa] row max over all chunks
    float* inv_s = smem + n_rows;  // [T * gqa] 1 / softmax denominator (0: nothing visible)
    for (int i = threadIdx.x; i < n_rows; i += blockDim.x) {
        const size_t th = (size_t)(i / gqa) * n_head + kh * gqa + i % gqa;
        const float* m = part_m + th * n_split;
        const float* l = part_l + th * n_split;
        float mx = NEG_INF;
        for (int s = 0; s < n_split; ++s) mx = fmaxf(mx, m[s]);
        float tot = 0.0f;
        for (int s = 0; s < n_split; ++s)
            if (mx != NEG_INF && m[s] != NEG_INF) tot += __expf(m[s] - mx) * l[s];
        if (has_sinks && mx != NEG_INF) tot += __expf(fminf(sinks[kh * gqa + i % gqa] - mx, 80.0f));
        mx_s[i] = mx;
        inv_s[i] = tot > 0.0f ? 1.0f / tot : 0.0f;
    }
    __syncthreads();
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= N) return;
    float a = 0.0f;
    for (int i = 0; i < n_rows; ++i) {
        const size_t th = (size_t)(i / gqa) * n_head + kh * gqa + i % gqa;
        const float s = scores[th * N + j];
        if (s != NEG_INF && inv_s[i] > 0.0f) a += __expf(s - mx_s[i]) * inv_s[i];
    }
    acc[(size_t)kh * N + j] = a;
}

// Prefill over the compressed cache: the stored slots a chunk attends to, as a
// dense fp16 buffer for attn_prefill_f16 (attention.cu).  A prefill chunk's
// attention is compute-bound over (stored + chunk) keys, so each stored row is
// dequantized once per chunk here rather than once per query tile there.
// out[h, i, :] = row ids[i] of KV head h (K or V: the area says which), fp16.
// grid (n, n_kv), block 128; out [n_kv, stride, Dx] fp16 bits, rows [0, n) written.
extern "C" __global__ void qattn_gather_f16(const u16* __restrict__ x16, const u8* __restrict__ codes0, const u8* __restrict__ meta0,
                                            const u8* __restrict__ codes1, const u8* __restrict__ meta1, const float* __restrict__ lut0,
                                            const float* __restrict__ lut1, const int* __restrict__ ids, u16* __restrict__ out, int F, int C0,
                                            int C1, int Dx, int G, int w0, int w1, int stride) {
    const int i = blockIdx.x, h = blockIdx.y;
    const KVQArea a{x16, codes0, meta0, codes1, meta1, lut0, lut1, F, C0, C1, Dx, G, w0, w1, kvq_log2_exact(G)};
    const KVQRow r = kvq_row(a, h, ids[i]);
    u16* o = out + ((size_t)h * stride + i) * Dx;
    for (int d = threadIdx.x; d < Dx; d += blockDim.x) o[d] = r.bits == 16 ? ((const u16*)r.codes)[d] : f2h(kvq_value(r, G, a.lgG, d));
}
