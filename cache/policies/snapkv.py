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

from ...ops.cpu.parallel import EXACT_JIT
from .base import Array, Policy


class SnapKV(Policy):
    name = "snapkv"
    window = 32  # observation window, in queries
    kernel = 7  # pooling width, in positions
    rank_pool = kernel  # (rank_rows: the score pooled over the kernel)

    def __init__(self, n_kv: int, n_slots: int, xp: Any = np) -> None:
        super().__init__(n_kv, n_slots, xp)
        self.acc = xp.zeros_like(self.score)  # [n_kv, N] this step's attention
        self.decay = np.float32(1.0 - 1.0 / self.window)

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
        return self._pooled(self.score[:, lo:hi], pos)

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
    neighbours (the ends repeated, as numpy's edge padding), in one pass."""
    m, n = s.shape
    half = kernel // 2
    for r in range(m):
        order = np.argsort(pos[r], kind="mergesort")  # stable, as the xp path
        for i in range(n):
            best = s[r, order[i]]
            for o in range(-half, kernel - half):
                t = min(max(i + o, 0), n - 1)
                best = max(best, s[r, order[t]])
            out[r, order[i]] = best
