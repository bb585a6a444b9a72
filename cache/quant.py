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

from ..ops.cpu.f16 import f32_to_f16
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


#: int32 scratch of the quantizer beyond a group's codes: (step, zero) codes of every clipping candidate and of its refit
CANDIDATE_SCRATCH = 4 * max(c.shape[0] for c in CLIPS.values())


def quant_scratch(G: int) -> np.ndarray:
    """The ``tmp`` scratch that :func:`quantize_row` takes for groups of ``G``."""
    return np.zeros(2 * G + CANDIDATE_SCRATCH, np.int32)


@nb.njit(fastmath={"reassoc", "contract"}, cache=True, nogil=True)
def _quantize_group(x, o0, G, bits, lut, clips, best, cand):
    """Best (u, zc) of one group and its codes into best[:G]; returns (u, zc).

    Float32 throughout and reassociable sums (the passes vectorise): 2-bit rows
    of 256 values quantize in ~3 us instead of ~28 us, which matters because a
    decode step spills one token per layer.  The candidates' passes only score;
    the codes are computed once, for the best.

    The candidates go in phases (every candidate's step; every first pass and
    refit; every second pass), not one candidate after another: each candidate
    is a chain of dependent latencies (log2, a table load, divisions, a pass and
    its reductions) and the phases let the core run the chains side by side
    (SmolLM2's 4-bit row of 64: 557 -> 375 ns with the packing below).  The
    result is the same: the same arithmetic per candidate, and the best is the
    first least error in the order candidate, its refit, next candidate, ...
    cand: [4 * len(clips)] int32 scratch (:data:`CANDIDATE_SCRATCH`).
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
    if hi - lo <= 0:
        for d in range(G):
            best[d] = 0
        return 0, 0
    e0 = math.log2(lut[0])
    nc = clips.shape[0]
    cu, cz, ru, rz = cand[0:nc], cand[nc : 2 * nc], cand[2 * nc : 3 * nc], cand[3 * nc : 4 * nc]
    for ci in range(nc):  # each candidate's step: the clipped range's, rounded up to the table
        c = clips[ci]
        target = (hi - lo) * c / L
        u = _byte(int(math.ceil((math.log2(target) - e0) * 16.0 - 1e-6)))
        cu[ci] = u
        cz[ci] = _byte(int(round(-lo * c / lut[u] * 255.0 / L)))
    best_err = np.float32(3.0e38)
    bi = 0  # the best's place in the order tried: 2 ci, or 2 ci + 1 for its refit
    for ci in range(nc):  # first passes, and the least-squares step and offset for their codes
        s = lut[cu[ci]]
        z = np.float32(cz[ci]) * Lf / np.float32(255.0)
        err, sq, sqq, sqx = _codes_pass(xs, G, s, z, Lf)
        if err < best_err:
            best_err, bi = err, 2 * ci
        ru[ci] = -1
        # (x ~ a q + b), re-encoded to the table (as llama.cpp's make_qkx2_quants)
        den = G * sqq - sq * sq
        if den > 0:
            a = (G * sqx - sq * sx) / den
            if a > 0:
                b = (sx - a * sq) / G
                u = _byte(int(round((math.log2(a) - e0) * 16.0)))
                ru[ci] = u
                rz[ci] = _byte(int(round(-b / lut[u] * 255.0 / L)))
    for ci in range(nc):  # the refits' passes
        if ru[ci] >= 0:
            z = np.float32(rz[ci]) * Lf / np.float32(255.0)
            err = _codes_pass(xs, G, lut[ru[ci]], z, Lf)[0]
            if err < best_err or (err == best_err and 2 * ci + 1 < bi):
                best_err, bi = err, 2 * ci + 1
    ci = bi // 2
    bu, bz = (cu[ci], cz[ci]) if bi % 2 == 0 else (ru[ci], rz[ci])
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
    tmp: int32 scratch (:func:`quant_scratch`).  16 bits: the float16 bytes of x (little-endian, as
    numpy's ``astype(np.float16)`` rounds them), no meta: the one-call steps' lossless pools.
    """
    if tmp.shape[0] < 2 * G + 4 * clips.shape[0]:  # (Numba checks no bounds: a short scratch would corrupt the heap)
        raise ValueError("quantize_row: tmp is shorter than quant_scratch(G)")
    D = x.shape[0]
    if bits == 16:
        for d in range(D):
            h = f32_to_f16(x[d])
            codes[2 * d] = np.uint8(h & np.uint16(0xFF))
            codes[2 * d + 1] = np.uint8(h >> np.uint16(8))
        return
    nbg = G * bits // 8
    t = tmp[G : 2 * G]
    for g in range(D // G):
        u, zc = _quantize_group(x, g * G, G, bits, lut, clips, t, tmp[2 * G :])
        meta[g, 0] = np.uint8(u)
        meta[g, 1] = np.uint8(zc)
        o = codes[g * nbg : (g + 1) * nbg]
        # group-planar packing, one loop per width (with the width a variable the planes' loop kept it scalar)
        if bits == 4:
            for i in range(nbg):
                o[i] = np.uint8(t[i] | (t[nbg + i] << 4))
        elif bits == 2:
            for i in range(nbg):
                o[i] = np.uint8(t[i] | (t[nbg + i] << 2) | (t[2 * nbg + i] << 4) | (t[3 * nbg + i] << 6))
        elif bits == 8:
            for i in range(nbg):
                o[i] = np.uint8(t[i])
        else:  # 3: the low bits 2-bit planar over G/4 bytes, then the high bits 1-bit planar over G/8
            n2, n1 = G // 4, G // 8
            for i in range(n2):
                byte = 0
                for m in range(4):
                    byte |= (t[m * n2 + i] & 3) << (2 * m)
                o[i] = np.uint8(byte)
            for i in range(n1):
                byte = 0
                for m in range(8):
                    byte |= (t[m * n1 + i] >> 2) << m
                o[n2 + i] = np.uint8(byte)


def quantize_into(x: np.ndarray, slots: np.ndarray, bits: int, G: int, lut: np.ndarray, codes: np.ndarray, meta: np.ndarray, tmp: np.ndarray) -> None:
    """Quantize one row per KV head into that head's slot of a pool.

    x: [n_kv, D] float32; slots: [n_kv] int64 (-1: skip this head);
    codes: [n_kv, C, D*w/8] uint8; meta: [n_kv, C, D/G, 2] uint8.
    """
    # (x writable either way: writability is part of Numba's type, callers pass both kinds, and the one-call steps
    # (cache/insert.py) hand quantize_row writable rows: a read-only x compiled it, ~5 s, a second time)
    _quantize_into(x if x.flags.writeable else np.array(x, np.float32), slots, bits, G, lut, CLIPS[bits], codes, meta, tmp)


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
    tmp = quant_scratch(G)
    quantize_into(x, np.zeros(n, np.int64), bits, G, lut, codes[:, None], meta[:, None], tmp)
    return codes, meta, lut


def dequantize(codes: np.ndarray, meta: np.ndarray, lut: np.ndarray, bits: int, G: int, D: int) -> np.ndarray:
    """Inverse of :func:`quantize`: [n, D] float32."""
    out = np.zeros((codes.shape[0], D), np.float32)
    dequantize_rows(codes, meta, lut, bits, G, out)
    return out


#: the least block the default cache rotates by (a head of m * 2^k rotates in blocks of 2^k, the largest power of
#: two dividing it): below 8 channels a block barely spreads an outlier (measured in tests/test_block_rotation.py)
MIN_ROTATION_BLOCK = 8


def rotation_block(n: int) -> int:
    """The block the Hadamard rotation of an ``n``-wide head works in: the largest power of two dividing ``n``."""
    return n & -n


def hadamard(n: int) -> np.ndarray:
    """The orthonormal Hadamard rotation of an ``n``-wide head, [n, n] float32: Sylvester's ``H_n`` for n a power
    of two, else ``blockdiag(H_b, ..., H_b)`` with ``b`` = :func:`rotation_block` (96 = 3 x 32, 576 = 9 x 64).

    Symmetric and its own inverse either way: ``x @ H`` rotates, ``(x @ H) @ H`` is ``x``; the butterflies
    (``ops/cpu/hadamard.py``'s fwht, ``kvquant.cu``'s kq_fwht) turn each block as this matrix does.
    """
    b = rotation_block(n) if n >= 1 else 0
    if b < 2 and n != 1:  # (an odd head has blocks of one: no rotation at all)
        raise ValueError(f"Hadamard rotation needs an even head size (blocks of a power of two), got {n}")
    h = np.ones((1, 1))
    while h.shape[0] < b:
        h = np.block([[h, h], [h, -h]])
    return np.kron(np.eye(n // b), h / math.sqrt(b)).astype(np.float32)
