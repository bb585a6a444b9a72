// The flash-attention tile loop over the fp16 KV ring (cache/gpu_plain.py's layout, see attention.cu), shared by
// the text's prefill (attention.cu attn_prefill_f16) and a picture's rows seeing each other both ways
// (picture.cu attn_picture_f16): the kernels differ only in which keys a query sees, so the mask is a template
// parameter and each kernel keeps its own name and arguments.
//
// A block holds a tile of BQ queries of one head and streams tiles of BKV keys through shared memory with an
// online softmax, skipping a key tile no query of the block can see.  A Mask provides
//   bool tile(pk, qmin, qmax)  may some query of the block (positions qmin..qmax) see the key at pk (the skip);
//   bool see(pk, pq)           does the query at pq see the key at pk;
//   float score(s, pk, pq)     the score after the scale and the softcap, with any bias (ALiBi) added;
//   float denom(l, m)          the softmax's denominator l (scores peaking at m), with any extra term (sinks).
//
// Dynamic shared (bytes): 4 * BQ * (D + Dv + BKV + 3)  +  2 * BKV * (kstride + Dv),
//   kstride = D + 2 when D % 4 == 0 else D (an odd word stride keeps the per-key reads of the score loop on
//   distinct banks).  BQ and BKV (<= 32, one key per lane in the softmax) are picked by the caller so the tiles
//   fit in 48 KiB.  Every thread of the block (128) must call it (barriers).
#pragma once
#include "common.cuh"

template <class Mask>
__device__ __forceinline__ void attn_tile_f16(
    float* smem,                   // the kernel's dynamic shared memory
    const float* __restrict__ q,   // [T, n_head, D]
    const u16* __restrict__ k,     // [n_kv, cap, D]
    const u16* __restrict__ v,     // [n_kv, cap, Dv], rows vs apart (0: Dv; MLA's latent, V read through K's rows: D)
    const int* __restrict__ kpos,  // [cap]
    const int* __restrict__ qpos,  // [T]
    float* __restrict__ out,       // [T, n_head, Dv]
    int T, int n_slots, int cap, int n_head, int n_kv, int D, int Dv, float scale, float softcap, int BQ, int BKV,
    const Mask& mask, int vs = 0) {
    if (vs <= 0) vs = Dv;
    const int kstride = (D % 4 == 0) ? D + 2 : D;
    float* Qs = smem;              // [BQ, D]
    float* Os = Qs + BQ * D;       // [BQ, Dv] running output
    float* Ss = Os + BQ * Dv;      // [BQ, BKV] scores, then probabilities
    float* m_s = Ss + BQ * BKV;    // [BQ] running max
    float* l_s = m_s + BQ;         // [BQ] running sum
    float* a_s = l_s + BQ;         // [BQ] rescale of the old output this tile
    u16* Ks = (u16*)(a_s + BQ);    // [BKV, kstride]
    u16* Vs = Ks + BKV * kstride;  // [BKV, Dv]

    const int h = blockIdx.y, kh = h / (n_head / n_kv);
    const int q0 = blockIdx.x * BQ, nq = min(BQ, T - q0);
    const int tid = threadIdx.x, lane = tid % WARP, warp = tid / WARP, n_warps = blockDim.x / WARP;

    for (int i = tid; i < BQ * D; i += blockDim.x) {
        const int qi = i / D;
        Qs[i] = qi < nq ? q[((size_t)(q0 + qi) * n_head + h) * D + i % D] : 0.0f;
    }
    for (int i = tid; i < BQ * Dv; i += blockDim.x) Os[i] = 0.0f;
    for (int i = tid; i < BQ; i += blockDim.x) {
        m_s[i] = NEG_INF;
        l_s[i] = 0.0f;
    }
    int qmin = qpos[q0], qmax = qpos[q0];
    for (int i = 1; i < nq; ++i) {
        qmin = min(qmin, qpos[q0 + i]);
        qmax = max(qmax, qpos[q0 + i]);
    }
    __syncthreads();  // the tiles above are read by other threads even if every K/V tile is skipped

    for (int j0 = 0; j0 < n_slots; j0 += BKV) {
        const int nj = min(BKV, n_slots - j0);
        // skip a tile no query of this block can see
        bool any = false;
        for (int jj = tid; jj < nj; jj += blockDim.x) any |= mask.tile(kpos[j0 + jj], qmin, qmax);
        if (!__syncthreads_or(any)) continue;

        const u16* kg = k + ((size_t)kh * cap + j0) * D;
        const u16* vg = v + ((size_t)kh * cap + j0) * vs;
        for (int i = tid; i < nj * D; i += blockDim.x) Ks[(i / D) * kstride + i % D] = kg[i];
        if (vs == Dv) {  // (dense rows: one run, as every model but MLA's latent)
            for (int i = tid; i < nj * Dv; i += blockDim.x) Vs[i] = vg[i];
        } else {
            for (int i = tid; i < nj * Dv; i += blockDim.x) Vs[i] = vg[(size_t)(i / Dv) * vs + i % Dv];
        }
        __syncthreads();

        for (int i = tid; i < BQ * BKV; i += blockDim.x) {
            const int qi = i / BKV, jj = i % BKV;
            float s = NEG_INF;
            if (qi < nq && jj < nj && mask.see(kpos[j0 + jj], qpos[q0 + qi])) {
                const float* qr = Qs + qi * D;
                const u16* kr = Ks + jj * kstride;
                float dot = 0.0f;
                for (int d = 0; d < D; ++d) dot += qr[d] * h2f(kr[d]);
                s = dot * scale;
                if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
                s = mask.score(s, kpos[j0 + jj], qpos[q0 + qi]);
            }
            Ss[i] = s;
        }
        __syncthreads();

        // online softmax: one warp per query row, one key per lane
        for (int qi = warp; qi < BQ; qi += n_warps) {
            const float s = lane < BKV ? Ss[qi * BKV + lane] : NEG_INF;
            const float m_old = m_s[qi];
            const float m_new = fmaxf(m_old, warp_max(s));
            float p = 0.0f, alpha = 1.0f;
            if (m_new != NEG_INF) {  // else nothing visible yet: keep zeros, no -inf - -inf
                p = __expf(s - m_new);
                alpha = __expf(m_old - m_new);
            }
            const float psum = warp_sum(p);
            if (lane < BKV) Ss[qi * BKV + lane] = p;
            if (lane == 0) {
                l_s[qi] = alpha * l_s[qi] + psum;
                m_s[qi] = m_new;
                a_s[qi] = alpha;
            }
        }
        __syncthreads();

        for (int i = tid; i < BQ * Dv; i += blockDim.x) {
            const int qi = i / Dv, d = i % Dv;
            const float* pr = Ss + qi * BKV;
            float o = Os[i] * a_s[qi];
            for (int jj = 0; jj < nj; ++jj) o += pr[jj] * h2f(Vs[jj * Dv + d]);
            Os[i] = o;
        }
        __syncthreads();
    }

    for (int i = tid; i < nq * Dv; i += blockDim.x) {
        const int qi = i / Dv, d = i % Dv;
        const float l = mask.denom(l_s[qi], m_s[qi]);
        out[((size_t)(q0 + qi) * n_head + h) * Dv + d] = l > 0.0f ? Os[i] / l : 0.0f;
    }
}
