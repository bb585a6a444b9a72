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
// (runtime/batch_graphs.py).  The per-row arithmetic is attn_decode_partial_f16's and attn_decode_reduce's, one
// text in attn_decode.cuh (kv_store_row, attn_decode_split, attn_decode_merge), so each row gets the output it gets
// alone:
//
// * Every row takes the batch's number of splits (gridDim.x, the longest sequence's: the graph's key), each
//   over its own slots [0, min(cap, n_split * AD_CHUNK)).  Slots a sequence has never written hold -1 (masked),
//   so its extra splits are empty (m = -inf, l = 0, o = 0) and add exact zeros in the merge: the same sums.
// * No second launch for the merge: after writing its partials a block counts itself done (count[row, kv head]);
//   the last one of the row's splits merges them, as attn_decode_reduce, for the group's heads, and sets the
//   counter back to 0 for the next launch (a replayed graph's).  One split: written directly, as attention.cu.
#include "common.cuh"
#include "attn_decode.cuh"

#define TAB_W 8  // int64 words per table row (5 used; a power of two)

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
    kv_store_row(k_new, v_new, t, h, pos[t], k_cache, v_cache, kpos, n_kv, D, Dv, cap);
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
    const int split = blockIdx.x, kh = blockIdx.y, i = blockIdx.z, n_split = gridDim.x;
    const int direct = n_split == 1;
    const long long* e = tab + (size_t)i * TAB_W;
    const u16* k = (const u16*)(size_t)e[0];
    const u16* v = (const u16*)(size_t)e[1];
    const int* kpos = (const int*)(size_t)e[2];
    const int cap = (int)e[3], t = (int)e[4];
    const int n_slots = min(cap, n_split * AD_CHUNK);  // (a short ring's splits past its end are empty)
    const size_t ph = (size_t)i * n_head + kh * gqa;   // the partials' row of the group's first head
    const size_t oh = (size_t)t * n_head + kh * gqa;   // q's and out's
    attn_decode_split(smem, q + oh * D, k, v, kpos, qpos[t], kh, split, n_split, n_slots, cap, gqa, D, Dv, Dv, window,
                      scale, softcap, alibi + kh * gqa, has_alibi, sinks + kh * gqa, has_sinks, part_o, part_m, part_l,
                      ph, out + oh * Dv, direct);
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

    // attn_decode_reduce for each head of the group; the other blocks' partials read past the L1 (volatile), each
    // split's weight computed again in the output loop (no shared room for n_split of them)
    for (int g = 0; g < gqa; ++g) {
        const size_t h = ph + g;
        attn_decode_merge<false>((const volatile float*)part_m + h * n_split, (const volatile float*)part_l + h * n_split,
                                 (const volatile float*)part_o + h * n_split * Dv, n_split, Dv, sinks + kh * gqa + g,
                                 has_sinks, out + (oh + g) * Dv, scratch, nullptr);
        __syncthreads();  // scratch is written again by the next head
    }
}
