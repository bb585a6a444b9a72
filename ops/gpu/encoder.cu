// Attention without a causal mask over one batch held in float32 (ops/gpu/encoder.py): the text encoders'
// (models/bert.py and its family, models/gemma_embedding.py, models/t5encoder.py) and T5's cross-attention.
//
// Every query row sees every key row of the batch, an optional additive bias [n_head, Tq, Tk] on the scaled scores
// (ALiBi, T5's relative position buckets, -inf where a sliding window hides a key).  One block per (query row, head):
// the row's scores stay in shared memory, so the max, the exponentials and their sum are exact over the whole row, as
// the CPU's numpy softmax computes them (no online rescaling); an encoder runs once a text, never in a decode step.
#include "common.cuh"

// grid (Tq, n_head), block 128, dynamic shared 4 * (Tk + D + 32) bytes.
extern "C" __global__ void __launch_bounds__(128) attn_full_f32(
    const float* __restrict__ q,     // [Tq, n_head, D]
    const float* __restrict__ k,     // [Tk, n_kv, D]
    const float* __restrict__ v,     // [Tk, n_kv, Dv]
    const float* __restrict__ bias,  // [n_head or 1, Tq, Tk] (read only when has_bias; bias_hs: a head's stride, 0 shared)
    float* __restrict__ out,         // [Tq, n_head, Dv]
    int Tq, int Tk, int n_head, int n_kv, int D, int Dv, float scale, int has_bias, long long bias_hs) {
    extern __shared__ float smem[];
    float* s = smem;          // [Tk] scores, then probabilities
    float* qs = s + Tk;       // [D] the query row
    float* scratch = qs + D;  // [32] reductions
    const int t = blockIdx.x, h = blockIdx.y, kh = h / (n_head / n_kv), tid = threadIdx.x;
    for (int d = tid; d < D; d += blockDim.x) qs[d] = q[((size_t)t * n_head + h) * D + d];
    __syncthreads();
    float m = NEG_INF;
    for (int j = tid; j < Tk; j += blockDim.x) {
        const float* kr = k + ((size_t)j * n_kv + kh) * D;
        float dot = 0.0f;
        for (int d = 0; d < D; ++d) dot += qs[d] * kr[d];
        float x = dot * scale;
        if (has_bias) x += bias[(size_t)h * bias_hs + (size_t)t * Tk + j];
        s[j] = x;
        m = fmaxf(m, x);
    }
    m = block_max(m, scratch);
    float l = 0.0f;
    for (int j = tid; j < Tk; j += blockDim.x) {
        const float p = s[j] == NEG_INF ? 0.0f : expf(s[j] - m);
        s[j] = p;
        l += p;
    }
    l = block_sum(l, scratch);  // (its barriers also publish s)
    const float inv = 1.0f / l;
    for (int d = tid; d < Dv; d += blockDim.x) {
        const float* vc = v + (size_t)kh * Dv + d;
        float acc = 0.0f;
        for (int j = 0; j < Tk; ++j) acc += s[j] * vc[(size_t)j * n_kv * Dv];
        out[((size_t)t * n_head + h) * Dv + d] = acc * inv;
    }
}
