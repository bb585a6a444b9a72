"""Products with weights in their GGUF block format (Numba, CPU).

``w`` is always the raw weight ``[n_rows, row_bytes]`` uint8 (a view of the
memory-mapped file); byte layouts are documented in ``loaders/quants.py``.

* ``matvec`` (decode, one token): per row, the blocks are decoded in registers
  and dotted with ``x``; rows run in parallel.
* ``matmul`` (prefill, many tokens): compute-bound, so a tile of rows is
  decoded into a reused float32 buffer and handed to BLAS.
* ``get_rows``: embedding lookup, decoding only the rows asked for.

Each type has one ``_row_<type>(row, out)`` decoder; the fast matvec kernels for
the types real models use fold the block scale out of the inner loop.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from gguf import GGMLQuantizationType as T

from .f16 import bf16_to_f32, f16_to_f32

_JIT = dict(cache=True, fastmath=True, nogil=True)
_TILE_ROWS = 256  # rows decoded per BLAS call in matmul


@nb.njit(inline="always", cache=True)
def _h(row, o):
    """float16 at byte offset o of a uint8 row."""
    return f16_to_f32(np.uint16(row[o]) | (np.uint16(row[o + 1]) << np.uint16(8)))


# ----------------------------------------------------------------- row decoders
@nb.njit(**_JIT)
def _row_f32(row, out):
    v = row.view(np.float32)
    for i in range(out.size):
        out[i] = v[i]


@nb.njit(**_JIT)
def _row_f16(row, out):
    v = row.view(np.uint16)
    for i in range(out.size):
        out[i] = f16_to_f32(v[i])


@nb.njit(**_JIT)
def _row_bf16(row, out):
    v = row.view(np.uint16)
    for i in range(out.size):
        out[i] = bf16_to_f32(v[i])


@nb.njit(**_JIT)
def _row_q4_0(row, out):
    for b in range(out.size // 32):
        o = b * 18
        d = _h(row, o)
        for j in range(16):
            q = np.int32(row[o + 2 + j])
            out[b * 32 + j] = d * np.float32((q & 15) - 8)
            out[b * 32 + 16 + j] = d * np.float32((q >> 4) - 8)


@nb.njit(**_JIT)
def _row_q4_1(row, out):
    for b in range(out.size // 32):
        o = b * 20
        d = _h(row, o)
        m = _h(row, o + 2)
        for j in range(16):
            q = np.int32(row[o + 4 + j])
            out[b * 32 + j] = d * np.float32(q & 15) + m
            out[b * 32 + 16 + j] = d * np.float32(q >> 4) + m


@nb.njit(**_JIT)
def _row_q5_0(row, out):
    for b in range(out.size // 32):
        o = b * 22
        d = _h(row, o)
        qh = np.uint32(row[o + 2]) | (np.uint32(row[o + 3]) << 8) | (np.uint32(row[o + 4]) << 16) | (np.uint32(row[o + 5]) << 24)
        for j in range(16):
            q = np.int32(row[o + 6 + j])
            h0 = np.int32((qh >> j) & 1) << 4
            h1 = np.int32((qh >> (j + 16)) & 1) << 4
            out[b * 32 + j] = d * np.float32(((q & 15) | h0) - 16)
            out[b * 32 + 16 + j] = d * np.float32(((q >> 4) | h1) - 16)


@nb.njit(**_JIT)
def _row_q5_1(row, out):
    for b in range(out.size // 32):
        o = b * 24
        d = _h(row, o)
        m = _h(row, o + 2)
        qh = np.uint32(row[o + 4]) | (np.uint32(row[o + 5]) << 8) | (np.uint32(row[o + 6]) << 16) | (np.uint32(row[o + 7]) << 24)
        for j in range(16):
            q = np.int32(row[o + 8 + j])
            h0 = np.int32((qh >> j) & 1) << 4
            h1 = np.int32((qh >> (j + 16)) & 1) << 4
            out[b * 32 + j] = d * np.float32((q & 15) | h0) + m
            out[b * 32 + 16 + j] = d * np.float32((q >> 4) | h1) + m


@nb.njit(**_JIT)
def _row_q8_0(row, out):
    for b in range(out.size // 32):
        o = b * 34
        d = _h(row, o)
        for j in range(32):
            out[b * 32 + j] = np.float32(np.int8(row[o + 2 + j])) * d


@nb.njit(inline="always", cache=True)
def _k_scale_min(row, o, j):
    """6-bit scale and min of sub-block j (0..7) from the 12 bytes at row[o:]."""
    if j < 4:
        sc = np.int32(row[o + j]) & 63
        mn = np.int32(row[o + j + 4]) & 63
    else:
        sc = (np.int32(row[o + j + 4]) & 0xF) | ((np.int32(row[o + j - 4]) >> 6) << 4)
        mn = (np.int32(row[o + j + 4]) >> 4) | ((np.int32(row[o + j]) >> 6) << 4)
    return sc, mn


@nb.njit(**_JIT)
def _row_q4_k(row, out):
    for b in range(out.size // 256):
        o = b * 144
        d = _h(row, o)
        dmin = _h(row, o + 2)
        for s in range(8):
            sc, mn = _k_scale_min(row, o + 4, s)
            dl = d * np.float32(sc)
            ml = dmin * np.float32(mn)
            qo = o + 16 + (s // 2) * 32
            shift = 4 * (s & 1)
            for j in range(32):
                out[b * 256 + s * 32 + j] = dl * np.float32((np.int32(row[qo + j]) >> shift) & 15) - ml


@nb.njit(**_JIT)
def _row_q5_k(row, out):
    for b in range(out.size // 256):
        o = b * 176
        d = _h(row, o)
        dmin = _h(row, o + 2)
        for s in range(8):
            sc, mn = _k_scale_min(row, o + 4, s)
            dl = d * np.float32(sc)
            ml = dmin * np.float32(mn)
            qo = o + 48 + (s // 2) * 32
            shift = 4 * (s & 1)
            for j in range(32):
                q = ((np.int32(row[qo + j]) >> shift) & 15) | (((np.int32(row[o + 16 + j]) >> s) & 1) << 4)
                out[b * 256 + s * 32 + j] = dl * np.float32(q) - ml


@nb.njit(**_JIT)
def _row_q6_k(row, out):
    for b in range(out.size // 256):
        o = b * 210
        d = _h(row, o + 208)
        for half in range(2):
            ql = o + half * 64
            qh = o + 128 + half * 32
            sc = o + 192 + half * 8
            base = b * 256 + half * 128
            for j in range(32):
                isc = j // 16
                h = np.int32(row[qh + j])
                q1 = ((np.int32(row[ql + j]) & 15) | ((h & 3) << 4)) - 32
                q2 = ((np.int32(row[ql + 32 + j]) & 15) | (((h >> 2) & 3) << 4)) - 32
                q3 = ((np.int32(row[ql + j]) >> 4) | (((h >> 4) & 3) << 4)) - 32
                q4 = ((np.int32(row[ql + 32 + j]) >> 4) | (((h >> 6) & 3) << 4)) - 32
                out[base + j] = d * np.float32(np.int8(row[sc + isc])) * np.float32(q1)
                out[base + 32 + j] = d * np.float32(np.int8(row[sc + isc + 2])) * np.float32(q2)
                out[base + 64 + j] = d * np.float32(np.int8(row[sc + isc + 4])) * np.float32(q3)
                out[base + 96 + j] = d * np.float32(np.int8(row[sc + isc + 6])) * np.float32(q4)


_DECODERS = {
    int(T.F32): 0,
    int(T.F16): 1,
    int(T.BF16): 2,
    int(T.Q4_0): 3,
    int(T.Q4_1): 4,
    int(T.Q5_0): 5,
    int(T.Q5_1): 6,
    int(T.Q8_0): 7,
    int(T.Q4_K): 8,
    int(T.Q5_K): 9,
    int(T.Q6_K): 10,
}
SUPPORTED = tuple(_DECODERS)


@nb.njit(inline="always", cache=True)
def _decode_row(kind, row, out):
    if kind == 0:
        _row_f32(row, out)
    elif kind == 1:
        _row_f16(row, out)
    elif kind == 2:
        _row_bf16(row, out)
    elif kind == 3:
        _row_q4_0(row, out)
    elif kind == 4:
        _row_q4_1(row, out)
    elif kind == 5:
        _row_q5_0(row, out)
    elif kind == 6:
        _row_q5_1(row, out)
    elif kind == 7:
        _row_q8_0(row, out)
    elif kind == 8:
        _row_q4_k(row, out)
    elif kind == 9:
        _row_q5_k(row, out)
    else:
        _row_q6_k(row, out)


# ----------------------------------------------------------------- fast matvec kernels
@nb.njit(parallel=True, **_JIT)
def _mv_q4_1(w, x, out, xs):
    """Q4_1 rows . x:  sum_b d_b * sum_j q_j x_j + m_b * sum_j x_j  (xs: [n_blocks] block sums)."""
    n_rows, rb = w.shape
    nbk = rb // 20
    for b in range(nbk):
        s = np.float32(0.0)
        for j in range(32):
            s += x[b * 32 + j]
        xs[b] = s
    for r in nb.prange(n_rows):
        row = w[r]
        y = np.float32(0.0)
        for b in range(nbk):
            o = b * 20 + 4
            xb = b * 32
            acc = np.float32(0.0)
            for j in range(16):
                acc += np.float32(np.int32(row[o + j]) & 15) * x[xb + j]
            for j in range(16):
                acc += np.float32(np.int32(row[o + j]) >> 4) * x[xb + 16 + j]
            y += _h(row, o - 4) * acc + _h(row, o - 2) * xs[b]
        out[r] = y


@nb.njit(parallel=True, **_JIT)
def _mv_q8_0(w, x, out):
    n_rows, rb = w.shape
    nbk = rb // 34
    for r in nb.prange(n_rows):
        row = w[r]
        y = np.float32(0.0)
        for b in range(nbk):
            o = b * 34 + 2
            xb = b * 32
            acc = np.float32(0.0)
            for j in range(32):
                acc += np.float32(np.int8(row[o + j])) * x[xb + j]
            y += _h(row, o - 2) * acc
        out[r] = y


@nb.njit(parallel=True, **_JIT)
def _mv_generic(kind, w, x, out, tmp):
    """Decode each row into a per-thread float buffer, then dot.  tmp: [n_threads, n_cols]."""
    n_rows = w.shape[0]
    n_thr = tmp.shape[0]
    chunk = (n_rows + n_thr - 1) // n_thr
    for t in nb.prange(n_thr):
        buf = tmp[t]
        for r in range(t * chunk, min(n_rows, (t + 1) * chunk)):
            _decode_row(kind, w[r], buf)
            y = np.float32(0.0)
            for i in range(buf.size):
                y += buf[i] * x[i]
            out[r] = y


@nb.njit(**_JIT)
def _decode_rows(kind, w, r0, tile):
    """tile[i] = row r0+i of w, decoded.   tile: [n, n_cols] float32.

    Serial on purpose: BLAS runs its own threads right after, and two thread
    pools taking turns on two vCPUs spin against each other.
    """
    for i in range(tile.shape[0]):
        _decode_row(kind, w[r0 + i], tile[i])


@nb.njit(parallel=True, **_JIT)
def _gather_rows(kind, w, ids, out):
    for i in nb.prange(ids.size):
        _decode_row(kind, w[ids[i]], out[i])


# ----------------------------------------------------------------- public API
class _Scratch:
    """Buffers reused across calls (sized on first use, grown when needed)."""

    def __init__(self) -> None:
        self.bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        a = self.bufs.get(name)
        if a is None or a.shape[0] < shape[0] or a.shape[1:] != shape[1:]:
            a = np.empty(shape, np.float32)
            self.bufs[name] = a
        return a[: shape[0]]


_scratch = _Scratch()


def _kind(qtype: int) -> int:
    try:
        return _DECODERS[int(qtype)]
    except KeyError:
        raise ValueError(f"no CPU kernel for tensor type {T(qtype).name if qtype in T._value2member_map_ else qtype}") from None


def matvec(w: np.ndarray, qtype: int, x: np.ndarray, out: np.ndarray) -> None:
    """out[n_rows] = W @ x.   w: [n_rows, row_bytes] uint8; x: [n_cols] float32."""
    kind = _kind(qtype)
    if kind == 4:
        _mv_q4_1(w, x, out, _scratch.get("xs", (x.size // 32,)))
    elif kind == 7:
        _mv_q8_0(w, x, out)
    else:
        _mv_generic(kind, w, x, out, _scratch.get("mv_tmp", (nb.get_num_threads(), x.size)))


def matmul(w: np.ndarray, qtype: int, x: np.ndarray, out: np.ndarray) -> None:
    """out[n_tok, n_rows] = x @ W.T.   x: [n_tok, n_cols] float32.

    Rows of W are decoded a tile at a time into a reused buffer and multiplied
    with BLAS; the whole matrix is never dequantized at once.
    """
    kind = _kind(qtype)
    n_rows = w.shape[0]
    n_cols = x.shape[1]
    tile = _scratch.get("tile", (_TILE_ROWS, n_cols))
    res = _scratch.get("res", (x.shape[0], _TILE_ROWS))
    for r0 in range(0, n_rows, _TILE_ROWS):
        n = min(_TILE_ROWS, n_rows - r0)
        _decode_rows(kind, w, r0, tile[:n])
        # a contiguous result then one copy: BLAS is slow into strided output
        np.matmul(x, tile[:n].T, out=res[:, :n])
        out[:, r0 : r0 + n] = res[:, :n]


def get_rows(w: np.ndarray, qtype: int, ids: np.ndarray, out: np.ndarray) -> None:
    """out[i] = row ids[i] of W, decoded.   out: [len(ids), n_cols] float32."""
    _gather_rows(_kind(qtype), w, np.asarray(ids, np.int64), out)
