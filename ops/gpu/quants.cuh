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
#include "iqgrids.cuh"

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

// IQ4_NL's 16 non-linear levels (ggml's kvalues_iq4nl).  A __device__ array, not
// __constant__: the lanes of a warp look up different entries, which constant
// memory would serialise; and the emulator builds it as a plain const array.
__device__ const i8 kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// 4 bytes of IQ4_NL nibbles (low: v[0..3], high: v[4..7]) times the scale d
__device__ __forceinline__ void iq4_unpack(float* v, u32 q, float d) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        v[k] = d * (float)kvalues_iq4nl[(q >> (8 * k)) & 15u];
        v[4 + k] = d * (float)kvalues_iq4nl[(q >> (8 * k + 4)) & 15u];
    }
}

struct IQ4_NL {  // d f16 | qs u8[16] (nibbles as Q4_0);  w = d * kvalues_iq4nl[q]
    static constexpr int block_elems = 32, block_bytes = 18;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int b = c >> 2, i = c & 3;
        const u8* blk = row + b * block_bytes;
        Chunk ch;
        ch.c0 = 32 * b + 4 * i;
        ch.c1 = ch.c0 + 16;
        iq4_unpack(ch.v, ld32(blk + 2 + 4 * i), ldh(blk));
        return ch;
    }
};

// MXFP4's 16 levels (ggml's kvalues_mxfp4): the E2M1 values doubled, so the scale is
// half the E8M0 value.  A __device__ array for the reason kvalues_iq4nl is one.
__device__ const i8 kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// E8M0 byte -> 2^(e - 128), as ggml's CPU code (ggml_e8m0_to_fp32_half) and gguf-py decode it:
// the subnormals 2^-128, 2^-127 for e < 2, and 2^127 for e = 255 (ggml's CUDA code: inf or NaN)
__device__ __forceinline__ float e8m0_half(u32 e) { return __int_as_float(e < 2 ? 0x00200000u << e : (e - 1) << 23); }

struct MXFP4 {  // e u8 | qs u8[16] (nibbles as Q4_0);  w = e8m0_half(e) * kvalues_mxfp4[q]
    static constexpr int block_elems = 32, block_bytes = 17;
    static constexpr bool TAIL = false;
    // 17-byte blocks: odd ones start at odd addresses, so bytes, not ld16/ld32
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int b = c >> 2, i = c & 3;
        const u8* blk = row + b * block_bytes;
        const u8* q = blk + 1 + 4 * i;
        const float d = e8m0_half(blk[0]);
        Chunk ch;
        ch.c0 = 32 * b + 4 * i;
        ch.c1 = ch.c0 + 16;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            ch.v[k] = d * (float)kvalues_mxfp4[q[k] & 15u];
            ch.v[4 + k] = d * (float)kvalues_mxfp4[q[k] >> 4];
        }
        return ch;
    }
};

// ---------------------------------------------------------------- 256-weight super-blocks
// Q2_K/Q3_K: byte l of the 32-byte run qs[32h..] holds 2-bit codes of weights
// 128h+32k+l (bits 2k, k 0..3).  Chunk i (0..31) of super-block sb: 64-column tile
// t = i/8, h = t/2 the half, sh = 4*(t%2) the shift of its first bit pair, j = 4*(i%8).
// Columns 128h+64(t%2)+j.. (bits sh) and +32 (bits sh+2); one scale per 16 weights.
struct Q2_K {  // scales u8[16] | qs u8[64] | d f16 | dmin f16;  w = d*(sc&15)*q - dmin*(sc>>4)
    static constexpr int block_elems = 256, block_bytes = 84;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, t = (c >> 3) & 3, j = 4 * (c & 7);
        const int h = t >> 1, sh = 4 * (t & 1);
        const u8* blk = row + sb * block_bytes;
        const float d = ldh(blk + 80), dmin = ldh(blk + 82);
        const u32 q = ld32(blk + 16 + 32 * h + j);
        const int s0 = 8 * h + sh + (j >> 4);  // sub-block of column 128h+64(t%2)+j; +32 columns is s0+2
        const u32 sc0 = blk[s0], sc1 = blk[s0 + 2];
        const float d0 = d * (float)(sc0 & 15u), d1 = d * (float)(sc1 & 15u);
        const float b0 = -dmin * (float)(sc0 >> 4), b1 = -dmin * (float)(sc1 >> 4);
        Chunk ch;
        ch.c0 = 256 * sb + 128 * h + 16 * sh + j;
        ch.c1 = ch.c0 + 32;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u32 b = q >> (8 * k);
            ch.v[k] = d0 * (float)((b >> sh) & 3u) + b0;
            ch.v[4 + k] = d1 * (float)((b >> (sh + 2)) & 3u) + b1;
        }
        return ch;
    }
};

// signed 6-bit scale of Q3_K sub-block i (0..15): low 4 bits in s[0..7] (nibble i/8),
// high 2 bits in s[8 + i%4] (bits 2*(i/4))
__device__ __forceinline__ int q3k_scale(const u8* s, int i) {
    const int lo = i < 8 ? s[i] & 15 : s[i - 8] >> 4;
    return (lo | (((s[8 + (i & 3)] >> (2 * (i >> 2))) & 3) << 4)) - 32;
}

// Q3_K: low bits as Q2_K; the third bit of weight 32k+l is bit k of hmask[l], so
// columns c0.. of tile t read bit 2t of hmask[j..j+3] and c1.. bit 2t+1.
struct Q3_K {  // hmask u8[32] | qs u8[64] | scales u8[12] | d f16;  w = d*sc*(q - 4*!hbit)
    static constexpr int block_elems = 256, block_bytes = 110;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, t = (c >> 3) & 3, j = 4 * (c & 7);
        const int h = t >> 1, sh = 4 * (t & 1);
        const u8* blk = row + sb * block_bytes;
        const float d = ldh(blk + 108);
        const u32 q = ld32(blk + 32 + 32 * h + j);
        const u32 hm = ld32(blk + j);
        const int s0 = 8 * h + sh + (j >> 4);
        const float d0 = d * (float)q3k_scale(blk + 96, s0), d1 = d * (float)q3k_scale(blk + 96, s0 + 2);
        Chunk ch;
        ch.c0 = 256 * sb + 128 * h + 16 * sh + j;
        ch.c1 = ch.c0 + 32;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u32 b = q >> (8 * k), m = ~hm >> (8 * k);  // m: 1 where the code is offset by -4
            ch.v[k] = d0 * (float)((int)((b >> sh) & 3u) - 4 * (int)((m >> (2 * t)) & 1u));
            ch.v[4 + k] = d1 * (float)((int)((b >> (sh + 2)) & 3u) - 4 * (int)((m >> (2 * t + 1)) & 1u));
        }
        return ch;
    }
};

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

// IQ4_XS: 8 sub-blocks of 32, each with the nibble layout of an IQ4_NL block's qs;
// chunk i (0..31) of super-block sb reads bytes 4(i%4).. of sub-block ib = i/4.
struct IQ4_XS {  // d f16 | scales_h u16 | scales_l u8[4] | qs u8[128];  w = d*(ls-32)*kvalues_iq4nl[q]
    static constexpr int block_elems = 256, block_bytes = 136;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, ib = (c >> 2) & 7, i = c & 3;
        const u8* blk = row + sb * block_bytes;
        // 6-bit scale: low 4 bits a nibble of scales_l, high 2 bits from scales_h
        const int ls = ((blk[4 + (ib >> 1)] >> (4 * (ib & 1))) & 15) | (((ld16(blk + 2) >> (2 * ib)) & 3) << 4);
        Chunk ch;
        ch.c0 = 256 * sb + 32 * ib + 4 * i;
        ch.c1 = ch.c0 + 16;
        iq4_unpack(ch.v, ld32(blk + 8 + 16 * ib + 4 * i), ldh(blk) * (float)(ls - 32));
        return ch;
    }
};

// ---------------------------------------------------------------- i-quants (256-weight super-blocks)
// A grid entry gives 8 weights (IQ3: two entries of 4) at once, so chunk i (0..31) of
// super-block sb is group i: the 8 consecutive columns 256sb+8i.. of sub-block ib = i/4
// (l = i%4 its group there).  Signs: bit j of a sign byte negates value j.

// the 8 bytes of grid word g (values 0..255), their signs, times the scale db
__device__ __forceinline__ void iq_unpack8(float* v, u64 g, u32 signs, float db) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const float q = (float)((g >> (8 * j)) & 255u);
        v[j] = db * ((signs >> j) & 1u ? -q : q);
    }
}

// two 4-byte grid words (IQ3) as iq_unpack8's one
__device__ __forceinline__ u64 iq_pair(u32 g0, u32 g1) { return (u64)g0 | ((u64)g1 << 32); }

struct IQ2_XXS {  // d f16 | qs u8[64]: per 32, 4 grid indices then a u32 of 4 sign indices (7 bits) and ls (top 4)
    static constexpr int block_elems = 256, block_bytes = 66;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, i = c & 31, ib = i >> 2, l = i & 3;
        const u8* blk = row + sb * block_bytes;
        const u8* q = blk + 2 + 8 * ib;
        const u32 a = ld32(q + 4);
        const float db = ldh(blk) * (0.5f + (float)(a >> 28)) * 0.25f;
        Chunk ch;
        ch.c0 = 256 * sb + 8 * i;
        ch.c1 = ch.c0 + 4;
        iq_unpack8(ch.v, iq2xxs_grid[q[l]], ksigns_iq2xs[(a >> (7 * l)) & 127u], db);
        return ch;
    }
};

// IQ2_XS/IQ2_S: a 4-bit scale per 16 weights, nibble l/2 of scales[ib]
__device__ __forceinline__ float iq2_scale(const u8* blk, int scales, int ib, int l) {
    return ldh(blk) * (0.5f + (float)((blk[scales + ib] >> (4 * (l >> 1))) & 15)) * 0.25f;
}

struct IQ2_XS {  // d f16 | qs u16[32] (9-bit grid index, 7-bit sign index) | scales u8[8]
    static constexpr int block_elems = 256, block_bytes = 74;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, i = c & 31;
        const u8* blk = row + sb * block_bytes;
        const u32 q = ld16(blk + 2 + 2 * i);
        Chunk ch;
        ch.c0 = 256 * sb + 8 * i;
        ch.c1 = ch.c0 + 4;
        iq_unpack8(ch.v, iq2xs_grid[q & 511u], ksigns_iq2xs[q >> 9], iq2_scale(blk, 66, i >> 2, i & 3));
        return ch;
    }
};

struct IQ2_S {  // d f16 | qs u8[32] | signs u8[32] | qh u8[8] (2 high index bits a group) | scales u8[8]
    static constexpr int block_elems = 256, block_bytes = 82;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, i = c & 31, ib = i >> 2, l = i & 3;
        const u8* blk = row + sb * block_bytes;
        const u32 idx = blk[2 + i] | (((u32)blk[66 + ib] >> (2 * l)) & 3u) << 8;
        Chunk ch;
        ch.c0 = 256 * sb + 8 * i;
        ch.c1 = ch.c0 + 4;
        iq_unpack8(ch.v, iq2s_grid[idx], blk[34 + i], iq2_scale(blk, 74, ib, l));
        return ch;
    }
};

struct IQ3_XXS {  // d f16 | qs u8[64] (grid of 4) | scales_signs u32[8]: 4 sign indices (7 bits) and ls (top 4)
    static constexpr int block_elems = 256, block_bytes = 98;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, i = c & 31, ib = i >> 2, l = i & 3;
        const u8* blk = row + sb * block_bytes;
        const u32 a = ld32(blk + 66 + 4 * ib);
        const float db = ldh(blk) * (0.5f + (float)(a >> 28)) * 0.5f;
        Chunk ch;
        ch.c0 = 256 * sb + 8 * i;
        ch.c1 = ch.c0 + 4;
        iq_unpack8(ch.v, iq_pair(iq3xxs_grid[blk[2 + 2 * i]], iq3xxs_grid[blk[3 + 2 * i]]), ksigns_iq2xs[(a >> (7 * l)) & 127u], db);
        return ch;
    }
};

struct IQ3_S {  // d f16 | qs u8[64] | qh u8[8] (9th index bit of each entry) | signs u8[32] | scales u8[4]
    static constexpr int block_elems = 256, block_bytes = 110;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, i = c & 31, ib = i >> 2, l = i & 3;
        const u8* blk = row + sb * block_bytes;
        const u32 qh = blk[66 + ib];
        const u32 i0 = blk[2 + 2 * i] | ((qh >> (2 * l)) & 1u) << 8, i1 = blk[3 + 2 * i] | ((qh >> (2 * l + 1)) & 1u) << 8;
        const int ls = (blk[106 + (ib >> 1)] >> (4 * (ib & 1))) & 15;
        Chunk ch;
        ch.c0 = 256 * sb + 8 * i;
        ch.c1 = ch.c0 + 4;
        iq_unpack8(ch.v, iq_pair(iq3s_grid[i0], iq3s_grid[i1]), blk[74 + i], ldh(blk) * (float)(1 + 2 * ls));
        return ch;
    }
};

// IQ1: the int8 grid values (-1, 0, 1) of word g plus delta, times dl
__device__ __forceinline__ void iq1_unpack8(float* v, u64 g, float delta, float dl) {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = dl * ((float)(i8)((g >> (8 * j)) & 255u) + delta);
}

struct IQ1_S {  // d f16 | qs u8[32] | qh u16[8]: 3 high index bits a group, ls (bits 12-14), delta's sign (15)
    static constexpr int block_elems = 256, block_bytes = 50;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, i = c & 31, ib = i >> 2, l = i & 3;
        const u8* blk = row + sb * block_bytes;
        const u32 qh = ld16(blk + 34 + 2 * ib);
        const float dl = ldh(blk) * (float)(2 * ((qh >> 12) & 7u) + 1);
        Chunk ch;
        ch.c0 = 256 * sb + 8 * i;
        ch.c1 = ch.c0 + 4;
        iq1_unpack8(ch.v, iq1s_grid[blk[2 + i] | ((qh >> (3 * l)) & 7u) << 8], qh & 0x8000u ? -0.125f : 0.125f, dl);
        return ch;
    }
};

struct IQ1_M {  // qs u8[32] | qh u8[16] (a nibble a group: 3 index bits, delta's sign) | scales u16[4] (3 bits per 16; d in the top nibbles)
    static constexpr int block_elems = 256, block_bytes = 56;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, i = c & 31, j = i >> 1;
        const u8* blk = row + sb * block_bytes;
        u32 dh = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) dh |= ((u32)ld16(blk + 48 + 2 * k) >> 12) << (4 * k);
        const u32 nib = (blk[32 + j] >> (4 * (i & 1))) & 15u;
        const u32 ls = ((u32)ld16(blk + 48 + 2 * (j >> 2)) >> (3 * (j & 3))) & 7u;
        Chunk ch;
        ch.c0 = 256 * sb + 8 * i;
        ch.c1 = ch.c0 + 4;
        iq1_unpack8(ch.v, iq1s_grid[blk[i] | (nib & 7u) << 8], nib & 8u ? -0.125f : 0.125f, h2f((u16)dh) * (float)(2 * ls + 1));
        return ch;
    }
};

// ---------------------------------------------------------------- ternary (BitNet b1.58, TriLM; 256-weight blocks)
// w = d * (t - 1), a code t in {0, 1, 2} a weight (layouts in loaders/quants.py).

// TQ2_0: the 2-bit codes laid out as Q2_K's (bits 2k of qs[32h + l]: weight 128h + 32k + l), one d a block and no
// sub-block scales, so chunk i takes Q2_K's columns.
struct TQ2_0 {  // qs u8[64] | d f16
    static constexpr int block_elems = 256, block_bytes = 66;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, t = (c >> 3) & 3, j = 4 * (c & 7);
        const int h = t >> 1, sh = 4 * (t & 1);
        const u8* blk = row + sb * block_bytes;
        const float d = ldh(blk + 64);
        const u32 q = ld32(blk + 32 * h + j);
        Chunk ch;
        ch.c0 = 256 * sb + 128 * h + 16 * sh + j;
        ch.c1 = ch.c0 + 32;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const u32 b = q >> (8 * k);
            ch.v[k] = d * (float)((int)((b >> sh) & 3u) - 1);
            ch.v[4 + k] = d * (float)((int)((b >> (sh + 2)) & 3u) - 1);
        }
        return ch;
    }
};

// TQ1_0's base-3 digit of a byte for the multiplier p = 3^n: the top two bits of 3 (byte p mod 256)
__device__ __forceinline__ int tq1_digit(u32 byte, u32 p) { return (int)((((byte * p) & 255u) * 3u) >> 8); }

// TQ1_0: chunk i (0..31) of block sb is the 8 consecutive columns 256sb + 8i..: for i < 20 digit i/4 of
// qs[8(i%4)..+7] (weights 32n + m), for i < 30 digit (i-20)/2 of qs[32 + 8((i-20)%2)..+7] (weights 160 + 16n + m),
// and for the last two digits 2(i-30) (v[0..3]) and 2(i-30)+1 (v[4..7]) of qh[0..3] (weights 240 + 4n + j).
struct TQ1_0 {  // qs u8[48] | qh u8[4] | d f16
    static constexpr int block_elems = 256, block_bytes = 54;
    static constexpr bool TAIL = false;
    static __device__ __forceinline__ Chunk decode(const u8* row, int c, int) {
        const int sb = c >> 5, i = c & 31;
        const u8* blk = row + sb * block_bytes;
        const float d = ldh(blk + 52);
        int off, n0, n1;  // byte offset of v[0..3]'s bytes (v[4..7]'s follow, but for qh), their digits
        if (i < 20) {
            off = 8 * (i & 3);
            n0 = n1 = i >> 2;
        } else if (i < 30) {
            off = 32 + 8 * ((i - 20) & 1);
            n0 = n1 = (i - 20) >> 1;
        } else {
            off = 48;
            n0 = 2 * (i - 30);
            n1 = n0 + 1;
        }
        const u32 q0 = ld32(blk + off), q1 = i < 30 ? ld32(blk + off + 4) : q0;
        const u32 p0 = tq1_pow3(n0), p1 = tq1_pow3(n1);
        Chunk ch;
        ch.c0 = 256 * sb + 8 * i;
        ch.c1 = ch.c0 + 4;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            ch.v[k] = d * (float)(tq1_digit((q0 >> (8 * k)) & 255u, p0) - 1);
            ch.v[4 + k] = d * (float)(tq1_digit((q1 >> (8 * k)) & 255u, p1) - 1);
        }
        return ch;
    }
    static __device__ __forceinline__ u32 tq1_pow3(int n) { return n == 0 ? 1u : n == 1 ? 3u : n == 2 ? 9u : n == 3 ? 27u : 81u; }
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
    X(q2_k, Q2_K)         \
    X(q3_k, Q3_K)         \
    X(q4_k, Q4_K)         \
    X(q5_k, Q5_K)         \
    X(q6_k, Q6_K)         \
    X(iq4_nl, IQ4_NL)     \
    X(iq4_xs, IQ4_XS)     \
    X(iq3_xxs, IQ3_XXS)   \
    X(iq3_s, IQ3_S)       \
    X(iq2_xxs, IQ2_XXS)   \
    X(iq2_xs, IQ2_XS)     \
    X(iq2_s, IQ2_S)       \
    X(iq1_s, IQ1_S)       \
    X(iq1_m, IQ1_M)       \
    X(mxfp4, MXFP4)       \
    X(tq1_0, TQ1_0)       \
    X(tq2_0, TQ2_0)
