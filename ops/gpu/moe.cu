// Mixture-of-experts FFN on the device: routing and the chosen experts' products
// in kernels that hand each other device buffers, so a decode step copies
// nothing to the host and can be captured as a CUDA graph.
//
//   moe_route_f32        router logits -> the k chosen experts' ids and weights
//                        (models/moe.py `route`: softmax / sigmoid / softmax_weight
//                        gating, the selection bias, renormalising, the scale;
//                        ties to the lower index), one warp per token
//   moe_gate_up_<type>   h = act(gate_e x + gb_e, up_e x + ub_e) for each token's
//                        k experts, reading e from the ids (llama.cpp's
//                        mul_mat_id idea): one warp per (row, token, slot)
//   moe_down_<type>      x (+)= sum_j w_j (down_e_j h_j + db_e_j): one warp per
//                        (row, token), the k slots summed in slot order and
//                        then added, as the CPU's moe_token and llama.cpp do
//   moe_gated_add_f32    x += sigmoid(s) * y (Qwen2-MoE's gated shared expert)
//
// The experts' weights are the file's stacked 3-D tensors uploaded as
// [n_expert * rows, row_bytes] in their GGUF blocks; quants.cuh's decoders read
// them, so every type the dense matvec reads works for the experts too.  The
// products are matvecs per (token, slot); a prompt's go grouped by expert
// (the end of this file: each expert's weights read once, not once a token).
#include "moe.cuh"

// gating (models/moe.py MoE.gating)
#define MOE_SOFTMAX 0
#define MOE_SIGMOID 1
#define MOE_SOFTMAX_WEIGHT 2  // gpt-oss: the top k by logit, weighted by a softmax over those k

// the experts' GLU (models/moe.py MoE.act)
#define MOE_SILU 0
#define MOE_SWIGLU_OAI 1  // gpt-oss's clamped SwiGLU (ops/cpu/moe.py swiglu_oai)
#define MOE_RELU 2        // ReGLU (SmallThinker's)
#define MOE_GELU 3        // GeGLU, tanh GELU (Gemma 4's experts; not Grok's float16-table GELU)

__device__ __forceinline__ float moe_glu(float g, float u, int act) {
    if (act == MOE_SWIGLU_OAI) return swiglu_oai_f(g, u);
    if (act == MOE_RELU) return fmaxf(g, 0.0f) * u;
    if (act == MOE_GELU) return gelu_f(g) * u;
    return silu_f(g) * u;
}

// ------------------------------------------------------------------ routing
// grid (T), block 32, dynamic shared memory (2 n_expert + k + 2 n_group) floats.
extern "C" __global__ void moe_route_f32(const float* __restrict__ logits, /* [T, n_expert] */
                                         const float* __restrict__ sel_bias, /* [n_expert]: moves the choice, not the weights */
                                         const float* __restrict__ router_b, /* [n_expert]: added to the logits (gpt-oss) */
                                         int* __restrict__ ids,              /* [T, k] */
                                         float* __restrict__ wts,            /* [T, k] */
                                         int n_expert, int k, int gating, int norm, int has_bias, int has_router_b,
                                         int n_group, int n_group_used, float scale) {
    extern __shared__ float moe_smem[];
    float* p = moe_smem;               // the probabilities (softmax_weight: the logits)
    float* sel = moe_smem + n_expert;  // what chooses: p + bias, the chosen set to -inf
    float* w = sel + n_expert;         // the chosen experts' weights
    float* gscore = w + k;             // n_group > 1: each group's score, then whether it is kept
    float* gkeep = gscore + n_group;
    const int lane = threadIdx.x, t = blockIdx.x;
    const float* z = logits + (size_t)t * n_expert;
    float m = NEG_INF;
    for (int e = lane; e < n_expert; e += WARP) {
        const float v = has_router_b ? z[e] + router_b[e] : z[e];
        p[e] = v;
        m = fmaxf(m, v);
    }
    m = warp_max(m);
    if (gating == MOE_SOFTMAX) {
        float s = 0.0f;
        for (int e = lane; e < n_expert; e += WARP) {
            p[e] = expf(p[e] - m);
            s += p[e];
        }
        s = warp_sum(s);
        for (int e = lane; e < n_expert; e += WARP) p[e] /= s;
    } else if (gating == MOE_SIGMOID) {
        for (int e = lane; e < n_expert; e += WARP) p[e] = 1.0f / (1.0f + expf(-p[e]));
    }
    for (int e = lane; e < n_expert; e += WARP) sel[e] = has_bias ? p[e] + sel_bias[e] : p[e];
    __syncthreads();
    if (n_group > 1) {  // group-limited (models/moe.py group_limit): only the best n_group_used groups' experts compete
        const int gsz = n_expert / n_group;
        for (int gi = lane; gi < n_group; gi += WARP) {  // a group's score: its two best summed
            float b1 = NEG_INF, b2 = NEG_INF;
            for (int e = gi * gsz; e < (gi + 1) * gsz; ++e) {
                const float v = sel[e];
                if (v > b1) {
                    b2 = b1;
                    b1 = v;
                } else if (v > b2) {
                    b2 = v;
                }
            }
            gscore[gi] = b1 + b2;
            gkeep[gi] = 0.0f;
        }
        __syncthreads();
        if (lane == 0)  // (a few dozen groups at most: one lane, ties to the lower index)
            for (int u = 0; u < n_group_used; ++u) {
                int bg = -1;
                for (int gi = 0; gi < n_group; ++gi)
                    if (gkeep[gi] == 0.0f && (bg < 0 || gscore[gi] > gscore[bg])) bg = gi;
                gkeep[bg] = 1.0f;
            }
        __syncthreads();
        for (int e = lane; e < n_expert; e += WARP)
            if (gkeep[e / gsz] == 0.0f) sel[e] = NEG_INF;
        __syncthreads();
    }
    for (int j = 0; j < k; ++j) {
        // the warp's best: each lane scans its experts in ascending order (strict > keeps the lower index on a tie),
        // then the lanes' bests meet, a tie again going to the lower index
        float best = NEG_INF;
        int bi = n_expert;
        for (int e = lane; e < n_expert; e += WARP)
            if (sel[e] > best || (bi == n_expert && sel[e] == best)) {
                best = sel[e];
                bi = e;
            }
#pragma unroll
        for (int o = WARP / 2; o > 0; o >>= 1) {
            const float ob = __shfl_xor_sync(FULL_MASK, best, o);
            const int oi = __shfl_xor_sync(FULL_MASK, bi, o);
            if (ob > best || (ob == best && oi < bi)) {
                best = ob;
                bi = oi;
            }
        }
        if (bi >= n_expert) bi = 0;  // (NaN logits: a valid id all the same, never a fault)
        if (lane == 0) {
            ids[(size_t)t * k + j] = bi;
            w[j] = p[bi];
            sel[bi] = NEG_INF;
        }
        __syncthreads();
    }
    if (lane != 0) return;
    if (gating == MOE_SOFTMAX_WEIGHT) {  // a softmax over the k chosen logits
        float wm = NEG_INF, s = 0.0f;
        for (int j = 0; j < k; ++j) wm = fmaxf(wm, w[j]);
        for (int j = 0; j < k; ++j) {
            w[j] = expf(w[j] - wm);
            s += w[j];
        }
        for (int j = 0; j < k; ++j) w[j] /= s;
    } else if (norm) {
        float s = 0.0f;
        for (int j = 0; j < k; ++j) s += w[j];
        for (int j = 0; j < k; ++j) w[j] /= s;
    }
    for (int j = 0; j < k; ++j) wts[(size_t)t * k + j] = w[j] * scale;
}

// ------------------------------------------------------------------ experts
// mode 0: h = act(gate x + gb, up x + ub), both matrices of this type (one launch);
// gate and up of two types take two: mode 1 g = gate x + gb (the gate's type),
// then mode 2 h = act(g, up x + ub) (the up's).
template <class Q>
__device__ __forceinline__ void moe_gate_up_impl(const u8* wg, const u8* wu, const float* x, const int* ids, const float* gb,
                                                 const float* ub, float* g, float* h, int n_ff, int n_cols, int row_bytes, int k,
                                                 int mode, int act, int has_b) {
    const int row = blockIdx.x * MOE_WARPS + threadIdx.x / WARP;
    if (row >= n_ff) return;  // the whole warp leaves together
    const int slot = blockIdx.y, e = ids[slot];
    const size_t r = (size_t)e * n_ff + row;
    const float* xt = x + (size_t)(slot / k) * n_cols;
    float a0, a1;
    moe_gate_up_dots<Q>(wg, wu, xt, r, row_bytes, n_cols, mode, a0, a1);
    if (threadIdx.x % WARP != 0) return;
    const size_t o = (size_t)slot * n_ff + row;
    if (mode == 1) {
        g[o] = has_b ? a0 + gb[r] : a0;
        return;
    }
    const float gv = mode == 0 ? (has_b ? a0 + gb[r] : a0) : g[o];
    const float uv = mode == 0 ? a1 : a0;
    h[o] = moe_glu(gv, has_b ? uv + ub[r] : uv, act);
}

template <class Q>
__device__ __forceinline__ void moe_down_impl(const u8* wd, const float* h, const int* ids, const float* wts, const float* db, float* x,
                                              int n_embd, int n_ff, int row_bytes, int k, int acc, int has_b) {
    const int row = blockIdx.x * MOE_WARPS + threadIdx.x / WARP;
    if (row >= n_embd) return;
    const int t = blockIdx.y;
    float s = 0.0f, unused;
    for (int j = 0; j < k; ++j) {
        const int slot = t * k + j;
        const size_t r = (size_t)ids[slot] * n_embd + row;
        float d;
        moe_dot2<Q>(wd + r * row_bytes, nullptr, h + (size_t)slot * n_ff, n_ff, d, unused);
        if (has_b) d += db[r];
        s += wts[slot] * d;
    }
    if (threadIdx.x % WARP == 0) {
        float* y = x + (size_t)t * n_embd + row;
        *y = acc ? *y + s : s;
    }
}

#define MOE_KERNELS(name, Q)                                                                                    \
    /* grid (ceil(n_ff/4), T*k), block 128 */                                                                     \
    extern "C" __global__ void __launch_bounds__(MOE_WARPS * WARP) moe_gate_up_##name(                           \
        const u8* __restrict__ wg, const u8* __restrict__ wu, /* [n_expert * n_ff, row_bytes] */                   \
        const float* __restrict__ x,                          /* [T, n_cols] */                                   \
        const int* __restrict__ ids,                          /* [T, k] */                                        \
        const float* __restrict__ gb, const float* __restrict__ ub, /* [n_expert, n_ff] when has_b */             \
        float* __restrict__ g, float* __restrict__ h,         /* [T, k, n_ff] */                                  \
        int n_ff, int n_cols, int row_bytes, int k, int mode, int act, int has_b) {                               \
        moe_gate_up_impl<Q>(wg, wu, x, ids, gb, ub, g, h, n_ff, n_cols, row_bytes, k, mode, act, has_b);          \
    }                                                                                                             \
    /* grid (ceil(n_embd/4), T), block 128 */                                                                     \
    extern "C" __global__ void __launch_bounds__(MOE_WARPS * WARP) moe_down_##name(                              \
        const u8* __restrict__ wd,    /* [n_expert * n_embd, row_bytes] */                                        \
        const float* __restrict__ h,  /* [T, k, n_ff] */                                                          \
        const int* __restrict__ ids, const float* __restrict__ wts, /* [T, k] */                                  \
        const float* __restrict__ db, /* [n_expert, n_embd] when has_b */                                         \
        float* __restrict__ x,        /* [T, n_embd] */                                                           \
        int n_embd, int n_ff, int row_bytes, int k, int acc, int has_b) {                                         \
        moe_down_impl<Q>(wd, h, ids, wts, db, x, n_embd, n_ff, row_bytes, k, acc, has_b);                         \
    }

FOR_EACH_QTYPE(MOE_KERNELS)

// ------------------------------------------------------------------ shared expert
// x[t, i] += sigmoid(s[t]) * y[t, i]  (the sigmoid as the CPU's: 0.5 + 0.5 tanh(s / 2), no exp overflow)
extern "C" __global__ void moe_gated_add_f32(float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ s, int n,
                                             long long total) {
    GRID_STRIDE(i, total) x[i] += y[i] * (0.5f + 0.5f * tanhf(0.5f * s[i / n]));
}

// ------------------------------------------------------------------ prefill grouped by expert
// A prompt's rows by expert (llama.cpp's mul_mat_id): the (token, slot) pairs counted and ordered per expert here,
// their inputs gathered into one block per expert, each expert's gate, up and down products the dense matmul_<type>
// over its block (ops/gpu/moe.py grouped), the GLU over every row, then scattered back with the router weights.
// So a prompt of T tokens reads each expert's weights once instead of once per token that chose it.

// grid (1), block 256: order[n] the slots s = t * k + j by expert (each expert's in slot order), inv[s] where slot s
// went, offs[n_expert + 1] where each expert's rows start (a thread per expert: T * k slots scanned twice each)
extern "C" __global__ void moe_group_slots(const int* __restrict__ ids, int* __restrict__ order, int* __restrict__ inv,
                                           int* __restrict__ offs, int n, int n_expert) {
    for (int e = threadIdx.x; e < n_expert; e += blockDim.x) {
        int c = 0;
        for (int s = 0; s < n; ++s) c += ids[s] == e;
        offs[e + 1] = c;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        offs[0] = 0;
        for (int e = 0; e < n_expert; ++e) offs[e + 1] += offs[e];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < n_expert; e += blockDim.x) {
        int o = offs[e];
        for (int s = 0; s < n; ++s)
            if (ids[s] == e) {
                order[o] = s;
                inv[s] = o++;
            }
    }
}

// xg[r] = x[order[r] / k]: each grouped row's token's input.  grid-stride over n * n_cols
extern "C" __global__ void moe_gather_rows_f32(const float* __restrict__ x, const int* __restrict__ order, float* __restrict__ xg, int k,
                                               int n_cols, long long total) {
    GRID_STRIDE(i, total) xg[i] = x[(size_t)(order[i / n_cols] / k) * n_cols + i % n_cols];
}

// h[r] = act(g[r] + gb[e], u[r] + ub[e]), e the expert of grouped row r (h may be g).  grid-stride over n * n_ff
extern "C" __global__ void moe_glu_rows_f32(const float* g, const float* __restrict__ u, const int* __restrict__ ids,
                                            const int* __restrict__ order, const float* __restrict__ gb, const float* __restrict__ ub,
                                            float* h, int n_ff, int act, int has_b, long long total) {
    GRID_STRIDE(i, total) {
        const int c = (int)(i % n_ff);
        float gv = g[i], uv = u[i];
        if (has_b) {
            const size_t r = (size_t)ids[order[i / n_ff]] * n_ff + c;
            gv += gb[r];
            uv += ub[r];
        }
        h[i] = moe_glu(gv, uv, act);
    }
}

// x[t] (+)= sum_j wts[t, j] (d[inv[t k + j]] + db[e_j]): the k slots summed in slot order and then added, as moe_down.
// grid-stride over T * n_embd
extern "C" __global__ void moe_scatter_rows_f32(const float* __restrict__ d, const int* __restrict__ ids, const int* __restrict__ inv,
                                                const float* __restrict__ wts, const float* __restrict__ db, float* __restrict__ x, int k,
                                                int n_embd, int acc, int has_b, long long total) {
    GRID_STRIDE(i, total) {
        const long long t = i / n_embd;
        const int c = (int)(i % n_embd);
        float s = 0.0f;
        for (int j = 0; j < k; ++j) {
            const long long slot = t * k + j;
            float v = d[(size_t)inv[slot] * n_embd + c];
            if (has_b) v += db[(size_t)ids[slot] * n_embd + c];
            s += wts[slot] * v;
        }
        x[i] = acc ? x[i] + s : s;
    }
}
