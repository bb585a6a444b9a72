"""Group-wise asymmetric integer quantization of K/V rows, and the Hadamard rotation.

One *row* is one token's K (or V) of one KV head, ``D`` values.  It is cut
into groups of ``G`` consecutive channels; each group gets its own scale and
zero point (*per-token* groups, KIVI's layout for values,
https://arxiv.org/abs/2402.02750).  Keys are per-token too, after an optional
Hadamard rotation that spreads their outlier channels over the whole head
(QuaRot https://arxiv.org/abs/2404.00456, RotateKV
https://arxiv.org/abs/2501.16383): measured on SmolLM2 this beats KIVI's
per-channel keys and, unlike them, lets every slot be evicted or rewritten on
its own (see ``kvrun.cache.compressed`` for the numbers).

Encoding of a group (the layout ``kvrun.ops.cpu.qattention`` reads):

* codes ``c in [0, 2^b - 1]`` packed group-planar (2-bit: 4 per byte, 4-bit:
  2 per byte, 8-bit: 1 per byte; 3-bit: a 2-bit plane of the low bits and a
  1-bit plane of the high bits, 3 bytes per 8 values);
* scale ``s = lut[u]``, ``u`` one byte: a per-pool log table with 16 steps
  per octave over 16 octaves (``2^(e0 + u/16)``), ``e0`` calibrated on the
  first rows the pool receives;
* zero point ``z = zc (2^b - 1) / 255``, ``zc`` one byte; ``x ~ s (c - z)``.

So a group costs 16 bits of metadata (0.5 bit/value at G = 32) instead of two
fp16 numbers.  A clipping candidate's scale is rounded *up* to the table (the
refit's to the nearest entry) and the codes are always computed with the
stored ``s`` and ``z``, so what is scored is what is stored.  Among a few clipping ratios of the
range, each followed by one least-squares refit of step and offset to its
codes, the candidate with the least squared error is kept (MSE-optimal
clipping, as llama.cpp's ``make_qkx2_quants`` searches), which is what makes
2 bits usable.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ..ops.cpu.qattention import dequantize_rows

_JIT = dict(cache=True, fastmath=False, nogil=True)

LUT_STEPS = 16  # table entries per octave
LUT_HEADROOM = 6  # octaves above the calibration maximum

# clipping ratios searched per width (1.0 = the full min..max range)
CLIPS: dict[int, np.ndarray] = {
    2: np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], np.float32),
    3: np.array([1.0, 0.9, 0.8, 0.7, 0.6], np.float32),
    4: np.array([1.0, 0.95, 0.9, 0.85, 0.8], np.float32),
    8: np.array([1.0], np.float32),
    16: np.array([1.0], np.float32),
}


def row_bytes(D: int, bits: int) -> int:
    """Bytes of one row's codes."""
    return D * bits // 8


# Every pool's scale table is a 256-entry window of one process-wide table of
# 2^(k/16), starting at the pool's calibrated octave ``e0`` (an integer): a pool
# stores one exponent instead of 1 KiB of floats per table (on Gemma 3's
# sliding-window layers, 516 slots of 512 values, four tables were 0.12 bit per value).
E0_MIN, E0_MAX = -120, 100  # octaves a table may start at (float32 normals: 2^-126 .. 2^127)
_SCALES = (2.0 ** (np.arange(E0_MIN * LUT_STEPS, (E0_MAX + 16) * LUT_STEPS) / LUT_STEPS)).astype(np.float32)
TABLE_BYTES = 4  # what one pool table costs: its int32 starting octave


def scale_lut(e0: int) -> np.ndarray:
    """The scale table ``lut[u] = 2^(e0 + u/16)``: a [256] float32 view of the shared table."""
    i = (min(max(int(e0), E0_MIN), E0_MAX) - E0_MIN) * LUT_STEPS
    return _SCALES[i : i + 256]


def calibrate_lut(x: np.ndarray, bits: int) -> np.ndarray:
    """A scale table whose top is ``2^LUT_HEADROOM`` times the largest step ``x`` needs.

    x: [..., D] float32 sample rows.  Steps down to ``2^-10`` of that maximum
    stay representable; smaller groups are held with that step (their
    absolute error is then below ``2^-11`` of the largest step).
    """
    L = (1 << bits) - 1
    rng = float(np.max(np.maximum(x, 0) - np.minimum(x, 0))) if x.size else 0.0
    smax = max(rng / L, 1e-6)
    e0 = math.ceil(math.log2(smax)) + LUT_HEADROOM - 256 // LUT_STEPS
    return scale_lut(e0)


@nb.njit(inline="always", **_JIT)
def _byte(v: int) -> int:
    """``v`` clamped to a one-byte code [0, 255]."""
    return 0 if v < 0 else (255 if v > 255 else v)


@nb.njit(fastmath={"reassoc", "contract"}, inline="always", nogil=True)
def _code(xv, inv, z, Lf):
    """One value's code ``clamp(floor(x / s + z + 1/2), 0, L)`` as a float32.

    ``np.floor``, not ``math.floor``: Numba's ``math.floor`` returns an int64,
    whose conversion AVX2 cannot vectorise, and that made the passes scalar (~75
    instead of ~40 ns for 64 values); the clamps are selects for the same reason."""
    zero = np.float32(0.0)
    qf = np.floor(xv * inv + z + np.float32(0.5))
    qf = qf if qf > zero else zero
    return qf if qf < Lf else Lf


@nb.njit(fastmath={"reassoc", "contract"}, inline="always", nogil=True)
def _codes_pass(xs, G, s, z, Lf):
    """One candidate (step ``s``, zero ``z``) over a group: (squared error, sum q, sum q^2, sum q x)."""
    inv = np.float32(1.0) / s
    zero = np.float32(0.0)
    err = zero
    sq = zero
    sqq = zero
    sqx = zero
    for d in range(G):
        xv = xs[d]
        qf = _code(xv, inv, z, Lf)
        e = s * (qf - z) - xv
        err += e * e
        sq += qf
        sqq += qf * qf
        sqx += qf * xv
    return err, sq, sqq, sqx


@nb.njit(fastmath={"reassoc", "contract"}, cache=True, nogil=True)
def _quantize_group(x, o0, G, bits, lut, clips, best):
    """Best (u, zc) of one group and its codes into best[:G]; returns (u, zc).

    Float32 throughout and reassociable sums (the passes vectorise): 2-bit rows
    of 256 values quantize in ~3 us instead of ~28 us, which matters because a
    decode step spills one token per layer.  The candidates' passes only score;
    the codes are computed once, for the best.
    """
    xs = x[o0 : o0 + G]
    L = (1 << bits) - 1
    Lf = np.float32(L)
    lo = np.float32(0.0)
    hi = np.float32(0.0)
    sx = np.float32(0.0)
    for d in range(G):
        v = xs[d]
        lo = v if v < lo else lo
        hi = v if v > hi else hi
        sx += v
    e0 = math.log2(lut[0])
    best_err = np.float32(3.0e38)
    bu = 0
    bz = 0
    if hi - lo <= 0:
        for d in range(G):
            best[d] = 0
        return 0, 0
    for ci in range(clips.shape[0]):
        c = clips[ci]
        target = (hi - lo) * c / L
        u = _byte(int(math.ceil((math.log2(target) - e0) * 16.0 - 1e-6)))
        s = lut[u]
        zc = _byte(int(round(-lo * c / s * 255.0 / L)))
        for refine in range(2):
            z = np.float32(zc) * Lf / np.float32(255.0)
            err, sq, sqq, sqx = _codes_pass(xs, G, s, z, Lf)
            if err < best_err:
                best_err = err
                bu = u
                bz = zc
            # second pass: the least-squares step and offset for these codes
            # (x ~ a q + b), re-encoded to the table (as llama.cpp's make_qkx2_quants)
            den = G * sqq - sq * sq
            if refine == 1 or den <= 0:
                break
            a = (G * sqx - sq * sx) / den
            if a <= 0:
                break
            b = (sx - a * sq) / G
            u = _byte(int(round((math.log2(a) - e0) * 16.0)))
            s = lut[u]
            zc = _byte(int(round(-b / s * 255.0 / L)))
    s = lut[bu]
    z = np.float32(bz) * Lf / np.float32(255.0)
    inv = np.float32(1.0) / s
    for d in range(G):
        best[d] = np.int32(_code(xs[d], inv, z, Lf))
    return bu, bz


@nb.njit(**_JIT)
def quantize_row(x: np.ndarray, bits: int, G: int, lut: np.ndarray, clips: np.ndarray, codes: np.ndarray, meta: np.ndarray, tmp: np.ndarray) -> None:
    """Quantize one row into packed codes and (scale, zero) codes.

    x: [D] float32; codes: [D*bits/8] uint8;
    meta: [D/G, 2] uint8; lut: [256] float32; clips: [n] float32;
    tmp: [2*G] int32 scratch.  (16 bits is a plain float16 copy, done in numpy.)
    """
    D = x.shape[0]
    per = 8 // bits
    nbg = G * bits // 8
    for g in range(D // G):
        u, zc = _quantize_group(x, g * G, G, bits, lut, clips, tmp[G:])
        meta[g, 0] = np.uint8(u)
        meta[g, 1] = np.uint8(zc)
        b0 = g * nbg
        if bits == 3:  # the low bits 2-bit planar over G/4 bytes, then the high bits 1-bit planar over G/8
            n2, n1 = G // 4, G // 8
            for i in range(n2):
                byte = 0
                for m in range(4):
                    byte |= (tmp[G + m * n2 + i] & 3) << (2 * m)
                codes[b0 + i] = np.uint8(byte)
            for i in range(n1):
                byte = 0
                for m in range(8):
                    byte |= (tmp[G + m * n1 + i] >> 2) << m
                codes[b0 + n2 + i] = np.uint8(byte)
            continue
        for i in range(nbg):
            byte = 0
            for m in range(per):
                byte |= tmp[G + m * nbg + i] << (m * bits)
            codes[b0 + i] = np.uint8(byte)


def quantize_into(x: np.ndarray, slots: np.ndarray, bits: int, G: int, lut: np.ndarray, codes: np.ndarray, meta: np.ndarray, tmp: np.ndarray) -> None:
    """Quantize one row per KV head into that head's slot of a pool.

    x: [n_kv, D] float32; slots: [n_kv] int64 (-1: skip this head);
    codes: [n_kv, C, D*w/8] uint8; meta: [n_kv, C, D/G, 2] uint8.
    """
    if bits == 16:
        heads = np.flatnonzero(slots >= 0)
        codes[heads, slots[heads]] = x[heads].astype(np.float16).view(np.uint8)
        return
    _quantize_into(x, slots, bits, G, lut, CLIPS[bits], codes, meta, tmp)


@nb.njit(**_JIT)
def _quantize_into(x: np.ndarray, slots: np.ndarray, bits: int, G: int, lut: np.ndarray, clips: np.ndarray, codes: np.ndarray, meta: np.ndarray, tmp: np.ndarray) -> None:
    for h in range(x.shape[0]):
        j = slots[h]
        if j >= 0:
            quantize_row(x[h], bits, G, lut, clips, codes[h, j], meta[h, j], tmp)


def quantize(x: np.ndarray, bits: int, G: int, lut: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantize rows (tests, merging).   x: [n, D] -> codes [n, D*w/8], meta [n, D/G, 2], lut [256]."""
    x = np.ascontiguousarray(x, np.float32)
    n, D = x.shape
    if lut is None:
        lut = calibrate_lut(x, bits)
    codes = np.zeros((n, row_bytes(D, bits)), np.uint8)
    meta = np.zeros((n, D // G if bits < 16 else 0, 2), np.uint8)
    tmp = np.zeros(2 * G, np.int32)
    quantize_into(x, np.zeros(n, np.int64), bits, G, lut, codes[:, None], meta[:, None], tmp)
    return codes, meta, lut


def dequantize(codes: np.ndarray, meta: np.ndarray, lut: np.ndarray, bits: int, G: int, D: int) -> np.ndarray:
    """Inverse of :func:`quantize`: [n, D] float32."""
    out = np.zeros((codes.shape[0], D), np.float32)
    dequantize_rows(codes, meta, lut, bits, G, out)
    return out


def hadamard(n: int) -> np.ndarray:
    """The orthonormal Sylvester-Hadamard matrix, [n, n] float32 (n a power of two).

    Symmetric and its own inverse: ``x @ H`` rotates, ``(x @ H) @ H`` is ``x``.
    """
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard rotation needs a power-of-two head size, got {n}")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return (h / math.sqrt(n)).astype(np.float32)
