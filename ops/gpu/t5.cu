// T5 on the device (models/t5.py, models/bert.py's family): the element-wise ops the encoders' and T5's FFNs need as
// kernels (so a T5 decode step is all launches, which a CUDA graph holds, and an encoder's states stay on the device).
// (The decoder's self-attention, over the plain fp16 ring with its relative-position bias looked up on the device, is
// encoder.cu's attn_full_f32 on the ring with bias mode 2.)
//
//   gelu_f16_f32       ggml's CPU GELU (models/bert.py gelu: the float16 table), ungated (BERT's FFN)
//   gelu_f16_glu_f32   the same, gated: out = gelu_f16(g) * u (T5 v1.1's FFN)
//   relu_f32           out = max(x, 0) (the original T5's FFN)
#include "common.cuh"

// ggml's CPU GELU (GGML_GELU_FP16): the input rounded to float16, the tanh GELU of it rounded to float16, inputs
// past +-10 passed / zeroed (as moe2.cu's gelu_f16_f, which Grok's experts use)
__device__ __forceinline__ float t5_gelu_f16(float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    return h2f(f2h(gelu_f(h2f(f2h(x)))));
}

// (out may be x)
extern "C" __global__ void gelu_f16_f32(const float* x, float* out, long long n) {
    GRID_STRIDE(i, n) out[i] = t5_gelu_f16(x[i]);
}

// (out may be g)
extern "C" __global__ void gelu_f16_glu_f32(const float* g, const float* __restrict__ u, float* out, long long n) {
    GRID_STRIDE(i, n) out[i] = t5_gelu_f16(g[i]) * u[i];
}

// (out may be x)
extern "C" __global__ void relu_f32(const float* x, float* out, long long n) {
    GRID_STRIDE(i, n) out[i] = fmaxf(x[i], 0.0f);
}
