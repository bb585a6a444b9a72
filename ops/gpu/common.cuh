// Helpers every kvrun CUDA source shares: half/bfloat16 conversion, unaligned
// byte loads, warp and block reductions.
//
// No system or CUDA headers are included on purpose: NVRTC then needs no
// include path (the wheel ships none), and the same text compiles with nvcc.
// The Python loader inlines this file in place of `#include "common.cuh"`, so
// CuPy's compile cache keys on the full text.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef signed char i8;

#define WARP 32
#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)

// An element-wise kernel's loop: thread i of the grid takes i, then every (grid's threads)-th after it, so a grid
// capped at some blocks (ops/gpu/kernels.py ew_grid) covers any n.  In 64 bits: n may pass 2^31.
#define GRID_STRIDE(i, n)                                                                   \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (long long)(n); \
         i += (long long)gridDim.x * blockDim.x)

// The #else branches are the same conversions in portable C++ for the CPU
// emulator (emulate.py), which runs these kernels without a GPU in tests.

// IEEE half bits -> float (one PTX cvt; avoids cuda_fp16.h)
__device__ __forceinline__ float h2f(u16 h) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#else
    return emu_h2f(h);
#endif
}

// float -> IEEE half bits, round to nearest even (what numpy's astype does)
__device__ __forceinline__ u16 f2h(float f) {
#ifdef __CUDA_ARCH__
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#else
    return emu_f2h(f);
#endif
}

// bfloat16 bits are the top half of a float32
__device__ __forceinline__ float bf2f(u16 b) { return __int_as_float(((u32)b) << 16); }

// GGUF blocks are only 2-byte aligned (Q4_0 is 18 bytes), so 32-bit words are
// read as two 16-bit loads.  (The emulator checks the 2-byte alignment.)
__device__ __forceinline__ u16 ld16(const u8* p) {
#ifndef __CUDA_ARCH__
    emu_check_aligned(p, 2);
#endif
    return *(const u16*)p;
}
__device__ __forceinline__ u32 ld32(const u8* p) { return (u32)ld16(p) | ((u32)ld16(p + 2) << 16); }
// A float16's bits stored whole.  Not as two bytes: on an H100 ptxas turned
// `cvt.rn.f16.f32 h` then `st.u8 (h & 0xFF)` into a float -> u8 conversion of the
// input (the low bytes came out as the float's integer part), so a half is
// stored through a 16-bit store, as the fp16 rings' stores are.
__device__ __forceinline__ void st16(u8* p, u16 v) {
#ifndef __CUDA_ARCH__
    emu_check_aligned(p, 2);
#endif
    *(u16*)p = v;
}
__device__ __forceinline__ float ldh(const u8* p) { return h2f(ld16(p)); }

// The gated FFN activations (nn.cu's *_mul kernels and the fused down
// projection of qmatmul.cu compute them with this one text, so the same bits).
__device__ __forceinline__ float silu_f(float g) { return g / (1.0f + expf(-g)); }
__device__ __forceinline__ float gelu_f(float g) {  // tanh approximation, as ggml_gelu
    const float c = 0.7978845608028654f;            // sqrt(2/pi)
    return 0.5f * g * (1.0f + tanhf(c * (g + 0.044715f * g * g * g)));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Split-K decode: softmax of one chunk of logits, in place, one warp per query
// head.  sc: [gqa, stride] logits of the chunk's nj slots -> exp(s - m);
// the chunk's max and sum go to part_m / part_l [o0 + g * n_split] for the
// reduce kernel (attn_decode_reduce).  A fully masked chunk gives m = -inf, l = 0.
__device__ __forceinline__ void chunk_softmax(float* sc, int stride, int gqa, int nj, float* part_m, float* part_l, size_t o0, int n_split) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, n_warps = blockDim.x / WARP;
    for (int g = warp; g < gqa; g += n_warps) {
        float* sg = sc + g * stride;
        float m = NEG_INF;
        for (int jj = lane; jj < nj; jj += WARP) m = fmaxf(m, sg[jj]);
        m = warp_max(m);
        float l = 0.0f;
        for (int jj = lane; jj < nj; jj += WARP) {
            const float p = m == NEG_INF ? 0.0f : __expf(sg[jj] - m);  // exp(-inf) = 0 for masked slots
            sg[jj] = p;
            l += p;
        }
        l = warp_sum(l);
        if (lane == 0) {
            part_m[o0 + (size_t)g * n_split] = m;
            part_l[o0 + (size_t)g * n_split] = l;
        }
    }
}

// Sum over the block; every thread gets the result.  scratch: [32] shared floats.
// Must be reached by all threads of the block.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % WARP, wid = threadIdx.x / WARP;
    const int n_warps = (blockDim.x + WARP - 1) / WARP;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// Max over the block, as block_sum (an encoder's softmax row held in shared memory: encoder.cu, t5.cu).
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x % WARP, wid = threadIdx.x / WARP;
    const int n_warps = (blockDim.x + WARP - 1) / WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : NEG_INF;
    return warp_max(v);
}

// RMSNorm's scale of the row x [n], 1 / sqrt(mean(x^2) + eps), summed over the block (block_sum); every thread gets
// it, and has read its elements of x before any thread goes on (so a caller may write x in place after it).
__device__ __forceinline__ float block_rms_scale(const float* x, int n, float eps, float* scratch) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += x[i] * x[i];
    return rsqrtf(block_sum(ss, scratch) / (float)n + eps);
}
