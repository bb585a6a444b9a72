// Products with weights in their GGUF block format, and the embedding lookup.
//
// Weights stay in the file's blocks on the device (w: [n_rows, row_bytes] u8);
// every kernel decodes the chunks it needs in registers (quants.cuh), so no
// float copy of a matrix ever exists.  Activations stay float32: decode reads
// each weight byte once and is bound by weight bandwidth, so quantizing x to
// q8 (llama.cpp's mmvq) would save little here and cost accuracy; nor would
// it make the GPU's decode follow the CPU's (tried: tools/device_agreement.py).
//
//   matvec_<type>   decode, 1..few tokens: one warp per weight row (matvec3_: up to three matrices)
//   matmul_<type>   prefill: 64x64 output tiles, the weight K-tile decoded once
//                   into shared memory and reused by all 64 tokens
//   get_rows_<type> embedding lookup: one block per requested row
#include "quants.cuh"

// ------------------------------------------------------------------ matvec
// Lanes walk consecutive chunks of the row, so a warp reads 32 adjacent chunks
// (e.g. 8 whole Q4_0 blocks) per step: coalesced, and no shared memory needed.
// blockIdx.y is the token, so a few decode tokens share one launch and the
// weight rows they read come from L2 for all but the first.
#define MV_WARPS 4  // rows per block of 128 threads

// x[c]; or with a gated activation (the FFN's down projection reading its
// gate and up halves: no separate activation launch) act(x[c]) * up[c]; or
// with ACT_NORM (a projection of the RMSNorm of x: no separate norm launch)
// x[c] * inv_rms * up[c], up holding the norm's weight
#define ACT_NONE 0
#define ACT_SILU 1
#define ACT_GELU 2
#define ACT_NORM 3
template <int ACT>
__device__ __forceinline__ float mv_x(const float* __restrict__ x, const float* __restrict__ up, int c, float inv) {
    if (ACT == ACT_SILU) return silu_f(x[c]) * up[c];
    if (ACT == ACT_GELU) return gelu_f(x[c]) * up[c];
    if (ACT == ACT_NORM) return x[c] * inv * up[c];
    return x[c];
}

// ACT_NORM: every warp finds 1/rms(x) of its token itself.  x is a few KB that
// the warp's row reads anyway (L1/L2), so this costs a second pass over it, where
// a norm launch of its own would cost a launch (decode is launch-bound) and a
// round trip of xn through memory.  The CPU's rms_norm sums in another order,
// so the two differ by float32 rounding.  xn != nullptr: the warp also writes
// the normalised row (the caller picks one warp per token).
template <int ACT>
__device__ __forceinline__ float mv_inv_rms(const float* __restrict__ x, const float* __restrict__ nw, float* __restrict__ xn,
                                            int n_cols, float eps) {
    if (ACT != ACT_NORM) return 0.0f;
    const int lane = threadIdx.x % WARP;
    float ss = 0.0f;
    for (int c = lane; c < n_cols; c += WARP) ss += x[c] * x[c];
    const float inv = rsqrtf(warp_sum(ss) / (float)n_cols + eps);
    if (xn != nullptr)
        for (int c = lane; c < n_cols; c += WARP) xn[c] = x[c] * inv * nw[c];
    return inv;
}

// One warp: y[row] (+)= w[row] . x for the token blockIdx.y; acc != 0 adds to y
// (the residual add fused into the output projections).
template <class Q, int ACT = ACT_NONE>
__device__ __forceinline__ void matvec_row(const u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int row,
                                           int n_rows, int n_cols, int row_bytes, int acc_y, const float* __restrict__ up = nullptr,
                                           float* __restrict__ xn = nullptr, float eps = 0.0f) {
    const int lane = threadIdx.x % WARP;
    if (row >= n_rows) return;  // the whole warp leaves together
    x += (size_t)blockIdx.y * n_cols;
    if (ACT == ACT_SILU || ACT == ACT_GELU) up += (size_t)blockIdx.y * n_cols;
    if (xn != nullptr) xn += (size_t)blockIdx.y * n_cols;
    y += (size_t)blockIdx.y * n_rows;
    const float inv = mv_inv_rms<ACT>(x, up, xn, n_cols, eps);
    const u8* r = w + (size_t)row * row_bytes;
    const int n_chunks = (n_cols + 7) / 8;
    float acc = 0.0f;
    for (int c = lane; c < n_chunks; c += WARP) {
        const Chunk ch = Q::decode(r, c, n_cols);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            if (!Q::TAIL || ch.c0 + k < n_cols) acc += ch.v[k] * mv_x<ACT>(x, up, ch.c0 + k, inv);
            if (!Q::TAIL || ch.c1 + k < n_cols) acc += ch.v[4 + k] * mv_x<ACT>(x, up, ch.c1 + k, inv);
        }
    }
    acc = warp_sum(acc);
    if (lane == 0) y[row] = acc_y ? y[row] + acc : acc;
}

// the first warp of the grid's row of blocks for a token writes xn (write_xn != 0)
__device__ __forceinline__ float* mv_xn_writer(float* xn, int write_xn) {
    return write_xn && blockIdx.x == 0 && threadIdx.x < WARP ? xn : nullptr;
}

template <class Q>
__device__ __forceinline__ void matvec_impl(const u8* __restrict__ w, const float* __restrict__ x, const float* __restrict__ up,
                                            float* __restrict__ y, float* __restrict__ xn, int n_rows, int n_cols, int row_bytes,
                                            int acc_y, int act, int write_xn, float eps) {
    const int row = blockIdx.x * MV_WARPS + threadIdx.x / WARP;
    if (act == ACT_SILU)
        matvec_row<Q, ACT_SILU>(w, x, y, row, n_rows, n_cols, row_bytes, acc_y, up);
    else if (act == ACT_GELU)
        matvec_row<Q, ACT_GELU>(w, x, y, row, n_rows, n_cols, row_bytes, acc_y, up);
    else if (act == ACT_NORM)
        matvec_row<Q, ACT_NORM>(w, x, y, row, n_rows, n_cols, row_bytes, acc_y, up, mv_xn_writer(xn, write_xn), eps);
    else
        matvec_row<Q>(w, x, y, row, n_rows, n_cols, row_bytes, acc_y);
}

// Up to three matrices of one type over the same x in one launch (Q/K/V, gate/up):
// decode makes ~17 small launches a layer, and at a few microseconds of host
// time each the launches, not the GPU, set the pace.  Each matrix owns a run of
// whole blocks; n2 = 0 for two.  norm != 0: the matrices read RMSNorm(x) * nw
// (the pre-attention / pre-FFN norm, ACT_NORM), and norm == 2 also writes it to xn.
template <class Q>
__device__ __forceinline__ void matvec3_impl(const u8* w0, const u8* w1, const u8* w2, const float* x, float* y0, float* y1, float* y2,
                                             const float* nw, float* xn, int n0, int n1, int n2, int n_cols, int row_bytes, int norm,
                                             float eps) {
    const int b0 = (n0 + MV_WARPS - 1) / MV_WARPS, b1 = (n1 + MV_WARPS - 1) / MV_WARPS;
    int b = blockIdx.x;
    const u8* w = w0;
    float* y = y0;
    int n = n0;
    if (b >= b0 + b1) {
        b -= b0 + b1;
        w = w2;
        y = y2;
        n = n2;
    } else if (b >= b0) {
        b -= b0;
        w = w1;
        y = y1;
        n = n1;
    }
    const int row = b * MV_WARPS + threadIdx.x / WARP;
    if (norm)
        matvec_row<Q, ACT_NORM>(w, x, y, row, n, n_cols, row_bytes, 0, nw, mv_xn_writer(xn, norm == 2), eps);
    else
        matvec_row<Q>(w, x, y, row, n, n_cols, row_bytes, 0);
}

// ------------------------------------------------------------------ matmul
#define MM_BN 64   // weight rows per block
#define MM_BT 64   // tokens per block
#define MM_BK 64   // columns per K-step: 8 chunks of every row, whatever the type
#define MM_THREADS 256  // 16 x 16 threads, each owning 4 rows x 4 tokens of the tile

template <class Q>
__device__ __forceinline__ void matmul_impl(const u8* __restrict__ w, const float* __restrict__ x,
                                            float* __restrict__ y, int n_rows, int n_cols, int n_tok,
                                            int row_bytes) {
    // k-major tiles; the +1 column keeps the transposed stores off one bank
    __shared__ float Ws[MM_BK][MM_BN + 1];
    __shared__ float Xs[MM_BK][MM_BT + 1];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int n0 = blockIdx.x * MM_BN, t0 = blockIdx.y * MM_BT;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < n_cols; k0 += MM_BK) {
        // weight tile: 64 rows x 8 chunks; 8 consecutive threads read one row's chunks
        for (int idx = tid; idx < MM_BN * 8; idx += MM_THREADS) {
            const int n = idx / 8, c = k0 / 8 + idx % 8;
            if (n0 + n >= n_rows || 8 * c >= n_cols) continue;  // rows past the end are never stored
            const Chunk ch = Q::decode(w + (size_t)(n0 + n) * row_bytes, c, n_cols);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                Ws[ch.c0 - k0 + k][n] = ch.v[k];
                Ws[ch.c1 - k0 + k][n] = ch.v[4 + k];
            }
        }
        // columns past n_cols (a last partial tile) must be 0, not stale: 0 * NaN is NaN
        if (k0 + MM_BK > n_cols) {
            for (int idx = tid; idx < MM_BK * MM_BN; idx += MM_THREADS) {
                const int kk = idx / MM_BN;
                if (k0 + kk >= n_cols) Ws[kk][idx % MM_BN] = 0.0f;
            }
        }
        for (int idx = tid; idx < MM_BT * MM_BK; idx += MM_THREADS) {
            const int t = idx / MM_BK, kk = idx % MM_BK;
            Xs[kk][t] = (t0 + t < n_tok && k0 + kk < n_cols) ? x[(size_t)(t0 + t) * n_cols + k0 + kk] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < MM_BK; ++kk) {
            float wv[4], xv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) wv[i] = Ws[kk][tx + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) xv[j] = Xs[kk][ty + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += wv[i] * xv[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int t = t0 + ty + 16 * j;
        if (t >= n_tok) continue;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int n = n0 + tx + 16 * i;
            if (n < n_rows) y[(size_t)t * n_rows + n] = acc[i][j];
        }
    }
}

// ------------------------------------------------------------------ get_rows
template <class Q>
__device__ __forceinline__ void get_rows_impl(const u8* __restrict__ w, const int* __restrict__ ids,
                                              float* __restrict__ out, int n_cols, int row_bytes) {
    const u8* r = w + (size_t)ids[blockIdx.x] * row_bytes;
    float* o = out + (size_t)blockIdx.x * n_cols;
    for (int c = threadIdx.x; 8 * c < n_cols; c += blockDim.x) {
        const Chunk ch = Q::decode(r, c, n_cols);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            if (!Q::TAIL || ch.c0 + k < n_cols) o[ch.c0 + k] = ch.v[k];
            if (!Q::TAIL || ch.c1 + k < n_cols) o[ch.c1 + k] = ch.v[4 + k];
        }
    }
}

// ------------------------------------------------------------------ entry points
#define QMATMUL_KERNELS(name, Q)                                                                  \
    /* grid (ceil(n_rows/4), n_tok), block 128 */                                                  \
    extern "C" __global__ void __launch_bounds__(MV_WARPS * WARP) matvec_##name(                  \
        const u8* __restrict__ w,   /* [n_rows, row_bytes] GGUF blocks */                          \
        const float* __restrict__ x, /* [n_tok, n_cols] */                                         \
        const float* __restrict__ up, /* [n_tok, n_cols] act SILU/GELU; [n_cols] norm weight */   \
        float* __restrict__ y,       /* [n_tok, n_rows] */                                         \
        float* __restrict__ xn,      /* [n_tok, n_cols] RMSNorm(x) * up, when write_xn */         \
        int n_rows, int n_cols, int row_bytes, int acc, /* acc: y += W x */                        \
        int act, int write_xn, float eps) { /* ACT_NONE, ACT_SILU, ACT_GELU, ACT_NORM */           \
        matvec_impl<Q>(w, x, up, y, xn, n_rows, n_cols, row_bytes, acc, act, write_xn, eps);       \
    }                                                                                              \
    /* grid (sum of ceil(n_i/4), n_tok), block 128: y_i = W_i x (or W_i RMSNorm(x)) for i < 3 */   \
    extern "C" __global__ void __launch_bounds__(MV_WARPS * WARP) matvec3_##name(                 \
        const u8* w0, const u8* w1, const u8* w2, const float* x, float* y0, float* y1, float* y2, \
        const float* nw, float* xn, int n0, int n1, int n2, int n_cols, int row_bytes, int norm,   \
        float eps) {                                                                               \
        matvec3_impl<Q>(w0, w1, w2, x, y0, y1, y2, nw, xn, n0, n1, n2, n_cols, row_bytes, norm, eps); \
    }                                                                                              \
    /* grid (ceil(n_rows/64), ceil(n_tok/64)), block 256 */                                        \
    extern "C" __global__ void __launch_bounds__(MM_THREADS) matmul_##name(                       \
        const u8* __restrict__ w,    /* [n_rows, row_bytes] GGUF blocks */                         \
        const float* __restrict__ x, /* [n_tok, n_cols] */                                         \
        float* __restrict__ y,       /* [n_tok, n_rows] */                                         \
        int n_rows, int n_cols, int n_tok, int row_bytes) {                                        \
        matmul_impl<Q>(w, x, y, n_rows, n_cols, n_tok, row_bytes);                                 \
    }                                                                                              \
    /* grid (n_ids), block 128 */                                                                  \
    extern "C" __global__ void get_rows_##name(const u8* __restrict__ w, /* [n_rows, row_bytes] */ \
                                               const int* __restrict__ ids, /* [n_ids] */          \
                                               float* __restrict__ out,     /* [n_ids, n_cols] */  \
                                               int n_cols, int row_bytes) {                        \
        get_rows_impl<Q>(w, ids, out, n_cols, row_bytes);                                          \
    }

FOR_EACH_QTYPE(QMATMUL_KERNELS)
