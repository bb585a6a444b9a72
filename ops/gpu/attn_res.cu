// Kimi K3's cross-layer residual attention on the device (models/kimi_k3.py res_mix): the layers' banked checkpoints
// live in one device buffer [T, n_slot, n_embd], and the mix of them and the stream that the mixer's and the FFN's
// norms (and the final norm) read is one launch, so a decode step copies nothing to the host and is captured as a
// CUDA graph.  float32 throughout, following the CPU's numpy:
//
//   attn_res_bank_f32  bank[t, slot] = x[t]: a layer's raw input kept as checkpoint `slot`
//   attn_res_mix_f32   out[t] = sum_s p[t, s] src_s[t] over the n_bank checkpoints and the stream x (last), with
//                      p = softmax_s(sum_e rms_norm(src_s[t])[e] * score[e])
#include "common.cuh"

#define ATTN_RES_MAX_SRC 64  // checkpoints and the stream a block keeps the scores of (K3 banks n_layer / block_size)

// grid-stride over T * n_embd, block 256.
extern "C" __global__ void attn_res_bank_f32(const float* __restrict__ x, float* __restrict__ bank, int slot, int n_slot, int n_embd,
                                             long long total) {
    GRID_STRIDE(i, total) {
        const long long t = i / n_embd;
        bank[(t * n_slot + slot) * n_embd + i % n_embd] = x[i];
    }
}

// grid (T), block 256.  bank [T, n_slot, n_embd] (its first n_bank slots read), x [T, n_embd], score [n_embd] ->
// out [T, n_embd] (not x).  Source s < n_bank is bank[t, s], source n_bank the stream x[t], as the CPU's concat.
extern "C" __global__ void attn_res_mix_f32(const float* __restrict__ bank, const float* __restrict__ x, const float* __restrict__ score,
                                            float* __restrict__ out, int n_bank, int n_slot, int n_embd, float eps) {
    __shared__ float scratch[32];
    __shared__ float p[ATTN_RES_MAX_SRC];
    const int t = blockIdx.x, n_src = n_bank + 1;
    const float* b = bank + (size_t)t * n_slot * n_embd;
    const float* xt = x + (size_t)t * n_embd;
    for (int s = 0; s < n_src; ++s) {  // each source's score: its dot with score over its RMS
        const float* v = s < n_bank ? b + (size_t)s * n_embd : xt;
        float ss = 0.0f, dot = 0.0f;
        for (int e = threadIdx.x; e < n_embd; e += blockDim.x) {
            ss += v[e] * v[e];
            dot += v[e] * score[e];
        }
        ss = block_sum(ss, scratch);
        dot = block_sum(dot, scratch);
        if (threadIdx.x == 0) p[s] = dot * rsqrtf(ss / (float)n_embd + eps);
    }
    __syncthreads();
    if (threadIdx.x == 0) {  // (a handful of sources: one thread's softmax)
        float m = p[0], sum = 0.0f;
        for (int s = 1; s < n_src; ++s) m = fmaxf(m, p[s]);
        for (int s = 0; s < n_src; ++s) sum += (p[s] = expf(p[s] - m));
        for (int s = 0; s < n_src; ++s) p[s] /= sum;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < n_embd; e += blockDim.x) {
        float acc = p[n_bank] * xt[e];
        for (int s = 0; s < n_bank; ++s) acc += p[s] * b[(size_t)s * n_embd + e];
        out[(size_t)t * n_embd + e] = acc;
    }
}
