// Normalisation, rotary embedding and element-wise kernels (float32, contiguous).
//
// Each is the CUDA twin of the Numba kernel of the same name in ops/cpu/nn.py
// and follows its arithmetic (same formulas, float32 throughout).
// Element-wise kernels use a grid-stride loop so one launch shape serves any n.
#include "common.cuh"

// ------------------------------------------------------------------ RMSNorm
// One block per row: rows are n_embd wide (thousands), so a whole block shares
// the sum of squares.  out may alias x (Gemma's post-norms normalise in place):
// every thread reads its elements for the sum before any writes them.
// acc != 0 adds to out instead (Gemma's post-norms feeding the residual stream:
// x += RMSNorm(o) * w in one launch, not two).
// grid (n_rows), block 256
extern "C" __global__ void rms_norm_f32(const float* x,             // [n_rows, n]
                                        const float* __restrict__ w, // [n]
                                        float* out,                  // [n_rows, n], may be x (not with acc)
                                        int n, float eps, int acc) {
    __shared__ float scratch[WARP];
    const float* xr = x + (size_t)blockIdx.x * n;
    float* orow = out + (size_t)blockIdx.x * n;
    const float inv = block_rms_scale(xr, n, eps, scratch);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = xr[i] * inv * w[i];
        orow[i] = acc ? orow[i] + v : v;
    }
}

// Per-head RMSNorm in place (Gemma 3 QK-norm): rows are head_dim wide (64..256),
// too short for a block, so one warp per (token, head) row.
// grid (ceil(n_rows/4)), block 128
extern "C" __global__ void rms_norm_heads_f32(float* x,                    // [T * n_head, head_dim]
                                              const float* __restrict__ w, // [head_dim]
                                              int n_rows, int head_dim, float eps) {
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    if (row >= n_rows) return;
    float* xr = x + (size_t)row * head_dim;
    float ss = 0.0f;
    for (int i = lane; i < head_dim; i += WARP) ss += xr[i] * xr[i];
    ss = warp_sum(ss);
    const float inv = rsqrtf(ss / (float)head_dim + eps);
    for (int i = lane; i < head_dim; i += WARP) xr[i] = xr[i] * inv * w[i];
}

// ------------------------------------------------------------------ LayerNorm
// out = (x - mean) / sqrt(var + eps) * w (+ b): Phi-2's and StableLM's norms.  One block per
// row, as rms_norm_f32; the variance is taken about the mean (a second pass over the row, which
// the block's threads hold in cache) rather than as E[x^2] - mean^2, which cancels badly.
// b may be null (has_b 0).  out may alias x.
// grid (n_rows), block 256
extern "C" __global__ void layer_norm_f32(const float* x,             // [n_rows, n]
                                          const float* __restrict__ w, // [n]
                                          const float* __restrict__ b, // [n] (has_b)
                                          float* out,                  // [n_rows, n], may be x
                                          int n, float eps, int has_b) {
    __shared__ float scratch[WARP];
    const float* xr = x + (size_t)blockIdx.x * n;
    float* orow = out + (size_t)blockIdx.x * n;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i];
    const float mean = block_sum(s, scratch) / (float)n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float d = xr[i] - mean;
        ss += d * d;
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = (xr[i] - mean) * inv * w[i];
        orow[i] = has_b ? v + b[i] : v;
    }
}

// Per-head LayerNorm in place, each head its own weights, no bias (StableLM 2 12B's QK-norm):
// one warp per (token, head) row, as rms_norm_heads_f32.
// grid (ceil(n_rows/4)), block 128
extern "C" __global__ void layer_norm_heads_f32(float* x,                    // [T * n_head, head_dim]
                                                const float* __restrict__ w, // [n_head, head_dim]
                                                int n_rows, int n_head, int head_dim, float eps) {
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    if (row >= n_rows) return;
    float* xr = x + (size_t)row * head_dim;
    const float* wr = w + (size_t)(row % n_head) * head_dim;
    float s = 0.0f;
    for (int i = lane; i < head_dim; i += WARP) s += xr[i];
    const float mean = warp_sum(s) / (float)head_dim;
    float ss = 0.0f;
    for (int i = lane; i < head_dim; i += WARP) {
        const float d = xr[i] - mean;
        ss += d * d;
    }
    const float inv = rsqrtf(warp_sum(ss) / (float)head_dim + eps);
    for (int i = lane; i < head_dim; i += WARP) xr[i] = (xr[i] - mean) * inv * wr[i];
}

// ------------------------------------------------------------------ RoPE
// In place, from cos/sin tables that already hold YaRN/linear scaling and
// mscale (ops/cpu/nn.py rope_tables), so the kernel is a plain 2-D rotation.
// neox rotates (x[i], x[i + n_rot/2]); the normal layout (x[2i], x[2i+1]).
// Dimensions past n_rot are not touched.  One thread per rotated pair.
__device__ __forceinline__ void rope_pair(float* xh, int t, int i, const int* pos, const float* cos_t, const float* sin_t, int half, int neox) {
    const float c = cos_t[(size_t)pos[t] * half + i];
    const float s = sin_t[(size_t)pos[t] * half + i];
    const int i0 = neox ? i : 2 * i;
    const int i1 = neox ? i + half : 2 * i + 1;
    const float a = xh[i0], b = xh[i1];
    xh[i0] = a * c - b * s;
    xh[i1] = a * s + b * c;
}

// grid (ceil(T*n_head*half / 256)), block 256
extern "C" __global__ void rope_f32(float* x,                      // [T, n_head, head_dim]
                                    const int* __restrict__ pos,   // [T]
                                    const float* __restrict__ cos_t, // [n_pos, half]
                                    const float* __restrict__ sin_t, // [n_pos, half]
                                    int T, int n_head, int head_dim, int half, int neox) {
    const long long n_pairs = (long long)T * n_head * half;
    for (long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x; p < n_pairs;
         p += (long long)gridDim.x * blockDim.x) {
        const long long th = p / half;  // t * n_head + h
        rope_pair(x + th * head_dim, (int)(th / n_head), (int)(p % half), pos, cos_t, sin_t, half, neox);
    }
}

// Queries and keys of one step in one launch (a decode layer is a dozen small
// launches; this saves one): the pairs of q, then those of k.
// grid (ceil(T*(n_head_q + n_head_k)*half / 256)), block 256
extern "C" __global__ void rope_qk_f32(float* q,                       // [T, n_head_q, head_dim]
                                       float* k,                       // [T, n_head_k, head_dim]
                                       const int* __restrict__ pos,    // [T]
                                       const float* __restrict__ cos_t, // [n_pos, half]
                                       const float* __restrict__ sin_t, // [n_pos, half]
                                       int T, int n_head_q, int n_head_k, int head_dim, int half, int neox) {
    const long long n_q = (long long)T * n_head_q * half, n_pairs = n_q + (long long)T * n_head_k * half;
    for (long long p = blockIdx.x * (long long)blockDim.x + threadIdx.x; p < n_pairs;
         p += (long long)gridDim.x * blockDim.x) {
        const bool is_q = p < n_q;
        const long long pp = is_q ? p : p - n_q;
        const int H = is_q ? n_head_q : n_head_k;
        const long long th = pp / half;  // t * H + h
        rope_pair((is_q ? q : k) + th * head_dim, (int)(th / H), (int)(pp % half), pos, cos_t, sin_t, half, neox);
    }
}

// Gemma 3's QK-norm and RoPE in one launch (two per-head norms and a rotation
// were three): one warp per (token, head) row of q, then of k.  Each lane
// normalises and rotates the pairs it owns, so no element is read by one lane
// after another wrote it; the dimensions past n_rot are only normalised.
// grid (ceil(T*(n_head_q + n_head_k)/4)), block 128
extern "C" __global__ void rope_qk_norm_f32(float* q,                        // [T, n_head_q, head_dim]
                                            float* k,                        // [T, n_head_k, head_dim]
                                            const float* __restrict__ wq,    // [head_dim] q norm weight
                                            const float* __restrict__ wk,    // [head_dim] k norm weight
                                            const int* __restrict__ pos,     // [T]
                                            const float* __restrict__ cos_t, // [n_pos, half]
                                            const float* __restrict__ sin_t, // [n_pos, half]
                                            int T, int n_head_q, int n_head_k, int head_dim, int half, int neox,
                                            float eps) {
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    const int n_q = T * n_head_q;
    if (row >= n_q + T * n_head_k) return;  // the whole warp leaves together
    const bool is_q = row < n_q;
    const int r = is_q ? row : row - n_q;
    const int t = r / (is_q ? n_head_q : n_head_k);
    float* xh = (is_q ? q : k) + (size_t)r * head_dim;
    const float* w = is_q ? wq : wk;
    float ss = 0.0f;
    for (int i = lane; i < head_dim; i += WARP) ss += xh[i] * xh[i];
    const float inv = rsqrtf(warp_sum(ss) / (float)head_dim + eps);
    const float* cr = cos_t + (size_t)pos[t] * half;
    const float* sr = sin_t + (size_t)pos[t] * half;
    for (int i = lane; i < half; i += WARP) {
        const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        const float a = xh[i0] * inv * w[i0], b = xh[i1] * inv * w[i1];
        xh[i0] = a * cr[i] - b * sr[i];
        xh[i1] = a * sr[i] + b * cr[i];
    }
    for (int i = 2 * half + lane; i < head_dim; i += WARP) xh[i] = xh[i] * inv * w[i];
}

// ------------------------------------------------------------------ element-wise
// out = silu(gate) * up  (SwiGLU); out may alias gate.  grid-stride, block 256
extern "C" __global__ void silu_mul_f32(const float* gate, // [n]
                                        const float* up,   // [n]
                                        float* out,        // [n]
                                        long long n) {
    GRID_STRIDE(i, n) out[i] = silu_f(gate[i]) * up[i];
}

// out = gelu_tanh(gate) * up  (GeGLU, as ggml_gelu); out may alias gate
extern "C" __global__ void gelu_mul_f32(const float* gate, // [n]
                                        const float* up,   // [n]
                                        float* out,        // [n]
                                        long long n) {
    GRID_STRIDE(i, n) out[i] = gelu_f(gate[i]) * up[i];
}

// out = gelu_tanh(x)  (an ungated FFN, Phi-2's); out may alias x
extern "C" __global__ void gelu_f32(const float* x, // [n]
                                    float* out,     // [n]
                                    long long n) {
    GRID_STRIDE(i, n) out[i] = gelu_f(x[i]);
}

// out = max(x, 0)^2  (an ungated FFN's squared ReLU, Arcee's: ggml's relu then sqr); out may alias x
extern "C" __global__ void relu_sqr_f32(const float* x, // [n]
                                        float* out,     // [n]
                                        long long n) {
    GRID_STRIDE(i, n) {
        const float r = x[i] > 0.0f ? x[i] : 0.0f;
        out[i] = r * r;
    }
}

// out = xIELU(x) (Apertus's ungated FFN: ggml's ggml_xielu), a_p and a_n already through their softplus (the host's):
// a_p x^2 + beta x for x > 0, a_n (expm1(min(x, eps)) - x) + beta x otherwise; out may alias x
extern "C" __global__ void xielu_f32(const float* x, // [n]
                                     float* out,     // [n]
                                     long long n, float a_p, float a_n, float beta, float eps) {
    GRID_STRIDE(i, n) {
        const float g = x[i];
        out[i] = (g > 0.0f ? a_p * g * g : a_n * (expm1f(fminf(g, eps)) - g)) + beta * g;
    }
}

// dst = src: Backend.copy, a copy a captured decode step records (an array assignment it would not; the CPU's is
// np.copyto): Gemma 4's V as its K's projection, SmallThinker's router input, Talkie's skip, ...
extern "C" __global__ void copy_f32(const float* __restrict__ src, // [n]
                                    float* __restrict__ dst,       // [n]
                                    long long n) {
    GRID_STRIDE(i, n) dst[i] = src[i];
}

// x += y
extern "C" __global__ void add_f32(float* x,       // [n]
                                   const float* y, // [n]
                                   long long n) {
    GRID_STRIDE(i, n) x[i] += y[i];
}

// x[t, :] += b  (QKV bias)
extern "C" __global__ void add_bias_f32(float* x,                    // [T, n]
                                        const float* __restrict__ b, // [n]
                                        long long total, int n) {
    GRID_STRIDE(i, total) x[i] += b[i % n];
}

// out = x * w, w a vector of n over each run of n values of x (ggml_mul's row broadcast: Talkie's gain a query head,
// Gemma 3n's AltUp correct_scale, Gemma 4's router scale); out may be x.  grid-stride, block 256
extern "C" __global__ void mul_vec_f32(const float* x,             // [total / n, n]
                                       const float* __restrict__ w, // [n]
                                       float* out,                  // [total / n, n]
                                       int n, long long total) {
    GRID_STRIDE(i, total) out[i] = x[i] * w[i % n];
}

// x[i] *= softplus(s[i / rep]), softplus as ggml's ggml_compute_softplus_f32 (s itself above 20, where expf would
// overflow): Laguna's attention gate, element by element (rep 1) or one a head (rep head_dim)
extern "C" __global__ void softplus_mul_f32(float* __restrict__ x,       // [n]
                                            const float* __restrict__ s, // [n / rep]
                                            long long rep, long long n) {
    GRID_STRIDE(i, n) {
        const float v = s[i / rep];
        x[i] *= v > 20.0f ? v : log1pf(expf(v));
    }
}

// x *= s
extern "C" __global__ void scale_f32(float* x, // [n]
                                     float s, long long n) {
    GRID_STRIDE(i, n) x[i] *= s;
}

// x = min(max(x, -limit), limit)  (MPT's clip_qkv)
extern "C" __global__ void clamp_f32(float* x, // [n]
                                     float limit, long long n) {
    GRID_STRIDE(i, n) x[i] = fminf(fmaxf(x[i], -limit), limit);
}

// x = cap * tanh(x / cap)  (logit soft-capping)
extern "C" __global__ void softcap_f32(float* x, // [n]
                                       float cap, long long n) {
    GRID_STRIDE(i, n) x[i] = cap * tanhf(x[i] / cap);
}
