// Gated DeltaNet (Qwen3.5, Qwen3-Next) and Kimi Delta Attention (Kimi Linear, Ling 3) on the GPU: the delta rule, the decay and
// write strength before it, the gated output norms after it, and the small cuts of the gated attention beside it (the
// CUDA twins of ops/cpu/deltanet.py, ops/cpu/kda.py and the numpy lines of models/qwen35.py / kimi_linear.py, float32
// throughout, as llama.cpp's ggml_gated_delta_net and build_norm_gated).
//
// The short causal convolution before the rule, its ring of kept inputs and the state's copies are the state-space
// layers' (ssm.cu's ssm_conv_f32 / ssm_store_f32, cache/gpu_delta.py on cache/gpu_ssm.py's machinery): a decode step
// finds everything through the device positions, so it is captured as a CUDA graph and replayed.
#include "common.cuh"

#define DELTA_MAX_K 256  // d_k a warp keeps in registers, 8 a lane (Qwen3.5's and Kimi's are 128)
#define DELTA_PER_LANE (DELTA_MAX_K / WARP)

__device__ __forceinline__ float delta_sigmoid(float x) { return 0.5f + 0.5f * tanhf(0.5f * x); }  // (models/qwen35.py's)

// ------------------------------------------------------------------ decay and write strength
// gb[t, c] for c < n_g:  softplus(a[t, c] + dt_b[c]) * A[c / per]   (the decay's log: per 1 a head, per d_k a key channel)
//                        or, lower_bound < 0 (Ling 3's safe gate, A = exp(A_log) > 0):
//                        lower_bound * sigmoid(A[c / per] * (a[t, c] + dt_b[c]))
// gb[t, n_g + h]:        sigmoid(beta[t, h])                         (the write strength)
// grid-stride over T * (n_g + n_v)
extern "C" __global__ void delta_gb_f32(const float* __restrict__ a,     // [T, n_g]: alpha (Qwen) or f_b's output (KDA; Ling 3's f_a's)
                                        const float* __restrict__ beta,  // [T, n_v]
                                        const float* __restrict__ dt_b,  // [n_g]
                                        const float* __restrict__ A,     // [n_g / per]
                                        float* __restrict__ gb,          // [T, n_g + n_v]
                                        int T, int n_g, int n_v, int per, float lower_bound) {
    const int w = n_g + n_v;
    const long long total = (long long)T * w;
    GRID_STRIDE(idx, total) {
        const int t = (int)(idx / w), c = (int)(idx % w);
        if (c < n_g) {
            const float v = a[(size_t)t * n_g + c] + dt_b[c];
            gb[idx] = lower_bound < 0.0f ? lower_bound * delta_sigmoid(A[c / per] * v) : (v > 20.0f ? v : log1pf(expf(v))) * A[c / per];
        } else {
            gb[idx] = delta_sigmoid(beta[(size_t)t * n_v + c - n_g]);
        }
    }
}

// ------------------------------------------------------------------ the delta rule
// One warp per state row (value head h, value dimension jv), the chunk's tokens in order, the row's d_k values over the
// lanes in registers (lane + 32 j); every warp of a head normalises its key head's q and k itself (warp sums):
//     q, k = q / max(|q|, eps) / sqrt(d_k), k / max(|k|, eps)
//     s    = s * exp(g)                     (g one value a head, or KDA's one a key channel: per_channel)
//     s   += k * beta * (v[jv] - s . k)
//     y    = s . q
// Checkpoints as ssm_scan_f32's: ck holds n_ck (t, slot) pairs, the state copied into ck_buf[slot] after t tokens.
// grid (ceil(n_v * d_v / 4)), block 128
extern "C" __global__ void delta_rule_f32(float* __restrict__ state,        // [n_v, d_v, d_k]
                                          const float* __restrict__ qkv,    // [T, 2 n_k d_k + n_v d_v]: after the convolution
                                          const float* __restrict__ gb,     // [T, gb_stride]: g at gb_col0, beta after the g's
                                          const int* __restrict__ k_of_v,   // [n_v]
                                          float* __restrict__ y,            // [T, n_v * d_v]
                                          const int* __restrict__ ck,       // [2 * n_ck]
                                          float* __restrict__ ck_buf,       // [slots, n_v, d_v, d_k]
                                          int T, int n_v, int n_k, int d_v, int d_k, int gb_stride, int gb_col0, int per_channel,
                                          float eps, int n_ck) {
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    const int n_rows = n_v * d_v;
    if (row >= n_rows) return;  // (a whole warp)
    const int h = row / d_v, jv = row % d_v, kh = k_of_v[h];
    const int channels = 2 * n_k * d_k + n_v * d_v;
    const int q0 = kh * d_k, k0 = (n_k + kh) * d_k, v0 = 2 * n_k * d_k + row;
    const int n_g = per_channel ? n_v * d_k : n_v;
    const float scale = 1.0f / sqrtf((float)d_k);
    float s[DELTA_PER_LANE], qn[DELTA_PER_LANE], kn[DELTA_PER_LANE];
    float* st = state + (size_t)row * d_k;
#pragma unroll
    for (int j = 0; j < DELTA_PER_LANE; j++) {
        const int i = lane + j * WARP;
        s[j] = i < d_k ? st[i] : 0.0f;
    }
    for (int t = 0; t < T; t++) {
        const float* r = qkv + (size_t)t * channels;
        const float* gr = gb + (size_t)t * gb_stride + gb_col0;
        float sq = 0.0f, sk = 0.0f;
#pragma unroll
        for (int j = 0; j < DELTA_PER_LANE; j++) {
            const int i = lane + j * WARP;
            qn[j] = i < d_k ? r[q0 + i] : 0.0f;
            kn[j] = i < d_k ? r[k0 + i] : 0.0f;
            sq += qn[j] * qn[j];
            sk += kn[j] * kn[j];
        }
        sq = warp_sum(sq);
        sk = warp_sum(sk);
        const float iq = 1.0f / fmaxf(sqrtf(sq), eps) * scale, ik = 1.0f / fmaxf(sqrtf(sk), eps);
        const float b = gr[n_g + h];
        const float dh = per_channel ? 0.0f : expf(gr[h]);
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < DELTA_PER_LANE; j++) {
            const int i = lane + j * WARP;
            if (i < d_k) {
                qn[j] *= iq;
                kn[j] *= ik;
                s[j] *= per_channel ? expf(gr[h * d_k + i]) : dh;
                acc += s[j] * kn[j];
            }
        }
        acc = warp_sum(acc);
        const float d = (r[v0] - acc) * b;
        float o = 0.0f;
#pragma unroll
        for (int j = 0; j < DELTA_PER_LANE; j++) {
            if (lane + j * WARP < d_k) {
                s[j] += kn[j] * d;
                o += s[j] * qn[j];
            }
        }
        o = warp_sum(o);
        if (lane == 0) y[(size_t)t * n_rows + row] = o;
        for (int c = 0; c < n_ck; c++) {
            const int slot = ck[2 * c + 1];
            if (slot >= 0 && ck[2 * c] == t + 1) {
                float* dst = ck_buf + ((size_t)slot * n_rows + row) * d_k;
#pragma unroll
                for (int j = 0; j < DELTA_PER_LANE; j++)
                    if (lane + j * WARP < d_k) dst[lane + j * WARP] = s[j];
            }
        }
    }
#pragma unroll
    for (int j = 0; j < DELTA_PER_LANE; j++)
        if (lane + j * WARP < d_k) st[lane + j * WARP] = s[j];
}

// ------------------------------------------------------------------ the gated output norm
// Each head's d values of y RMS-normed (no mean), times w (every head's) and the gate: silu(z) (Qwen's
// build_norm_gated: the norm first, then the gate) or sigmoid(z) (Kimi's).  One warp a (token, head).
// grid (ceil(T * n_head / 4)), block 128
extern "C" __global__ void delta_norm_gate_f32(float* __restrict__ y,       // [T, n_head * d]
                                               const float* __restrict__ z, // [T, n_head * d]
                                               const float* __restrict__ w, // [d]
                                               int n_rows, int d, float eps, int sigmoid_gate) {
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    if (row >= n_rows) return;
    float* yr = y + (size_t)row * d;
    const float* zr = z + (size_t)row * d;
    float ss = 0.0f;
    for (int i = lane; i < d; i += WARP) ss += yr[i] * yr[i];
    ss = warp_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)d + eps);
    for (int i = lane; i < d; i += WARP) {
        const float zi = zr[i];
        yr[i] = yr[i] * inv * w[i] * (sigmoid_gate ? delta_sigmoid(zi) : silu_f(zi));
    }
}

// ------------------------------------------------------------------ cuts
// Qwen3.5's gated attention: q[r, i] = qg[r, i] (a head's query, the first half of its 2 d values in qg) where mode 0;
// att[r, i] *= sigmoid(qg[r, d + i]) (its output gate, the second half) where mode 1; Ling 3's MLA head gate,
// att[r, i] *= sigmoid(qg[r]) (one value a head row r = t * n_head + h), where mode 2.
// grid-stride over n_rows * d
extern "C" __global__ void delta_qgate_f32(const float* __restrict__ qg, float* __restrict__ out, long long n_rows, int d, int mode) {
    const long long total = n_rows * d;
    GRID_STRIDE(idx, total) {
        const long long r = idx / d;
        const int i = (int)(idx % d);
        if (mode == 0) out[idx] = qg[r * 2 * d + i];
        else if (mode == 2) out[idx] *= delta_sigmoid(qg[r]);
        else out[idx] *= delta_sigmoid(qg[r * 2 * d + d + i]);
    }
}

// dst[t, col0 + c] = src[t, c]: Kimi's q, k and v side by side for the one convolution over the three.
// grid-stride over T * n
extern "C" __global__ void delta_put_cols_f32(const float* __restrict__ src, float* __restrict__ dst, int T, int n, int stride, int col0) {
    const long long total = (long long)T * n;
    GRID_STRIDE(idx, total)
        dst[(size_t)(idx / n) * stride + col0 + idx % n] = src[idx];
}
