// Hyper-connections on the device (models/hy_v4.py: HY V4's iHC): the residual is n_hc streams of n_embd a token,
// [T, n_hc, n_embd]; these kernels do what the CPU's forward does to them in host numpy, so a decode step copies
// nothing to the host and is captured as a CUDA graph.  The mixes themselves (the flattened streams RMS-normed, times
// hc_*_fn) are the backend's rms_norm and linear.  Each follows the numpy expression it replaces (float32 throughout;
// the sigmoid in the tanh form of the CPU's _sigmoid).
//
//   hc_pre_f32     a site's pre weights from its mixes, the streams reduced by them into the block's input row, and
//                  (a layer's sites) the post weights the block's output goes back into the streams with
//   hc_post_f32    streams += post * out: each stream its share of a block's output (llama.cpp's build_hc_post)
//   hc_fill_f32    every stream the token's embedding (the streams at the start)
#include "common.cuh"

#define HYPER_GRID_STRIDE(i, n)                                                             \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (long long)(n); \
         i += (long long)gridDim.x * blockDim.x)

#define HYPER_MAX_HC 16  // streams whose pre weights a block keeps in shared memory (HY V4 has 4)

__device__ __forceinline__ float hyper_sigmoid(float x) { return 0.5f + 0.5f * tanhf(0.5f * x); }

// grid (T), block 256.  mixes [T, n_mix], base [n_mix], streams [T, n_hc, n_embd] -> cur [T, n_embd] and, where
// n_mix is 2 n_hc, post [T, n_hc] (n_mix n_hc: the output head's reduce, post not written):
//   pre  = sigmoid(mixes[:, :n_hc] * s_pre + base[:n_hc]) + eps
//   post = magnitude * sigmoid(mixes[:, n_hc:] * s_post + base[n_hc:]) + eps
//   cur[t, e] = sum_h pre[t, h] * streams[t, h, e]
extern "C" __global__ void hc_pre_f32(const float* __restrict__ mixes, const float* __restrict__ base, const float* __restrict__ streams,
                                      float* __restrict__ cur, float* __restrict__ post, int n_hc, int n_mix, int n_embd,
                                      float s_pre, float s_post, float eps, float magnitude) {
    __shared__ float pre[HYPER_MAX_HC];
    const int t = blockIdx.x;
    const float* m = mixes + (size_t)t * n_mix;
    for (int j = threadIdx.x; j < n_mix; j += blockDim.x) {
        if (j < n_hc)
            pre[j] = hyper_sigmoid(m[j] * s_pre + base[j]) + eps;
        else
            post[(size_t)t * n_hc + j - n_hc] = magnitude * hyper_sigmoid(m[j] * s_post + base[j]) + eps;
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
    HYPER_GRID_STRIDE(i, total) {
        const long long th = i / n_embd;  // t * n_hc + h
        streams[i] += post[th] * out[th / n_hc * n_embd + i % n_embd];
    }
}

// grid-stride over T * n_hc * n_embd, block 256.  streams[t, h, e] = x[t, e].
extern "C" __global__ void hc_fill_f32(const float* __restrict__ x, float* __restrict__ streams, int n_hc, int n_embd, long long total) {
    HYPER_GRID_STRIDE(i, total) streams[i] = x[i / ((long long)n_hc * n_embd) * n_embd + i % n_embd];
}
