// RWKV-6/7's and LFM2's recurrent layers on the GPU: the token shift, the WKV-6 / WKV-7 recurrences, the elementwise
// work around them (the lerps, the decays, the removal key, the bonus, the gates), and LFM2's short gated convolution
// (the CUDA twins of models/rwkv6.py, models/rwkv7.py, ops/cpu/wkv6.py, ops/cpu/wkv7.py and models/lfm2.py's _conv:
// the same formulas in the same order, float32 throughout, as llama.cpp's rwkv_wkv6 / rwkv_wkv7 / ssm_conv).
//
// The state lives in the GPU caches (cache/gpu_recurrent.py) beside a ring of the last positions' inputs, row
// p % n_ring for position p, as the state-space layers' (ssm.cu): a kernel finds the previous token through the device
// positions (pos), so a decode step launches the same kernels with the same arguments wherever it is and is captured
// as a CUDA graph.  Every input is a device array read in place (a column range of a wider row where it says so).
#include "common.cuh"

#define WKV_MAX_HEAD 128  // the head size a block of wkv_f32 keeps (a thread a state row; RWKV's heads are 64)

__device__ __forceinline__ float sigmoid_t(float x) { return 0.5f + 0.5f * tanhf(0.5f * x); }  // (the CPU's _sigmoid)

// act: 0 none, 1 tanh, 2 sigmoid, 3 SiLU
__device__ __forceinline__ float rec_act(float x, int act) {
    return act == 1 ? tanhf(x) : act == 2 ? sigmoid_t(x) : act == 3 ? x * sigmoid_t(x) : x;
}

// ------------------------------------------------------------------ token shift
// out[j, t, c] = xn[t, c] + (prev[t, c] - xn[t, c]) * (mu[j, c] + add[j, t, c])  (add: has_add), prev the row before
// (the chunk's own, or the ring's row of position pos[0] - 1 at columns ring_col.., zeros before position 0): RWKV-7's
// lerps (mu alone) and RWKV-6's ddlerp (mu plus its LoRA's output).  out and add: planes j `plane` floats apart (the
// model's [m, n_batch, n] scratch), rows of n; add may be out (each element reads its own).
// grid-stride over m * T * n
extern "C" __global__ void rwkv_lerp_f32(const float* __restrict__ xn,   // [T, n]
                                         const float* __restrict__ ring, // [n_ring, ring_w]
                                         const int* __restrict__ pos,    // [T]
                                         const float* __restrict__ mu,   // [m, n]
                                         const float* add,               // [m, plane] (has_add)
                                         float* out,                     // [m, plane]
                                         int T, int n, int m, int ring_w, int ring_col, int n_ring, int has_add, long long plane) {
    const long long total = (long long)m * T * n;
    GRID_STRIDE(idx, total) {
        const int c = (int)(idx % n), t = (int)((idx / n) % T), j = (int)(idx / ((long long)T * n));
        const float x = xn[(size_t)t * n + c];
        float prev;
        if (t > 0) {
            prev = xn[(size_t)(t - 1) * n + c];
        } else {
            const int p = pos[0] - 1;
            prev = p < 0 ? 0.0f : ring[(size_t)(p % n_ring) * ring_w + ring_col + c];
        }
        const long long o = j * plane + (long long)t * n + c;
        const float mj = has_add ? mu[(size_t)j * n + c] + add[o] : mu[(size_t)j * n + c];
        out[o] = (prev - x) * mj + x;
    }
}

// out[j, t, e] = act(h[t, j * E + e]): a LoRA's hidden rows (m of them side by side: RWKV-6's ddlerp) split and
// activated, each contiguous for its up projection (planes j `plane` floats apart).  out may be h where m is 1.
// grid-stride over m * T * E
extern "C" __global__ void rwkv_act_split_f32(const float* h, float* out, int T, int E, int m, int act, long long plane) {
    const long long total = (long long)m * T * E;
    GRID_STRIDE(idx, total) {
        const int e = (int)(idx % E), t = (int)((idx / E) % T), j = (int)(idx / ((long long)T * E));
        out[j * plane + (long long)t * E + e] = rec_act(h[(size_t)t * m * E + (size_t)j * E + e], act);
    }
}

// ------------------------------------------------------------------ the time mix's elementwise steps
// The decay in place: version 7 w = exp(-e^-0.5 sigmoid(x + base)), version 6 w = exp(-exp(x + base)).
// grid-stride over total
extern "C" __global__ void rwkv_decay_f32(float* __restrict__ x, const float* __restrict__ base, int n, long long total, int version) {
    GRID_STRIDE(i, total) {
        const float z = x[i] + base[i % n];
        x[i] = version == 7 ? expf(-0.606531f * sigmoid_t(z)) : expf(-expf(z));
    }
}

// RWKV-7's value residual in place: v += (v_first - v) * sigmoid(lo + v0).
extern "C" __global__ void rwkv7_vres_f32(float* __restrict__ v, const float* __restrict__ vf, const float* __restrict__ lo,
                                          const float* __restrict__ v0, int n, long long total) {
    GRID_STRIDE(i, total)
        v[i] += (vf[i] - v[i]) * sigmoid_t(lo[i] + v0[i % n]);
}

// RWKV-7's removal key and key, per (token, head): iclr = sigmoid(lo + a0), kk = l2_norm(k * k_k) over the head
// (ggml_l2_norm: the norm at least 1e-12), then k *= 1 + (iclr - 1) k_a in place, and the recurrence's a = -kk and
// b = kk * iclr into x at columns 4 C and 5 C.
// grid (T * H), block N
extern "C" __global__ void rwkv7_kprep_f32(float* __restrict__ k, const float* __restrict__ lo, const float* __restrict__ a0,
                                           const float* __restrict__ k_k, const float* __restrict__ k_a, float* __restrict__ x,
                                           int H, int N, int stride) {
    const int t = blockIdx.x / H, h = blockIdx.x % H, i = threadIdx.x, C = H * N;
    const size_t row = (size_t)t * C + (size_t)h * N;
    float ss = 0.0f;
    for (int j = 0; j < N; j++) {  // (each thread the whole sum: no reduction order to keep between lanes)
        const float q = k[row + j] * k_k[h * N + j];
        ss += q * q;
    }
    const int c = h * N + i;
    const float kk = k[row + i] * k_k[c] / fmaxf(sqrtf(ss), 1e-12f);
    const float iclr = sigmoid_t(lo[row + i] + a0[c]);
    const float kn = k[row + i] * (1.0f + (iclr - 1.0f) * k_a[c]);
    __syncthreads();  // (every thread has read the head's k before any writes its own)
    k[row + i] = kn;
    x[(size_t)t * stride + 4 * C + c] = -kk;
    x[(size_t)t * stride + 5 * C + c] = kk * iclr;
}

// x[t, col0 + c] = src[t, c] (mode 0), src * m (1), or src *= (1 - m) first (2: RWKV6-Qwen2's key, kept for the
// bonus): the recurrence's inputs packed into the row the cache keeps.
// grid-stride over T * n
extern "C" __global__ void rwkv_pack_f32(float* src, const float* __restrict__ m, float* __restrict__ x, int T, int n, int stride,
                                         int col0, int mode) {
    const long long total = (long long)T * n;
    GRID_STRIDE(i, total) {
        const int t = (int)(i / n), c = (int)(i % n);
        float v = src[i];
        if (mode == 1) v *= m[i];
        if (mode == 2) src[i] = v = v * (1.0f - m[i]);
        x[(size_t)t * stride + col0 + c] = v;
    }
}

// dst [T, H * N] = src [T, kvh * N] each K/V head read by H / kvh consecutive heads (ggml_repeat's layout: RWKV6-Qwen2).
extern "C" __global__ void rwkv_repeat_heads_f32(const float* __restrict__ src, float* __restrict__ dst, int T, int H, int kvh, int N) {
    const long long total = (long long)T * H * N;
    GRID_STRIDE(i, total) {
        const int d = (int)(i % N), h = (int)((i / N) % H), t = (int)(i / ((long long)H * N));
        dst[i] = src[((size_t)t * kvh + h / (H / kvh)) * N + d];
    }
}

// The bonus per (token, head): y = (y + v * sum_j r[j] k[j] u[j]) * scale (u null: ones; RWKV6-Qwen2's scale
// head_size^-0.5, the others' 1).
// grid (T * H), block N
extern "C" __global__ void rwkv_bonus_f32(float* __restrict__ y, const float* __restrict__ r, const float* __restrict__ k,
                                          const float* __restrict__ v, const float* __restrict__ u, int H, int N, float scale, int has_u) {
    const int t = blockIdx.x / H, h = blockIdx.x % H, i = threadIdx.x;
    const size_t row = (size_t)t * H * N + (size_t)h * N;
    float dot = 0.0f;
    for (int j = 0; j < N; j++) dot += r[row + j] * k[row + j] * (has_u ? u[h * N + j] : 1.0f);
    y[row + i] = (y[row + i] + v[row + i] * dot) * scale;
}

// y *= act(g) (the time mix's gates: RWKV-6's SiLU, RWKV6-Qwen2's sigmoid, RWKV-7's LoRA already activated: none).
extern "C" __global__ void rwkv_mul_act_f32(float* __restrict__ y, const float* __restrict__ g, long long total, int act) {
    GRID_STRIDE(i, total)
        y[i] *= rec_act(g[i], act);
}

// ------------------------------------------------------------------ the WKV recurrences
// One block a head, a thread a state row i (value dimension), the chunk's tokens in order; a token's r, w, k, v (a, b)
// rows of the head in shared memory.  x [T, stride]: r, w, k, v (then WKV-7's a, b) at columns 0, C, 2C, ...
//     WKV-6:  y[i] = sum_j r[j] S[i, j];  S[i, j] = S[i, j] w[j] + v[i] k[j]               (the old S in y)
//     WKV-7:  sa = sum_j a[j] S[i, j];    S[i, j] = S[i, j] w[j] + v[i] k[j] + sa b[j];  y[i] = sum_j S[i, j] r[j]
// Checkpoints as ssm_scan_f32's: ck holds n_ck (t, slot) pairs; after t tokens the state goes to ck_buf[slot].
// NN: the head size where the caller knows it (64, RWKV's: the row unrolled into registers), else 0 (N, at most
// WKV_MAX_HEAD).
template <int NN>
__device__ __forceinline__ void wkv_run(float* __restrict__ state, const float* __restrict__ x, float* __restrict__ y,
                                        const int* __restrict__ ck, float* __restrict__ ck_buf, float* sh,
                                        int T, int H, int n_rt, int stride, int version, int n_ck) {
    const int N = NN > 0 ? NN : n_rt;
    const int h = blockIdx.x, i = threadIdx.x, C = H * N, n_in = version == 7 ? 6 : 4;
    float s[NN > 0 ? NN : WKV_MAX_HEAD];
    float* st = state + ((size_t)h * N + i) * N;
#pragma unroll
    for (int j = 0; j < N; j++) s[j] = st[j];
    const float *r = sh, *w = sh + N, *k = sh + 2 * N, *v = sh + 3 * N, *a = sh + 4 * N, *b = sh + 5 * N;
    for (int t = 0; t < T; t++) {
        for (int q = 0; q < n_in; q++) sh[q * N + i] = x[(size_t)t * stride + (size_t)q * C + (size_t)h * N + i];
        __syncthreads();
        const float vi = v[i];
        float acc = 0.0f;
        if (version == 7) {
            float sa = 0.0f;
#pragma unroll
            for (int j = 0; j < N; j++) sa += a[j] * s[j];
#pragma unroll
            for (int j = 0; j < N; j++) {
                const float u = s[j] * w[j] + vi * k[j] + sa * b[j];
                s[j] = u;
                acc += u * r[j];
            }
        } else {
#pragma unroll
            for (int j = 0; j < N; j++) {
                const float u = s[j];
                acc += u * r[j];
                s[j] = u * w[j] + vi * k[j];
            }
        }
        y[(size_t)t * C + (size_t)h * N + i] = acc;
        for (int c = 0; c < n_ck; c++) {
            const int slot = ck[2 * c + 1];
            if (slot >= 0 && ck[2 * c] == t + 1) {
                float* dst = ck_buf + (((size_t)slot * H + h) * N + i) * N;
#pragma unroll
                for (int j = 0; j < N; j++) dst[j] = s[j];
            }
        }
        __syncthreads();  // (the token's rows read by every thread before the next token's overwrite them)
    }
#pragma unroll
    for (int j = 0; j < N; j++) st[j] = s[j];
}

// grid (H), block N
extern "C" __global__ void wkv_f32(float* __restrict__ state,       // [H, N, N]
                                   const float* __restrict__ x,     // [T, stride]
                                   float* __restrict__ y,           // [T, H * N]
                                   const int* __restrict__ ck,      // [2 * n_ck]
                                   float* __restrict__ ck_buf,      // [slots, H, N, N]
                                   int T, int H, int N, int stride, int version, int n_ck) {
    __shared__ float sh[6 * WKV_MAX_HEAD];
    if (N == 64)
        wkv_run<64>(state, x, y, ck, ck_buf, sh, T, H, N, stride, version, n_ck);
    else
        wkv_run<0>(state, x, y, ck, ck_buf, sh, T, H, N, stride, version, n_ck);
}

// ------------------------------------------------------------------ LFM2's short convolution
// y[t, c] = C[t, c] * sum_j bx(pos[t] - (K-1) + j)[c] * w[c, j], bx = B * x (the in-projection's rows [B | C | x]),
// the chunk's own from bcx, earlier positions from the ring, zeros before position 0 (models/lfm2.py _conv: the
// window's float32 sum in order from zero, then the gate).
// grid-stride over T * n
extern "C" __global__ void shortconv_f32(const float* __restrict__ bcx,  // [T, 3 n]
                                         const float* __restrict__ ring, // [n_ring, n]
                                         const int* __restrict__ pos,    // [T]
                                         const float* __restrict__ w,    // [n, K]: oldest position first
                                         float* __restrict__ y,          // [T, n]
                                         int T, int n, int K, int n_ring) {
    const long long total = (long long)T * n;
    GRID_STRIDE(idx, total) {
        const int t = (int)(idx / n), c = (int)(idx % n);
        float acc = 0.0f;
        for (int j = 0; j < K; j++) {
            const int tt = t - (K - 1) + j;
            float v;
            if (tt >= 0) {
                const float* row = bcx + (size_t)tt * 3 * n;
                v = row[c] * row[2 * n + c];
            } else {
                const int p = pos[t] - (K - 1) + j;
                v = p < 0 ? 0.0f : ring[(size_t)(p % n_ring) * n + c];
            }
            acc += v * w[(size_t)c * K + j];
        }
        y[idx] = acc * bcx[(size_t)t * 3 * n + n + c];
    }
}

// The chunk's last `keep` rows of B * x into the ring at their positions' rows (after shortconv_f32 read the ring).
// grid-stride over keep * n
extern "C" __global__ void shortconv_store_f32(const float* __restrict__ bcx, float* __restrict__ ring, const int* __restrict__ pos,
                                               int T, int keep, int n, int n_ring) {
    const long long total = (long long)keep * n;
    GRID_STRIDE(idx, total) {
        const int t = T - keep + (int)(idx / n), c = (int)(idx % n);
        const float* row = bcx + (size_t)t * 3 * n;
        ring[(size_t)(pos[t] % n_ring) * n + c] = row[c] * row[2 * n + c];
    }
}
