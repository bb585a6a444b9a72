// T5 on the device (models/t5.py, models/bert.py's family): the decoder's self-attention over the plain fp16 ring
// with its relative-position bias looked up on the device, and the element-wise ops the encoders' and T5's FFNs
// need as kernels (so a T5 decode step is all launches, which a CUDA graph holds, and an encoder's states stay on
// the device).
//
//   t5_self_attn_f16   every query row over the ring's slots: scores unscaled (T5 folds the scale into Q), plus
//                      the learned bias of the key-minus-query distance, -inf for an empty slot or a key after the
//                      query; the softmax exact over the row (held in shared memory, as encoder.cu's attn_full_f32)
//   gelu_f16_f32       ggml's CPU GELU (models/bert.py gelu: the float16 table), ungated (BERT's FFN)
//   gelu_f16_glu_f32   the same, gated: out = gelu_f16(g) * u (T5 v1.1's FFN)
//   relu_f32           out = max(x, 0) (the original T5's FFN)
#include "common.cuh"

// grid (T, n_head), block 128, dynamic shared 4 * (n_slots + D + 32) bytes.  bias_d [n_head, n_dist]: the bias of
// each distance d = query - key position, the last entry serving every longer one (T5's buckets saturate there).
extern "C" __global__ void __launch_bounds__(128) t5_self_attn_f16(
    const float* __restrict__ q,       // [T, n_head, D]
    const u16* __restrict__ k,         // [n_kv, cap, D] fp16 (cache/gpu_plain.py's ring)
    const u16* __restrict__ v,         // [n_kv, cap, Dv] fp16
    const int* __restrict__ kpos,      // [cap]: each slot's position, -1 empty
    const int* __restrict__ qpos,      // [T]
    const float* __restrict__ bias_d,  // [n_head, n_dist]
    float* __restrict__ out,           // [T, n_head, Dv]
    int n_slots, int cap, int n_head, int n_kv, int D, int Dv, int n_dist) {
    extern __shared__ float smem[];
    float* s = smem;          // [n_slots] scores, then probabilities
    float* qs = s + n_slots;  // [D] the query row
    float* scratch = qs + D;  // [32] reductions
    const int t = blockIdx.x, h = blockIdx.y, kh = h / (n_head / n_kv), tid = threadIdx.x;
    const int p = qpos[t];
    for (int d = tid; d < D; d += blockDim.x) qs[d] = q[((size_t)t * n_head + h) * D + d];
    __syncthreads();
    float m = NEG_INF;
    for (int j = tid; j < n_slots; j += blockDim.x) {
        const int kp = kpos[j];
        float x = NEG_INF;
        if (kp >= 0 && kp <= p) {
            const u16* kr = k + ((size_t)kh * cap + j) * D;
            float dot = 0.0f;
            for (int d = 0; d < D; ++d) dot += qs[d] * h2f(kr[d]);
            x = dot + bias_d[(size_t)h * n_dist + min(p - kp, n_dist - 1)];
        }
        s[j] = x;
        m = fmaxf(m, x);
    }
    m = block_max(m, scratch);
    float l = 0.0f;
    for (int j = tid; j < n_slots; j += blockDim.x) {
        const float e = s[j] == NEG_INF ? 0.0f : expf(s[j] - m);
        s[j] = e;
        l += e;
    }
    l = block_sum(l, scratch);  // (its barriers also publish s)
    const float inv = 1.0f / l;
    for (int d = tid; d < Dv; d += blockDim.x) {
        const u16* vc = v + (size_t)kh * cap * Dv + d;
        float acc = 0.0f;
        for (int j = 0; j < n_slots; ++j)
            if (s[j] != 0.0f) acc += s[j] * h2f(vc[(size_t)j * Dv]);
        out[((size_t)t * n_head + h) * Dv + d] = acc * inv;
    }
}

#define T5_STRIDE(i, n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// ggml's CPU GELU (GGML_GELU_FP16): the input rounded to float16, the tanh GELU of it rounded to float16, inputs
// past +-10 passed / zeroed (as moe2.cu's gelu_f16_f, which Grok's experts use)
__device__ __forceinline__ float t5_gelu_f16(float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    return h2f(f2h(gelu_f(h2f(f2h(x)))));
}

// (out may be x)
extern "C" __global__ void gelu_f16_f32(const float* x, float* out, long long n) {
    T5_STRIDE(i, n) out[i] = t5_gelu_f16(x[i]);
}

// (out may be g)
extern "C" __global__ void gelu_f16_glu_f32(const float* g, const float* __restrict__ u, float* out, long long n) {
    T5_STRIDE(i, n) out[i] = t5_gelu_f16(g[i]) * u[i];
}

// (out may be x)
extern "C" __global__ void relu_f32(const float* x, float* out, long long n) {
    T5_STRIDE(i, n) out[i] = fmaxf(x[i], 0.0f);
}
