"""G-KV: a global score mixing the current (local) attention with decayed history.

Liao et al., *G-KV: Decoding-Time KV Cache Eviction with Global Attention*,
https://arxiv.org/abs/2512.00504.  Each step, with ``a`` the attention the
token just received: ``hist <- gamma * hist + a`` and
``score = alpha * a + (1 - alpha) * (1 - gamma) * hist``, so a token that was
important long ago fades slowly instead of being dropped at the first quiet
step (TOVA) or kept forever (H2O).

Shapes: score, acc (this step), hist [n_kv, N] float32 (arrays of ``xp``, see
:mod:`.base`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Array, Policy


class GKV(Policy):
    name = "gkv"
    alpha = 0.5  # weight of the current attention
    gamma = 0.95  # decay of the history per step

    def __init__(self, n_kv: int, n_slots: int, xp: Any = np) -> None:
        super().__init__(n_kv, n_slots, xp)
        self.acc = xp.zeros_like(self.score)
        self.hist = xp.zeros_like(self.score)
        self._shared = xp.zeros_like(self.score)  # a sharing layer's step (shared_acc), folded at once: zero between

    def per_slot(self) -> list[Array]:
        return [self.score, self.acc, self.hist]

    def before_step(self) -> None:
        self.acc[:] = 0.0

    def after_step(self) -> None:
        self.hist *= np.float32(self.gamma)
        self.hist += self.acc
        self.xp.multiply(self.acc, np.float32(self.alpha), out=self.score)
        self.score += np.float32((1 - self.alpha) * (1 - self.gamma)) * self.hist

    def shared_acc(self) -> Array:
        return self._shared

    def after_shared(self) -> None:
        # the sharing layer's probabilities ``a'`` as if in this step's ``a``: hist gains a', the score
        # (alpha + (1 - alpha) * (1 - gamma)) a'; in place, as array operations a CUDA graph captures
        self.hist += self._shared
        self._shared *= np.float32(self.alpha + (1 - self.alpha) * (1 - self.gamma))
        self.score += self._shared
        self._shared[...] = 0.0

    def prefill(self, head: int, probs: np.ndarray | None, old: np.ndarray) -> None:
        T = probs.shape[0]
        w = np.float32(self.gamma) ** np.arange(T - 1, -1, -1, dtype=np.float32)  # [T]
        hist = self._up(w) @ self._up(probs)  # [n_old + T]: decayed over the chunk's queries
        cur = self._up(probs[-1])
        a, b = np.float32(self.alpha), np.float32((1 - self.alpha) * (1 - self.gamma))
        n = len(old)
        o = self._up(old)
        self.hist[head, o] = self.hist[head, o] * np.float32(self.gamma) ** T + hist[:n]
        self.score[head, o] = a * cur[:n] + b * self.hist[head, o]
        self._pending[head] = [(self.score, a * cur[n:] + b * hist[n:]), (self.hist, hist[n:])]

    def fold_arrays(self) -> list[Array]:
        return [self.score, self.hist]
