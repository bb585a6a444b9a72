// A picture's rows attending to each other both ways in the fp16 KV ring of cache/gpu_plain.py (Gemma 3's image
// block, as libmtmd feeds it with causal attention off: cache/picture_block.py, cache/gpu_picture.py).
//
// The rows of one forward (positions qpos, just stored in the ring) see every cached position up to the last row
// of the forward, pend, before or after their own; a sliding-window layer still hides a key pk from a query pq when
// pq - pk >= window (llama.cpp's is_masked_swa: a key after the query is never too old).  So a key at pk is
// visible to the query at pq when 0 <= pk <= pend and (window <= 0 or pq - pk < window).  Otherwise this is
// attention.cu's attn_prefill_f16 (same tiles, same online softmax, same layouts), kept in a file of its own so
// the text's prefill kernel stays as it is; it runs once per picture piece, never in a decode step.
#include "common.cuh"

__device__ __forceinline__ bool pic_visible(int pk, int pq, int pend, int window) {
    return pk >= 0 && pk <= pend && (window <= 0 || pq - pk < window);
}

// grid (ceil(T/BQ), n_head), block 128, dynamic shared (bytes) as attn_prefill_f16's:
//   4 * BQ * (D + Dv + BKV + 3)  +  2 * BKV * (kstride + Dv),  kstride = D + 2 when D % 4 == 0 else D.
extern "C" __global__ void __launch_bounds__(128) attn_picture_f16(
    const float* __restrict__ q,   // [T, n_head, D]
    const u16* __restrict__ k,     // [n_kv, cap, D]
    const u16* __restrict__ v,     // [n_kv, cap, Dv]
    const int* __restrict__ kpos,  // [cap]
    const int* __restrict__ qpos,  // [T]
    float* __restrict__ out,       // [T, n_head, Dv]
    int T, int n_slots, int cap, int n_head, int n_kv, int D, int Dv, int pend, int window, float scale,
    float softcap, int BQ, int BKV) {
    extern __shared__ float smem[];
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
    int qmin = qpos[q0];
    for (int i = 1; i < nq; ++i) qmin = min(qmin, qpos[q0 + i]);
    __syncthreads();

    for (int j0 = 0; j0 < n_slots; j0 += BKV) {
        const int nj = min(BKV, n_slots - j0);
        // skip a tile no query of this block can see (empty slots, keys too old for every query of the block)
        bool any = false;
        for (int jj = tid; jj < nj; jj += blockDim.x) any |= pic_visible(kpos[j0 + jj], qmin, pend, window);
        if (!__syncthreads_or(any)) continue;

        const u16* kg = k + ((size_t)kh * cap + j0) * D;
        const u16* vg = v + ((size_t)kh * cap + j0) * Dv;
        for (int i = tid; i < nj * D; i += blockDim.x) Ks[(i / D) * kstride + i % D] = kg[i];
        for (int i = tid; i < nj * Dv; i += blockDim.x) Vs[i] = vg[i];
        __syncthreads();

        for (int i = tid; i < BQ * BKV; i += blockDim.x) {
            const int qi = i / BKV, jj = i % BKV;
            float s = NEG_INF;
            if (qi < nq && jj < nj && pic_visible(kpos[j0 + jj], qpos[q0 + qi], pend, window)) {
                const float* qr = Qs + qi * D;
                const u16* kr = Ks + jj * kstride;
                float dot = 0.0f;
                for (int d = 0; d < D; ++d) dot += qr[d] * h2f(kr[d]);
                s = dot * scale;
                if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
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
        const float l = l_s[qi];
        out[((size_t)(q0 + qi) * n_head + h) * Dv + d] = l > 0.0f ? Os[i] / l : 0.0f;
    }
}
