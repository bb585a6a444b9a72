// Ungated squared-ReLU experts (Nemotron-H MoE's, Nemotron 3 Nano and Super):
// each expert is ``down relu(up x)^2``, no gate, as llama.cpp's build_moe_ffn
// with LLM_FFN_RELU_SQR and no gate tensor (models/moe.py experts_add's
// "relu_sqr": the up product, ggml's relu then sqr, the down product).
//
//   moe_up_sq_<type>   h = relu(up_e x)^2 for each token's k experts, reading
//                      e from the ids moe.cu's moe_route_f32 wrote: one warp
//                      per (row, token, slot), as moe.cu's moe_gate_up with
//                      one matrix where that has two
//
// The down products and the weighted sum over the slots are moe2.cu's
// moe_down_x_<type> (wbf 0: each slot's weight times its expert's output), so
// the routing, this kernel and that one hand each other device buffers and a
// decode step copies nothing to the host (a CUDA graph captures it).  Prefill
// takes the same kernels: a matvec per (token, slot), correct, not tuned.
#include "moe.cuh"

template <class Q>
__device__ __forceinline__ void moe_up_sq_impl(const u8* wu, const float* x, const int* ids, float* h, int n_ff, int n_cols,
                                               int row_bytes, int k) {
    const int row = blockIdx.x * MOE_WARPS + threadIdx.x / WARP;
    if (row >= n_ff) return;  // the whole warp leaves together
    const int slot = blockIdx.y;
    const size_t r = (size_t)ids[slot] * n_ff + row;
    float a, unused;
    moe_dot2<Q>(wu + r * row_bytes, nullptr, x + (size_t)(slot / k) * n_cols, n_cols, a, unused);
    if (threadIdx.x % WARP != 0) return;
    const float v = a > 0.0f ? a : 0.0f;  // (ggml's relu, then sqr: as nn.cu's relu_sqr_f32)
    h[(size_t)slot * n_ff + row] = v * v;
}

#define MOE_SQ_KERNELS(name, Q)                                                                                 \
    /* grid (ceil(n_ff/4), T*k), block 128 */                                                                     \
    extern "C" __global__ void __launch_bounds__(MOE_WARPS * WARP) moe_up_sq_##name(                             \
        const u8* __restrict__ wu,    /* [n_expert * n_ff, row_bytes] */                                          \
        const float* __restrict__ x,  /* [T, n_cols] */                                                           \
        const int* __restrict__ ids,  /* [T, k] */                                                                \
        float* __restrict__ h,        /* [T, k, n_ff] */                                                          \
        int n_ff, int n_cols, int row_bytes, int k) {                                                             \
        moe_up_sq_impl<Q>(wu, x, ids, h, n_ff, n_cols, row_bytes, k);                                            \
    }

FOR_EACH_QTYPE(MOE_SQ_KERNELS)
