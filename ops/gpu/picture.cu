// A picture's rows attending to each other both ways in the fp16 KV ring of cache/gpu_plain.py (Gemma 3's image
// block, as libmtmd feeds it with causal attention off: cache/picture_block.py, cache/gpu_picture.py).
//
// The rows of one forward (positions qpos, just stored in the ring) see every cached position up to the last row
// of the forward, pend, before or after their own; a sliding-window layer still hides a key pk from a query pq when
// pq - pk >= window (llama.cpp's is_masked_swa: a key after the query is never too old).  So a key at pk is
// visible to the query at pq when 0 <= pk <= pend and (window <= 0 or pq - pk < window).  Otherwise this is
// attention.cu's attn_prefill_f16 (the same tile loop, attn_tile.cuh, with this mask), a kernel of its own so the
// text's prefill keeps its arguments; it runs once per picture piece, never in a decode step.
#include "common.cuh"
#include "attn_tile.cuh"

__device__ __forceinline__ bool pic_visible(int pk, int pq, int pend, int window) {
    return pk >= 0 && pk <= pend && (window <= 0 || pq - pk < window);
}

struct PictureMask {
    int pend, window;

    // keys too old for the block's first query are too old for all of them
    __device__ __forceinline__ bool tile(int pk, int qmin, int) const { return pic_visible(pk, qmin, pend, window); }
    __device__ __forceinline__ bool see(int pk, int pq) const { return pic_visible(pk, pq, pend, window); }
    __device__ __forceinline__ float score(float s, int, int) const { return s; }
    __device__ __forceinline__ float denom(float l, float) const { return l; }
};

// grid (ceil(T/BQ), n_head), block 128, dynamic shared as attn_prefill_f16's (attn_tile.cuh).
extern "C" __global__ void __launch_bounds__(128) attn_picture_f16(
    const float* __restrict__ q,   // [T, n_head, D]
    const u16* __restrict__ k,     // [n_kv, cap, D]
    const u16* __restrict__ v,     // [n_kv, cap, Dv]
    const int* __restrict__ kpos,  // [cap]
    const int* __restrict__ qpos,  // [T]
    float* __restrict__ out,       // [T, n_head, Dv]
    int T, int n_slots, int cap, int n_head, int n_kv, int D, int Dv, int pend, int window, float scale,
    float softcap, int BQ, int BKV) {
    extern __shared__ float smem[];
    attn_tile_f16(smem, q, k, v, kpos, qpos, out, T, n_slots, cap, n_head, n_kv, D, Dv, scale, softcap, BQ, BKV,
                  PictureMask{pend, window});
}
