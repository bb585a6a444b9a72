// The mixture-of-experts variants moe.cu's kernels leave out, on the device so a
// decode step still copies nothing to the host (a CUDA graph captures it):
//
//   moe_gate_up_x_<type>  h = act(w? gate_e x, w? up_e x) for each token's k
//                         experts, as moe.cu's moe_gate_up, with the GLUs moe.cu
//                         lacks: Grok's GELU looked up in ggml's float16 table
//                         Step-3.5's clamped SwiGLU (its limit an argument), the
//                         same gate-first (Maple's, ggml's swiglu_clamp), Kimi
//                         K3's situ (its two betas arguments); and
//                         Llama 4's weight_before_ffn (w: the slot's weight
//                         scales the expert's input, not its output)
//   moe_down_x_<type>     x (+)= sum_j w_j down_e_j h_j (weight 1 where the
//                         weight went before the FFN), as moe.cu's moe_down
//   moe_chunk_route_f32   GroveMoE's chunk experts' ids and weights, read off
//                         the routed experts' ids and the router's logits
//   gelu_f16_mul_f32      out = gelu_f16(g) * u       (Grok-2's dense FFN)
//   swiglu_clamp_f32      out = min(silu(g), L) * clamp(u, -L, L)   (Step-3.5),
//                         or gate first silu(min(g, L)) * ...      (GLM-5.3-Flash)
//   swiglu_oai_f32        out = m sigmoid(1.702 m) (clamp(u, -7, 7) + 1), m =
//                         min(g, 7): gpt-oss's GLU (MiniMax-M3's shared expert)
//   situ_f32              out = b tanh(g / b) sigmoid(g) * lb tanh(u / lb) (u
//                         where lb <= 0): Kimi K3's dense FFN and shared expert
//   sigmoid_mul_f32       x *= sigmoid(s), one s per `rep` values of x (the
//                         attention gates: AFMoE's element by element,
//                         Step-3.5's one a head)
//
// No biases: none of these architectures has them on its experts.
#include "moe.cuh"

// the GLUs (ops/gpu/moe2.py ACT; 0..3 as moe.cu's)
#define MOEX_SILU 0
#define MOEX_RELU 2
#define MOEX_GELU 3          // tanh GELU (Gemma 4's)
#define MOEX_GELU_F16 4      // Grok's: ggml's CPU GELU, its float16 table
#define MOEX_SWIGLU_CLAMP 5  // Step-3.5's: min(silu(g), limit) * clamp(u, -limit, limit)
#define MOEX_SWIGLU_CLAMP_FIRST 6  // Maple's (ggml's swiglu_clamp): silu(min(g, limit)) * clamp(u, -limit, limit)
#define MOEX_SITU 7          // Kimi K3's: beta tanh(g / beta) sigmoid(g) * lb tanh(u / lb) (limit: beta; lb <= 0: u as it is)

// ggml's CPU GELU (GGML_GELU_FP16, models/bert.py gelu): the input rounded to
// float16, the tanh GELU of it rounded to float16, inputs past +-10 passed / zeroed
__device__ __forceinline__ float gelu_f16_f(float x) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x;
    return h2f(f2h(gelu_f(h2f(f2h(x)))));
}

// silu as the CPU's moe.swiglu_clamped computes it (0.5 + 0.5 tanh(g / 2): no overflow), then the clamps
__device__ __forceinline__ float swiglu_clamp_f(float g, float u, float limit) {
    const float s = g * (0.5f + 0.5f * tanhf(0.5f * g));
    return fminf(s, limit) * fminf(fmaxf(u, -limit), limit);
}

// Kimi K3's situ as models/kimi_k3.py situ computes it in float32 (the sigmoid in the tanh form of ops/host.py's)
__device__ __forceinline__ float situ_f(float g, float u, float beta, float lb) {
    const float a = beta * tanhf(g / beta) * (0.5f + 0.5f * tanhf(0.5f * g));
    return a * (lb > 0.0f ? lb * tanhf(u / lb) : u);
}

// (limit2: the act's second constant, situ's linear beta; unread by the others)
__device__ __forceinline__ float moex_glu(float g, float u, int act, float limit, float limit2) {
    if (act == MOEX_SITU) return situ_f(g, u, limit, limit2);
    if (act == MOEX_GELU_F16) return gelu_f16_f(g) * u;
    if (act == MOEX_SWIGLU_CLAMP) return swiglu_clamp_f(g, u, limit);
    // (silu(min(g, limit)) <= limit: swiglu_clamp_f's min after the SiLU leaves it so, as the CPU's moe.experts_add)
    if (act == MOEX_SWIGLU_CLAMP_FIRST) return swiglu_clamp_f(fminf(g, limit), u, limit);
    if (act == MOEX_RELU) return fmaxf(g, 0.0f) * u;
    if (act == MOEX_GELU) return gelu_f(g) * u;
    return silu_f(g) * u;
}

// mode 0: both matrices of this type; 1: g = gate x (the gate's type); 2: h = act(g, up x) (the up's).
// wbf: the products times the slot's weight (the expert's input scaled: the products are linear in it).
template <class Q>
__device__ __forceinline__ void moex_gate_up_impl(const u8* wg, const u8* wu, const float* x, const int* ids, const float* wts,
                                                  float* g, float* h, int n_ff, int n_cols, int row_bytes, int k, int mode, int act,
                                                  int wbf, float limit, float limit2) {
    const int row = blockIdx.x * MOE_WARPS + threadIdx.x / WARP;
    if (row >= n_ff) return;  // the whole warp leaves together
    const int slot = blockIdx.y, e = ids[slot];
    const size_t r = (size_t)e * n_ff + row;
    const float* xt = x + (size_t)(slot / k) * n_cols;
    float a0, a1;
    moe_gate_up_dots<Q>(wg, wu, xt, r, row_bytes, n_cols, mode, a0, a1);
    if (threadIdx.x % WARP != 0) return;
    if (wbf) {
        a0 *= wts[slot];
        a1 *= wts[slot];
    }
    const size_t o = (size_t)slot * n_ff + row;
    if (mode == 1) {
        g[o] = a0;
        return;
    }
    h[o] = mode == 0 ? moex_glu(a0, a1, act, limit, limit2) : moex_glu(g[o], a0, act, limit, limit2);
}

template <class Q>
__device__ __forceinline__ void moex_down_impl(const u8* wd, const float* h, const int* ids, const float* wts, float* x, int n_embd,
                                               int n_ff, int row_bytes, int k, int acc, int wbf) {
    const int row = blockIdx.x * MOE_WARPS + threadIdx.x / WARP;
    if (row >= n_embd) return;
    const int t = blockIdx.y;
    float s = 0.0f, unused;
    for (int j = 0; j < k; ++j) {
        const int slot = t * k + j;
        float d;
        moe_dot2<Q>(wd + ((size_t)ids[slot] * n_embd + row) * row_bytes, nullptr, h + (size_t)slot * n_ff, n_ff, d, unused);
        s += wbf ? d : wts[slot] * d;
    }
    if (threadIdx.x % WARP == 0) {
        float* y = x + (size_t)t * n_embd + row;
        *y = acc ? *y + s : s;
    }
}

#define MOEX_KERNELS(name, Q)                                                                                   \
    /* grid (ceil(n_ff/4), T*k), block 128 */                                                                     \
    extern "C" __global__ void __launch_bounds__(MOE_WARPS * WARP) moe_gate_up_x_##name(                        \
        const u8* __restrict__ wg, const u8* __restrict__ wu, /* [n_expert * n_ff, row_bytes] */                   \
        const float* __restrict__ x,                          /* [T, n_cols] */                                   \
        const int* __restrict__ ids, const float* __restrict__ wts, /* [T, k] */                                  \
        float* __restrict__ g, float* __restrict__ h,         /* [T, k, n_ff] */                                  \
        int n_ff, int n_cols, int row_bytes, int k, int mode, int act, int wbf, float limit, float limit2) {      \
        moex_gate_up_impl<Q>(wg, wu, x, ids, wts, g, h, n_ff, n_cols, row_bytes, k, mode, act, wbf, limit, limit2); \
    }                                                                                                             \
    /* grid (ceil(n_embd/4), T), block 128 */                                                                     \
    extern "C" __global__ void __launch_bounds__(MOE_WARPS * WARP) moe_down_x_##name(                           \
        const u8* __restrict__ wd,    /* [n_expert * n_embd, row_bytes] */                                        \
        const float* __restrict__ h,  /* [T, k, n_ff] */                                                          \
        const int* __restrict__ ids, const float* __restrict__ wts, /* [T, k] */                                  \
        float* __restrict__ x,        /* [T, n_embd] */                                                           \
        int n_embd, int n_ff, int row_bytes, int k, int acc, int wbf) {                                           \
        moex_down_impl<Q>(wd, h, ids, wts, x, n_embd, n_ff, row_bytes, k, acc, wbf);                              \
    }

FOR_EACH_QTYPE(MOEX_KERNELS)

// ------------------------------------------------------------------ GroveMoE's chunk experts
// grid (T), block 32 (lane 0 works: k is a handful).  The chunk expert of slot j is ids[t, j] / group; its weight the
// router's softmax probability of expert *cid* (llama.cpp's graph indexes them so), renormalised over the kc slots
// (the sum floored at float16's smallest normal, as llama.cpp), times scale (expert_group_scale).
extern "C" __global__ void moe_chunk_route_f32(const float* __restrict__ logits, /* [T, n_expert] */
                                               const int* __restrict__ ids,      /* [T, k] */
                                               int* __restrict__ cids,           /* [T, kc] */
                                               float* __restrict__ cw,           /* [T, kc] */
                                               int n_expert, int k, int kc, int group, float scale) {
    const int t = blockIdx.x, lane = threadIdx.x;
    const float* z = logits + (size_t)t * n_expert;
    float m = NEG_INF;
    for (int e = lane; e < n_expert; e += WARP) m = fmaxf(m, z[e]);
    m = warp_max(m);
    float s = 0.0f;
    for (int e = lane; e < n_expert; e += WARP) s += expf(z[e] - m);
    s = warp_sum(s);
    if (lane != 0) return;
    float sum = 0.0f;
    for (int j = 0; j < kc; ++j) {
        const int c = ids[(size_t)t * k + j] / group;
        const float p = expf(z[c] - m) / s;
        cids[(size_t)t * kc + j] = c;
        cw[(size_t)t * kc + j] = p;
        sum += p;
    }
    sum = fmaxf(sum, 6.103515625e-5f);
    for (int j = 0; j < kc; ++j) cw[(size_t)t * kc + j] = cw[(size_t)t * kc + j] / sum * scale;
}

// ------------------------------------------------------------------ element-wise
// (out may be g)
extern "C" __global__ void gelu_f16_mul_f32(const float* g, const float* __restrict__ u, float* out, long long n) {
    GRID_STRIDE(i, n) out[i] = gelu_f16_f(g[i]) * u[i];
}

// (out may be g)  gate_first: the gate clamped before its SiLU (MOEX_SWIGLU_CLAMP_FIRST's, GLM-5.3-Flash's dense FFN
// and shared expert), else after it (MOEX_SWIGLU_CLAMP's)
extern "C" __global__ void swiglu_clamp_f32(const float* g, const float* __restrict__ u, float* out, float limit, int gate_first,
                                            long long n) {
    GRID_STRIDE(i, n) out[i] = moex_glu(g[i], u[i], gate_first ? MOEX_SWIGLU_CLAMP_FIRST : MOEX_SWIGLU_CLAMP, limit, 0.0f);
}

// (out may be g)  gpt-oss's clamped GLU as moe.cu's experts compute it (MOE_SWIGLU_OAI; ops/cpu/moe.py swiglu_oai):
// MiniMax-M3's shared expert, which runs beside its routed experts as an ordinary product
extern "C" __global__ void swiglu_oai_f32(const float* g, const float* __restrict__ u, float* out, long long n) {
    GRID_STRIDE(i, n) out[i] = swiglu_oai_f(g[i], u[i]);
}

// (out may be g)  Kimi K3's situ (MOEX_SITU's) element by element: its dense FFN and shared expert
extern "C" __global__ void situ_f32(const float* g, const float* __restrict__ u, float* out, float beta, float lb, long long n) {
    GRID_STRIDE(i, n) out[i] = situ_f(g[i], u[i], beta, lb);
}

// x[i] *= sigmoid(s[i / rep])  (0.5 + 0.5 tanh(s / 2): no overflow either way)
extern "C" __global__ void sigmoid_mul_f32(float* __restrict__ x, const float* __restrict__ s, long long rep, long long n) {
    GRID_STRIDE(i, n) x[i] *= 0.5f + 0.5f * tanhf(0.5f * s[i / rep]);
}
