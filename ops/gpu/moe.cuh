// The experts' warp dot products, shared by moe.cu's kernels and moe2.cu's variants of them.
#pragma once
#include "quants.cuh"

#define MOE_WARPS 4  // rows per block of 128 threads (as qmatmul.cu's matvec)

// gpt-oss's clamped SwiGLU (ops/cpu/moe.py swiglu_oai): the experts' MOE_SWIGLU_OAI (moe.cu), MiniMax-M3's shared
// expert element by element (moe2.cu)
__device__ __forceinline__ float swiglu_oai_f(float g, float u) {
    const float lim = 7.0f, x = fminf(g, lim);
    return x / (1.0f + expf(-1.702f * x)) * (fmaxf(fminf(u, lim), -lim) + 1.0f);
}

// One warp's dot products of one weight row (two, where r1 is given) with x: lanes
// walk consecutive 8-weight chunks, as qmatmul.cu's matvec_row.
template <class Q>
__device__ __forceinline__ void moe_dot2(const u8* __restrict__ r0, const u8* __restrict__ r1, const float* __restrict__ x, int n_cols,
                                         float& a0, float& a1) {
    const int lane = threadIdx.x % WARP;
    const int n_chunks = (n_cols + 7) / 8;
    a0 = 0.0f;
    a1 = 0.0f;
    for (int c = lane; c < n_chunks; c += WARP) {
        const Chunk ch = Q::decode(r0, c, n_cols);
        Chunk ch1;
        if (r1 != nullptr) ch1 = Q::decode(r1, c, n_cols);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            if (!Q::TAIL || ch.c0 + k < n_cols) {
                a0 += ch.v[k] * x[ch.c0 + k];
                if (r1 != nullptr) a1 += ch1.v[k] * x[ch.c0 + k];
            }
            if (!Q::TAIL || ch.c1 + k < n_cols) {
                a0 += ch.v[4 + k] * x[ch.c1 + k];
                if (r1 != nullptr) a1 += ch1.v[4 + k] * x[ch.c1 + k];
            }
        }
    }
    a0 = warp_sum(a0);
    a1 = warp_sum(a1);
}

// The gate/up products of expert row r for one token's input xt: mode 0 both (a0 = gate, a1 = up, one type),
// mode 1 the gate's alone, mode 2 the up's alone (a0; gate and up of two types take two launches).
template <class Q>
__device__ __forceinline__ void moe_gate_up_dots(const u8* wg, const u8* wu, const float* xt, size_t r, int row_bytes, int n_cols,
                                                 int mode, float& a0, float& a1) {
    if (mode == 0)
        moe_dot2<Q>(wg + r * row_bytes, wu + r * row_bytes, xt, n_cols, a0, a1);
    else
        moe_dot2<Q>((mode == 1 ? wg : wu) + r * row_bytes, nullptr, xt, n_cols, a0, a1);
}
