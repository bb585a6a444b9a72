"""GGML tensor types: block sizes, byte layouts and the float32 reference dequantizers.

This module is the one place in kvrun that knows how each GGUF tensor type is
laid out in bytes.  The Numba (``ops/cpu``) and CUDA (``ops/gpu``) kernels
follow the layouts written here, and ``tests/test_quants.py`` holds the numpy
dequantizers below to ``gguf.quants.dequantize`` bit for bit.

Conventions
-----------
* A tensor of logical numpy shape ``(rows..., n_cols)`` (ggml ``ne`` reversed;
  the last dimension is the contiguous one) is stored row after row.  A row of
  ``n_cols`` weights is ``n_cols / block_size`` consecutive blocks of
  ``type_size`` bytes each; ``n_cols`` must be a multiple of ``block_size``.
* Everything is little endian.  ``f16`` is an IEEE binary16 half, ``bf16`` the
  upper 16 bits of an IEEE binary32, ``u8``/``i8`` unsigned/signed bytes.
* In a block of 32 (``Q4_*``/``Q5_*``/``Q8_0``) element ``j`` is weight ``j``
  of the block; in a K-quant super-block of ``QK_K = 256`` weights the block is
  split into sub-blocks of 16 or 32 weights that share a scale.
* "nibbles as Q4_0": ``qs`` is 16 bytes; element ``j < 16`` is the low nibble
  ``qs[j] & 0xF``, element ``j >= 16`` is the high nibble ``qs[j - 16] >> 4``.

Block layouts (``block_size`` weights -> ``type_size`` bytes)
-------------------------------------------------------------
``F32``  (1 -> 4):  one little-endian float32.
``F16``  (1 -> 2):  one f16; ``w = float32(h)``.
``BF16`` (1 -> 2):  one bf16 ``u16``; ``w`` has the bits ``u16 << 16``.

``Q4_0`` (32 -> 18):  ``d f16 | qs u8[16]``; ``q`` = nibbles as Q4_0;
    ``w = d * (q - 8)``.
``Q4_1`` (32 -> 20):  ``d f16 | m f16 | qs u8[16]``; ``q`` = nibbles as Q4_0;
    ``w = d * q + m``.
``Q5_0`` (32 -> 22):  ``d f16 | qh u8[4] | qs u8[16]``; ``qh`` is a u32;
    ``q = nibble_j | ((qh >> j) & 1) << 4``; ``w = d * (q - 16)``.
``Q5_1`` (32 -> 24):  ``d f16 | m f16 | qh u8[4] | qs u8[16]``; ``q`` as
    Q5_0; ``w = d * q + m``.
``Q8_0`` (32 -> 34):  ``d f16 | qs i8[32]``; ``w = q * d``.

``Q2_K`` (256 -> 84):  ``scales u8[16] | qs u8[64] | d f16 | dmin f16``.
    16 sub-blocks of 16 weights; sub-block ``s = e // 16`` has
    ``scale = scales[s] & 0xF`` and ``min = scales[s] >> 4``.  The 256 weights
    are two halves of 128; half ``h`` uses ``qs[32h : 32h + 32]`` and weight
    ``e = 128h + 32k + l`` (``k`` in 0..3, ``l`` in 0..31) is
    ``q = (qs[32h + l] >> 2k) & 3``.
    ``w = (d * scale) * q - dmin * min``.
``Q3_K`` (256 -> 110):  ``hmask u8[32] | qs u8[64] | scales u8[12] | d f16``.
    Low 2 bits of ``q`` exactly as Q2_K's ``qs``; high bit of weight
    ``e = 32k + l`` (``k`` in 0..7) is ``(hmask[l] >> k) & 1``;
    ``q = low2 - (4 if that bit is 0 else 0)`` (range -4..3).
    16 sub-blocks of 16 weights with 6-bit scales ``sc[i]``:
    low 4 bits ``scales[i] & 0xF`` for ``i < 8``, ``scales[i - 8] >> 4`` for
    ``i >= 8``; high 2 bits ``(scales[8 + i % 4] >> 2 * (i // 4)) & 3``;
    the signed scale is ``sc[i] - 32``.  ``w = (d * (sc[s] - 32)) * q``.
``IQ4_NL`` (32 -> 18):  ``d f16 | qs u8[16]``; nibbles as Q4_0 index a
    16-entry non-linear table ``IQ4_VALUES`` (-127 .. 113); ``w = d * IQ4_VALUES[q]``.
``MXFP4`` (32 -> 17):  ``e u8 | qs u8[16]``; nibbles as Q4_0 index the 16-entry
    table ``MXFP4_VALUES`` (ggml's ``kvalues_mxfp4``: the E2M1 values doubled, 0 .. 12
    and their negatives); ``e`` is an E8M0 scale, and since the table is doubled the
    weight takes half of it: ``w = E8M0_HALF[e] * MXFP4_VALUES[q]`` with
    ``E8M0_HALF[e] = 2^(e - 128)`` (ggml's ``GGML_E8M0_TO_FP32_HALF``: subnormal for
    ``e`` = 0, 1; ``e`` = 255 is ``2^127``, not NaN).  Blocks are 17 bytes, so odd ones
    start at odd addresses.
``IQ4_XS`` (256 -> 136):  ``d f16 | scales_h u16 | scales_l u8[4] | qs u8[128]``.
    8 sub-blocks of 32; sub-block ``s`` has the 6-bit scale ``ls = (scales_l[s // 2]
    >> 4 (s % 2)) & 0xF | ((scales_h >> 2s) & 3) << 4`` and its 32 weights in
    ``qs[16s : 16s + 16]``, nibbles as IQ4_NL.  ``w = (d * (ls - 32)) * IQ4_VALUES[q]``.
``Q4_K`` (256 -> 144):  ``d f16 | dmin f16 | scales u8[12] | qs u8[128]``.
    8 sub-blocks of 32 weights, each with a 6-bit scale ``sc[s]`` and a 6-bit
    min ``mn[s]`` packed in the 12 bytes (see :func:`k_scale_min`):
    ``s < 4``: ``sc = scales[s] & 63``, ``mn = scales[s + 4] & 63``;
    ``s >= 4``: ``sc = (scales[s + 4] & 0xF) | (scales[s - 4] >> 6) << 4``,
    ``mn = (scales[s + 4] >> 4) | (scales[s] >> 6) << 4``.
    Each 32 bytes ``qs[32c : 32c + 32]`` hold sub-block ``2c`` in their low
    nibbles and sub-block ``2c + 1`` in their high nibbles: weight
    ``e = 64c + 32t + l`` is ``q = (qs[32c + l] >> 4t) & 0xF``.
    ``w = (d * sc[s]) * q - dmin * mn[s]``.
``Q5_K`` (256 -> 176):  ``d f16 | dmin f16 | scales u8[12] | qh u8[32] |
    qs u8[128]``.  As Q4_K, plus a fifth bit: weight ``e = 32s + l`` gets
    ``((qh[l] >> s) & 1) << 4``.  ``w = (d * sc[s]) * q - dmin * mn[s]``.
``Q6_K`` (256 -> 210):  ``ql u8[128] | qh u8[64] | scales i8[16] | d f16``.
    Two halves of 128 weights; half ``h`` uses ``ql[64h : 64h + 64]`` and
    ``qh[32h : 32h + 32]``.  Weight ``e = 128h + 64t + m`` (``t`` in 0..1,
    ``m`` in 0..63) has low 4 bits ``(ql[64h + m] >> 4t) & 0xF``; weight
    ``e = 128h + 32k + l`` (``k`` in 0..3) has high 2 bits
    ``(qh[32h + l] >> 2k) & 3``; ``q = (low | high << 4) - 32`` (-32..31).
    16 sub-blocks of 16 weights with int8 scales: ``w = (d * scales[e // 16]) * q``.

I-quants (llama.cpp's lattice types; 256 -> ``type_size``).  Weights come in groups
of 8 (4 for the IQ3 grids) that one grid entry gives at once: ``grid`` is a fixed
table of small unsigned values (:data:`IQ2XXS_GRID` ... :data:`IQ1S_GRID`, ggml's
``iq2xxs_grid`` ..., read from gguf-py), a sign mask flips some of them, and every
32 (or 16) weights share a 4-bit scale ``ls``.  A 7-bit sign index ``i`` means the
8 signs ``KSIGNS[i] = i | parity(i) << 7`` (bit ``j`` set: weight ``j`` negative;
the eighth sign makes the count of negatives even); a sign byte means its bits
directly.  The 8 sub-blocks of 32 are ``ib = e // 32``, their groups ``l``.
``IQ2_XXS`` (256 -> 66):  ``d f16 | qs u8[64]``.  Sub-block ``ib`` is the 8 bytes
    ``qs[8ib : 8ib + 8]``: bytes 0-3 index ``IQ2XXS_GRID`` (256 x 8) for its groups
    ``l`` = 0..3; bytes 4-7 are a u32 ``a`` holding the sign index of group ``l``
    in bits ``7l .. 7l + 6`` and ``ls = a >> 28``.
    ``w = (d * (0.5 + ls) * 0.25) * grid * sign``.
``IQ2_XS`` (256 -> 74):  ``d f16 | qs u16[32] | scales u8[8]``.  Group ``k`` (8
    weights) is the u16 ``qs[k]``: grid index ``qs[k] & 511`` into ``IQ2XS_GRID``
    (512 x 8), sign index ``qs[k] >> 9``.  Scales per 16: ``ls = scales[ib] & 0xF``
    for groups ``4ib, 4ib + 1``, ``scales[ib] >> 4`` for ``4ib + 2, 4ib + 3``;
    ``w = (d * (0.5 + ls) * 0.25) * grid * sign``.
``IQ2_S`` (256 -> 82):  ``d f16 | qs u8[32] | signs u8[32] | qh u8[8] | scales u8[8]``.
    Group ``k`` has the grid index ``qs[k] | ((qh[k // 4] >> 2 (k % 4)) & 3) << 8``
    into ``IQ2S_GRID`` (1024 x 8) and the sign byte ``signs[k]``; scales as IQ2_XS.
``IQ3_XXS`` (256 -> 98):  ``d f16 | qs u8[64] | scales_signs u32[8]``.  Byte ``qs[k]``
    indexes ``IQ3XXS_GRID`` (256 x 4) for weights ``4k .. 4k + 3``; the u32
    ``scales_signs[ib]`` holds the sign indices of sub-block ``ib``'s groups of 8
    (bits ``7l ..``) and ``ls`` (bits 28-31).  ``w = (d * (0.5 + ls) * 0.5) * grid * sign``.
``IQ3_S`` (256 -> 110):  ``d f16 | qs u8[64] | qh u8[8] | signs u8[32] | scales u8[4]``.
    Weights ``4k .. 4k + 3`` come from ``IQ3S_GRID`` (512 x 4) at
    ``qs[k] | ((qh[k // 8] >> k % 8) & 1) << 8``; sign byte ``signs[k // 2]`` covers
    weights ``8 (k // 2) ..``; ``ls = (scales[ib // 2] >> 4 (ib % 2)) & 0xF``;
    ``w = (d * (1 + 2 ls)) * grid * sign``.
``IQ1_S`` (256 -> 50):  ``d f16 | qs u8[32] | qh u16[8]``.  Group ``k`` has the grid
    index ``qs[k] | ((qh[k // 4] >> 3 (k % 4)) & 7) << 8`` into ``IQ1S_GRID``
    (2048 x 8, values -1/0/1); sub-block ``ib`` has ``ls = (qh[ib] >> 12) & 7`` and
    ``delta = -0.125`` if bit 15 of ``qh[ib]`` is set else ``0.125``;
    ``w = (d * (2 ls + 1)) * (grid + delta)``.
``IQ1_M`` (256 -> 56):  ``qs u8[32] | qh u8[16] | scales u16[4]``.  The f16 ``d`` is the
    top nibbles of the four ``scales`` (``scales[0] >> 12`` lowest).  Group ``k``: grid
    index ``qs[k] | (nib & 7) << 8`` and ``delta = -0.125`` if ``nib & 8`` else ``0.125``,
    where ``nib`` is nibble ``k % 2`` of ``qh[k // 2]``; scales per 16: group of 16
    ``j`` has ``ls = (scales[j // 4] >> 3 (j % 4)) & 7``;
    ``w = (d * (2 ls + 1)) * (grid + delta)``.

Ternary types (llama.cpp's, for BitNet b1.58 and TriLM; 256 -> ``type_size``).  Every weight is
``w = d * (t - 1)`` with the code ``t`` in {0, 1, 2} and one f16 ``d`` a block.
``TQ2_0`` (256 -> 66):  ``qs u8[64] | d f16``.  Codes of 2 bits laid out as Q2_K's: weight
    ``e = 128h + 32k + l`` (``k`` in 0..3, ``l`` in 0..31) is ``t = (qs[32h + l] >> 2k) & 3`` (3 never
    occurs in a quantized file; it decodes to ``2 d``).
``TQ1_0`` (256 -> 54):  ``qs u8[48] | qh u8[4] | d f16``.  Five base-3 digits a byte (3^5 = 243), stored as
    the fixed point ``ceil(v * 256 / 243)`` of their value ``v``, so that digit ``n`` (the ``n``-th most significant)
    is ``t = ((byte * 3^n mod 256) * 3) >> 8``.  Weights ``32n + m`` (``n`` in 0..4, ``m`` in 0..31) are digit
    ``n`` of ``qs[m]``; weights ``160 + 16n + m`` (``m`` in 0..15) digit ``n`` of ``qs[32 + m]``; weights
    ``240 + 4n + j`` (``n`` in 0..3, ``j`` in 0..3) digit ``n`` of ``qh[j]``.  Any byte decodes to codes 0..2.

Arithmetic (bit exactness)
--------------------------
Reference: ``gguf.quants`` (the same as ggml's C dequantizers).  Scales are
widened exactly f16 -> float32 and every product is taken in float32.  All
products are exact: an f16 has 11 significant bits, the integer factors at
most 7 + 6 (Q6_K ``scale * q``; IQ4_XS ``(ls - 32) * IQ4_VALUES[q]``), so ``d * scale * q`` needs <= 23 bits and its
value does not depend on the order of the factors.  MXFP4's scale is a power of two and its values have
at most 2 significant bits: exact too, subnormal scales included (``2^-128 * v`` is a multiple of ``2^-149``);
``e`` = 255 with ``|v| >= 2`` overflows to inf in any order.  The i-quants too: ``(2 ls + 1)`` (5 bits) times a grid value
(6 bits; IQ1's ``grid + delta``, 8 eighths, 4 bits), the powers of two and signs exact.  The only rounding is the
one float32 add of the offset in Q4_1/Q5_1 (``+ m``) and Q2_K/Q4_K/Q5_K
(``- dmin * min``), so a fused multiply-add, or computing in float64 and
rounding once to float32, gives the same bits too.  What does break bit
exactness: products in f16, or rounding an intermediate to f16 / bf16.
"""

from __future__ import annotations

import math
import operator
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import IQ1_S as _GGUF_IQ1_S
from gguf.quants import IQ2_S as _GGUF_IQ2_S
from gguf.quants import IQ2_XS as _GGUF_IQ2_XS
from gguf.quants import IQ2_XXS as _GGUF_IQ2_XXS
from gguf.quants import IQ3_S as _GGUF_IQ3_S
from gguf.quants import IQ3_XXS as _GGUF_IQ3_XXS
from gguf.quants import IQ4_NL as _GGUF_IQ4_NL
from gguf.quants import MXFP4 as _GGUF_MXFP4

__all__ = [
    "QK_K",
    "QuantType",
    "UnsupportedQuantType",
    "SUPPORTED_TYPES",
    "QUANT_TYPES",
    "quant_info",
    "is_supported",
    "row_bytes",
    "dequantize",
    "dequantize_rows",
    "k_scale_min",
]

T = GGMLQuantizationType
QK_K = 256  #: weights per K-quant super-block

_F32 = np.float32
_SH2 = np.array([0, 2, 4, 6], np.uint8)  # 2-bit fields of a byte
_SH4 = np.array([0, 4], np.uint8)  # nibbles of a byte
_BITS = np.arange(8, dtype=np.uint8)  # bits of a byte


class UnsupportedQuantType(ValueError):
    """A tensor type kvrun cannot decode (no layout, no kernels).

    Attributes
    ----------
    qtype : int
        The ggml type id that was asked for.
    """

    def __init__(self, qtype: object) -> None:
        self.qtype = qtype
        names = ", ".join(QUANT_TYPES[t].name for t in SUPPORTED_TYPES)
        super().__init__(f"tensor type {_type_label(qtype)} is not supported by kvrun; supported types: {names}")


@dataclass(frozen=True)
class QuantType:
    """Size facts of one supported GGML tensor type.

    Attributes
    ----------
    qtype : int
        ggml type id (``gguf.GGMLQuantizationType``).
    name : str
        ggml type name, e.g. ``"Q4_K"``.
    block_size : int
        Weights per block.
    type_size : int
        Bytes per block.
    fields : tuple of (str, int)
        The block's fields in byte order as ``(name, n_bytes)``; they add up
        to ``type_size``.  The module docstring says what each field means.
    """

    qtype: int
    name: str
    block_size: int
    type_size: int
    fields: tuple[tuple[str, int], ...] = field(default=(), compare=False)

    def offset(self, name: str) -> int:
        """Byte offset of field ``name`` within a block.

        Raises
        ------
        KeyError
            If the block has no such field.
        """
        o = 0
        for f, n in self.fields:
            if f == name:
                return o
            o += n
        raise KeyError(f"{self.name} blocks have no field {name!r}; fields: {[f for f, _ in self.fields]}")

    @property
    def bits_per_weight(self) -> float:
        """Storage cost, ``8 * type_size / block_size``."""
        return 8.0 * self.type_size / self.block_size


# ----------------------------------------------------------------- block dequantizers
# Each ``_deq_<type>(b, out)`` reads blocks ``b`` [n, type_size] uint8 and writes
# ``out`` [n, block_size] float32.  The operation order (and float32 dtype of
# every intermediate) mirrors gguf.quants so results agree bit for bit.


def _f16(b: np.ndarray) -> np.ndarray:
    """Two-byte columns ``[n, 2]`` uint8 -> ``[n, 1]`` float32 (exact)."""
    return b.view(np.float16).astype(_F32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """``[n, 16]`` bytes -> ``[n, 32]`` uint8 nibbles, the 16 low ones first."""
    n = qs.shape[0]
    q = np.empty((n, 2, 16), np.uint8)
    np.bitwise_and(qs, np.uint8(0x0F), out=q[:, 0])
    np.right_shift(qs, np.uint8(4), out=q[:, 1])
    return q.reshape(n, 32)


def _deq_f32(b: np.ndarray, out: np.ndarray) -> None:
    """``F32``: one little-endian float32 per element."""
    out[...] = b.view(np.float32)


def _deq_f16(b: np.ndarray, out: np.ndarray) -> None:
    """``F16``: one IEEE half per element, widened exactly."""
    out[...] = b.view(np.float16)


def _deq_bf16(b: np.ndarray, out: np.ndarray) -> None:
    """``BF16``: the u16 is the upper half of the float32's bits."""
    np.left_shift(b.view(np.uint16), np.uint32(16), out=out.view(np.uint32))


def _deq_q4_0(b: np.ndarray, out: np.ndarray) -> None:
    """``Q4_0`` 18 B: ``d f16 | qs u8[16]``; nibbles as Q4_0; ``w = d * (q - 8)``."""
    q = _nibbles(b[:, 2:]).view(np.int8)
    q -= np.int8(8)
    np.multiply(_f16(b[:, 0:2]), q, out=out)


def _deq_q4_1(b: np.ndarray, out: np.ndarray) -> None:
    """``Q4_1`` 20 B: ``d f16 | m f16 | qs u8[16]``; nibbles as Q4_0; ``w = d * q + m``."""
    np.multiply(_f16(b[:, 0:2]), _nibbles(b[:, 4:]), out=out)
    out += _f16(b[:, 2:4])


def _q5(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1 5-bit values: nibble ``j`` | bit ``j`` of the u32 ``qh`` << 4."""
    q = _nibbles(qs)
    q |= np.unpackbits(qh, axis=-1, bitorder="little") << np.uint8(4)
    return q


def _deq_q5_0(b: np.ndarray, out: np.ndarray) -> None:
    """``Q5_0`` 22 B: ``d f16 | qh u8[4] | qs u8[16]``; ``w = d * (q - 16)``."""
    q = _q5(b[:, 2:6], b[:, 6:]).view(np.int8)
    q -= np.int8(16)
    np.multiply(_f16(b[:, 0:2]), q, out=out)


def _deq_q5_1(b: np.ndarray, out: np.ndarray) -> None:
    """``Q5_1`` 24 B: ``d f16 | m f16 | qh u8[4] | qs u8[16]``; ``w = d * q + m``."""
    np.multiply(_f16(b[:, 0:2]), _q5(b[:, 4:8], b[:, 8:]), out=out)
    out += _f16(b[:, 2:4])


def _deq_q8_0(b: np.ndarray, out: np.ndarray) -> None:
    """``Q8_0`` 34 B: ``d f16 | qs i8[32]``; ``w = q * d``."""
    np.multiply(b[:, 2:].view(np.int8), _f16(b[:, 0:2]), out=out)


#: IQ4_NL / IQ4_XS code -> weight (ggml's ``kvalues_iq4nl``)
IQ4_VALUES = np.array(_GGUF_IQ4_NL.kvalues, np.int8)


def _deq_iq4_nl(b: np.ndarray, out: np.ndarray) -> None:
    """``IQ4_NL`` 18 B: ``d f16 | qs u8[16]``; nibbles as Q4_0; ``w = d * IQ4_VALUES[q]``."""
    np.multiply(_f16(b[:, 0:2]), IQ4_VALUES[_nibbles(b[:, 2:])], out=out)


#: MXFP4 code -> weight / scale (ggml's ``kvalues_mxfp4``: the E2M1 values doubled)
MXFP4_VALUES = np.array(_GGUF_MXFP4.kvalues, np.int8)


def _e8m0_half(e: np.ndarray) -> np.ndarray:
    """E8M0 bytes -> ``2^(e - 128)`` float32, as ggml's ``ggml_e8m0_to_fp32_half``: the exponent
    field ``e - 1`` for ``e >= 2``, the subnormals ``2^-128``, ``2^-127`` below (no NaN for 255)."""
    e = e.astype(np.uint32)
    return np.where(e < 2, np.uint32(0x00200000) << (e & np.uint32(1)), (e - np.uint32(1)) << np.uint32(23)).view(_F32)


#: MXFP4's scale byte ``e`` -> ``2^(e - 128)`` (float32 [256]; the kernels look it up)
E8M0_HALF = _e8m0_half(np.arange(256))


def _deq_mxfp4(b: np.ndarray, out: np.ndarray) -> None:
    """``MXFP4`` 17 B: ``e u8 | qs u8[16]``; nibbles as Q4_0; ``w = E8M0_HALF[e] * MXFP4_VALUES[q]``."""
    np.multiply(E8M0_HALF[b[:, 0:1]], MXFP4_VALUES[_nibbles(b[:, 1:])], out=out)


def _deq_iq4_xs(b: np.ndarray, out: np.ndarray) -> None:
    """``IQ4_XS`` 136 B: ``d f16 | scales_h u16 | scales_l u8[4] | qs u8[128]``; see the module docstring."""
    n = b.shape[0]
    sh = b[:, 2:4].copy().view(np.uint16).astype(np.int32)  # [n, 1]
    lo = (b[:, 4:8].reshape(n, 4, 1) >> _SH4.reshape(1, 1, 2)).reshape(n, 8) & np.uint8(0x0F)
    hi = (sh >> (2 * np.arange(8, dtype=np.int32))) & 3
    dl = _f16(b[:, 0:2]) * ((lo.astype(np.int32) | (hi << 4)) - 32).astype(_F32)  # exact: f16 x 6 bits
    q = IQ4_VALUES[_nibbles(b[:, 8:].reshape(n * 8, 16))].reshape(n, 8, 32)
    np.multiply(dl.reshape(n, 8, 1), q, out=out.reshape(n, 8, 32))


def _crumbs(qs: np.ndarray, n_groups: int) -> np.ndarray:
    """2-bit fields: ``qs`` [n, 32 * n_groups] -> [n, n_groups, 4, 32]; field k of byte l at [.., k, l]."""
    n = qs.shape[0]
    return (qs.reshape(n, n_groups, 1, 32) >> _SH2.reshape(1, 1, 4, 1)) & np.uint8(3)


def _deq_q2_k(b: np.ndarray, out: np.ndarray) -> None:
    """``Q2_K`` 84 B: ``scales u8[16] | qs u8[64] | d f16 | dmin f16``; see the module docstring."""
    n = b.shape[0]
    scales = b[:, 0:16]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & np.uint8(0x0F)).astype(_F32)).reshape(n, 16, 1)
    ml = (dmin * (scales >> np.uint8(4)).astype(_F32)).reshape(n, 16, 1)
    o = out.reshape(n, 16, 16)
    np.multiply(dl, _crumbs(b[:, 16:80], 2).reshape(n, 16, 16), out=o)
    o -= ml


def _deq_q3_k(b: np.ndarray, out: np.ndarray) -> None:
    """``Q3_K`` 110 B: ``hmask u8[32] | qs u8[64] | scales u8[12] | d f16``; see the module docstring."""
    n = b.shape[0]
    hmask, sc = b[:, 0:32], b[:, 96:108]
    lo = (sc[:, 0:8].reshape(n, 1, 8) >> _SH4.reshape(1, 2, 1)).reshape(n, 16) & np.uint8(0x0F)
    hi = (sc[:, 8:12].reshape(n, 1, 4) >> _SH2.reshape(1, 4, 1)).reshape(n, 16) & np.uint8(3)
    scale = (lo | (hi << np.uint8(4))).view(np.int8) - np.int8(32)
    dl = (_f16(b[:, 108:110]) * scale.astype(_F32)).reshape(n, 16, 1)
    hbit = (hmask.reshape(n, 1, 32) >> _BITS.reshape(1, 8, 1)) & np.uint8(1)  # [n, 8, 32]
    q = _crumbs(b[:, 32:96], 2).reshape(n, 8, 32) | (hbit << np.uint8(2))
    q = q.view(np.int8)
    q -= np.int8(4)  # low2 - 4 * (1 - hbit)
    np.multiply(dl, q.reshape(n, 16, 16), out=out.reshape(n, 16, 16))


def k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unpack the 12 scale bytes of Q4_K / Q5_K super-blocks.

    Parameters
    ----------
    scales : numpy.ndarray
        ``[n, 12]`` uint8, the ``scales`` field of ``n`` blocks.

    Returns
    -------
    sc, mn : numpy.ndarray
        ``[n, 8]`` uint8 each: the 6-bit scale and 6-bit min of the 8
        sub-blocks of 32.  Bytes 0-3 hold ``sc[0..3]`` in their low 6 bits and
        the top 2 bits of ``sc[4..7]``; bytes 4-7 likewise for ``mn``; bytes
        8-11 hold the low 4 bits of ``sc[4..7]`` (low nibble) and of
        ``mn[4..7]`` (high nibble).
    """
    n = scales.shape[0]
    s = scales.reshape(n, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & np.uint8(0x3F), (md & np.uint8(0x0F)) | ((d >> np.uint8(2)) & np.uint8(0x30))], axis=-1)
    mn = np.concatenate([m & np.uint8(0x3F), (md >> np.uint8(4)) | ((m >> np.uint8(2)) & np.uint8(0x30))], axis=-1)
    return sc, mn


def _k_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: ``(d * sc, dmin * mn)`` as float32 ``[n, 8, 1]``."""
    n = b.shape[0]
    sc, mn = k_scale_min(b[:, 4:16])
    dl = (_f16(b[:, 0:2]) * sc.astype(_F32)).reshape(n, 8, 1)
    ml = (_f16(b[:, 2:4]) * mn.astype(_F32)).reshape(n, 8, 1)
    return dl, ml


def _k_nibbles(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K ``qs`` [n, 128] -> [n, 8, 32]: sub-block 2c low nibbles, 2c+1 high nibbles of qs[32c:32c+32]."""
    n = qs.shape[0]
    q = np.empty((n, 4, 2, 32), np.uint8)
    c = qs.reshape(n, 4, 32)
    np.bitwise_and(c, np.uint8(0x0F), out=q[:, :, 0])
    np.right_shift(c, np.uint8(4), out=q[:, :, 1])
    return q.reshape(n, 8, 32)


def _deq_q4_k(b: np.ndarray, out: np.ndarray) -> None:
    """``Q4_K`` 144 B: ``d f16 | dmin f16 | scales u8[12] | qs u8[128]``; see the module docstring."""
    n = b.shape[0]
    dl, ml = _k_scales(b)
    o = out.reshape(n, 8, 32)
    np.multiply(dl, _k_nibbles(b[:, 16:144]), out=o)
    o -= ml


def _deq_q5_k(b: np.ndarray, out: np.ndarray) -> None:
    """``Q5_K`` 176 B: ``d f16 | dmin f16 | scales u8[12] | qh u8[32] | qs u8[128]``; see the module docstring."""
    n = b.shape[0]
    dl, ml = _k_scales(b)
    q = _k_nibbles(b[:, 48:176])
    q |= ((b[:, 16:48].reshape(n, 1, 32) >> _BITS.reshape(1, 8, 1)) & np.uint8(1)) << np.uint8(4)
    o = out.reshape(n, 8, 32)
    np.multiply(dl, q, out=o)
    o -= ml


def _deq_q6_k(b: np.ndarray, out: np.ndarray) -> None:
    """``Q6_K`` 210 B: ``ql u8[128] | qh u8[64] | scales i8[16] | d f16``; see the module docstring."""
    n = b.shape[0]
    dl = (_f16(b[:, 208:210]) * b[:, 192:208].view(np.int8).astype(_F32)).reshape(n, 16, 1)
    q = np.empty((n, 2, 2, 64), np.uint8)
    ql = b[:, 0:128].reshape(n, 2, 64)
    np.bitwise_and(ql, np.uint8(0x0F), out=q[:, :, 0])
    np.right_shift(ql, np.uint8(4), out=q[:, :, 1])
    q = q.reshape(n, 8, 32)
    q |= _crumbs(b[:, 128:192], 2).reshape(n, 8, 32) << np.uint8(4)
    qi = q.view(np.int8)
    qi -= np.int8(32)
    np.multiply(dl, qi.reshape(n, 16, 16), out=out.reshape(n, 16, 16))


# ----------------------------------------------------------------- i-quants
def _gguf_grid(cls) -> np.ndarray:
    """gguf-py's copy of a ggml grid table as ``[n_entries, 8 or 4]`` int8 (values -1..62)."""
    cls.init_grid()
    return np.asarray(cls.grid).reshape(cls.grid_shape).astype(np.int8)


#: ggml's i-quant grids: entry -> its 8 (IQ3: 4) values, as int8
IQ2XXS_GRID = _gguf_grid(_GGUF_IQ2_XXS)  # [256, 8] of 8, 25, 43
IQ2XS_GRID = _gguf_grid(_GGUF_IQ2_XS)  # [512, 8]
IQ2S_GRID = _gguf_grid(_GGUF_IQ2_S)  # [1024, 8]
IQ3XXS_GRID = _gguf_grid(_GGUF_IQ3_XXS)  # [256, 4] of 4 .. 62
IQ3S_GRID = _gguf_grid(_GGUF_IQ3_S)  # [512, 4] of 1, 3, .. 15
IQ1S_GRID = _gguf_grid(_GGUF_IQ1_S)  # [2048, 8] of -1, 0, 1 (IQ1_M shares it)
#: 7-bit sign index -> sign byte: the index, and bit 7 set where it has an odd number of bits (ggml's ``ksigns_iq2xs``)
KSIGNS = np.frombuffer(_GGUF_IQ2_XXS.ksigns, np.uint8).copy()
_SIGNS = np.where((np.arange(256).reshape(256, 1) >> np.arange(8)) & 1, _F32(-1), _F32(1))  # sign byte -> [8] +-1
_G2XXS, _G2XS, _G2S, _G3XXS, _G3S, _G1S = (g.astype(_F32) for g in (IQ2XXS_GRID, IQ2XS_GRID, IQ2S_GRID, IQ3XXS_GRID, IQ3S_GRID, IQ1S_GRID))
_SH7 = np.array([0, 7, 14, 21], np.uint32)  # the four 7-bit sign indices of a u32
_SH3 = np.array([0, 3, 6, 9], np.uint16)  # 3-bit fields of a u16


def _u32s(b: np.ndarray) -> np.ndarray:
    """Byte columns ``[n, 4k]`` -> ``[n, k]`` uint32 (copied: block fields are not 4-byte aligned)."""
    return np.ascontiguousarray(b).view(np.uint32)


def _half_scales(d: np.ndarray, sc: np.ndarray, mul: float) -> np.ndarray:
    """``d * (0.5 + ls) * mul`` for 4-bit ``ls`` (float32, in gguf's order), any shape of ``ls``."""
    return d * (_F32(0.5) + sc.astype(_F32)) * _F32(mul)


def _nibble_scales(d: np.ndarray, sc: np.ndarray) -> np.ndarray:
    """IQ2_XS/IQ2_S: ``scales`` [n, 8] -> ``d (0.5 + ls) / 4`` per 16 weights, [n, 8, 2, 1, 1]."""
    n = sc.shape[0]
    ls = (sc.reshape(n, 8, 1) >> _SH4.reshape(1, 1, 2)) & np.uint8(0x0F)
    return _half_scales(d.reshape(n, 1, 1), ls, 0.25).reshape(n, 8, 2, 1, 1)


def _deq_iq2_xxs(b: np.ndarray, out: np.ndarray) -> None:
    """``IQ2_XXS`` 66 B: ``d f16 | qs u8[64]``; see the module docstring."""
    n = b.shape[0]
    blk = b[:, 2:66].reshape(n, 8, 8)
    a = _u32s(blk[:, :, 4:8].reshape(n, 32)).reshape(n, 8, 1)
    db = _half_scales(_f16(b[:, 0:2]).reshape(n, 1, 1), a >> np.uint32(28), 0.25).reshape(n, 8, 1, 1)
    gs = _G2XXS[blk[:, :, 0:4]] * _SIGNS[KSIGNS[(a >> _SH7) & np.uint32(0x7F)]]  # [n, 8, 4, 8], exact
    np.multiply(db, gs, out=out.reshape(n, 8, 4, 8))


def _deq_iq2_xs(b: np.ndarray, out: np.ndarray) -> None:
    """``IQ2_XS`` 74 B: ``d f16 | qs u16[32] | scales u8[8]``; see the module docstring."""
    n = b.shape[0]
    qs = np.ascontiguousarray(b[:, 2:66]).view(np.uint16)  # [n, 32]
    gs = _G2XS[qs & np.uint16(511)] * _SIGNS[KSIGNS[qs >> np.uint16(9)]]  # [n, 32, 8]
    np.multiply(_nibble_scales(_f16(b[:, 0:2]), b[:, 66:74]), gs.reshape(n, 8, 2, 2, 8), out=out.reshape(n, 8, 2, 2, 8))


def _deq_iq2_s(b: np.ndarray, out: np.ndarray) -> None:
    """``IQ2_S`` 82 B: ``d f16 | qs u8[32] | signs u8[32] | qh u8[8] | scales u8[8]``; see the module docstring."""
    n = b.shape[0]
    hi = ((b[:, 66:74].reshape(n, 8, 1) >> _SH2.reshape(1, 1, 4)) & np.uint8(3)).reshape(n, 32)
    idx = b[:, 2:34].astype(np.uint16) | (hi.astype(np.uint16) << np.uint16(8))
    gs = _G2S[idx] * _SIGNS[b[:, 34:66]]  # [n, 32, 8]
    np.multiply(_nibble_scales(_f16(b[:, 0:2]), b[:, 74:82]), gs.reshape(n, 8, 2, 2, 8), out=out.reshape(n, 8, 2, 2, 8))


def _deq_iq3_xxs(b: np.ndarray, out: np.ndarray) -> None:
    """``IQ3_XXS`` 98 B: ``d f16 | qs u8[64] | scales_signs u32[8]``; see the module docstring."""
    n = b.shape[0]
    a = _u32s(b[:, 66:98]).reshape(n, 8, 1)
    db = _half_scales(_f16(b[:, 0:2]).reshape(n, 1, 1), a >> np.uint32(28), 0.5).reshape(n, 8, 1, 1)
    gs = _G3XXS[b[:, 2:66]].reshape(n, 8, 4, 8) * _SIGNS[KSIGNS[(a >> _SH7) & np.uint32(0x7F)]]
    np.multiply(db, gs, out=out.reshape(n, 8, 4, 8))


def _deq_iq3_s(b: np.ndarray, out: np.ndarray) -> None:
    """``IQ3_S`` 110 B: ``d f16 | qs u8[64] | qh u8[8] | signs u8[32] | scales u8[4]``; see the module docstring."""
    n = b.shape[0]
    hi = ((b[:, 66:74].reshape(n, 8, 1) >> _BITS.reshape(1, 1, 8)) & np.uint8(1)).reshape(n, 64)
    idx = b[:, 2:66].astype(np.uint16) | (hi.astype(np.uint16) << np.uint16(8))
    gs = _G3S[idx].reshape(n, 8, 32) * _SIGNS[b[:, 74:106]].reshape(n, 8, 32)
    ls = ((b[:, 106:110].reshape(n, 4, 1) >> _SH4.reshape(1, 1, 2)) & np.uint8(0x0F)).reshape(n, 8, 1)
    db = _f16(b[:, 0:2]).reshape(n, 1, 1) * (np.uint8(1) + np.uint8(2) * ls)  # float32, as gguf's
    np.multiply(db, gs, out=out.reshape(n, 8, 32))


def _iq1_grid(qs: np.ndarray, hi3: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """IQ1 groups of 8: ``grid + delta`` ([n, 32, 8] float32) from ``qs`` [n, 32], the grid
    index's 3 high bits ``hi3`` [n, 32] and whether each group's delta is negative [n, 32]."""
    idx = qs.astype(np.uint16) | (hi3.astype(np.uint16) << np.uint16(8))
    delta = np.where(negative, -_GGUF_IQ1_S.delta, _GGUF_IQ1_S.delta).astype(_F32)
    return _G1S[idx] + delta[..., None]


def _deq_iq1_s(b: np.ndarray, out: np.ndarray) -> None:
    """``IQ1_S`` 50 B: ``d f16 | qs u8[32] | qh u16[8]``; see the module docstring."""
    n = b.shape[0]
    qh = np.ascontiguousarray(b[:, 34:50]).view(np.uint16)  # [n, 8]
    dl = _f16(b[:, 0:2]) * (np.uint16(2) * ((qh >> np.uint16(12)) & np.uint16(7)) + np.uint16(1))  # [n, 8]
    hi3 = ((qh.reshape(n, 8, 1) >> _SH3) & np.uint16(7)).reshape(n, 32)
    neg = np.repeat((qh & np.uint16(0x8000)) != 0, 4, axis=1)
    np.multiply(dl.reshape(n, 8, 1, 1), _iq1_grid(b[:, 2:34], hi3, neg).reshape(n, 8, 4, 8), out=out.reshape(n, 8, 4, 8))


def _deq_iq1_m(b: np.ndarray, out: np.ndarray) -> None:
    """``IQ1_M`` 56 B: ``qs u8[32] | qh u8[16] | scales u16[4]``; see the module docstring."""
    n = b.shape[0]
    sc = np.ascontiguousarray(b[:, 48:56]).view(np.uint16)  # [n, 4]
    dh = (sc & np.uint16(0xF000)) >> np.array([12, 8, 4, 0], np.uint16)
    d = np.bitwise_or.reduce(dh, axis=1).view(np.float16).astype(_F32).reshape(n, 1)
    ls = ((sc.reshape(n, 4, 1) >> _SH3) & np.uint16(7)).reshape(n, 16)
    dl = d * (np.uint16(2) * ls + np.uint16(1))  # [n, 16] float32, one per 16 weights
    nib = (b[:, 32:48].reshape(n, 16, 1) >> _SH4.reshape(1, 1, 2)).reshape(n, 32)
    gd = _iq1_grid(b[:, 0:32], nib & np.uint8(7), (nib & np.uint8(8)) != 0)
    np.multiply(dl.reshape(n, 16, 1, 1), gd.reshape(n, 16, 2, 8), out=out.reshape(n, 16, 2, 8))


_POW3 = np.array([1, 3, 9, 27, 81], np.uint8)  # TQ1_0's digit multipliers (mod 256)


def _deq_tq2_0(b: np.ndarray, out: np.ndarray) -> None:
    """``TQ2_0`` 66 B: ``qs u8[64] | d f16``; 2-bit codes as Q2_K's; ``w = d * (t - 1)``."""
    n = b.shape[0]
    t = (b[:, 0:64].reshape(n, 2, 1, 32) >> _SH2.reshape(1, 1, 4, 1)) & np.uint8(3)
    q = t.reshape(n, 256).view(np.int8) - np.int8(1)
    np.multiply(_f16(b[:, 64:66]), q, out=out)


def _tq1_digits(qs: np.ndarray, k: int) -> np.ndarray:
    """TQ1_0: ``qs`` [n, m] -> the first ``k`` base-3 digits [n, k * m] (uint8 0..2), digit after digit."""
    v = qs[:, None, :] * _POW3[:k].reshape(1, k, 1)  # (uint8: mod 256)
    return ((v.astype(np.uint16) * np.uint16(3)) >> np.uint16(8)).astype(np.uint8).reshape(qs.shape[0], -1)


def _deq_tq1_0(b: np.ndarray, out: np.ndarray) -> None:
    """``TQ1_0`` 54 B: ``qs u8[48] | qh u8[4] | d f16``; base-3 digits; ``w = d * (t - 1)``."""
    t = np.concatenate([_tq1_digits(b[:, 0:32], 5), _tq1_digits(b[:, 32:48], 5), _tq1_digits(b[:, 48:52], 4)], axis=1)
    np.multiply(_f16(b[:, 52:54]), t.view(np.int8) - np.int8(1), out=out)


# ----------------------------------------------------------------- the table
_Kernel = Callable[[np.ndarray, np.ndarray], None]

# type -> (fields in byte order, dequantizer)
_LAYOUTS: dict[GGMLQuantizationType, tuple[tuple[tuple[str, int], ...], _Kernel]] = {
    T.F32: ((("f32", 4),), _deq_f32),
    T.F16: ((("f16", 2),), _deq_f16),
    T.BF16: ((("bf16", 2),), _deq_bf16),
    T.Q4_0: ((("d", 2), ("qs", 16)), _deq_q4_0),
    T.Q4_1: ((("d", 2), ("m", 2), ("qs", 16)), _deq_q4_1),
    T.Q5_0: ((("d", 2), ("qh", 4), ("qs", 16)), _deq_q5_0),
    T.Q5_1: ((("d", 2), ("m", 2), ("qh", 4), ("qs", 16)), _deq_q5_1),
    T.Q8_0: ((("d", 2), ("qs", 32)), _deq_q8_0),
    T.Q2_K: ((("scales", 16), ("qs", 64), ("d", 2), ("dmin", 2)), _deq_q2_k),
    T.Q3_K: ((("hmask", 32), ("qs", 64), ("scales", 12), ("d", 2)), _deq_q3_k),
    T.Q4_K: ((("d", 2), ("dmin", 2), ("scales", 12), ("qs", 128)), _deq_q4_k),
    T.Q5_K: ((("d", 2), ("dmin", 2), ("scales", 12), ("qh", 32), ("qs", 128)), _deq_q5_k),
    T.Q6_K: ((("ql", 128), ("qh", 64), ("scales", 16), ("d", 2)), _deq_q6_k),
    T.IQ4_NL: ((("d", 2), ("qs", 16)), _deq_iq4_nl),
    T.IQ4_XS: ((("d", 2), ("scales_h", 2), ("scales_l", 4), ("qs", 128)), _deq_iq4_xs),
    T.MXFP4: ((("e", 1), ("qs", 16)), _deq_mxfp4),
    T.IQ3_XXS: ((("d", 2), ("qs", 64), ("scales_signs", 32)), _deq_iq3_xxs),
    T.IQ3_S: ((("d", 2), ("qs", 64), ("qh", 8), ("signs", 32), ("scales", 4)), _deq_iq3_s),
    T.IQ2_XXS: ((("d", 2), ("qs", 64)), _deq_iq2_xxs),
    T.IQ2_XS: ((("d", 2), ("qs", 64), ("scales", 8)), _deq_iq2_xs),
    T.IQ2_S: ((("d", 2), ("qs", 32), ("signs", 32), ("qh", 8), ("scales", 8)), _deq_iq2_s),
    T.IQ1_S: ((("d", 2), ("qs", 32), ("qh", 16)), _deq_iq1_s),
    T.IQ1_M: ((("qs", 32), ("qh", 16), ("scales", 8)), _deq_iq1_m),
    T.TQ1_0: ((("qs", 48), ("qh", 4), ("d", 2)), _deq_tq1_0),
    T.TQ2_0: ((("qs", 64), ("d", 2)), _deq_tq2_0),
}


def _build_table() -> dict[int, QuantType]:
    table: dict[int, QuantType] = {}
    for t, (fields, _) in _LAYOUTS.items():
        assert t in GGML_QUANT_SIZES, f"gguf {t.name}: no entry in GGML_QUANT_SIZES"
        block_size, type_size = GGML_QUANT_SIZES[t]
        assert sum(n for _, n in fields) == type_size, f"{t.name}: documented fields do not add up to {type_size} B"
        table[int(t)] = QuantType(int(t), t.name, int(block_size), int(type_size), fields)
    return table


#: ggml type id -> :class:`QuantType`, for every supported type.
QUANT_TYPES: dict[int, QuantType] = _build_table()
#: ggml type ids kvrun can decode, in table order.
SUPPORTED_TYPES: tuple[int, ...] = tuple(QUANT_TYPES)
_KERNELS: dict[int, _Kernel] = {int(t): k for t, (_, k) in _LAYOUTS.items()}


def _type_label(qtype: object) -> str:
    try:
        return f"{T(qtype).name} ({int(qtype)})"  # type: ignore[call-overload]
    except (ValueError, TypeError):
        return f"{qtype!r} (not a GGML type id)"


def _as_id(qtype: object) -> int | None:
    try:
        return operator.index(qtype)  # type: ignore[arg-type]
    except TypeError:
        return None


def is_supported(qtype: int) -> bool:
    """Whether kvrun can decode tensors of ggml type id ``qtype``."""
    return _as_id(qtype) in QUANT_TYPES


def quant_info(qtype: int) -> QuantType:
    """Block size, bytes per block and field layout of a ggml type.

    Parameters
    ----------
    qtype : int
        ggml type id (a ``gguf.GGMLQuantizationType`` or plain int).

    Returns
    -------
    QuantType

    Raises
    ------
    UnsupportedQuantType
        If ``qtype`` is not in :data:`SUPPORTED_TYPES`; the message names the
        type and lists the supported ones.
    """
    info = QUANT_TYPES.get(_as_id(qtype))  # type: ignore[arg-type]
    if info is None:
        raise UnsupportedQuantType(qtype)
    return info


def row_bytes(qtype: int, n_cols: int) -> int:
    """Bytes taken by one row of ``n_cols`` weights of type ``qtype``.

    Raises
    ------
    UnsupportedQuantType
        If the type is not supported.
    ValueError
        If ``n_cols`` is negative or not a whole number of blocks.
    """
    info = quant_info(qtype)
    n = operator.index(n_cols)
    if n < 0 or n % info.block_size:
        raise ValueError(f"a row of {n} weights is not a whole number of {info.name} blocks of {info.block_size}")
    return n // info.block_size * info.type_size


# ----------------------------------------------------------------- drivers
# Large tensors are decoded in chunks (so the kernels' temporaries stay in
# cache) on a few threads (numpy releases the GIL inside ufunc loops).
_CHUNK_WEIGHTS = 1 << 18  # weights per chunk (1 MiB of float32)
_PARALLEL_MIN = 1 << 20  # below this many weights, decode on the calling thread
_MAX_THREADS = 8
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _n_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, _MAX_THREADS))


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_n_threads(), thread_name_prefix="kvrun-dequant")
        return _pool


def _quiet(kernel: _Kernel) -> _Kernel:
    """``kernel`` with float warnings off: a NaN/inf scale in a file decodes to NaN/inf
    silently, the same on the calling thread and on pool threads (errstate is per thread)."""

    def run(b: np.ndarray, out: np.ndarray) -> None:
        with np.errstate(all="ignore"):
            kernel(b, out)

    return run


def _run(info: QuantType, blocks: np.ndarray, out: np.ndarray) -> None:
    """Decode ``blocks`` [n, type_size] into ``out`` [n, block_size] float32."""
    kernel = _quiet(_KERNELS[info.qtype])
    n = blocks.shape[0]
    step = max(1, _CHUNK_WEIGHTS // info.block_size)
    if n <= step:
        if n:
            kernel(blocks, out)
        return
    starts = range(0, n, step)
    if n * info.block_size < _PARALLEL_MIN or _n_threads() == 1:
        for s in starts:
            kernel(blocks[s : s + step], out[s : s + step])
        return
    for f in [_get_pool().submit(kernel, blocks[s : s + step], out[s : s + step]) for s in starts]:
        f.result()


def _flat_bytes(raw: np.ndarray) -> np.ndarray:
    a = np.asarray(raw)
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    return a.reshape(-1).view(np.uint8)


def dequantize(raw: np.ndarray, qtype: int, shape: tuple[int, ...]) -> np.ndarray:
    """Decode a whole tensor to float32.

    Parameters
    ----------
    raw : numpy.ndarray
        The tensor's bytes: any shape and dtype whose C-order bytes are the
        blocks (typically a zero-copy uint8 view into the memory-mapped file).
        A non-contiguous array is copied first.
    qtype : int
        ggml type id.
    shape : tuple of int
        Logical numpy shape ``(rows..., n_cols)``; the last dimension is the
        contiguous one and must be a multiple of the block size.

    Returns
    -------
    numpy.ndarray
        A new, writable float32 array of ``shape`` (never a view of ``raw``).

    Raises
    ------
    UnsupportedQuantType
        If the type is not supported.
    ValueError
        If ``shape`` is empty, its last dimension is not a whole number of
        blocks, or ``raw`` does not hold exactly the bytes ``shape`` needs.
    """
    info = quant_info(qtype)
    shape = tuple(operator.index(s) for s in shape)
    if not shape or min(shape) < 0:
        raise ValueError(f"bad tensor shape {shape}")
    rb = row_bytes(info.qtype, shape[-1])
    buf = _flat_bytes(raw)
    need = math.prod(shape[:-1]) * rb
    if buf.size != need:
        raise ValueError(f"{info.name} tensor of shape {shape} takes {need} bytes, got {buf.size}")
    out = np.empty(shape, _F32)
    _run(info, buf.reshape(-1, info.type_size), out.reshape(-1, info.block_size))
    return out


def dequantize_rows(raw2d: np.ndarray, qtype: int, rows: int | np.ndarray) -> np.ndarray:
    """Decode only some rows of a matrix (embedding lookup).

    Only the selected rows' bytes are read, so this costs the same for a
    memory-mapped 262144-row table as for a small one.

    Parameters
    ----------
    raw2d : numpy.ndarray
        ``[n_rows, row_bytes]`` uint8, the matrix's blocks row by row (another
        dtype is viewed as uint8 along its last axis).
    qtype : int
        ggml type id.
    rows : int or array_like of int
        Row indices; negative indices count from the end as in numpy.

    Returns
    -------
    numpy.ndarray
        New float32 array of shape ``numpy.shape(rows) + (n_cols,)``: ``[n_cols]``
        for an int, ``[len(rows), n_cols]`` for a 1-D index array.

    Raises
    ------
    UnsupportedQuantType
        If the type is not supported.
    ValueError
        If ``raw2d`` is not 2-D or its rows are not a whole number of blocks.
    IndexError
        If a row index is out of range.
    TypeError
        If ``rows`` is not integer.
    """
    info = quant_info(qtype)
    raw2d = np.asarray(raw2d)
    if raw2d.ndim != 2:
        raise ValueError(f"raw2d must be [n_rows, row_bytes], got shape {raw2d.shape}")
    if raw2d.dtype != np.uint8:
        raw2d = raw2d.view(np.uint8)
    if raw2d.shape[1] % info.type_size:
        raise ValueError(f"rows of {raw2d.shape[1]} bytes are not a whole number of {info.name} blocks of {info.type_size} B")
    n_cols = raw2d.shape[1] // info.type_size * info.block_size
    idx = np.asarray(rows)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"row indices must be integers, got {idx.dtype}")
    # fancy indexing gathers just these rows (np.take would first copy a non-contiguous raw2d whole)
    sel = np.ascontiguousarray(raw2d[idx.reshape(-1)])
    out = np.empty((sel.shape[0], n_cols), _F32)
    _run(info, sel.reshape(-1, info.type_size), out.reshape(-1, info.block_size))
    return out.reshape(idx.shape + (n_cols,))
