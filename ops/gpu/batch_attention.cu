// A batch of sequences' decode rows in one launch per layer: the store and the split-K decode attention of
// attention.cu, with the sequence's fp16 ring (cache/gpu_plain.py) looked up per row in a small device table.
//
// A server's slots decoding together (cache/batch.py) each have a ring of their own, so attention.cu's kernels
// launch once per sequence: 2 launches x n_seq x n_layer a step, and for a small model the host's launching
// sets the pace (8 sequences of SmolLM2: 480 launches a step, slower than 4).  Here blockIdx.z (store:
// blockIdx.x / n_kv) is a row of the batch, and the row's entry of the table says where its sequence's cache is:
//
//   tab [n_rows, TAB_W] int64:  k ring, v ring, kpos (device addresses), cap, row of q / qpos / out
//
// The table depends only on which caches decode together (ops/gpu/batch_attention.py builds and uploads it
// once per batch composition), never on a step's data, so a captured CUDA graph replays it
// (runtime/batch_graphs.py).  The per-row arithmetic is attn_decode_partial_f16's and attn_decode_reduce's,
// statement for statement, so each row gets the output it gets alone:
//
// * Every row takes the batch's number of splits (gridDim.x, the longest sequence's: the graph's key), each
//   over its own slots [0, min(cap, n_split * AD_CHUNK)).  Slots a sequence has never written hold -1 (masked),
//   so its extra splits are empty (m = -inf, l = 0, o = 0) and add exact zeros in the merge: the same sums.
// * No second launch for the merge: after writing its partials a block counts itself done (count[row, kv head]);
//   the last one of the row's splits merges them, as attn_decode_reduce, for the group's heads, and sets the
//   counter back to 0 for the next launch (a replayed graph's).  One split: written directly, as attention.cu.
#include "common.cuh"

#define AD_CHUNK 128  // slots per decode split: attention.cu's
#define AD_MAX_D 256  // attention.cu's
#define TAB_W 8       // int64 words per table row (5 used; a power of two)

__device__ __forceinline__ bool visible_b(int pk, int pq, int window) {  // attention.cu's visible
    return pk >= 0 && pk <= pq && (window == 0 || (window > 0 ? pq - pk < window : pk >= pq - pq % -window));
}

__device__ __forceinline__ float sink_term_b(float sink, float m) {  // attention.cu's sink_term
    return m == NEG_INF ? 0.0f : __expf(fminf(sink - m, 80.0f));
}

// The split counter: an atomic on the GPU; the emulator runs a block's threads as fibers on one OS thread and
// switches them only at barriers, so a plain increment is atomic there.
__device__ __forceinline__ int count_done(int* c) {
#ifdef __CUDA_ARCH__
    return atomicAdd(c, 1);
#else
    return (*c)++;
#endif
}

__device__ __forceinline__ void fence() {
#ifdef __CUDA_ARCH__
    __threadfence();
#endif
}

// ------------------------------------------------------------------ store
// grid (n_rows * n_kv), block 128: kv_store_f16 with the ring of the row's sequence.
extern "C" __global__ void kv_store_batch_f16(const float* __restrict__ k_new,  // [T, n_kv, D]
                                              const float* __restrict__ v_new,  // [T, n_kv, Dv]
                                              const int* __restrict__ pos,      // [T]
                                              const long long* __restrict__ tab, // [n_rows, TAB_W]
                                              int n_kv, int D, int Dv) {
    const int i = blockIdx.x / n_kv, h = blockIdx.x % n_kv;
    const long long* e = tab + (size_t)i * TAB_W;
    u16* k_cache = (u16*)(size_t)e[0];
    u16* v_cache = (u16*)(size_t)e[1];
    int* kpos = (int*)(size_t)e[2];
    const int cap = (int)e[3], t = (int)e[4];
    const int p = pos[t];
    const int slot = p % cap;
    const float* ks = k_new + ((size_t)t * n_kv + h) * D;
    const float* vs = v_new + ((size_t)t * n_kv + h) * Dv;
    u16* kd = k_cache + ((size_t)h * cap + slot) * D;
    u16* vd = v_cache + ((size_t)h * cap + slot) * Dv;
    for (int d = threadIdx.x; d < D; d += blockDim.x) kd[d] = f2h(ks[d]);
    for (int d = threadIdx.x; d < Dv; d += blockDim.x) vd[d] = f2h(vs[d]);
    if (h == 0 && threadIdx.x == 0) kpos[slot] = p;
}

// ------------------------------------------------------------------ decode
// grid (n_split, n_kv, n_rows), block 128, dynamic shared: (gqa * D + gqa * AD_CHUNK) floats (attention.cu's).
// part_* are indexed by the table's row i (the kernel's own rows), q / qpos / out by the batch's row t.
extern "C" __global__ void __launch_bounds__(128) attn_decode_batch_f16(
    const float* __restrict__ q,      // [T, n_head, D]
    const int* __restrict__ qpos,     // [T]
    const long long* __restrict__ tab,  // [n_rows, TAB_W]
    float* __restrict__ part_o,       // [n_rows, n_head, n_split, Dv]   (n_split > 1)
    float* __restrict__ part_m,       // [n_rows, n_head, n_split]
    float* __restrict__ part_l,       // [n_rows, n_head, n_split]
    int* __restrict__ count,          // [n_rows, n_kv] zeros; left zero
    float* __restrict__ out,          // [T, n_head, Dv]
    const float* __restrict__ alibi,  // [n_head], read when has_alibi
    const float* __restrict__ sinks,  // [n_head], read when has_sinks
    int n_head, int n_kv, int D, int Dv, int window, float scale, float softcap, int has_alibi, int has_sinks) {
    extern __shared__ float smem[];
    __shared__ float scratch[WARP];
    __shared__ int last;
    const int gqa = n_head / n_kv;
    float* qs = smem;             // [gqa, D]
    float* sc = smem + gqa * D;   // [gqa, AD_CHUNK] scores, then probabilities
    const int split = blockIdx.x, kh = blockIdx.y, i = blockIdx.z, n_split = gridDim.x;
    const int direct = n_split == 1;
    const long long* e = tab + (size_t)i * TAB_W;
    const u16* k = (const u16*)(size_t)e[0];
    const u16* v = (const u16*)(size_t)e[1];
    const int* kpos = (const int*)(size_t)e[2];
    const int cap = (int)e[3], t = (int)e[4];
    const int n_slots = min(cap, n_split * AD_CHUNK);
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, n_warps = blockDim.x / WARP;
    const int j0 = split * AD_CHUNK;
    const int nj = min(AD_CHUNK, n_slots - j0);  // (<= 0 past a short ring's end: an empty split)
    const int pq = qpos[t];

    const float* qg = q + ((size_t)t * n_head + kh * gqa) * D;
    for (int x = threadIdx.x; x < gqa * D; x += blockDim.x) qs[x] = qg[x];
    __syncthreads();

    for (int jj = warp; jj < nj; jj += n_warps) {
        const int j = j0 + jj;
        if (!visible_b(kpos[j], pq, window)) {
            for (int g = lane; g < gqa; g += WARP) sc[g * AD_CHUNK + jj] = NEG_INF;
            continue;
        }
        const u16* kr = k + ((size_t)kh * cap + j) * D;
        float kreg[AD_MAX_D / WARP];
#pragma unroll
        for (int r = 0; r < AD_MAX_D / WARP; ++r) {
            const int d = lane + WARP * r;
            kreg[r] = d < D ? h2f(kr[d]) : 0.0f;
        }
        for (int g = 0; g < gqa; ++g) {
            float s = 0.0f;
#pragma unroll
            for (int r = 0; r < AD_MAX_D / WARP; ++r) {
                const int d = lane + WARP * r;
                if (d < D) s += qs[g * D + d] * kreg[r];
            }
            s = warp_sum(s) * scale;
            if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
            if (has_alibi) s += alibi[kh * gqa + g] * (float)(kpos[j] - pq);
            if (lane == 0) sc[g * AD_CHUNK + jj] = s;
        }
    }
    __syncthreads();

    chunk_softmax(sc, AD_CHUNK, gqa, nj, part_m, part_l, ((size_t)i * n_head + kh * gqa) * n_split + split, n_split);
    __syncthreads();

    for (int x = threadIdx.x; x < gqa * Dv; x += blockDim.x) {
        const int g = x / Dv, d = x % Dv;
        const float* pg = sc + g * AD_CHUNK;
        const u16* vc = v + ((size_t)kh * cap + j0) * Dv + d;
        float acc = 0.0f;
        for (int jj = 0; jj < nj; ++jj) {
            const float p = pg[jj];
            if (p != 0.0f) acc += p * h2f(vc[(size_t)jj * Dv]);
        }
        const size_t ph = (size_t)i * n_head + kh * gqa + g;
        if (direct) {
            const float l = part_l[ph] + (has_sinks ? sink_term_b(sinks[kh * gqa + g], part_m[ph]) : 0.0f);
            out[((size_t)t * n_head + kh * gqa + g) * Dv + d] = acc * (l > 0.0f ? 1.0f / l : 0.0f);
        } else {
            part_o[(ph * n_split + split) * Dv + d] = acc;
        }
    }
    if (direct) return;

    // The last block of the row's splits merges them (the threadFenceReduction pattern of the CUDA guide):
    // every thread's partials are made visible device-wide before the block counts itself done.
    fence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int* c = count + (size_t)i * n_kv + kh;
        last = count_done(c) == n_split - 1;
        if (last) *c = 0;  // (every other split has counted: nothing else touches it in this launch)
    }
    __syncthreads();
    if (!last) return;
    fence();

    // attn_decode_reduce for each head of the group; the other blocks' partials read past the L1 (volatile)
    for (int g = 0; g < gqa; ++g) {
        const size_t ph = (size_t)i * n_head + kh * gqa + g;
        const volatile float* m = part_m + ph * n_split;
        const volatile float* l = part_l + ph * n_split;
        const volatile float* o = part_o + ph * n_split * Dv;
        float mx = NEG_INF;
        for (int s = threadIdx.x; s < n_split; s += blockDim.x) mx = fmaxf(mx, m[s]);
        mx = warp_max(mx);
        if (threadIdx.x % WARP == 0) scratch[threadIdx.x / WARP] = mx;
        __syncthreads();
        mx = NEG_INF;
        for (int w = 0; w < (int)(blockDim.x / WARP); ++w) mx = fmaxf(mx, scratch[w]);
        float lsum = 0.0f;
        for (int s = threadIdx.x; s < n_split; s += blockDim.x) {
            const float ms = m[s];
            const float we = (mx == NEG_INF || ms == NEG_INF) ? 0.0f : __expf(ms - mx);
            lsum += we * l[s];
        }
        lsum = block_sum(lsum, scratch);
        if (has_sinks) lsum += sink_term_b(sinks[kh * gqa + g], mx);
        const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
        for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
            float acc = 0.0f;
            for (int s = 0; s < n_split; ++s) {  // (each split's weight again, the same bits as the reduce's wts[s])
                const float ms = m[s];
                const float we = (mx == NEG_INF || ms == NEG_INF) ? 0.0f : __expf(ms - mx);
                acc += we * o[(size_t)s * Dv + d];
            }
            out[((size_t)t * n_head + kh * gqa + g) * Dv + d] = acc * inv;
        }
        __syncthreads();  // scratch is written again by the next head
    }
}
