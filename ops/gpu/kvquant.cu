// Writing the compressed KV cache on the device: the quantizer of
// cache/quant.py and a steady-state decode step of cache/insert.py, so a
// policy-free compressed cache on the GPU never copies a token's K/V down.
//
// Layout (kvq.cuh, cache/pool.py): a row is one token's K (or V) of one KV
// head, Dx values in groups of G; per group a scale code u (s = lut[u]) and a
// zero code zc (z = zc (2^b - 1) / 255), codes c = clamp(floor(x / s + z + 1/2))
// packed group-planar.  Per group the quantizer tries each clipping ratio of
// the range (the range always includes 0), then one least-squares refit of
// step and offset to that ratio's codes, and keeps whichever candidate has the
// least squared error: cache/quant.py's _quantize_group, with the same float32
// and float64 steps (Numba promotes float32 op int to float64, so do we).  Only
// the order of the group sums differs (a butterfly here, vector lanes there),
// so a rare near-tie between two candidates can go the other way.
//
// One block per row (kvq_quantize_rows) or per KV head (kv_decode_push), one
// thread per value: blockDim.x = the row width rounded up to a multiple of 32
// (<= 1024).  A group's sums are warp butterflies (G <= 32) plus, for G > 32,
// one pass through shared memory; every lane of a group gets bitwise the same
// sums (IEEE addition commutes), so the lanes take the same branches.  Control
// flow stays uniform across the whole block (flags, not breaks): the shuffles
// and barriers need every thread.
#include "kvq.cuh"
#include "ranks.cuh"

#define KQ_MAX_T 1024    // threads per block (the widest row)
#define KQ_MAX_CLIPS 8   // clipping ratios per width (cache/quant.py CLIPS), 0-terminated
#define KQ_WARPS (KQ_MAX_T / WARP)
#define KQ_SCR (4 * KQ_WARPS)  // shared floats kq_group needs: up to 4 values at once

// Reduction ops over one group of G consecutive threads (G a power of two).
#define KQ_SUM 0
#define KQ_MIN 1
#define KQ_MAX 2

__device__ __forceinline__ float kq_op(int op, float a, float b) { return op == KQ_SUM ? a + b : op == KQ_MIN ? fminf(a, b) : fmaxf(a, b); }

// Reduce N values at once over each group of G consecutive threads (G a power of
// two), value i with op ops[i]; every thread of the block must call this, and each
// gets its own group's results in v.  Each value takes the butterfly one reduction
// alone would (so the results are bitwise those of N separate reductions), but the N
// shuffles of a level are independent and, for G > 32, the group's warps meet at one
// barrier pair instead of N: the quantizer's clipping search is a chain of such
// reductions on one block, so their latency is its time.
// scr: [N * KQ_MAX_T / 32] shared floats.
template <int N>
__device__ __forceinline__ void kq_group(const int (&ops)[N], float (&v)[N], int G, float* scr) {
    const int lim = G < WARP ? G : WARP;
    for (int o = lim / 2; o > 0; o >>= 1) {
#pragma unroll
        for (int i = 0; i < N; ++i) v[i] = kq_op(ops[i], v[i], __shfl_xor_sync(FULL_MASK, v[i], o));
    }
    if (G > WARP) {  // combine the group's warps, in warp order (the same order for every lane)
        const int lane = threadIdx.x % WARP, wid = threadIdx.x / WARP, per = G / WARP;
        __syncthreads();  // scr may still be read by a previous call
        if (lane == 0) {
#pragma unroll
            for (int i = 0; i < N; ++i) scr[i * KQ_WARPS + wid] = v[i];
        }
        __syncthreads();
        const int w0 = wid / per * per;
#pragma unroll
        for (int i = 0; i < N; ++i) {
            float a = scr[i * KQ_WARPS + w0];
            for (int k = 1; k < per; ++k) a = kq_op(ops[i], a, scr[i * KQ_WARPS + w0 + k]);
            v[i] = a;
        }
    }
}

__device__ __forceinline__ int kq_byte(double v) { return v < 0.0 ? 0 : v > 255.0 ? 255 : (int)v; }

// Quantize one row held one value per thread (thread d < Dx holds x; the rest
// pass anything and `on` = false) into codes [Dx * w / 8] and meta [Dx / G, 2]
// (16 bits: the float16 bytes, as cache/quant.py quantize_row stores them).
// clips: this width's clipping ratios, 0-terminated.  cs: [KQ_MAX_T] shared ints.
__device__ void kq_quantize_row(float x, bool on, int Dx, int bits, int G, const float* lut, const float* clips, u8* codes, u8* meta,
                                int* cs, float* scr) {
    const int d = threadIdx.x;
    if (bits == 16) {  // an fp16 pool (an eviction policy alone): the value's float16 bytes, little-endian, no meta
        if (on) st16(codes + 2 * d, f2h(x));  // (rows of 2 Dx bytes: every slot 2-aligned)
        return;
    }
    const int L = (1 << bits) - 1;
    const float Lf = (float)L;
    float r3[3] = {on ? fminf(x, 0.0f) : 0.0f, on ? fmaxf(x, 0.0f) : 0.0f, on ? x : 0.0f};
    kq_group({KQ_MIN, KQ_MAX, KQ_SUM}, r3, G, scr);
    const float lo = r3[0], hi = r3[1], sx = r3[2];
    const double e0 = log2((double)lut[0]);
    const bool flat = !(hi - lo > 0.0f);  // an all-zero group: codes 0, u = zc = 0
    float best_err = 3.0e38f;
    int bu = 0, bz = 0, bc = 0;
    for (int ci = 0; ci < KQ_MAX_CLIPS && clips[ci] > 0.0f; ++ci) {
        const float c = clips[ci];
        int u = 0, zc = 0;
        if (!flat) {
            const double target = (double)((hi - lo) * c) / L;
            u = kq_byte(ceil((log2(target) - e0) * 16.0 - 1e-6));
            zc = kq_byte(rint((double)(-lo * c / lut[u]) * 255.0 / L));
        }
        bool live = !flat;
        for (int refine = 0; refine < 2; ++refine) {
            const float s = lut[u];
            const float z = (float)zc * Lf / 255.0f;
            const float inv = 1.0f / s;
            const float qf = fminf(fmaxf(floorf(x * inv + z + 0.5f), 0.0f), Lf);
            const float e = s * (qf - z) - x;
            float r4[4] = {on ? e * e : 0.0f, on ? qf : 0.0f, on ? qf * qf : 0.0f, on ? qf * x : 0.0f};
            kq_group({KQ_SUM, KQ_SUM, KQ_SUM, KQ_SUM}, r4, G, scr);
            const float err = r4[0], sq = r4[1], sqq = r4[2], sqx = r4[3];
            if (live && err < best_err) {
                best_err = err;
                bu = u;
                bz = zc;
                bc = (int)qf;
            }
            // the least-squares step and offset for these codes (x ~ a q + b), re-encoded to the table
            const double den = (double)G * sqq - (double)(sq * sq);
            if (refine == 1 || den <= 0.0) live = false;
            if (live) {
                const double a = ((double)G * sqx - (double)(sq * sx)) / den;
                if (a <= 0.0) {
                    live = false;
                } else {
                    const double b = (sx - a * sq) / G;
                    u = kq_byte(rint((log2(a) - e0) * 16.0));
                    zc = kq_byte(rint(-b / lut[u] * 255.0 / L));
                }
            }
        }
    }
    // pack group-planar: byte i of a group holds values i, i + nb, ... at bits 0, w, ...
    // (3 bits: the low bits' 2-bit plane over G/4 bytes, then the high bits' 1-bit plane over G/8)
    const int w = bits, per = 8 / w, nb = G * w / 8;
    __syncthreads();  // cs may still be read by a previous row's packing
    if (on) cs[d] = bc;
    if (on && d % G == 0) {
        meta[2 * (d / G)] = (u8)bu;
        meta[2 * (d / G) + 1] = (u8)bz;
    }
    __syncthreads();
    for (int b = d; b < Dx * w / 8; b += blockDim.x) {
        const int g = b / nb, i = b - g * nb;
        int byte = 0;
        if (w != 3) {
            for (int m = 0; m < per; ++m) byte |= cs[g * G + m * nb + i] << (m * w);
        } else if (i < G / 4) {
            for (int m = 0; m < 4; ++m) byte |= (cs[g * G + m * (G / 4) + i] & 3) << (2 * m);
        } else {
            for (int m = 0; m < 8; ++m) byte |= (cs[g * G + m * (G / 8) + i - G / 4] >> 2) << m;
        }
        codes[b] = (u8)byte;
    }
}

// x <- x @ H for the orthonormal Sylvester-Hadamard H, in shared memory: the
// butterfly network of cache/insert.py's fwht, stage by stage in the same order,
// so the result is bitwise the CPU's.  n = m * b, b the largest power of two
// dividing n: H is blockdiag(H_b, ..., H_b) (cache/quant.py hadamard); the stages
// below b pair i with i + h inside each block already, so they stop there.
__device__ void kq_fwht(float* x, int n) {
    const int bw = n & -n;  // the block (n itself when a power of two)
    for (int h = 1; h < bw; h <<= 1) {
        __syncthreads();
        for (int t = threadIdx.x; t < n / 2; t += blockDim.x) {
            const int i = (t / h) * 2 * h + (t % h);
            const float a = x[i], b = x[i + h];
            x[i] = a + b;
            x[i + h] = a - b;
        }
    }
    __syncthreads();
    const float s = (float)(1.0 / sqrt((double)bw));
    for (int t = threadIdx.x; t < n; t += blockDim.x) x[t] *= s;
    __syncthreads();
}

// y = x @ H row by row (kq_fwht): x, y [n_rows, n] float32, n even.  A decode
// step's output back from the rotated V basis (H is its own inverse), as a kernel a
// captured CUDA graph replays.  grid (n_rows), block (n rounded up to 32).
extern "C" __global__ void __launch_bounds__(KQ_MAX_T) kv_fwht_rows(const float* x, float* y, int n) {
    __shared__ float xs[KQ_MAX_T];
    const size_t r = blockIdx.x;
    for (int t = threadIdx.x; t < n; t += blockDim.x) xs[t] = x[r * n + t];
    kq_fwht(xs, n);
    for (int t = threadIdx.x; t < n; t += blockDim.x) y[r * n + t] = xs[t];
}

// Quantize rows: x [n_rows, Dx] float32 -> codes [n_rows, Dx*w/8], meta [n_rows, Dx/G, 2].
// grid (n_rows), block (Dx rounded up to 32).
extern "C" __global__ void __launch_bounds__(KQ_MAX_T) kvq_quantize_rows(const float* x, u8* codes, u8* meta, const float* lut, const float* clips, int Dx, int bits,
                                             int G) {
    __shared__ int cs[KQ_MAX_T];
    __shared__ float scr[KQ_SCR];
    const size_t r = blockIdx.x;
    const int d = threadIdx.x;
    const bool on = d < Dx;
    const int rb = Dx * bits / 8;
    kq_quantize_row(on ? x[r * Dx + d] : 0.0f, on, Dx, bits, G, lut, clips, codes + r * rb, meta + r * (Dx / G) * 2, cs, scr);
}

// One token into a policy-free compressed layer, for one KV head (the block's):
//
//   jc >= 0: pool 0 slot jq's token cools: dequantized, re-quantized into pool 1 slot jc;
//   jq >= 0: fp16 slot j's token spills: quantized into pool 0 slot jq;
//   always:  the new token goes to fp16 slot j in the cache basis,
//            keys (k * t_k) @ H - mu, values v @ H (H where rot_*);
//   and the positions follow in prow (when given): prow[lo1 + jc] = prow[lo0 + jq], prow[lo0 + jq] = prow[j], prow[j] = p.
//
// (cache/insert.py decode_push; the host chose the slots with plan_push.)
// k [D], v [Dv] this head's new row; t_k, mu [D] this head's basis; prow: the
// position row this block moves (block 0's shared row without a policy, the
// head's own row with one), nullptr for none.
struct KQPools {
    u16 *k16, *v16;
    u8 *kc0, *km0, *vc0, *vm0, *kc1, *km1, *vc1, *vm1;
    const float *luts, *clips;  // [4, 256] klut0, vlut0, klut1, vlut1; [4, KQ_MAX_CLIPS] the same four
    int* pos;                   // [P, F + C0 + C1]: P = 1 shared row (no policy), else one row per KV head
    int F, C0, C1, D, Dv, G, wk0, wv0, wk1, wv1;
};

__device__ void kq_push_token(const KQPools& c, const float* k, const float* v, const float* t_k, const float* mu, int j, int jq, int jc,
                              int p, int rot_k, int rot_v, int* prow, float* xs, int* cs, float* scr) {
    const int h = blockIdx.x, d = threadIdx.x;
    const int D = c.D, Dv = c.Dv, G = c.G, F = c.F;
    const bool onk = d < D, onv = d < Dv;
    const int lgG = kvq_log2_exact(G);
    const size_t kb0 = (size_t)D * c.wk0 / 8, vb0 = (size_t)Dv * c.wv0 / 8;
    const size_t kb1 = (size_t)D * c.wk1 / 8, vb1 = (size_t)Dv * c.wv1 / 8;
    const size_t km = (size_t)(D / G) * 2, vm = (size_t)(Dv / G) * 2;
    if (jc >= 0) {  // the warm pool's oldest token moves to the cold pool at its widths
        const size_t r0 = (size_t)h * c.C0 + jq, r1 = (size_t)h * c.C1 + jc;
        KVQRow rk{c.kc0 + r0 * kb0, c.km0 + r0 * km, c.luts, c.wk0};
        KVQRow rv{c.vc0 + r0 * vb0, c.vm0 + r0 * vm, c.luts + 256, c.wv0};
        const float xk = onk ? kvq_value(rk, G, lgG, d) : 0.0f;
        const float xv = onv ? kvq_value(rv, G, lgG, d) : 0.0f;
        kq_quantize_row(xk, onk, D, c.wk1, G, c.luts + 512, c.clips + 2 * KQ_MAX_CLIPS, c.kc1 + r1 * kb1, c.km1 + r1 * km, cs, scr);
        kq_quantize_row(xv, onv, Dv, c.wv1, G, c.luts + 768, c.clips + 3 * KQ_MAX_CLIPS, c.vc1 + r1 * vb1, c.vm1 + r1 * vm, cs, scr);
    }
    if (jq >= 0) {  // the window's oldest token spills into pool 0
        const size_t r0 = (size_t)h * c.C0 + jq;
        const float xk = onk ? h2f(c.k16[((size_t)h * F + j) * D + d]) : 0.0f;
        const float xv = onv ? h2f(c.v16[((size_t)h * F + j) * Dv + d]) : 0.0f;
        kq_quantize_row(xk, onk, D, c.wk0, G, c.luts, c.clips, c.kc0 + r0 * kb0, c.km0 + r0 * km, cs, scr);
        kq_quantize_row(xv, onv, Dv, c.wv0, G, c.luts + 256, c.clips + KQ_MAX_CLIPS, c.vc0 + r0 * vb0, c.vm0 + r0 * vm, cs, scr);
    }
    __syncthreads();  // the spill read slot j; the new token overwrites it
    if (onk) xs[d] = k[d] * t_k[d];
    if (rot_k) kq_fwht(xs, D);
    __syncthreads();
    if (onk) c.k16[((size_t)h * F + j) * D + d] = f2h(xs[d] - mu[d]);
    __syncthreads();
    if (onv) xs[d] = v[d];
    if (rot_v) kq_fwht(xs, Dv);
    __syncthreads();
    if (onv) c.v16[((size_t)h * F + j) * Dv + d] = f2h(xs[d]);
    __syncthreads();
    if (prow != nullptr && d == 0) {  // one thread moves the positions, in token order
        if (jc >= 0) prow[F + c.C0 + jc] = prow[F + jq];
        if (jq >= 0) prow[F + jq] = prow[j];
        prow[j] = p;
    }
}

// qr = (q / t_k) @ H for the query heads of this block's KV head (H where rot_k).
// q, qr [n_head, D]; t_k [n_kv, D].
__device__ void kq_queries(const float* q, const float* t_k, float* qr, int n_head, int D, int rot_k, float* xs) {
    const int h = blockIdx.x, n_kv = gridDim.x, d = threadIdx.x;
    const int gqa = n_head / n_kv;
    for (int i = 0; i < gqa; ++i) {
        const size_t row = (size_t)(h * gqa + i) * D;
        __syncthreads();
        if (d < D) xs[d] = q[row + d] / t_k[(size_t)h * D + d];
        if (rot_k) kq_fwht(xs, D);
        __syncthreads();
        if (d < D) qr[row + d] = xs[d];
    }
}

#define KQ_POOL_PARAMS                                                                                                                 \
    u16 *k16, u16 *v16, u8 *kc0, u8 *km0, u8 *vc0, u8 *vm0, u8 *kc1, u8 *km1, u8 *vc1, u8 *vm1, const float *luts, const float *clips, \
        int *pos
#define KQ_POOL_SIZES int F, int C0, int C1, int D, int Dv, int G, int wk0, int wv0, int wk1, int wv1
#define KQ_POOLS {k16, v16, kc0, km0, vc0, vm0, kc1, km1, vc1, vm1, luts, clips, pos, F, C0, C1, D, Dv, G, wk0, wv0, wk1, wv1}

// A decode token (kq_push_token) and its queries into the cache basis:
// qr = (q / t_k) @ H.  Its slots (j, jq, jc) come as scalars (an eager step:
// no upload), or from plan [3] when use_plan (a captured CUDA graph, whose
// launch arguments are fixed: the host writes each replay's plan into the
// graph's input buffer); its position is ppos[0] (the step's device positions).
// q [n_head, D], k [n_kv, D], v [n_kv, Dv], t_k, mu [n_kv, D] float32; qr [n_head, D] out.
// grid (n_kv), block (max(D, Dv) rounded up to 32).
extern "C" __global__ void __launch_bounds__(KQ_MAX_T) kv_decode_push(const float* q, const float* k, const float* v, const float* t_k, const float* mu, KQ_POOL_PARAMS,
                                          float* qr, const int* plan, const int* ppos, int use_plan, int j, int jq, int jc, int n_head, int rot_k,
                                          int rot_v, KQ_POOL_SIZES) {
    __shared__ float xs[KQ_MAX_T];
    __shared__ int cs[KQ_MAX_T];
    __shared__ float scr[KQ_SCR];
    const KQPools c KQ_POOLS;
    const int h = blockIdx.x;
    const int p = ppos[0];
    if (use_plan) j = plan[0], jq = plan[1], jc = plan[2];  // a replayed CUDA graph: the host refills plan each step
    // positions are shared by all heads (no policy): block 0 moves them
    kq_push_token(c, k + (size_t)h * D, v + (size_t)h * Dv, t_k + (size_t)h * D, mu + (size_t)h * D, j, jq, jc, p, rot_k, rot_v,
                  h == 0 ? c.pos : nullptr, xs, cs, scr);
    kq_queries(q, t_k, qr, n_head, D, rot_k, xs);
}

// A prefill chunk's tokens, in order (each may spill the one before it):
// k [T, n_kv, D], v [T, n_kv, Dv]; slots [T, 3] (j, jq, jc) and ppos [T] as
// plan_push gave them token by token.  grid (n_kv), block as kv_decode_push.
extern "C" __global__ void __launch_bounds__(KQ_MAX_T) kv_push_tokens(const float* k, const float* v, const float* t_k, const float* mu, KQ_POOL_PARAMS, const int* slots,
                                          const int* ppos, int T, int rot_k, int rot_v, KQ_POOL_SIZES) {
    __shared__ float xs[KQ_MAX_T];
    __shared__ int cs[KQ_MAX_T];
    __shared__ float scr[KQ_SCR];
    const KQPools c KQ_POOLS;
    const int h = blockIdx.x, n_kv = gridDim.x;
    for (int t = 0; t < T; ++t) {
        const int* sl = slots + 3 * t;
        kq_push_token(c, k + ((size_t)t * n_kv + h) * D, v + ((size_t)t * n_kv + h) * Dv, t_k + (size_t)h * D, mu + (size_t)h * D, sl[0], sl[1],
                      sl[2], ppos[t], rot_k, rot_v, h == 0 ? c.pos : nullptr, xs, cs, scr);
    }
}

// The slot of one head's pool to fill: its first empty slot (position < 0),
// else the least important by `rank` (the policy's, [C]; nullptr: all equal),
// the oldest of those on ties: Policy.victim in cache/policies/base.py.  prow:
// the pool's [C] positions.  Positions below `start` (Llama 4's older chunks,
// cache/insert.py chunk_floor; 0: none) rank below any score: the oldest goes.
// Warp 0 scans (lanes stride the slots, then a
// butterfly keeps the best); every thread gets the slot, and *was_empty.
__device__ int kq_pick(const int* prow, const float* rank, int C, int start, bool* was_empty, int* si) {
    const int d = threadIdx.x;
    __syncthreads();  // si may still be read from the last call
    if (d < WARP) {
        int e = C, bi = -1, bp = 0;  // first empty slot; best occupied slot and its position
        float br = 0.0f;
        for (int s = d; s < C; s += WARP) {
            const int ps = prow[s];
            const float r = ps < start ? NEG_INF : rank != nullptr ? rank[s] : 0.0f;
            if (ps < 0) {
                if (s < e) e = s;
            } else if (bi < 0 || r < br || (r == br && ps < bp)) {
                bi = s, br = r, bp = ps;
            }
        }
        for (int o = WARP / 2; o > 0; o >>= 1) {
            const int e2 = __shfl_xor_sync(FULL_MASK, e, o), bi2 = __shfl_xor_sync(FULL_MASK, bi, o);
            const int bp2 = __shfl_xor_sync(FULL_MASK, bp, o);
            const float br2 = __shfl_xor_sync(FULL_MASK, br, o);
            e = e2 < e ? e2 : e;
            if (bi2 >= 0 && (bi < 0 || br2 < br || (br2 == br && bp2 < bp))) bi = bi2, br = br2, bp = bp2;
        }
        if (d == 0) si[0] = e < C ? e : bi, si[1] = e < C;
    }
    __syncthreads();
    *was_empty = si[1] != 0;
    return si[0];
}

// Merging into a kept token (cache/merge.py Merger.evict): what kq_merge needs beyond the pools.
struct KQMerge {
    int mode;         // 0 none, 1 mean (D2O/CaM averaging above `threshold`), 2 keepkv (votes and scores)
    float threshold;  // least cosine similarity that merges (below: the victim is dropped)
    float* logw;      // [n_kv, N] log merge weights (keepkv), else nullptr
    const float* score;  // [n_kv, N] the policy's scores, weighing a keepkv merge, else nullptr
    float* fold0;     // [n_kv, N] state the victim's entry adds into the target's (Policy.fold_arrays), or nullptr
    float* fold1;
};

// The token in slot v of pool `pool` (this block's head) is evicted: fold it into the kept
// token of that pool whose key is most similar (cosine; the first on ties), when at least
// m.threshold; re-quantize that target; add the victim's state into the target's.  As
// Merger.evict: called before the slot is overwritten.  xs: [KQ_MAX_T] shared floats, cs as kq_quantize_row's;
// red: [32] shared floats; redi: [32] shared ints.
__device__ void kq_merge(const KQPools& c, const KQMerge& m, int pool, int v, float* xs, int* cs, float* scr, float* red, int* redi) {
    const int h = blockIdx.x, d = threadIdx.x, lane = d % WARP, wid = d / WARP, nw = (blockDim.x + WARP - 1) / WARP;
    const int D = c.D, Dv = c.Dv, G = c.G, lgG = kvq_log2_exact(G);
    const int C = pool ? c.C1 : c.C0, lo = c.F + (pool ? c.C0 : 0), N = c.F + c.C0 + c.C1;
    const int wk = pool ? c.wk1 : c.wk0, wv = pool ? c.wv1 : c.wv0;
    u8* kc = pool ? c.kc1 : c.kc0;
    u8* kmeta = pool ? c.km1 : c.km0;
    u8* vc = pool ? c.vc1 : c.vc0;
    u8* vmeta = pool ? c.vm1 : c.vm0;
    const float* klut = c.luts + (pool ? 512 : 0);
    const float* vlut = klut + 256;
    const float* kclips = c.clips + (pool ? 2 : 0) * KQ_MAX_CLIPS;
    const float* vclips = kclips + KQ_MAX_CLIPS;
    const size_t kb = (size_t)D * wk / 8, vb = (size_t)Dv * wv / 8;
    const size_t kmb = (size_t)(D / G) * 2, vmb = (size_t)(Dv / G) * 2;
    const int* prow = c.pos + (size_t)h * N + lo;
    const bool onk = d < D, onv = d < Dv;
    // the victim's key in shared memory (every warp reads it), its value in a register
    const size_t rv = (size_t)h * C + v;
    const KVQRow vkr{kc + rv * kb, kmeta + rv * kmb, klut, wk};
    const KVQRow vvr{vc + rv * vb, vmeta + rv * vmb, vlut, wv};
    const float ke = onk ? kvq_value(vkr, G, lgG, d) : 0.0f;
    const float ve = onv ? kvq_value(vvr, G, lgG, d) : 0.0f;
    __syncthreads();
    if (onk) xs[d] = ke;
    const float nq = block_sum(onk ? ke * ke : 0.0f, red);  // (its barriers publish xs too)
    // similarities: warp w takes slots w, w + nw, ...; each keeps its best (the first of equals)
    float best = NEG_INF;
    int bt = -1;
    for (int s = wid; s < C; s += nw) {
        float sim = NEG_INF;
        if (s != v && prow[s] >= 0) {
            const size_t r = (size_t)h * C + s;
            const KVQRow kr{kc + r * kb, kmeta + r * kmb, klut, wk};
            float dot = 0.0f, nk = 0.0f;
            for (int e = lane; e < D; e += WARP) {
                const float x = kvq_value(kr, G, lgG, e);
                dot += x * xs[e];
                nk += x * x;
            }
            dot = warp_sum(dot);
            nk = warp_sum(nk);
            const float den = sqrtf(nq * nk);
            sim = den > 0.0f ? dot / den : 0.0f;
        }
        if (bt < 0 || sim > best) best = sim, bt = s;  // s rises: a later equal never wins
    }
    __syncthreads();
    if (lane == 0) red[wid] = best, redi[wid] = bt;
    __syncthreads();
    int t = -1;
    float st = NEG_INF;
    for (int i = 0; i < nw; ++i)  // warps in order; within equal sims the smaller slot
        if (redi[i] >= 0 && (t < 0 || red[i] > st || (red[i] == st && redi[i] < t))) st = red[i], t = redi[i];
    if (t < 0 || !(st >= m.threshold)) return;  // nothing similar enough: the victim is dropped (uniform: every thread saw the same)
    // combine with the target's rows (cache/merge.py combine; float32 products and sums, not contracted)
    const size_t rt = (size_t)h * C + t;
    const KVQRow tkr{kc + rt * kb, kmeta + rt * kmb, klut, wk};
    const KVQRow tvr{vc + rt * vb, vmeta + rt * vmb, vlut, wv};
    const float kt = onk ? kvq_value(tkr, G, lgG, d) : 0.0f;
    const float vt = onv ? kvq_value(tvr, G, lgG, d) : 0.0f;
    float kn, vn;
    const int je = lo + v, jt = lo + t;
    if (m.mode == 1) {  // (kt + w ke) / (1 + w), w = the similarity
        const float w = st, one_w = __fadd_rn(1.0f, w);
        kn = __fdiv_rn(__fadd_rn(kt, __fmul_rn(w, ke)), one_w);
        vn = __fdiv_rn(__fadd_rn(vt, __fmul_rn(w, ve)), one_w);
    } else {  // KeepKV: votes exp(logw), times the scores when the policy has them; weights in double as the host's
        const float* lw = m.logw + (size_t)h * N;
        const double ne = exp((double)lw[je]), nt = exp((double)lw[jt]);
        double ae = ne, at = nt;
        if (m.score != nullptr) {
            const float* sc = m.score + (size_t)h * N;
            ae *= fmax((double)sc[je], 1e-6);
            at *= fmax((double)sc[jt], 1e-6);
        }
        const float we = (float)(ae / (ae + at)), wt = (float)(at / (ae + at));
        kn = __fadd_rn(__fmul_rn(wt, kt), __fmul_rn(we, ke));
        vn = __fadd_rn(__fmul_rn(wt, vt), __fmul_rn(we, ve));
        __syncthreads();  // every thread read lw[jt] before it changes
        if (d == 0) m.logw[(size_t)h * N + jt] = (float)log(ne + nt);
    }
    kq_quantize_row(kn, onk, D, wk, G, klut, kclips, kc + rt * kb, kmeta + rt * kmb, cs, scr);
    kq_quantize_row(vn, onv, Dv, wv, G, vlut, vclips, vc + rt * vb, vmeta + rt * vmb, cs, scr);
    if (d == 0) {  // Policy.fold: the victim's importance adds up in the target
        if (m.fold0 != nullptr) m.fold0[(size_t)h * N + jt] += m.fold0[(size_t)h * N + je];
        if (m.fold1 != nullptr) m.fold1[(size_t)h * N + jt] += m.fold1[(size_t)h * N + je];
    }
    __syncthreads();
}

// A token into a compressed layer with an eviction policy, this block's KV head;
// each head keeps its own tokens (pos [n_kv, N]):
//
//   spill: fp16 slot j's token goes to this head's pool-0 slot jq: the first
//          empty one, else the policy's victim (kq_pick over rank0 [C0]);
//          a victim is demoted to pool 1 (slot jc, picked over rank1 [C1])
//          when there is a pool 1, else evicted; an evicted token (pool 0's
//          without a pool 1, pool 1's to make room for a demotion) is merged
//          into its most similar kept token when m.mode says (kq_merge), else dropped;
//   then the new token (k, v: this head's rows) at position p into fp16 slot j;
//   the policy's per-slot state (n_ps arrays [n_kv, N]: ps0, ps1, ps2) and the
//   merge log-weights (m.logw) move with their tokens, as Policy.move does:
//   jc <- jq, jq <- j; the new token's log-weight is 0, and its state init[i *
//   init_stride] for array i (Policy.insert_chunk), or left to the policy's
//   on_insert hook when init is nullptr.  A victim below `start` (an older
//   chunk's, kq_pick) is never merged, nor demoted but into an empty slot.
//
// (cache/compressed.py _push / _place with the policy's victims: the host
// knows j, the same for every head, and does not learn jq or jc.)
__device__ void kq_policy_token(const KQPools& c, const KQMerge& m, const float* k, const float* v, const float* t_k, const float* mu,
                                const float* rank0, const float* rank1, float* ps0, float* ps1, float* ps2, int n_ps, const float* init,
                                size_t init_stride, int j, int spill, int p, int rot_k, int rot_v, float* xs, int* cs, float* scr, float* red,
                                int* si, int start) {
    const int h = blockIdx.x, d = threadIdx.x;
    const int F = c.F, C0 = c.C0, C1 = c.C1, N = F + C0 + C1;
    int* prow = c.pos + (size_t)h * N;
    int jq = -1, jc = -1;
    if (spill) {
        bool empty = false;
        jq = kq_pick(prow + F, rank0, C0, start, &empty, si);
        const bool old = !empty && prow[F + jq] < start;  // an older chunk's token (every thread reads the same)
        if (!empty && C1 > 0) {
            jc = kq_pick(prow + F + C0, rank1, C1, start, &empty, si);
            if (!empty && old) jc = -1;  // no empty slot for it: dropped
            else if (!empty && m.mode && prow[F + C0 + jc] >= start) kq_merge(c, m, 1, jc, xs, cs, scr, red, si);
        } else if (!empty && m.mode && !old) {
            kq_merge(c, m, 0, jq, xs, cs, scr, red, si);
        }
    }
    __syncthreads();  // the picks and merges read prow; kq_push_token moves it
    kq_push_token(c, k, v, t_k + (size_t)h * c.D, mu + (size_t)h * c.D, j, jq, jc, p, rot_k, rot_v, prow, xs, cs, scr);
    if (d < n_ps + (m.logw != nullptr)) {  // one thread per state array
        float* a = (d == n_ps ? m.logw : d == 0 ? ps0 : d == 1 ? ps1 : ps2) + (size_t)h * N;
        if (jc >= 0) a[F + C0 + jc] = a[F + jq];
        if (jq >= 0) a[F + jq] = a[j];
        if (d == n_ps) a[j] = 0.0f;  // the new token stands for itself
        else if (init != nullptr) a[j] = init[d * init_stride];
    }
    __syncthreads();  // the state (a next token's ranks) and positions are written before anyone reads them
}

// What both policy-push kernels below set up: kq_policy_token's shared scratch, the
// pools, and the merge parameters from their arguments.
#define KQ_POLICY_STATE                                                                                                         \
    __shared__ float xs[KQ_MAX_T];                                                                                              \
    __shared__ int cs[KQ_MAX_T];                                                                                                \
    __shared__ float scr[KQ_SCR];                                                                                                 \
    __shared__ float red[WARP];                                                                                                 \
    __shared__ int si[WARP];                                                                                                    \
    const KQPools c KQ_POOLS;                                                                                                   \
    const KQMerge m {                                                                                                           \
        merge, threshold, has_logw ? logw : nullptr, has_score ? score : nullptr, n_fold > 0 ? fold0 : nullptr,                  \
            n_fold > 1 ? fold1 : nullptr                                                                                        \
    }

// A decode token (kq_policy_token; ranks from Policy.rank_rows, nullptr where no
// head's pool is full), then the queries into the cache basis (as
// kv_decode_push; its position is ppos[0], and j comes from plan[0] when
// use_plan: a captured CUDA graph).  grid (n_kv), block as kv_decode_push.
extern "C" __global__ void __launch_bounds__(KQ_MAX_T) kv_policy_push(const float* q, const float* k, const float* v, const float* t_k, const float* mu, KQ_POOL_PARAMS,
                                          float* qr, const float* rank0, const float* rank1, float* ps0, float* ps1, float* ps2, float* logw,
                                          const float* score, float* fold0, float* fold1, const int* plan, const int* ppos, int n_ps, int use_plan,
                                          int j, int spill, int n_head, int rot_k, int rot_v, int has_rank0, int has_rank1, int merge,
                                          float threshold, int has_logw, int has_score, int n_fold, int chunk, KQ_POOL_SIZES) {
    KQ_POLICY_STATE;
    const int h = blockIdx.x;
    if (use_plan) j = plan[0];  // a replayed CUDA graph: the host refills plan each step (as kv_decode_push)
    const int start = chunk > 0 ? ppos[0] - ppos[0] % chunk : 0;  // (read on the device: a replayed graph's position)
    kq_policy_token(c, m, k + (size_t)h * D, v + (size_t)h * Dv, t_k, mu, has_rank0 ? rank0 + (size_t)h * C0 : nullptr,
                    has_rank1 ? rank1 + (size_t)h * C1 : nullptr, ps0, ps1, ps2, n_ps, nullptr, 0, j, spill, ppos[0], rot_k, rot_v, xs, cs,
                    scr, red, si, start);
    kq_queries(q, t_k, qr, n_head, D, rot_k, xs);
}

// A prefill chunk's tokens, in order, into a layer whose policy ranks its slots by
// its score (Policy.ranks_by_score: ps0, read in place as each token comes, or
// max-pooled over pool_width neighbours in position order when > 0, into rs
// [n_kv, C0 + C1] with ri [n_kv, 2, max(C0, C1)] int scratch: SnapKV):
// k [T, n_kv, D], v [T, n_kv, Dv]; plan [T, 2] (j, spill) as the host chose them
// token by token; ppos [T]; init [n_ps, n_kv, T] each token's state
// (Policy.insert_chunk).  grid (n_kv), block as kv_decode_push.
extern "C" __global__ void __launch_bounds__(KQ_MAX_T) kv_policy_push_tokens(const float* k, const float* v, const float* t_k, const float* mu,
                                          KQ_POOL_PARAMS, float* ps0, float* ps1, float* ps2, float* logw, const float* score, float* fold0,
                                          float* fold1, const int* plan, const int* ppos, const float* init, float* rs, int* ri, int T, int n_ps,
                                          int rot_k, int rot_v, int pool_width, int merge, float threshold, int has_logw, int has_score,
                                          int n_fold, int chunk, KQ_POOL_SIZES) {
    KQ_POLICY_STATE;
    const int h = blockIdx.x, n_kv = gridDim.x, N = F + C0 + C1, Cm = C0 > C1 ? C0 : C1;
    // pool 0's ranks, then pool 1's: the score in place, or pooled into rs
    const float* rank = pool_width > 0 ? rs + (size_t)h * (C0 + C1) : ps0 + (size_t)h * N + F;
    for (int t = 0; t < T; ++t) {
        const int spill = plan[2 * t + 1];
        if (pool_width > 0 && spill) {  // (uniform over the block: the barriers inside are safe)
            int* o = ri + (size_t)h * 2 * Cm;
            const size_t r0 = (size_t)h * N + F;
            pol_pool_row(ps0 + r0, c.pos + r0, rs + (size_t)h * (C0 + C1), o, o + Cm, C0, pool_width);
            if (C1 > 0) pol_pool_row(ps0 + r0 + C0, c.pos + r0 + C0, rs + (size_t)h * (C0 + C1) + C0, o, o + Cm, C1, pool_width);
        }
        kq_policy_token(c, m, k + ((size_t)t * n_kv + h) * D, v + ((size_t)t * n_kv + h) * Dv, t_k, mu, rank, rank + C0, ps0, ps1, ps2,
                        n_ps, init + (size_t)h * T + t, (size_t)n_kv * T, plan[2 * t], spill, ppos[t], rot_k, rot_v, xs, cs, scr, red,
                        si, chunk > 0 ? ppos[t] - ppos[t] % chunk : 0);
    }
}
