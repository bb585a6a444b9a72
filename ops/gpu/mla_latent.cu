// Multi-head latent attention in its absorbed form (models/mla.py): the cache
// holds per token only the normed latent and the one rope key every head
// shares (kv_lora_rank + n_rot values, one KV head), as llama.cpp's absorbed
// MLA; the heads' k_nope and V products move to the queries' and the
// outputs' side.  These kernels are what the CPU does with numpy there
// (ops/cpu/backend.py), so a decode step is all kernels and a graph holds it.
//
//   mla_latent_kv_f32   the cache's rows: v[t] = RMSNorm(kva[t, :rank]) * w and
//                       k[t] = [kva[t, rank:] (the rope key), v[t]]
//   mla_absorb_q_f32    each head's query [q_nope, q_rope] -> [q_rope,
//                       wk[h]^T q_nope]: q_nope absorbed into the latent's space
//   mla_heads_out_f32   each head's output out[t, h] = wv[h] att[t, h]: the
//                       latent the head attended to, expanded to v_head_dim
//
// The weights are float32 and laid out for these loops ([H, nope, rank] and
// [H, rank, dv]: the threads of a warp read consecutive columns).
#include "common.cuh"

// grid (T), block 256
extern "C" __global__ void mla_latent_kv_f32(const float* __restrict__ kva, // [T, rank + n_rot]: [latent | rope key]
                                             const float* __restrict__ w,   // [rank]
                                             float* __restrict__ k,         // [T, n_rot + rank]: [rope key | normed latent]
                                             float* __restrict__ v,         // [T, rank]: the normed latent
                                             int rank, int n_rot, float eps) {
    __shared__ float scratch[WARP];
    const int stride = rank + n_rot;
    const float* xr = kva + (size_t)blockIdx.x * stride;
    float* kr = k + (size_t)blockIdx.x * stride;
    float* vr = v + (size_t)blockIdx.x * rank;
    const float inv = block_rms_scale(xr, rank, eps, scratch);
    for (int i = threadIdx.x; i < rank; i += blockDim.x) {
        const float y = xr[i] * inv * w[i];
        vr[i] = y;
        kr[n_rot + i] = y;
    }
    for (int i = threadIdx.x; i < n_rot; i += blockDim.x) kr[i] = xr[rank + i];
}

// One thread per element of q ([T, n_head, n_rot + rank]), grid-stride.
// grid (ceil(T*n_head*(n_rot+rank) / 256)), block 256
extern "C" __global__ void mla_absorb_q_f32(const float* __restrict__ q_raw, // [T, n_head, nope + n_rot]: [q_nope, q_rope]
                                            const float* __restrict__ wk,    // [n_head, nope, rank]
                                            float* __restrict__ q,           // [T, n_head, n_rot + rank]
                                            int T, int n_head, int nope, int n_rot, int rank) {
    const int D = n_rot + rank, Dr = nope + n_rot;
    const long long n = (long long)T * n_head * D;
    GRID_STRIDE(e, n) {
        const long long th = e / D;  // t * n_head + h
        const int j = (int)(e % D), h = (int)(th % n_head);
        const float* qh = q_raw + th * Dr;
        if (j < n_rot) {
            q[e] = qh[nope + j];
        } else {
            const float* wh = wk + (size_t)h * nope * rank + (j - n_rot);
            float s = 0.0f;
            for (int i = 0; i < nope; ++i) s += qh[i] * wh[(size_t)i * rank];
            q[e] = s;
        }
    }
}

// One thread per element of out ([T, n_head, dv]), grid-stride.
// grid (ceil(T*n_head*dv / 256)), block 256
extern "C" __global__ void mla_heads_out_f32(const float* __restrict__ att, // [T, n_head, rank]
                                             const float* __restrict__ wv,  // [n_head, rank, dv]
                                             float* __restrict__ out,       // [T, n_head, dv]
                                             int T, int n_head, int rank, int dv) {
    const long long n = (long long)T * n_head * dv;
    GRID_STRIDE(e, n) {
        const long long th = e / dv;
        const int d = (int)(e % dv), h = (int)(th % n_head);
        const float* a = att + th * rank;
        const float* wh = wv + (size_t)h * rank * dv + d;
        float s = 0.0f;
        for (int j = 0; j < rank; ++j) s += a[j] * wh[(size_t)j * dv];
        out[e] = s;
    }
}
