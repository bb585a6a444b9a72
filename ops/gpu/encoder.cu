// Attention with every query row's scores held whole (ops/gpu/encoder.py): the text encoders' (models/bert.py and its
// family, models/gemma_embedding.py, models/t5encoder.py) and T5's cross-attention over one batch held in float32, and
// T5's decoder self-attention over the plain fp16 ring (models/t5.py).
//
// One block per (query row, head): the row's scores stay in shared memory, so the max, the exponentials and their sum
// are exact over the whole row, as the CPU's numpy softmax computes them (no online rescaling).  Two layouts of K/V:
//   a batch (cap 0)    K [Tk, n_kv, D], V [Tk, n_kv, Dv] float32; every query row sees every key row;
//   the ring (cap > 0) K [n_kv, cap, D], V [n_kv, cap, Dv] fp16 (cache/gpu_plain.py's) over its first Tk slots, kpos
//                      [cap] each slot's position (-1 empty), qpos [Tq] the queries': a query sees the keys at or
//                      before its own position (causal), whatever order the ring holds them in.
// and three of the additive bias on the scaled scores (bias_mode):
//   0 none
//   1 a bias [n_head or 1, Tq, Tk] spelt out (ALiBi, T5's encoder buckets, -inf where a window or a mask hides a key;
//     bias_hs: a head's stride, 0 when the heads share it)
//   2 T5's relative-position table [n_head, bias_hs] by distance d = query - key position (the ring's positions), the
//     last entry serving every longer one (T5's causal buckets saturate there); read on the device, so a T5 decode step
//     is all launches a CUDA graph holds.
#include "common.cuh"

__device__ __forceinline__ float enc_ld(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float enc_ld(const u16* p, size_t i) { return h2f(p[i]); }

// A block's row: KV is the layout's element type (float: a batch, u16: the fp16 ring).
template <class KV>
__device__ __forceinline__ void attn_row(const float* __restrict__ q, const KV* __restrict__ k, const KV* __restrict__ v,
                                         const float* __restrict__ bias, const int* __restrict__ kpos, const int* __restrict__ qpos,
                                         float* __restrict__ out, int Tk, int n_head, int n_kv, int D, int Dv, float scale,
                                         int bias_mode, long long bias_hs, int cap) {
    extern __shared__ float smem[];
    float* s = smem;          // [Tk] scores, then probabilities
    float* qs = s + Tk;       // [D] the query row
    float* scratch = qs + D;  // [32] reductions
    const int t = blockIdx.x, h = blockIdx.y, kh = h / (n_head / n_kv), tid = threadIdx.x;
    // a key's row and a value's column: a head's stride and a key's, in the layout
    const size_t k_hs = cap ? (size_t)cap * D : D, k_ts = cap ? D : (size_t)n_kv * D;
    const size_t v_hs = cap ? (size_t)cap * Dv : Dv, v_ts = cap ? Dv : (size_t)n_kv * Dv;
    const int p = cap ? qpos[t] : 0;
    for (int d = tid; d < D; d += blockDim.x) qs[d] = q[((size_t)t * n_head + h) * D + d];
    __syncthreads();
    float m = NEG_INF;
    for (int j = tid; j < Tk; j += blockDim.x) {
        const int kp = cap ? kpos[j] : 0;
        float x = NEG_INF;
        if (!cap || (kp >= 0 && kp <= p)) {
            const KV* kr = k + kh * k_hs + j * k_ts;
            float dot = 0.0f;
            for (int d = 0; d < D; ++d) dot += qs[d] * enc_ld(kr, d);
            x = dot * scale;
            if (bias_mode == 1) x += bias[(size_t)h * bias_hs + (size_t)t * Tk + j];
            if (bias_mode == 2) x += bias[(size_t)h * bias_hs + min(p - kp, (int)bias_hs - 1)];
        }
        s[j] = x;
        m = fmaxf(m, x);
    }
    m = block_max(m, scratch);
    float l = 0.0f;
    for (int j = tid; j < Tk; j += blockDim.x) {
        const float e = s[j] == NEG_INF ? 0.0f : expf(s[j] - m);
        s[j] = e;
        l += e;
    }
    l = block_sum(l, scratch);  // (its barriers also publish s)
    const float inv = 1.0f / l;
    for (int d = tid; d < Dv; d += blockDim.x) {
        const KV* vc = v + kh * v_hs + d;
        float acc = 0.0f;
        for (int j = 0; j < Tk; ++j)
            if (s[j] != 0.0f) acc += s[j] * enc_ld(vc, j * v_ts);  // (a hidden key's value is never read: an empty slot's)
        out[((size_t)t * n_head + h) * Dv + d] = acc * inv;
    }
}

// grid (Tq, n_head), block 128, dynamic shared 4 * (Tk + D + 32) bytes.  kpos, qpos: read only on the ring (cap > 0);
// bias: only where bias_mode is not 0 (mode 2 needs the ring's positions).
extern "C" __global__ void __launch_bounds__(128) attn_full_f32(
    const float* __restrict__ q,     // [Tq, n_head, D]
    const void* k,                   // a batch's [Tk, n_kv, D] float32, or the ring's [n_kv, cap, D] fp16
    const void* v,                   // a batch's [Tk, n_kv, Dv] float32, or the ring's [n_kv, cap, Dv] fp16
    const float* __restrict__ bias,  // mode 1: [n_head or 1, Tq, Tk]; mode 2: [n_head, bias_hs]
    const int* __restrict__ kpos,    // the ring's [cap]
    const int* __restrict__ qpos,    // the ring's queries' [Tq]
    float* __restrict__ out,         // [Tq, n_head, Dv]
    int Tq, int Tk, int n_head, int n_kv, int D, int Dv, float scale, int bias_mode, long long bias_hs, int cap) {
    if (cap)
        attn_row(q, (const u16*)k, (const u16*)v, bias, kpos, qpos, out, Tk, n_head, n_kv, D, Dv, scale, bias_mode, bias_hs, cap);
    else
        attn_row(q, (const float*)k, (const float*)v, bias, kpos, qpos, out, Tk, n_head, n_kv, D, Dv, scale, bias_mode, bias_hs, cap);
}
