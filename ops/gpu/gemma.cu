// Gemma 3n's and Gemma 4's own steps on the device (models/gemma3n.py, models/gemma4.py): the arithmetic their
// CPU forwards do in host numpy, as kernels, so a decode step copies nothing to the host and is captured as a
// CUDA graph with the rest.  Each follows the numpy expression it replaces (float32 throughout).
//
//   gemma_match_norm_f32       out (+)= a * |src| / |a| per row: AltUp's streams made from, and merged into, one
//   gemma_altup_coefs_f32      c = tanh(RMSNorm'd x / n_embd . router) @ coef.T (+ 1): AltUp's routed coefficients
//   gemma_altup_predict_f32    every stream predicted as its routed mix of all of them, plus itself
//   gemma_altup_correct_f32    every stream's prediction plus the active one's innovation times its coefficient
//   gemma_gaussian_topk_f32    Gemma 3n's sparse FFN gates: relu(x - (mean + k std)) per row
//   gemma_gelu_mul_strided_f32 g = gelu(g) * (one layer's slice of the per-layer inputs)
//   gemma_scale_by_expert_f32  each chosen expert's weight times its own scale (Gemma 4's ffn_down_exps.scale)
//
// (their row-vector products, AltUp's correct_scale and Gemma 4's router scale, are nn.cu's mul_vec_f32; Gemma 4's V as
// its K's projection, before K is normed, nn.cu's copy_f32)
//
// The AltUp streams are one array [n_altup, n_batch, n_embd]: stream c of token t at c * stride + t * n_embd.
#include "common.cuh"

#define GEMMA_MAX_ALTUP 16  // streams the coefficient kernel keeps in shared memory (Gemma 3n has 4)

// grid (T), block 256.  out (+)= a * (|src| / |a|) row by row, as the host's a * target / magnitude(a).
extern "C" __global__ void gemma_match_norm_f32(const float* __restrict__ a, const float* __restrict__ src, float* out, int n, int acc) {
    __shared__ float scratch[WARP];
    const size_t o = (size_t)blockIdx.x * n;
    float sa = 0.0f, ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        sa += a[o + i] * a[o + i];
        ss += src[o + i] * src[o + i];
    }
    const float mag = sqrtf(block_sum(sa, scratch));
    const float target = sqrtf(block_sum(ss, scratch));
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = a[o + i] * target / mag;
        out[o + i] = acc ? out[o + i] + v : v;
    }
}

// grid (T), block 128.  xr: the active stream RMSNormed by the router's norm [T, n_embd]; router [n_altup, n_embd];
// coef [m, n_altup] -> c [T, m] = tanh((xr * inv_n) @ router.T) @ coef.T + add.
extern "C" __global__ void gemma_altup_coefs_f32(const float* __restrict__ xr, const float* __restrict__ router,
                                                 const float* __restrict__ coef, float* __restrict__ c,
                                                 int n_embd, int n_altup, int m, float inv_n, float add) {
    __shared__ float scratch[WARP];
    __shared__ float mod[GEMMA_MAX_ALTUP];
    const float* x = xr + (size_t)blockIdx.x * n_embd;
    for (int j = 0; j < n_altup; ++j) {
        float s = 0.0f;
        for (int i = threadIdx.x; i < n_embd; i += blockDim.x) s += x[i] * inv_n * router[(size_t)j * n_embd + i];
        s = block_sum(s, scratch);
        if (threadIdx.x == 0) mod[j] = tanhf(s);
    }
    __syncthreads();
    for (int r = threadIdx.x; r < m; r += blockDim.x) {
        float s = 0.0f;
        for (int j = 0; j < n_altup; ++j) s += mod[j] * coef[r * n_altup + j];
        c[(size_t)blockIdx.x * m + r] = s + add;
    }
}

// grid-stride over n_altup * T * n_embd, block 256.  pred[r, t] = sum_c coefs[t, r * n + c] xs[c, t] + xs[r, t].
extern "C" __global__ void gemma_altup_predict_f32(const float* __restrict__ xs, const float* __restrict__ coefs,
                                                   float* __restrict__ pred, int n_altup, int T, int n_embd, long long stride) {
    const long long per = (long long)T * n_embd;
    GRID_STRIDE(i, n_altup * per) {
        const int r = (int)(i / per);
        const long long te = i % per;
        const int t = (int)(te / n_embd);
        const float* cf = coefs + ((size_t)t * n_altup + r) * n_altup;
        float s = 0.0f;
        for (int c = 0; c < n_altup; ++c) s += cf[c] * xs[c * stride + te];
        pred[r * stride + te] = s + xs[r * stride + te];
    }
}

// grid-stride over n_altup * T * n_embd, block 256.  xs[r, t] = pred[r, t] + coefs[t, r] (out[t] - pred[act, t]);
// coefs already hold the + 1.
extern "C" __global__ void gemma_altup_correct_f32(const float* __restrict__ pred, const float* __restrict__ out,
                                                   const float* __restrict__ coefs, float* __restrict__ xs,
                                                   int n_altup, int T, int n_embd, long long stride, int act) {
    const long long per = (long long)T * n_embd;
    GRID_STRIDE(i, n_altup * per) {
        const int r = (int)(i / per);
        const long long te = i % per;
        const int t = (int)(te / n_embd);
        xs[r * stride + te] = pred[r * stride + te] + coefs[t * n_altup + r] * (out[te] - pred[act * stride + te]);
    }
}

// grid (T), block 256, in place.  x = max(x - (mean + std_mul * std), 0), std unbiased (the mean taken first:
// a second pass, as the host's numpy).
extern "C" __global__ void gemma_gaussian_topk_f32(float* x, int n, float std_mul) {
    __shared__ float scratch[WARP];
    float* row = x + (size_t)blockIdx.x * n;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += row[i];
    const float mean = block_sum(s, scratch) / (float)n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += (row[i] - mean) * (row[i] - mean);
    const float cut = mean + sqrtf(block_sum(ss, scratch) / (float)(n - 1)) * std_mul;
    for (int i = threadIdx.x; i < n; i += blockDim.x) row[i] = fmaxf(row[i] - cut, 0.0f);
}

// grid-stride over T * n, block 256.  g[t, a] = gelu(g[t, a]) * pl[t * pl_stride + pl_off + a].
extern "C" __global__ void gemma_gelu_mul_strided_f32(float* g, const float* __restrict__ pl, int n, int pl_stride, int pl_off,
                                                      long long total) {
    GRID_STRIDE(i, total) {
        const long long t = i / n;
        g[i] = gelu_f(g[i]) * pl[t * pl_stride + pl_off + i % n];
    }
}

// grid-stride over T * k, block 256.  wts[t, j] *= scale[ids[t, j]].
extern "C" __global__ void gemma_scale_by_expert_f32(float* wts, const int* __restrict__ ids, const float* __restrict__ scale,
                                                     long long total) {
    GRID_STRIDE(i, total) wts[i] *= scale[ids[i]];
}
