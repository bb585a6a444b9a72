// Split-K decode attention over one fp16 KV ring (cache/gpu_plain.py's layout, see attention.cu), shared by a
// sequence's decode (attention.cu: attn_decode_partial_f16, then attn_decode_reduce) and a batch's rows, each over
// its own ring (batch_attention.cu: attn_decode_batch_f16, the merge in the same launch).  The kernels differ only in
// where a row's ring comes from and where the splits are merged, so the arithmetic is this one text: a row gets the
// same bits from either kernel, and a fix lands in both.
//
//   kv_store_row       one (token, KV head)'s new K/V rows into its ring (float32 -> fp16)
//   attn_decode_split  one block's work: one split (AD_CHUNK slots) of one KV head's group of query heads for one
//                      query row: its (max, sum, unnormalised output), or, when it is the only split, the output
//   attn_decode_merge  one head's splits merged into its output (the max over the splits, their weights, the sum)
//
// Every thread of the block (128) must call the two decode functions (barriers).
#pragma once
#include "common.cuh"

#define AD_CHUNK 128  // slots per decode split (ops/gpu/attention.py DECODE_CHUNK)
#define AD_MAX_D 256  // head_dim held in registers by the decode scores loop (8 per lane)

__device__ __forceinline__ bool visible(int pk, int pq, int window) {
    return pk >= 0 && pk <= pq && (window == 0 || (window > 0 ? pq - pk < window : pk >= pq - pq % -window));
}

// The sink's share of a softmax denominator whose visible scores peak at m (none visible: nothing to add, the
// output is 0 as without a sink).
__device__ __forceinline__ float sink_term(float sink, float m) {
    return m == NEG_INF ? 0.0f : __expf(fminf(sink - m, 80.0f));
}

// Token t's K/V rows of KV head h (k_new [T, n_kv, D], v_new [T, n_kv, Dv]) into the ring's slot of position p.
__device__ __forceinline__ void kv_store_row(const float* __restrict__ k_new, const float* __restrict__ v_new, int t,
                                             int h, int p, u16* __restrict__ k_cache, u16* __restrict__ v_cache,
                                             int* __restrict__ kpos, int n_kv, int D, int Dv, int cap) {
    const int slot = p % cap;
    const float* ks = k_new + ((size_t)t * n_kv + h) * D;
    const float* vs = v_new + ((size_t)t * n_kv + h) * Dv;
    u16* kd = k_cache + ((size_t)h * cap + slot) * D;
    u16* vd = v_cache + ((size_t)h * cap + slot) * Dv;
    for (int d = threadIdx.x; d < D; d += blockDim.x) kd[d] = f2h(ks[d]);
    for (int d = threadIdx.x; d < Dv; d += blockDim.x) vd[d] = f2h(vs[d]);
    if (h == 0 && threadIdx.x == 0) kpos[slot] = p;
}

// Split `split` of `n_split` (slots [split * AD_CHUNK, +AD_CHUNK) of [0, n_slots); none past n_slots: an empty split)
// of KV head kh's group of gqa query heads, for the query at position pq.  smem: (gqa * D + gqa * AD_CHUNK) floats.
//   qg     [gqa, D]  the group's query rows (adjacent heads)
//   k, v   the ring: k [n_kv, cap, D], v [n_kv, cap, Dv] with rows vs apart (MLA's latent reads V through K's rows)
//   alibi, sinks  the group's first head's slope / sink logit, read only behind their flags
// Writes part_m / part_l [ph + g][split] (ph: the group's first head's row of the partials) and the unnormalised
// output sum_j exp(s_j - m) v_j to part_o [ph + g][split][Dv]; a split where no slot is visible gets m = -inf, l = 0,
// o = 0.  direct (n_split == 1): the output itself, o / l (+ the sink's term), to out [g][Dv] instead of part_o.
__device__ __forceinline__ void attn_decode_split(
    float* smem, const float* __restrict__ qg, const u16* __restrict__ k, const u16* __restrict__ v,
    const int* __restrict__ kpos, int pq, int kh, int split, int n_split, int n_slots, int cap, int gqa, int D, int Dv,
    int vs, int window, float scale, float softcap, const float* __restrict__ alibi, int has_alibi,
    const float* __restrict__ sinks, int has_sinks, float* __restrict__ part_o, float* __restrict__ part_m,
    float* __restrict__ part_l, size_t ph, float* __restrict__ out, int direct) {
    float* qs = smem;             // [gqa, D]
    float* sc = smem + gqa * D;   // [gqa, AD_CHUNK] scores, then probabilities
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, n_warps = blockDim.x / WARP;
    const int j0 = split * AD_CHUNK;
    const int nj = min(AD_CHUNK, n_slots - j0);

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
            if (has_alibi) s += alibi[g] * (float)(kpos[j] - pq);
            if (lane == 0) sc[g * AD_CHUNK + jj] = s;
        }
    }
    __syncthreads();

    chunk_softmax(sc, AD_CHUNK, gqa, nj, part_m, part_l, ph * n_split + split, n_split);
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
        const size_t th = ph + g;
        if (direct) {  // part_l (and part_m) of this head were written before the barrier above
            const float l = part_l[th] + (has_sinks ? sink_term(sinks[g], part_m[th]) : 0.0f);
            out[(size_t)g * Dv + d] = acc * (l > 0.0f ? 1.0f / l : 0.0f);
        } else {
            part_o[(th * n_split + split) * Dv + d] = acc;
        }
    }
}

// One head's n_split partials (m, l [n_split], o [n_split, Dv]) merged into out [Dv]:
//   out = sum_s exp(m_s - M) o_s / (sum_s exp(m_s - M) l_s [+ exp(sink - M)]),  M = max_s m_s;
// 0 when no slot was visible at all (as the CPU kernel).  P: const float* where the partials come from an earlier
// launch, const volatile float* where other blocks of this launch wrote them (read past the L1).  kKeep: wts, n_split
// shared floats, keeps each split's weight for the output loop; else (no room for them) each weight is computed
// again there, the same bits.  scratch: [WARP] shared floats.
template <bool kKeep, class P>
__device__ __forceinline__ void attn_decode_merge(P m, P l, P o, int n_split, int Dv, const float* __restrict__ sink,
                                                  int has_sinks, float* __restrict__ out, float* scratch, float* wts) {
    float mx = NEG_INF;
    for (int s = threadIdx.x; s < n_split; s += blockDim.x) mx = fmaxf(mx, m[s]);
    mx = warp_max(mx);  // block max: per warp, then over the warps' results
    if (threadIdx.x % WARP == 0) scratch[threadIdx.x / WARP] = mx;
    __syncthreads();
    mx = NEG_INF;
    for (int w = 0; w < (int)(blockDim.x / WARP); ++w) mx = fmaxf(mx, scratch[w]);
    float lsum = 0.0f;
    for (int s = threadIdx.x; s < n_split; s += blockDim.x) {
        const float ms = m[s];
        const float e = (mx == NEG_INF || ms == NEG_INF) ? 0.0f : __expf(ms - mx);
        if (kKeep) wts[s] = e;
        lsum += e * l[s];
    }
    lsum = block_sum(lsum, scratch);  // its leading __syncthreads also publishes wts
    if (has_sinks) lsum += sink_term(*sink, mx);
    const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
    for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < n_split; ++s) {
            float e;
            if (kKeep) {
                e = wts[s];
            } else {
                const float ms = m[s];
                e = (mx == NEG_INF || ms == NEG_INF) ? 0.0f : __expf(ms - mx);
            }
            acc += e * o[(size_t)s * Dv + d];
        }
        out[d] = acc * inv;
    }
}
