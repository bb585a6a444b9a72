"""GGML tensor types: block sizes, byte layouts, and the float32 reference dequantizers.

This is the one place that knows each GGUF type's layout; the Numba and CUDA
kernels follow the layouts written here.  A block of ``block_size`` weights
takes ``type_size`` bytes; a row of ``n_cols`` weights is ``n_cols/block_size``
consecutive blocks.  Within a block (all little endian, ``f16`` = IEEE half):

* ``F32`` / ``F16`` / ``BF16``: one value per element (block of 1).
* ``Q4_0`` (32 -> 18 B): ``d f16 | qs u8[16]``; element j<16 is the low nibble
  of qs[j], element j>=16 the high nibble of qs[j-16]; w = d * (q - 8).
* ``Q4_1`` (32 -> 20 B): ``d f16 | m f16 | qs u8[16]``; nibbles as Q4_0; w = d*q + m.
* ``Q5_0`` (32 -> 22 B): ``d f16 | qh u32 | qs u8[16]``; q = nibble | (bit j of qh) << 4;
  w = d * (q - 16).
* ``Q5_1`` (32 -> 24 B): ``d f16 | m f16 | qh u32 | qs u8[16]``; w = d*q + m.
* ``Q8_0`` (32 -> 34 B): ``d f16 | qs i8[32]``; w = d * q.
* ``Q2_K`` (256 -> 84 B): ``scales u8[16] | qs u8[64] | d f16 | dmin f16``; 16 sub-blocks of
  16; scale = d*(sc & 15), min = dmin*(sc >> 4); 2-bit q: byte i of each 32-byte half
  holds elements i, i+32, i+64, i+96 of that half's 128 at shifts 0, 2, 4, 6; w = scale*q - min.
* ``Q3_K`` (256 -> 110 B): ``hmask u8[32] | qs u8[64] | scales u8[12] | d f16``; 16 sub-blocks of
  16 with 6-bit signed scales (packed, minus 32); q = 2 low bits (as Q2_K) minus 4 when the
  hmask bit is 0; w = d*scale*q.
* ``Q4_K`` (256 -> 144 B): ``d f16 | dmin f16 | scales u8[12] | qs u8[128]``; 8 sub-blocks of 32
  with 6-bit scale and min packed in 12 bytes (see :func:`k_scale_min`); each 32 bytes of qs
  hold two sub-blocks (low nibbles, then high nibbles); w = d*sc*q - dmin*m.
* ``Q5_K`` (256 -> 176 B): ``d | dmin | scales u8[12] | qh u8[32] | qs u8[128]``; as Q4_K with a
  fifth bit: bit s of qh[i] belongs to sub-block s, element i.
* ``Q6_K`` (256 -> 210 B): ``ql u8[128] | qh u8[64] | scales i8[16] | d f16``; each 128 elements
  use 64 ql bytes (low nibbles: elements 0..63, high nibbles: 64..127) and 32 qh bytes (2 bits
  per element at shifts 0,2,4,6 for elements i, i+32, i+64, i+96); q - 32, 16 sub-blocks of 16
  with int8 scales; w = d*scale*(q - 32).

The dequantizers are vectorised numpy and equal ``gguf.quants.dequantize`` bit
for bit (same float32 operation order); tests/test_quants.py holds them to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

QK_K = 256
T = GGMLQuantizationType


class UnsupportedQuantType(ValueError):
    """A tensor type kvrun has no kernels for."""


@dataclass(frozen=True)
class QuantType:
    qtype: int
    name: str
    block_size: int
    type_size: int


# ----------------------------------------------------------------- block dequantizers
# Each takes blocks [n_blocks, type_size] uint8 and returns [n_blocks, block_size] float32.


def _f16(b: np.ndarray) -> np.ndarray:
    return b.view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[n, 16] bytes -> [n, 32] nibbles (low nibbles first)."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)


def _qh_bits(qh: np.ndarray) -> np.ndarray:
    """[n, 4] bytes (u32 little endian) -> [n, 32] bits."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _deq_f32(b: np.ndarray) -> np.ndarray:
    return b.view(np.float32)


def _deq_f16(b: np.ndarray) -> np.ndarray:
    return _f16(b)


def _deq_bf16(b: np.ndarray) -> np.ndarray:
    return (b.view(np.int16).astype(np.int32) << 16).view(np.float32)


def _deq_q4_0(b: np.ndarray) -> np.ndarray:
    d = _f16(b[:, :2])
    q = _nibbles(b[:, 2:]).astype(np.int8) - np.int8(8)
    return d * q.astype(np.float32)


def _deq_q4_1(b: np.ndarray) -> np.ndarray:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return d * _nibbles(b[:, 4:]).astype(np.float32) + m


def _deq_q5_0(b: np.ndarray) -> np.ndarray:
    d = _f16(b[:, :2])
    q = (_nibbles(b[:, 6:]) | (_qh_bits(b[:, 2:6]) << np.uint8(4))).astype(np.int8) - np.int8(16)
    return d * q.astype(np.float32)


def _deq_q5_1(b: np.ndarray) -> np.ndarray:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    q = _nibbles(b[:, 8:]) | (_qh_bits(b[:, 4:8]) << np.uint8(4))
    return d * q.astype(np.float32) + m


def _deq_q8_0(b: np.ndarray) -> np.ndarray:
    return b[:, 2:].view(np.int8).astype(np.float32) * _f16(b[:, :2])


def _deq_q2_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0xF).astype(np.float32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).astype(np.float32)).reshape(n, 16, 1)
    shift = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    q = ((qs.reshape(n, 2, 1, 32) >> shift) & np.uint8(3)).reshape(n, 16, 16).astype(np.float32)
    return (dl * q - ml).reshape(n, QK_K)


def _deq_q3_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    hmask, qs, sc, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    lo = (sc[:, :8].reshape(n, 1, 8) >> np.array([0, 4], np.uint8).reshape(1, 2, 1)).reshape(n, 16)
    hi = (sc[:, 8:].reshape(n, 1, 4) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1)).reshape(n, 16)
    scales = ((lo & np.uint8(0x0F)) | ((hi & np.uint8(0x03)) << np.uint8(4))).astype(np.int8) - np.int8(32)
    dl = (d * scales.astype(np.float32)).reshape(n, 16, 1)
    ql = (qs.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)).reshape(n, 16, 16) & np.uint8(3)
    qh = (hmask.reshape(n, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)).reshape(n, 16, 16) & np.uint8(1)
    q = (ql.astype(np.int8) - ((qh ^ np.uint8(1)) << np.uint8(2)).astype(np.int8)).astype(np.float32)
    return (dl * q).reshape(n, QK_K)


def k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 packed bytes -> 8 six-bit scales and 8 six-bit mins.

    Bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7;
    bytes 4-7 hold mins 0-3 likewise; bytes 8-11 hold the low 4 bits of
    scales 4-7 (low nibble) and mins 4-7 (high nibble).
    """
    n = scales.shape[0]
    s = scales.reshape(n, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def _deq_q4_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = k_scale_min(b[:, 4:16])
    dl = (d * sc.astype(np.float32)).reshape(n, 8, 1)
    ml = (dmin * mn.astype(np.float32)).reshape(n, 8, 1)
    q = (b[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & np.uint8(0x0F)
    return (dl * q.reshape(n, 8, 32).astype(np.float32) - ml).reshape(n, QK_K)


def _deq_q5_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = k_scale_min(b[:, 4:16])
    qh, qs = b[:, 16:48], b[:, 48:]
    dl = (d * sc.astype(np.float32)).reshape(n, 8, 1)
    ml = (dmin * mn.astype(np.float32)).reshape(n, 8, 1)
    ql = ((qs.reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & np.uint8(0x0F)).reshape(n, 8, 32)
    hb = ((qh.reshape(n, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)) & np.uint8(1)).reshape(n, 8, 32)
    q = (ql | (hb << np.uint8(4))).astype(np.float32)
    return (dl * q - ml).reshape(n, QK_K)


def _deq_q6_k(b: np.ndarray) -> np.ndarray:
    n = b.shape[0]
    ql, qh, sc, d = b[:, :128], b[:, 128:192], b[:, 192:208], _f16(b[:, 208:210])
    dl = (d * sc.view(np.int8).astype(np.float32)).reshape(n, 16, 1)
    lo = ((ql.reshape(n, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & np.uint8(0x0F)).reshape(n, 8, 32)
    hi = ((qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & np.uint8(3)).reshape(n, 8, 32)
    q = ((lo | (hi << np.uint8(4))).astype(np.int8) - np.int8(32)).reshape(n, 16, 16).astype(np.float32)
    return (dl * q).reshape(n, QK_K)


_DEQUANT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    T.F32: _deq_f32,
    T.F16: _deq_f16,
    T.BF16: _deq_bf16,
    T.Q4_0: _deq_q4_0,
    T.Q4_1: _deq_q4_1,
    T.Q5_0: _deq_q5_0,
    T.Q5_1: _deq_q5_1,
    T.Q8_0: _deq_q8_0,
    T.Q2_K: _deq_q2_k,
    T.Q3_K: _deq_q3_k,
    T.Q4_K: _deq_q4_k,
    T.Q5_K: _deq_q5_k,
    T.Q6_K: _deq_q6_k,
}

QUANT_TYPES: dict[int, QuantType] = {
    int(t): QuantType(int(t), T(t).name, *GGML_QUANT_SIZES[T(t)]) for t in _DEQUANT
}
SUPPORTED_TYPES: tuple[int, ...] = tuple(QUANT_TYPES)

# guard at import: every supported type has its table entry and dequantizer
assert set(QUANT_TYPES) == set(_DEQUANT)


def _type_name(qtype: int) -> str:
    try:
        return T(qtype).name
    except ValueError:
        return f"#{qtype}"


def is_supported(qtype: int) -> bool:
    return int(qtype) in QUANT_TYPES


def quant_info(qtype: int) -> QuantType:
    """Block size and bytes per block of ``qtype``; :class:`UnsupportedQuantType` otherwise."""
    try:
        return QUANT_TYPES[int(qtype)]
    except KeyError:
        names = ", ".join(q.name for q in QUANT_TYPES.values())
        raise UnsupportedQuantType(f"tensor type {_type_name(qtype)} is not supported; kvrun supports {names}") from None


def row_bytes(qtype: int, n_cols: int) -> int:
    """Bytes of one row of ``n_cols`` weights."""
    q = quant_info(qtype)
    if n_cols % q.block_size:
        raise ValueError(f"a row of {n_cols} is not a whole number of {q.name} blocks of {q.block_size}")
    return n_cols // q.block_size * q.type_size


def dequantize(raw: np.ndarray, qtype: int, shape: tuple[int, ...]) -> np.ndarray:
    """Raw GGUF bytes -> float32 array of logical ``shape`` (last dim contiguous)."""
    q = quant_info(qtype)
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, q.type_size)
    return _DEQUANT[q.qtype](blocks).reshape(shape)


def dequantize_rows(raw2d: np.ndarray, qtype: int, rows: int | np.ndarray) -> np.ndarray:
    """Rows of a ``[n_rows, row_bytes]`` uint8 matrix -> float32 ``[len(rows), n_cols]``."""
    q = quant_info(qtype)
    sel = np.ascontiguousarray(raw2d[np.atleast_1d(rows)])
    n = sel.shape[0]
    return _DEQUANT[q.qtype](sel.reshape(-1, q.type_size)).reshape(n, -1)
