"""SnapKV: importance from an observation window of the latest queries, pooled over neighbours.

Li et al., *SnapKV: LLM Knows What You Are Looking for Before Generation*,
https://arxiv.org/abs/2404.14469.  At prefill a token's score is the
attention it gets from the last ``window`` queries of the prompt; when
choosing victims, scores are max-pooled over ``kernel`` neighbouring
positions so kept tokens come in clusters (per KV head).  During decode the
observation window slides: the score decays by ``1 - 1/window`` per step and
adds the step's attention.

Shapes: score [n_kv, N], acc [n_kv, N] float32 (arrays of ``xp``, see
:mod:`.base`); probs [T, n_cols] per KV head (host).
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np

from ...ops.cpu.arraycopy import copy_into
from ...ops.cpu.parallel import EXACT_JIT
from .base import INSERT_ZERO, STEP_DECAY, Array, Policy


class SnapKV(Policy):
    name = "snapkv"
    window = 32  # observation window, in queries
    kernel = 7  # pooling width, in positions
    rank_pool = kernel  # (rank_rows: the score pooled over the kernel)
    fused = (INSERT_ZERO, STEP_DECAY)

    def __init__(self, n_kv: int, n_slots: int, xp: Any = np) -> None:
        super().__init__(n_kv, n_slots, xp)
        self.acc = xp.zeros_like(self.score)  # [n_kv, N] this step's attention
        self.decay = np.float32(1.0 - 1.0 / self.window)
        self._kept: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # (lo, hi) -> its rows' position order (host)

    def before_step(self) -> None:
        self.acc[:] = 0.0

    def after_step(self) -> None:
        self.score *= self.decay
        self.score += self.acc

    def prefill(self, head: int, probs: np.ndarray | None, old: np.ndarray) -> None:
        obs = self._up(probs[-self.window :].sum(axis=0))  # [n_old + T]: the observation window
        o = self._up(old)
        self.score[head, o] = obs[: len(old)]
        self.acc[head, o] = 0.0
        self._pending[head] = [(self.score, obs[len(old) :])]

    def rank(self, head: int, slots: Array, pos: Array) -> Array:
        s = self.score[head, self._up(slots)]
        return self._pooled(s[None], self._up(pos)[None])[0]

    def rank_rows(self, lo: int, hi: int, pos: Array) -> Array:
        if self.xp is not np:  # the device decode step: one kernel, no sort (CuPy's runs Thrust, which a CUDA graph cannot hold)
            from ...ops.gpu.ranks import pooled_ranks

            return pooled_ranks(self.score[:, lo:hi], pos, self.kernel)
        s = self.score[:, lo:hi]
        kept = self._kept.get((lo, hi))
        if kept is None or kept[0].shape != s.shape:  # every decode step ranks the same pools: their order is kept
            kept = self._kept[(lo, hi)] = (np.empty(s.shape, np.int64), np.full(s.shape, NO_ORDER, np.int32))
        out = np.empty(s.shape, np.float32)
        pooled_rows_kept(s, pos, self.kernel, out, *kept)
        return out

    def _pooled(self, s: Array, pos: Array) -> Array:
        """Scores s [m, n] max-pooled over ``kernel`` neighbours in position order (pos [m, n]), per row."""
        xp = self.xp
        m, n = s.shape
        if xp is np:  # one Numba call (the decode step ranks every layer's pool each token)
            out = np.empty((m, n), np.float32)
            pooled_rows(s, pos, self.kernel, out)
            return out
        rows = xp.arange(m)[:, None]
        order = self._argsort(pos)  # [m, n] each row's candidates by position
        half = self.kernel // 2
        padded = xp.pad(s[rows, order], ((0, 0), (half, half)), mode="edge")  # [m, n + kernel - 1]
        # max over each position's window of `kernel` neighbours, one shift at a time: element-wise
        # maxima any xp has, exact as numpy's sliding-window max
        pooled_sorted = padded[:, :n]
        for i in range(1, self.kernel):
            pooled_sorted = xp.maximum(pooled_sorted, padded[:, i : i + n])
        pooled = xp.empty((m, n), np.float32)
        pooled[rows, order] = pooled_sorted
        return pooled

    def _argsort(self, a: Array) -> Array:
        """Stable argsort along the last axis with :attr:`xp` (CuPy's sort is always stable and takes no ``kind``)."""
        return np.argsort(a, axis=-1, kind="stable") if self.xp is np else self.xp.argsort(a, axis=-1)


@nb.njit(**EXACT_JIT)
def pooled_rows(s: np.ndarray, pos: np.ndarray, kernel: int, out: np.ndarray) -> None:
    """:meth:`SnapKV._pooled` on the host: per row, the max over each slot's ``kernel`` position
    neighbours (the ends repeated, as numpy's edge padding).

    A decode step and every spilling token of a prefill rank each pool this way, so it is made
    cheap: the slots are put in position order by a radix sort (stable, so the order equals
    ``argsort(kind="stable")``), whose Numba mergesort had cost 23 us a row of 1024 slots and made
    the ``edge`` preset's prefill at depth 2048 3.5 times slower than plain 2 bits; the scores,
    gathered into that order, are max-pooled as ``kernel`` shifted vector maxima and scattered back.
    (:func:`pooled_rows_kept` keeps the order between calls.)"""
    m, n = s.shape
    order = np.empty((m, n), np.int64)
    prev = np.full((m, n), NO_ORDER, np.int32)
    pooled_rows_kept(s, pos, kernel, out, order, prev)


#: ``prev`` of :func:`pooled_rows_kept` with no order kept yet
NO_ORDER = np.int32(-2)
#: slots whose positions changed, at most, for which an order is repaired rather than sorted again
REPAIR_MAX = 8


@nb.njit(**EXACT_JIT)
def pooled_rows_kept(s: np.ndarray, pos: np.ndarray, kernel: int, out: np.ndarray, order: np.ndarray, prev: np.ndarray) -> None:
    """:func:`pooled_rows` with each row's position order kept between calls: order [m, n] int64 and
    prev [m, n] int32, the positions that order is of (:data:`NO_ORDER` everywhere: none yet).  A decode
    step or a spilling token moves one or two slots of a pool, so where at most :data:`REPAIR_MAX`
    positions changed, those slots are taken out of the kept order (found by a binary search on
    their old positions) and put back at their new ones, instead of sorting again.  The order
    is a function of the positions (stable: by position, then slot), so either way it is the same."""
    m, n = s.shape
    if n == 0:
        return
    best = np.empty(n, np.float32)
    for r in range(m):
        _pooled_in_order(s[r], pos[r], kernel, order[r], prev[r], best)
        o, orow = order[r], out[r]
        for i in range(n):
            orow[o[i]] = best[i]


@nb.njit(**EXACT_JIT)
def pooled_victim(s: np.ndarray, pos: np.ndarray, kernel: int, order: np.ndarray, prev: np.ndarray) -> int:
    """The slot (index into the row) of least pooled score, the oldest on ties, or the first empty one
    (position -1): what ``_pick`` finds over :func:`pooled_rows_kept`'s row, without writing the ranks
    back into slot order and scanning them again (SnapKV's decode step, once a layer-step and head).
    s, pos [n] one head's row; order, prev [n] its kept order (as :func:`pooled_rows_kept`'s rows)."""
    n = s.shape[0]
    best = np.empty(n, np.float32)
    _pooled_in_order(s, pos, kernel, order, prev, best)
    if pos[order[0]] < 0:  # empty slots come first in position order, by slot
        return order[0]
    # the least, in 16 independent lanes so that the pass vectorises (a compare-select, exact), then the
    # first slot in position order that holds it (the oldest), a block of 16 compared at a time
    nb16 = n // 16
    lanes = np.empty(16, np.float32)
    for i in range(16):
        lanes[i] = best[0]
    for b in range(nb16):
        for i in range(16):
            x = best[16 * b + i]
            lanes[i] = x if x < lanes[i] else lanes[i]
    least = lanes[0]
    for i in range(16):
        least = min(least, lanes[i])
    for i in range(16 * nb16, n):
        least = min(least, best[i])
    start = 16 * nb16
    for b in range(nb16):
        hit = False
        for i in range(16):
            hit |= best[16 * b + i] == least
        if hit:
            start = 16 * b
            break
    for i in range(start, n):
        if best[i] == least:
            return order[i]
    return order[0]  # (not reached)


@nb.njit(**EXACT_JIT)
def _pooled_in_order(sr: np.ndarray, p: np.ndarray, kernel: int, o: np.ndarray, pp: np.ndarray, best: np.ndarray) -> None:
    """One row: its kept position order ``o`` brought up to date with ``p`` (``pp``: the positions it
    was of, then ``p``), and ``best[i]`` the score of slot ``o[i]`` max-pooled over its ``kernel``
    neighbours in that order."""
    n = sr.shape[0]
    half = kernel // 2
    nm = 0
    moved = np.empty(REPAIR_MAX, np.int64)
    if pp[0] != NO_ORDER:
        for i in range(n):
            if p[i] != pp[i]:
                if nm < REPAIR_MAX:
                    moved[nm] = i
                nm += 1
    if pp[0] == NO_ORDER or nm > REPAIR_MAX:
        _order_by_position(p, o, np.empty(n, np.int64), np.empty(257, np.int64))
    elif nm > 0:
        _repair_order(p, pp, o, moved[:nm])
    copy_into(pp, p)
    ext = np.empty(n + kernel - 1, np.float32)  # scores in position order, the ends repeated
    for i in range(n):
        ext[half + i] = sr[o[i]]
    for i in range(half):
        ext[i] = ext[half]
    for i in range(half + n, n + kernel - 1):
        ext[i] = ext[half + n - 1]
    copy_into(best, ext)
    for w in range(1, kernel):
        sh = ext[w : w + n]
        for i in range(n):
            best[i] = max(best[i], sh[i])


@nb.njit(inline="always", **EXACT_JIT)
def _find(keys: np.ndarray, o: np.ndarray, k: int, key: int, slot: int) -> int:
    """In ``o[:k]``, sorted by (keys[slot], slot): the first index whose entry comes after (key, slot)."""
    a, b = 0, k
    while a < b:
        c = (a + b) // 2
        e = o[c]
        if keys[e] < key or (keys[e] == key and e < slot):
            a = c + 1
        else:
            b = c
    return a


@nb.njit(**EXACT_JIT)
def _repair_order(p: np.ndarray, old: np.ndarray, o: np.ndarray, moved: np.ndarray) -> None:
    """``o``, the slots in (old position, slot) order, into (p, slot) order, where only the slots of
    ``moved`` changed position: each taken out at its old place, then each put in at its new one."""
    n = o.shape[0]
    k = n
    for c in moved:  # out: the rest stays sorted by old positions (theirs did not change)
        i = _find(old, o, k, old[c], c)
        for t in range(i, k - 1):
            o[t] = o[t + 1]
        k -= 1
    for c in moved:  # in: the rest is sorted by current positions (the same as the old, or put in here)
        i = _find(p, o, k, p[c], c)
        for t in range(k, i, -1):
            o[t] = o[t - 1]
        o[i] = c
        k += 1


@nb.njit(**EXACT_JIT)
def _order_by_position(p: np.ndarray, order: np.ndarray, spare: np.ndarray, count: np.ndarray) -> None:
    """``order`` <- the slots sorted by position ``p`` [n] (int, >= -1 where -1 is empty), stable:
    ``np.argsort(p, kind="stable")``.  An LSD radix sort of ``p + 1`` a byte at a time, as many
    bytes as the largest position needs (two up to 65535).  order, spare: [n] int64; count: [257]."""
    n = p.shape[0]
    top = 0
    for i in range(n):
        top = max(top, p[i] + 1)
    for i in range(n):
        order[i] = i
    shift = 0
    src, dst = order, spare
    flips = 0
    while True:
        count[:] = 0
        for i in range(n):
            count[((p[i] + 1) >> shift) & 255] += 1
        tot = 0
        for d in range(256):  # count[d] <- where digit d starts
            c = count[d]
            count[d] = tot
            tot += c
        for i in range(n):
            j = src[i]
            d = ((p[j] + 1) >> shift) & 255
            dst[count[d]] = j
            count[d] += 1
        src, dst = dst, src
        flips += 1
        shift += 8
        if (top >> shift) == 0:
            break
    if flips % 2 == 1:  # the result is in spare
        copy_into(order, spare)
