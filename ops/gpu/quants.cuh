// GGUF block decoders for the CUDA kernels, one struct per ggml type.
//
// Byte layouts are documented in loaders/quants.py.  Every type is cut into
// "chunks" of 8 weights that one thread decodes at once:
//
//   * chunk c of a row holds the 8 weights at columns c0..c0+3 and c1..c1+3;
//   * chunks [8t, 8t+8) cover exactly columns [64t, 64t+64) for every type, so
//     the tiled matmul can decode a 64-column K-tile without knowing the type;
//   * adjacent chunks sit in adjacent bytes, so the lanes of a warp walking
//     chunks c, c+1, ... read a row coalesced.
//
// The split of a 32-weight block into 4 chunks follows the nibble layout: in
// Q4_0 byte j holds weights j (low nibble) and j+16 (high nibble), so the chunk
// reading bytes 4i..4i+3 gets columns 4i.. and 16+4i.. .  K-quants use the same
// idea per 64 weights, like llama.cpp's dequantize kernels.
//
// F32/F16/BF16 rows may end mid-chunk: decode() zeroes the weights past n_cols
// (and clamps their columns) and TAIL tells callers to bound-check columns.
#pragma once
#include "common.cuh"

struct Chunk {
    float v[8];  // v[0..3] at columns c0+0..3, v[4..7] at c1+0..3
    int c0, c1;
};

// unpack 4 nibbles / 4 bytes of a little-endian word into v[o..o+3]
#define NIB4(v, o, w, shift, scale, bias)                                  \
    _Pragma("unroll") for (int k_ = 0; k_ < 4; ++k_)                       \
        (v)[(o) + k_] = (scale) * (float)((((w) >> (8 * k_ + (shift))) & 15u)) + (bias)

// ---------------------------------------------------------------- float types
struct F32 {
    static constexpr int block_elems = 1, block_bytes = 4;
    static constexpr bool TAIL = true;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int n_cols) {
        Chunk ch;
        ch.c0 = 8 * c;
        ch.c1 = 8 * c + 4;
        const float* r = (const float*)row;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const int col = 8 * c + k;
            ch.v[k] = col < n_cols ? r[col] : 0.0f;
        }
        return ch;
    }
};

struct F16 {
    static constexpr int block_elems = 1, block_bytes = 2;
    static constexpr bool TAIL = true;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int n_cols) {
        Chunk ch;
        ch.c0 = 8 * c;
        ch.c1 = 8 * c + 4;
        const u16* r = (const u16*)row;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const int col = 8 * c + k;
            ch.v[k] = col < n_cols ? h2f(r[col]) : 0.0f;
        }
        return ch;
    }
};

struct BF16 {
    static constexpr int block_elems = 1, block_bytes = 2;
    static constexpr bool TAIL = true;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int n_cols) {
        Chunk ch;
        ch.c0 = 8 * c;
        ch.c1 = 8 * c + 4;
        const u16* r = (const u16*)row;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const int col = 8 * c + k;
            ch.v[k] = col < n_cols ? bf2f(r[col]) : 0.0f;
        }
        return ch;
    }
};

// ---------------------------------------------------------------- 32-weight blocks
// chunk i (0..3) of block b reads qs bytes 4i..4i+3: columns 32b+4i.. and 32b+16+4i..
struct Q4_0 {  // d f16 | qs u8[16];  w = d * (q - 8)
    static constexpr int block_elems = 32, block_bytes = 18;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int b = c >> 2, i = c & 3;
        const u8* blk = row + b * block_bytes;
        const float d = ldh(blk);
        const u32 q = ld32(blk + 2 + 4 * i);
        Chunk ch;
        ch.c0 = 32 * b + 4 * i;
        ch.c1 = ch.c0 + 16;
        NIB4(ch.v, 0, q, 0, d, -8.0f * d);
        NIB4(ch.v, 4, q, 4, d, -8.0f * d);
        return ch;
    }
};

struct Q4_1 {  // d f16 | m f16 | qs u8[16];  w = d*q + m
    static constexpr int block_elems = 32, block_bytes = 20;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int b = c >> 2, i = c & 3;
        const u8* blk = row + b * block_bytes;
        const float d = ldh(blk), m = ldh(blk + 2);
        const u32 q = ld32(blk + 4 + 4 * i);
        Chunk ch;
        ch.c0 = 32 * b + 4 * i;
        ch.c1 = ch.c0 + 16;
        NIB4(ch.v, 0, q, 0, d, m);
        NIB4(ch.v, 4, q, 4, d, m);
        return ch;
    }
};

// the fifth bit of column j is bit j of qh
__device__ __forceinline__ void q5_unpack(float* v, u32 q, u32 qh, int j0, float d, float bias) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const u32 lo = ((q >> (8 * k)) & 15u) | (((qh >> (j0 + k)) & 1u) << 4);
        const u32 hi = ((q >> (8 * k + 4)) & 15u) | (((qh >> (j0 + k + 16)) & 1u) << 4);
        v[k] = d * (float)lo + bias;
        v[4 + k] = d * (float)hi + bias;
    }
}

struct Q5_0 {  // d f16 | qh u32 | qs u8[16];  w = d * (q - 16)
    static constexpr int block_elems = 32, block_bytes = 22;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int b = c >> 2, i = c & 3;
        const u8* blk = row + b * block_bytes;
        const float d = ldh(blk);
        Chunk ch;
        ch.c0 = 32 * b + 4 * i;
        ch.c1 = ch.c0 + 16;
        q5_unpack(ch.v, ld32(blk + 6 + 4 * i), ld32(blk + 2), 4 * i, d, -16.0f * d);
        return ch;
    }
};

struct Q5_1 {  // d f16 | m f16 | qh u32 | qs u8[16];  w = d*q + m
    static constexpr int block_elems = 32, block_bytes = 24;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int b = c >> 2, i = c & 3;
        const u8* blk = row + b * block_bytes;
        const float d = ldh(blk), m = ldh(blk + 2);
        Chunk ch;
        ch.c0 = 32 * b + 4 * i;
        ch.c1 = ch.c0 + 16;
        q5_unpack(ch.v, ld32(blk + 8 + 4 * i), ld32(blk + 4), 4 * i, d, m);
        return ch;
    }
};

struct Q8_0 {  // d f16 | qs i8[32];  w = d * q.  chunk i reads qs[8i..8i+7]
    static constexpr int block_elems = 32, block_bytes = 34;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int b = c >> 2, i = c & 3;
        const u8* blk = row + b * block_bytes;
        const float d = ldh(blk);
        const u32 q0 = ld32(blk + 2 + 8 * i), q1 = ld32(blk + 6 + 8 * i);
        Chunk ch;
        ch.c0 = 32 * b + 8 * i;
        ch.c1 = ch.c0 + 4;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            ch.v[k] = d * (float)(i8)((q0 >> (8 * k)) & 255u);
            ch.v[4 + k] = d * (float)(i8)((q1 >> (8 * k)) & 255u);
        }
        return ch;
    }
};

// ---------------------------------------------------------------- 256-weight super-blocks
// 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes s (Q4_K, Q5_K)
__device__ __forceinline__ void k_scale_min(const u8* s, int j, int& sc, int& mn) {
    if (j < 4) {
        sc = s[j] & 63;
        mn = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Q4_K/Q5_K: chunk i (0..31) of super-block sb: g = i/8 picks 32 qs bytes holding
// sub-blocks 2g (low nibbles) and 2g+1 (high); j = 4*(i%8) the bytes within them.
struct Q4_K {  // d f16 | dmin f16 | scales u8[12] | qs u8[128];  w = d*sc*q - dmin*m
    static constexpr int block_elems = 256, block_bytes = 144;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, g = (c >> 3) & 3, j = 4 * (c & 7);
        const u8* blk = row + sb * block_bytes;
        const float d = ldh(blk), dmin = ldh(blk + 2);
        int sc0, m0, sc1, m1;
        k_scale_min(blk + 4, 2 * g, sc0, m0);
        k_scale_min(blk + 4, 2 * g + 1, sc1, m1);
        const u32 q = ld32(blk + 16 + 32 * g + j);
        Chunk ch;
        ch.c0 = 256 * sb + 64 * g + j;
        ch.c1 = ch.c0 + 32;
        NIB4(ch.v, 0, q, 0, d * (float)sc0, -dmin * (float)m0);
        NIB4(ch.v, 4, q, 4, d * (float)sc1, -dmin * (float)m1);
        return ch;
    }
};

struct Q5_K {  // d | dmin | scales u8[12] | qh u8[32] | qs u8[128]; bit s of qh[j]: sub-block s
    static constexpr int block_elems = 256, block_bytes = 176;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, g = (c >> 3) & 3, j = 4 * (c & 7);
        const u8* blk = row + sb * block_bytes;
        const float d = ldh(blk), dmin = ldh(blk + 2);
        int sc0, m0, sc1, m1;
        k_scale_min(blk + 4, 2 * g, sc0, m0);
        k_scale_min(blk + 4, 2 * g + 1, sc1, m1);
        const u32 q = ld32(blk + 48 + 32 * g + j);
        const u32 qh = ld32(blk + 16 + j);  // qh[j..j+3]
        const float d0 = d * (float)sc0, d1 = d * (float)sc1;
        const float b0 = -dmin * (float)m0, b1 = -dmin * (float)m1;
        Chunk ch;
        ch.c0 = 256 * sb + 64 * g + j;
        ch.c1 = ch.c0 + 32;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u32 h = qh >> (8 * k);
            const u32 lo = ((q >> (8 * k)) & 15u) | (((h >> (2 * g)) & 1u) << 4);
            const u32 hi = ((q >> (8 * k + 4)) & 15u) | (((h >> (2 * g + 1)) & 1u) << 4);
            ch.v[k] = d0 * (float)lo + b0;
            ch.v[4 + k] = d1 * (float)hi + b1;
        }
        return ch;
    }
};

// Q6_K: chunk i (0..31) of super-block sb: quarter qt = i/8 of its 256 weights,
// h = qt/2 the 128-weight half, hi = qt%2 which nibble of ql, j = 4*(i%8).
// Columns 128h+64hi+j.. (ql[64h+j..], qh bits 4hi) and +32 (ql[64h+32+j..], qh bits 4hi+2).
struct Q6_K {  // ql u8[128] | qh u8[64] | scales i8[16] | d f16;  w = d*sc*(q - 32)
    static constexpr int block_elems = 256, block_bytes = 210;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, qt = (c >> 3) & 3, j = 4 * (c & 7);
        const int h = qt >> 1, hi = qt & 1;
        const u8* blk = row + sb * block_bytes;
        const float d = ldh(blk + 208);
        const u32 ql0 = ld32(blk + 64 * h + j), ql1 = ld32(blk + 64 * h + 32 + j);
        const u32 qh = ld32(blk + 128 + 32 * h + j);
        const int e0 = 64 * hi + j;  // index within the half; one int8 scale per 16 weights
        const float s0 = d * (float)(i8)blk[192 + 8 * h + e0 / 16];
        const float s1 = d * (float)(i8)blk[192 + 8 * h + (e0 + 32) / 16];
        Chunk ch;
        ch.c0 = 256 * sb + 128 * h + e0;
        ch.c1 = ch.c0 + 32;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u32 hb = qh >> (8 * k);
            const int q0 = (int)(((ql0 >> (8 * k + 4 * hi)) & 15u) | (((hb >> (4 * hi)) & 3u) << 4)) - 32;
            const int q1 = (int)(((ql1 >> (8 * k + 4 * hi)) & 15u) | (((hb >> (4 * hi + 2)) & 3u) << 4)) - 32;
            ch.v[k] = s0 * (float)q0;
            ch.v[4 + k] = s1 * (float)q1;
        }
        return ch;
    }
};

// Every type under its ggml name, for instantiating kernels per type:
// X(suffix, decoder struct)
#define FOR_EACH_QTYPE(X) \
    X(f32, F32)           \
    X(f16, F16)           \
    X(bf16, BF16)         \
    X(q4_0, Q4_0)         \
    X(q4_1, Q4_1)         \
    X(q5_0, Q5_0)         \
    X(q5_1, Q5_1)         \
    X(q8_0, Q8_0)         \
    X(q4_k, Q4_K)         \
    X(q5_k, Q5_K)         \
    X(q6_k, Q6_K)
