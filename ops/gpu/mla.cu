// Multi-head latent attention's (models/deepseek2.py) data movement on the device:
// what the CPU does with numpy slices between the products, as kernels, so a
// decode step of DeepSeek-V2/V3, Kimi K2, GLM-5 ... launches only kernels and is
// captured as a CUDA graph.  The products themselves (the query and KV LoRA,
// the latent's expansion into every head's k_nope and V) are qmatmul.cu's, the
// rotation nn.cu's rope_qk, the attention attention.cu's (head_dim != head_dim_v).
//
//   mla_latent_norm_f32  kvc[t] = RMSNorm(kva[t, :rank]) * w: the latent, cut
//                        from attn_kv_a_mqa's output [latent | shared rope key]
//                        and normalised in one launch (one block per token)
//   mla_qk_f32           each head's query [q_nope, q_rope] -> [q_rope, q_nope]
//                        and key [k_rope, k_nope] with k_rope the one rope key
//                        every head shares (the rope kernels turn a head's
//                        leading dimensions; the scores are the same)
//   mla_rope_norm_f32    kva[t, stride - n_rot:] = RMSNorm(that) * w in place:
//                        the shared rope key normalised inside attn_kv_a_mqa's
//                        rows before its rope (dots.note's attn_k_norm)
#include "common.cuh"

// grid (T), block 256
extern "C" __global__ void mla_latent_norm_f32(const float* __restrict__ kva, // [T, stride]: [latent (rank) | rope key]
                                               const float* __restrict__ w,   // [rank]
                                               float* __restrict__ kvc,       // [T, rank]
                                               int rank, int stride, float eps) {
    __shared__ float scratch[WARP];
    const float* xr = kva + (size_t)blockIdx.x * stride;
    float* orow = kvc + (size_t)blockIdx.x * rank;
    const float inv = block_rms_scale(xr, rank, eps, scratch);
    for (int i = threadIdx.x; i < rank; i += blockDim.x) orow[i] = xr[i] * inv * w[i];
}

// One thread per element of q and k ([T, n_head, nope + n_rot] each), grid-stride.
// grid (ceil(T*n_head*(nope+n_rot) / 256)), block 256
extern "C" __global__ void mla_qk_f32(const float* __restrict__ q_raw,  // [T, n_head, nope + n_rot]: [q_nope, q_rope]
                                      const float* __restrict__ k_nope, // [T, n_head, nope]
                                      const float* __restrict__ kva,    // [T, stride]: the rope key at [stride - n_rot, stride)
                                      float* __restrict__ q,            // [T, n_head, n_rot + nope]: [q_rope, q_nope]
                                      float* __restrict__ k,            // [T, n_head, n_rot + nope]: [k_rope, k_nope]
                                      int T, int n_head, int nope, int n_rot, int stride) {
    const int D = nope + n_rot;
    const long long n = (long long)T * n_head * D;
    GRID_STRIDE(e, n) {
        const long long th = e / D;  // t * n_head + h
        const int d = (int)(e % D), t = (int)(th / n_head);
        const float* qh = q_raw + th * D;
        if (d < n_rot) {
            q[e] = qh[nope + d];
            k[e] = kva[(size_t)t * stride + (stride - n_rot) + d];
        } else {
            q[e] = qh[d - n_rot];
            k[e] = k_nope[th * nope + (d - n_rot)];
        }
    }
}

// The rope key is n_rot wide (64 in DeepSeek's geometry): too short for a block, so one warp a token, as
// nn.cu's rms_norm_heads_f32.  In place: each lane reads its elements for the sum before any lane writes.
// grid (ceil(T/4)), block 128
extern "C" __global__ void mla_rope_norm_f32(float* kva,                  // [T, stride]: the rope key at [stride - n_rot, stride)
                                             const float* __restrict__ w, // [n_rot]
                                             int T, int n_rot, int stride, float eps) {
    const int t = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    if (t >= T) return;
    float* xr = kva + (size_t)t * stride + (stride - n_rot);
    float ss = 0.0f;
    for (int i = lane; i < n_rot; i += WARP) ss += xr[i] * xr[i];
    ss = warp_sum(ss);
    const float inv = rsqrtf(ss / (float)n_rot + eps);
    for (int i = lane; i < n_rot; i += WARP) xr[i] = xr[i] * inv * w[i];
}
