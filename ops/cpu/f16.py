"""float16 <-> float32 inside Numba kernels.

Numba's CPU target has no float16 type, so half-precision data (GGUF F16
weights, the fp16 KV cache) is held as ``uint16`` bit patterns and widened in
registers with the exponent-rebias trick: shift the 15 magnitude bits into a
float32's place and multiply by 2**112, which also handles subnormals and zero
exactly (inf/nan are not expected in weights or activations).
"""

from __future__ import annotations

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def bitcast_u32_f32(typingctx, x):  # noqa: ARG001 - numba intrinsic signature
    """Reinterpret a uint32 as float32 (no conversion)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.float32(x)

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type.width != 32:
            v = builder.trunc(v, ir.IntType(32)) if v.type.width > 32 else builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return sig, codegen


_TWO_112 = np.float32(2.0**112)


@nb.njit(inline="always", cache=True)
def f16_to_f32(h):
    """One float16 bit pattern (uint16) -> float32."""
    u = np.uint32(h)
    f = bitcast_u32_f32((u & np.uint32(0x7FFF)) << np.uint32(13)) * _TWO_112
    return -f if u & np.uint32(0x8000) else f


@intrinsic
def bitcast_f32_u32(typingctx, x):  # noqa: ARG001
    """Reinterpret a float32 as uint32."""
    if not isinstance(x, types.Float):
        return None
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        v = args[0]
        if v.type != ir.FloatType():
            v = builder.fptrunc(v, ir.FloatType())
        return builder.bitcast(v, ir.IntType(32))

    return sig, codegen


@nb.njit(inline="always", cache=True)
def bf16_to_f32(h):
    """One bfloat16 bit pattern (uint16) -> float32."""
    return bitcast_u32_f32(np.uint32(h) << np.uint32(16))


_F16_MAX = np.uint32((127 + 16) << 23)  # float32 bits of 65536: at or above rounds to inf
_F32_INF = np.uint32(255 << 23)
_DENORM_MAGIC_BITS = np.uint32(((127 - 15) + (23 - 10) + 1) << 23)
_DENORM_MAGIC = np.float32(0.5)  # float32 with the bits above (2^-1), see f32_to_f16


@nb.njit(inline="always", cache=True)
def f32_to_f16(x):
    """float32 -> float16 bit pattern (uint16), rounding to nearest even like numpy.

    The exponent-rebias method (F. Giesen's ``float_to_half_fast3_rtne``):
    normal results add the rounding bias in the integer domain, subnormal
    ones let a float addition of ``2^-1`` align and round the 10 mantissa bits.
    """
    u = bitcast_f32_u32(np.float32(x))
    sign = u & np.uint32(0x80000000)
    u ^= sign
    if u >= _F16_MAX:
        o = np.uint32(0x7E00) if u > _F32_INF else np.uint32(0x7C00)
    elif u < np.uint32(113 << 23):  # subnormal or zero half
        f = bitcast_u32_f32(u) + _DENORM_MAGIC
        o = bitcast_f32_u32(f) - _DENORM_MAGIC_BITS
    else:
        odd = (u >> np.uint32(13)) & np.uint32(1)
        u += np.uint32(((15 - 127) << 23) & 0xFFFFFFFF) + np.uint32(0xFFF)
        u += odd
        o = u >> np.uint32(13)
    return np.uint16((o | (sign >> np.uint32(16))) & np.uint32(0xFFFF))


@nb.njit(inline="always", cache=True)
def _f16_to_f32_any(h):
    """:func:`f16_to_f32` that also widens inf and NaN (the exponent-rebias trick would make them finite)."""
    u = np.uint32(h)
    if (u & np.uint32(0x7C00)) == np.uint32(0x7C00):
        f = bitcast_u32_f32(np.uint32(0x7F800000) | ((u & np.uint32(0x3FF)) << np.uint32(13)))
    else:
        f = bitcast_u32_f32((u & np.uint32(0x7FFF)) << np.uint32(13)) * _TWO_112
    return -f if u & np.uint32(0x8000) else f


@nb.njit(cache=True, nogil=True)
def _through_f16(x: np.ndarray, out: np.ndarray) -> None:
    for i in range(x.shape[0]):
        out[i] = _f16_to_f32_any(f32_to_f16(x[i]))


@nb.njit(cache=True, nogil=True)
def _scatter_f16(x: np.ndarray, slots: np.ndarray, ring: np.ndarray) -> None:
    for t in range(x.shape[0]):
        s = slots[t]
        for h in range(x.shape[1]):
            r = ring[h, s]
            xr = x[t, h]
            for d in range(xr.shape[0]):
                r[d] = f32_to_f16(xr[d])


# numpy's float32 -> float16 conversion runs ~1 ns a value here, these vector loops ~0.2 (0.3 there
# and back), and writing into the ring or a reused buffer spares a fresh array's page faults: a
# prefill chunk stores its keys and values this way (SmolLM2's 256-token chunk: 98k values a layer).
def scatter_f16(x: np.ndarray, slots: np.ndarray, ring: np.ndarray) -> None:
    """``ring[h, slots[t]] = float16 bits of x[t, h]``: x [T, n_kv, D] float32 (rounded to nearest even,
    as numpy's ``astype``), slots [T] int, ring [n_kv, cap, D] uint16."""
    _scatter_f16(np.ascontiguousarray(x, np.float32), np.ascontiguousarray(slots, np.int64), ring)


def through_f16(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``x.astype(np.float16).astype(np.float32)``, bitwise (inf and NaN included): what an fp16 slot holds.
    out: a float32 array of x's size to write into (else a new one)."""
    x = np.ascontiguousarray(x, np.float32)
    if out is None:
        out = np.empty(x.shape, np.float32)
    _through_f16(x.reshape(-1), out.reshape(-1))
    return out.reshape(x.shape)
