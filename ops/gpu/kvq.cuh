// Reading one value of a compressed KV cache row (cache/compressed.py) in place.
//
// The layout is ops/cpu/qattention.py's (see its module docstring); a row is
// one token's K (or V) of one KV head, D values:
//
//   codes [D * w / 8] u8   w = bits a code: 2, 3, 4, 8, or 16
//                          (16: raw fp16 bytes, no meta)
//   meta  [D / G, 2]  u8   per group of G values: scale code u, zero code zc
//   lut   [256]      f32   the pool's scale table, s = lut[u]
//
// A group holds nb = G * w / 8 bytes, group-planar: byte i of the group packs
// the codes of values i, i + nb, i + 2 nb, ... at bit offsets 0, w, 2w, ...
// A 3-bit group is a 2-bit plane of the codes' low bits (G/4 bytes) followed by
// a 1-bit plane of their high bits (G/8 bytes: value v at bit v / (G/8) of byte v % (G/8)).
// Value = s * c + m with m = -s * zc * (2^b - 1) / 255 (b: the code's bits).
//
// The fp16 area (sinks + residual window) is read through the same struct as a
// 16-bit "pool" without meta, so a kernel needs one code path per slot.
#pragma once
#include "common.cuh"

struct KVQRow {
    const u8* codes;   // [D * w / 8] this row's codes
    const u8* meta;    // [D / G, 2] this row's (scale code, zero code); unused at 16 bits
    const float* lut;  // [256] scale table; unused at 16 bits
    int bits;          // 16, 8, 4, 3 or 2
};

// Where the rows of K (or of V) of one layer live: the fp16 area [0, F), pool 0
// [F, F + C0), pool 1 [F + C0, F + C0 + C1), in one slot numbering.
struct KVQArea {
    const u16* x16;     // [n_kv, F, Dx] fp16 bits
    const u8* codes0;   // [n_kv, C0, Dx * w0 / 8]
    const u8* meta0;    // [n_kv, C0, Dx / G, 2]
    const u8* codes1;   // [n_kv, C1, Dx * w1 / 8]
    const u8* meta1;    // [n_kv, C1, Dx / G, 2]
    const float* lut0;  // [256]
    const float* lut1;  // [256]
    int F, C0, C1, Dx, G, w0, w1;
    int lgG;  // log2(G), or -1 when G is not a power of two (a head smaller than the group)
};

// log2(x) when x is a power of two, else -1 (once per block: lets kvq_value shift instead of divide)
__device__ __forceinline__ int kvq_log2_exact(int x) {
    int l = 0;
    while ((1 << l) < x) ++l;
    return (1 << l) == x ? l : -1;
}

// The row of KV head kh in slot j (j < F + C0 + C1).
__device__ __forceinline__ KVQRow kvq_row(const KVQArea& a, int kh, int j) {
    KVQRow r;
    if (j < a.F) {
        r.codes = (const u8*)(a.x16 + ((size_t)kh * a.F + j) * a.Dx);
        r.meta = nullptr;
        r.lut = nullptr;
        r.bits = 16;
        return r;
    }
    const bool p0 = j < a.F + a.C0;
    const int w = p0 ? a.w0 : a.w1;
    const size_t row = p0 ? (size_t)kh * a.C0 + (j - a.F) : (size_t)kh * a.C1 + (j - a.F - a.C0);
    const int row_bytes = a.Dx * w / 8;
    const int meta_bytes = w < 16 ? a.Dx / a.G * 2 : 0;
    r.codes = (p0 ? a.codes0 : a.codes1) + row * row_bytes;
    r.meta = (p0 ? a.meta0 : a.meta1) + row * meta_bytes;
    r.lut = p0 ? a.lut0 : a.lut1;
    r.bits = w;
    return r;
}

// Value d of a row, dequantized (the arithmetic of dequant_row in ops/cpu/qattention.py).
// lgG = log2(G) or -1; with a power-of-two group (always, unless a head is
// smaller than the group) the group/byte/plane indices are shifts and masks:
// a runtime integer division costs ~20 instructions, three per value.
__device__ __forceinline__ float kvq_value(const KVQRow& r, int G, int lgG, int d) {
    if (r.bits == 16) return h2f(ld16(r.codes + 2 * d));
    const int w = r.bits;
    const float zs = (float)((1 << w) - 1) / 255.0f;
    if (w == 3) {
        const int g = d / G, i = d - g * G, n2 = G / 4, n1 = G / 8;
        const u8* q = r.codes + g * (3 * G / 8);
        const int c = ((q[i % n2] >> (2 * (i / n2))) & 3) | (((q[n2 + i % n1] >> (i / n1)) & 1) << 2);
        const float s = r.lut[r.meta[2 * g]];
        return s * (float)c - s * (float)r.meta[2 * g + 1] * zs;
    }
    int g, byte_at, plane;
    if (lgG >= 0) {
        const int lnb = lgG + (w == 2 ? 1 : w == 4 ? 2 : 3) - 3;  // log2(bytes per group), G >= 8
        const int i = d & (G - 1);
        g = d >> lgG;
        byte_at = (g << lnb) + (i & ((1 << lnb) - 1));
        plane = i >> lnb;
    } else {
        const int nb = G * w / 8;  // bytes per group
        g = d / G;
        const int i = d - g * G;
        byte_at = g * nb + i % nb;
        plane = i / nb;
    }
    const int c = (r.codes[byte_at] >> (plane * w)) & ((1 << w) - 1);
    const float s = r.lut[r.meta[2 * g]];
    const float m = -s * (float)r.meta[2 * g + 1] * zs;
    return s * (float)c + m;
}
