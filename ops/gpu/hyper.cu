// Hyper-connections on the device (models/hy_v4.py: HY V4's iHC; models/glm5_next.py: GLM-5.3-Flash's mHC): the
// residual is n_hc streams of n_embd a token, [T, n_hc, n_embd]; these kernels do what the CPU's forward does to them in
// host numpy, so a decode step copies nothing to the host and is captured as a CUDA graph.  The mixes themselves (the
// flattened streams RMS-normed, times hc_*_fn) are the backend's rms_norm and linear.  Each follows the numpy expression
// it replaces (float32 throughout; the sigmoid in the tanh form of the CPU's _sigmoid).
//
//   hc_pre_f32       a site's pre weights from its mixes, the streams reduced by them into the block's input row, and
//                    (a layer's sites) the post weights the block's output goes back into the streams with
//   hc_post_f32      streams += post * out: each stream its share of a block's output (HY V4's build_hc_post)
//   hc_fill_f32      every stream the token's embedding (the streams at the start)
//   hc_sinkhorn_f32  mHC's stream mix comb [src, dst] of a site's last n_hc^2 mixes (glm5_next.sinkhorn)
//   hc_mix_f32       streams_dst = post_dst * out + sum_src comb[src, dst] streams_src (GLM's build_hc_post)
//   hc_mean_f32      the streams' mean, the row GLM's final norm reads
#include "common.cuh"

#define HYPER_MAX_HC 16  // streams whose weights a block keeps in shared memory (HY V4 and GLM have 4)

__device__ __forceinline__ float hyper_sigmoid(float x) { return 0.5f + 0.5f * tanhf(0.5f * x); }

// grid (T), block 256.  mixes [T, n_mix], base [n_mix], streams [T, n_hc, n_embd] -> cur [T, n_embd] and, where
// n_mix is past n_hc, post [T, n_hc] (n_mix n_hc: the output head's reduce, post not written; mixes past 2 n_hc, GLM's
// Sinkhorn logits, are hc_sinkhorn_f32's):
//   pre  = sigmoid(mixes[:, :n_hc] * s_pre + base[:n_hc]) + eps
//   post = magnitude * sigmoid(mixes[:, n_hc:2 n_hc] * s_post + base[n_hc:2 n_hc]) + post_eps
//   cur[t, e] = sum_h pre[t, h] * streams[t, h, e]
extern "C" __global__ void hc_pre_f32(const float* __restrict__ mixes, const float* __restrict__ base, const float* __restrict__ streams,
                                      float* __restrict__ cur, float* __restrict__ post, int n_hc, int n_mix, int n_embd,
                                      float s_pre, float s_post, float eps, float post_eps, float magnitude) {
    __shared__ float pre[HYPER_MAX_HC];
    const int t = blockIdx.x;
    const float* m = mixes + (size_t)t * n_mix;
    const int n_weights = n_mix < 2 * n_hc ? n_mix : 2 * n_hc;
    for (int j = threadIdx.x; j < n_weights; j += blockDim.x) {
        if (j < n_hc)
            pre[j] = hyper_sigmoid(m[j] * s_pre + base[j]) + eps;
        else
            post[(size_t)t * n_hc + j - n_hc] = magnitude * hyper_sigmoid(m[j] * s_post + base[j]) + post_eps;
    }
    __syncthreads();
    const float* s = streams + (size_t)t * n_hc * n_embd;
    for (int e = threadIdx.x; e < n_embd; e += blockDim.x) {
        float acc = 0.0f;
        for (int h = 0; h < n_hc; ++h) acc += pre[h] * s[(size_t)h * n_embd + e];
        cur[(size_t)t * n_embd + e] = acc;
    }
}

// grid-stride over T * n_hc * n_embd, block 256.  streams[t, h, e] += post[t, h] * out[t, e].
extern "C" __global__ void hc_post_f32(float* __restrict__ streams, const float* __restrict__ post, const float* __restrict__ out,
                                       int n_hc, int n_embd, long long total) {
    GRID_STRIDE(i, total) {
        const long long th = i / n_embd;  // t * n_hc + h
        streams[i] += post[th] * out[th / n_hc * n_embd + i % n_embd];
    }
}

// grid-stride over T * n_hc * n_embd, block 256.  streams[t, h, e] = x[t, e].
extern "C" __global__ void hc_fill_f32(const float* __restrict__ x, float* __restrict__ streams, int n_hc, int n_embd, long long total) {
    GRID_STRIDE(i, total) streams[i] = x[i / ((long long)n_hc * n_embd) * n_embd + i % n_embd];
}

// c[i] over the sum of the n values of c from `first`, `step` apart (a row of the n x n matrix: step 1; a column:
// step n) plus eps: one Sinkhorn half-step's new value of c[i]
__device__ __forceinline__ float hc_over_sum(const float* c, int i, int first, int step, int n, float eps) {
    float sum = 0.0f;
    for (int k = 0; k < n; ++k) sum += c[first + k * step];
    return c[i] / (sum + eps);
}

// grid (T), block n_hc^2 (or more: the rest idle).  comb[t] [n_hc, n_hc] ([src, dst]) of the logits
// mixes[t, 2 n_hc:] * s_comb + base[2 n_hc:] (row-major [src, dst]), as glm5_next.sinkhorn: a softmax over dst plus eps,
// the columns normalised (each dst's sum over src, + eps), then n_iter - 1 times the rows and the columns again.
// Thread i keeps element (i / n_hc, i % n_hc) in shared memory; every sum is read off it between barriers.
extern "C" __global__ void hc_sinkhorn_f32(const float* __restrict__ mixes, const float* __restrict__ base, float* __restrict__ comb,
                                           int n_hc, int n_mix, float s_comb, int n_iter, float eps) {
    __shared__ float c[HYPER_MAX_HC * HYPER_MAX_HC];
    const int t = blockIdx.x, i = threadIdx.x, n = n_hc, src = i / n, dst = i % n;
    const bool live = i < n * n;
    const int off = 2 * n;
    if (live) c[i] = mixes[(size_t)t * n_mix + off + i] * s_comb + base[off + i];
    __syncthreads();
    float v = 0.0f;
    if (live) {  // softmax over dst (the row's max subtracted, as numpy's)
        float mx = c[src * n];
        for (int d = 1; d < n; ++d) mx = fmaxf(mx, c[src * n + d]);
        float sum = 0.0f;
        for (int d = 0; d < n; ++d) sum += expf(c[src * n + d] - mx);
        v = expf(c[i] - mx) / sum + eps;
    }
    __syncthreads();
    if (live) c[i] = v;
    __syncthreads();
    for (int it = 0; it < n_iter; ++it) {
        if (it > 0) {  // the rows: each src's sum over dst
            if (live) v = hc_over_sum(c, i, src * n, 1, n, eps);
            __syncthreads();
            if (live) c[i] = v;
            __syncthreads();
        }
        if (live) v = hc_over_sum(c, i, dst, n, n, eps);  // the columns: each dst's sum over src
        __syncthreads();
        if (live) c[i] = v;
        __syncthreads();
    }
    if (live) comb[(size_t)t * n * n + i] = c[i];
}

// grid (T), block 256.  In place: streams[t, d, e] = post[t, d] * out[t, e] + sum_s comb[t, s, d] * streams[t, s, e]
// (each thread reads a column's n_hc sources before it writes them).
extern "C" __global__ void hc_mix_f32(float* __restrict__ streams, const float* __restrict__ post, const float* __restrict__ comb,
                                      const float* __restrict__ out, int n_hc, int n_embd) {
    __shared__ float w[HYPER_MAX_HC * HYPER_MAX_HC + HYPER_MAX_HC];  // comb [src, dst], then post [dst]
    const int t = blockIdx.x, n = n_hc;
    for (int j = threadIdx.x; j < n * n + n; j += blockDim.x)
        w[j] = j < n * n ? comb[(size_t)t * n * n + j] : post[(size_t)t * n + j - n * n];
    __syncthreads();
    float* s = streams + (size_t)t * n * n_embd;
    for (int e = threadIdx.x; e < n_embd; e += blockDim.x) {
        float src[HYPER_MAX_HC];
        for (int h = 0; h < n; ++h) src[h] = s[(size_t)h * n_embd + e];
        const float o = out[(size_t)t * n_embd + e];
        for (int d = 0; d < n; ++d) {
            float acc = 0.0f;
            for (int h = 0; h < n; ++h) acc += w[h * n + d] * src[h];
            s[(size_t)d * n_embd + e] = w[n * n + d] * o + acc;
        }
    }
}

// grid-stride over T * n_embd, block 256.  x[t, e] = (sum_h streams[t, h, e]) * inv_n (inv_n: 1 / n_hc).
extern "C" __global__ void hc_mean_f32(const float* __restrict__ streams, float* __restrict__ x, int n_hc, int n_embd, float inv_n,
                                       long long total) {
    GRID_STRIDE(i, total) {
        const float* s = streams + i / n_embd * n_hc * n_embd + i % n_embd;
        float acc = 0.0f;
        for (int h = 0; h < n_hc; ++h) acc += s[(size_t)h * n_embd];
        x[i] = acc * inv_n;
    }
}
