// State-space layers on the GPU: Mamba-2's and Mamba 1's causal convolution, selective scan and gate (the CUDA twins
// of ops/cpu/ssm.py and ops/cpu/mamba.py, same formulas and float32 throughout, as llama.cpp's ssm_conv / ssm_scan).
//
// The state lives in the GPU cache (cache/gpu_ssm.py) beside a ring of the last positions' inputs, row p % n_ring for
// position p: the convolution reads the positions before a chunk from that ring and the chunk's own from the caller's
// buffer, so a decode step finds everything through the device positions (pos) and no host decision depends on where
// the sequence is; a captured step replays as it is.  Inputs come strided (a column range of the in-projection's rows:
// x_stride, *_col0), so no slice is copied before a kernel reads it.
#include "common.cuh"

#define SSM_MAX_STATE 256  // d_state a scan warp keeps in registers, 8 a lane (Mamba-2's is 128, Mamba 1's 16)

// ------------------------------------------------------------------ convolution
// out[t, c] = silu(sum_j in(pos[t] - (K-1) + j)[c] * w[j, c] + b[c]); the chunk's rows from x, earlier positions from
// the ring, zeros before position 0 (ops/cpu/ssm.py ssm_conv: the window's float32 sum in order, then the bias).
// grid-stride over T * C
extern "C" __global__ void ssm_conv_f32(const float* __restrict__ x,    // [T, x_stride]: the chunk's inputs at x_col0
                                        const float* __restrict__ ring, // [n_ring, ring_w]: the inputs at col 0
                                        const int* __restrict__ pos,    // [T]
                                        const float* __restrict__ w,    // [K, C]: oldest position first
                                        const float* __restrict__ b,    // [C]
                                        float* __restrict__ out,        // [T, C]
                                        int T, int C, int K, int x_stride, int x_col0, int ring_w, int n_ring) {
    const long long total = (long long)T * C;
    GRID_STRIDE(idx, total) {
        const int t = (int)(idx / C), c = (int)(idx % C);
        float acc = 0.0f;
        for (int j = 0; j < K; j++) {
            const int tt = t - (K - 1) + j;
            float v;
            if (tt >= 0) {
                v = x[(size_t)tt * x_stride + x_col0 + c];
            } else {
                const int p = pos[t] - (K - 1) + j;
                v = p < 0 ? 0.0f : ring[(size_t)(p % n_ring) * ring_w + c];
            }
            acc += v * w[(size_t)j * C + c];
        }
        out[idx] = silu_f(acc + b[c]);
    }
}

// The chunk's last `keep` rows of n columns (x at x_col0) into the ring at their positions' rows, columns ring_col0...
// grid-stride over keep * n
extern "C" __global__ void ssm_store_f32(const float* __restrict__ x, float* __restrict__ ring, const int* __restrict__ pos,
                                         int T, int keep, int n, int x_stride, int x_col0, int ring_w, int ring_col0, int n_ring) {
    const long long total = (long long)keep * n;
    GRID_STRIDE(idx, total) {
        const int t = T - keep + (int)(idx / n), c = (int)(idx % n);
        ring[(size_t)(pos[t] % n_ring) * ring_w + ring_col0 + c] = x[(size_t)t * x_stride + x_col0 + c];
    }
}

// ------------------------------------------------------------------ selective scan
// One warp per state row (head h, row i of head_dim), the chunk's tokens in order (a token's state is the next one's
// input), the row's d_state values spread over the lanes in registers (lane + 32 j), the dot product with C a warp sum:
//     dt = softplus(dt_raw + dt_b[h])            (the raw sum itself past 20)
//     s  = s * exp(dt * A[h, k]) + B[g] * x * dt
//     y  = s . C[g] + D[h] * x
// Mamba-2: A one value a head (a_hs 1, a_ks 0), B and C per group g = h / (n_head / n_group); Mamba 1: head_dim 1, a
// head per channel, A [d_inner, d_state] (a_hs d_state, a_ks 1), one group.  Checkpoints: ck holds n_ck pairs (t, slot):
// after t tokens the state is copied into ck_buf[slot] (slot -1: none), as the CPU's ck_t / ck_slot; a captured decode
// step reads its pair from the buffer the host refills before each replay.
// grid (ceil(n_head * head_dim / 4)), block 128
#define SSM_PER_LANE (SSM_MAX_STATE / WARP)
extern "C" __global__ void ssm_scan_f32(float* __restrict__ state,        // [n_head, head_dim, d_state]
                                        const float* __restrict__ x,      // [T, x_stride]: x of row (h, i) at h * head_dim + i
                                        const float* __restrict__ dt,     // [T, dt_stride]: head h's at dt_col0 + h
                                        const float* __restrict__ dt_b,   // [n_head]
                                        const float* __restrict__ A,      // A[h * a_hs + k * a_ks]
                                        const float* __restrict__ bc,     // [T, bc_stride]: B of group g at b_col0 + g * d_state, C at c_col0 + ...
                                        const float* __restrict__ D,      // [n_head]
                                        float* __restrict__ y,            // [T, n_head * head_dim]
                                        const int* __restrict__ ck,       // [2 * n_ck]: (t, slot) pairs
                                        float* __restrict__ ck_buf,       // [slots, n_head, head_dim, d_state]
                                        int T, int n_head, int head_dim, int d_state, int n_group, int x_stride, int dt_stride,
                                        int dt_col0, int a_hs, int a_ks, int bc_stride, int b_col0, int c_col0, int n_ck) {
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    const int n_rows = n_head * head_dim;
    if (row >= n_rows) return;  // (a whole warp: the shuffles below see all their lanes)
    const int h = row / head_dim;
    const int g = h / (n_head / n_group);
    float s[SSM_PER_LANE];
    float* st = state + (size_t)row * d_state;
#pragma unroll
    for (int j = 0; j < SSM_PER_LANE; j++) {
        const int k = lane + j * WARP;
        s[j] = k < d_state ? st[k] : 0.0f;
    }
    const float* a = A + (size_t)h * a_hs;
    const float dd = D[h], db = dt_b[h];
    for (int t = 0; t < T; t++) {
        const float v = dt[(size_t)t * dt_stride + dt_col0 + h] + db;
        const float dts = v > 20.0f ? v : log1pf(expf(v));
        const float xi = x[(size_t)t * x_stride + row];
        const float xdt = xi * dts;
        const float* bt = bc + (size_t)t * bc_stride + b_col0 + (size_t)g * d_state;
        const float* ct = bc + (size_t)t * bc_stride + c_col0 + (size_t)g * d_state;
        const float da0 = expf(dts * a[0]);
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < SSM_PER_LANE; j++) {
            const int k = lane + j * WARP;
            if (k < d_state) {
                const float da = a_ks ? expf(dts * a[k * a_ks]) : da0;
                const float sk = s[j] * da + bt[k] * xdt;
                s[j] = sk;
                acc += sk * ct[k];
            }
        }
        acc = warp_sum(acc);
        if (lane == 0) y[(size_t)t * n_rows + row] = acc + xi * dd;
        for (int c = 0; c < n_ck; c++) {
            const int slot = ck[2 * c + 1];
            if (slot >= 0 && ck[2 * c] == t + 1) {
                float* dst = ck_buf + ((size_t)slot * n_rows + row) * d_state;
#pragma unroll
                for (int j = 0; j < SSM_PER_LANE; j++)
                    if (lane + j * WARP < d_state) dst[lane + j * WARP] = s[j];
            }
        }
    }
#pragma unroll
    for (int j = 0; j < SSM_PER_LANE; j++)
        if (lane + j * WARP < d_state) st[lane + j * WARP] = s[j];
}

// ------------------------------------------------------------------ gate and norms
// y = y * silu(z), then (norm) RMS-normalised over each of n_group equal slices of a row and weighted by w: Mamba-2's
// gated norm (ops/cpu/ssm.py gated_group_norm); norm 0: the gate alone (Falcon-H1 without ssm_norm, Mamba 1).
// grid (T, n_group), block 256
extern "C" __global__ void ssm_gate_norm_f32(float* __restrict__ y,       // [T, n]
                                             const float* __restrict__ z, // [T, z_stride]: at z_col0
                                             const float* __restrict__ w, // [n] (norm)
                                             int n, int n_group, int z_stride, int z_col0, float eps, int norm) {
    __shared__ float scratch[WARP];
    const int t = blockIdx.x, width = n / n_group, lo = blockIdx.y * width;
    float* yr = y + (size_t)t * n;
    const float* zr = z + (size_t)t * z_stride + z_col0;
    float ss = 0.0f;
    for (int i = lo + threadIdx.x; i < lo + width; i += blockDim.x) {
        const float v = silu_f(zr[i]) * yr[i];
        yr[i] = v;
        ss += v * v;
    }
    if (!norm) return;  // (uniform over the block: no thread waits at the barrier below)
    ss = block_sum(ss, scratch);
    const float inv = rsqrtf(ss / (float)width + eps);
    for (int i = lo + threadIdx.x; i < lo + width; i += blockDim.x) yr[i] = yr[i] * inv * w[i];
}

// In place, each row's n columns at col0 RMS-normalised (and weighted by w where has_w): Falcon-Mamba's, Jamba's and
// PLaMo 2's norms of dt, B and C.  One warp a row.
// grid (T), block 32
extern "C" __global__ void ssm_rms_cols_f32(float* __restrict__ x, const float* __restrict__ w, int n, int stride, int col0,
                                            float eps, int has_w) {
    float* xr = x + (size_t)blockIdx.x * stride + col0;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += WARP) ss += xr[i] * xr[i];
    ss = warp_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += WARP) xr[i] = has_w ? xr[i] * inv * w[i] : xr[i] * inv;
}

// dst[t, c] = src[t, col0 + c]: a column range made contiguous (Mamba 1's dt before its projection).
// grid-stride over T * n
extern "C" __global__ void ssm_copy_cols_f32(const float* __restrict__ src, float* __restrict__ dst, int T, int n, int stride,
                                             int col0) {
    const long long total = (long long)T * n;
    GRID_STRIDE(idx, total)
        dst[idx] = src[(size_t)(idx / n) * stride + col0 + idx % n];
}

// In place, each (token, head) row of head_dim RMS-normalised and weighted by its head's own weights (w [n_head,
// head_dim], not one row shared by the heads): PLaMo 2's Q/K norms, in its attention layers among the Mamba ones.
// One warp a row.
// grid (ceil(n_rows / 4)), block 128
extern "C" __global__ void rms_norm_heads_each_f32(float* __restrict__ x, const float* __restrict__ w, int n_rows, int n_head,
                                                   int head_dim, float eps) {
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    if (row >= n_rows) return;
    float* xr = x + (size_t)row * head_dim;
    const float* wr = w + (size_t)(row % n_head) * head_dim;
    float ss = 0.0f;
    for (int i = lane; i < head_dim; i += WARP) ss += xr[i] * xr[i];
    ss = warp_sum(ss);
    const float inv = rsqrtf(ss / (float)head_dim + eps);
    for (int i = lane; i < head_dim; i += WARP) xr[i] = xr[i] * inv * wr[i];
}
