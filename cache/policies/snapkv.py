"""SnapKV: importance from an observation window of the latest queries, pooled over neighbours.

Li et al., *SnapKV: LLM Knows What You Are Looking for Before Generation*,
https://arxiv.org/abs/2404.14469.  At prefill a token's score is the
attention it gets from the last ``window`` queries of the prompt; when
choosing victims, scores are max-pooled over ``kernel`` neighbouring
positions so kept tokens come in clusters (per KV head).  During decode the
observation window slides: the score decays by ``1 - 1/window`` per step and
adds the step's attention.

Shapes: score [n_kv, N], acc [n_kv, N] float32; probs [T, n_cols] per KV head.
"""

from __future__ import annotations

import numpy as np

from .base import Policy


class SnapKV(Policy):
    name = "snapkv"
    window = 32  # observation window, in queries
    kernel = 7  # pooling width, in positions

    def __init__(self, n_kv: int, n_slots: int) -> None:
        super().__init__(n_kv, n_slots)
        self.acc = np.zeros_like(self.score)  # [n_kv, N] this step's attention
        self.decay = np.float32(1.0 - 1.0 / self.window)

    def before_step(self) -> None:
        self.acc[:] = 0.0

    def after_step(self) -> None:
        self.score *= self.decay
        self.score += self.acc

    def prefill(self, head: int, probs: np.ndarray | None, old: np.ndarray) -> None:
        obs = probs[-self.window :].sum(axis=0)  # [n_old + T]: the observation window
        self.score[head, old] = obs[: len(old)]
        self.acc[head, old] = 0.0
        self._pending[head] = [(self.score, obs[len(old) :])]

    def rank(self, head: int, slots: np.ndarray, pos: np.ndarray) -> np.ndarray:
        order = np.argsort(pos, kind="stable")
        s = self.score[head, slots[order]]
        half = self.kernel // 2
        padded = np.pad(s, half, mode="edge")
        win = np.lib.stride_tricks.sliding_window_view(padded, self.kernel)  # [n, kernel]
        pooled = np.empty_like(s)
        pooled[order] = win.max(axis=1)
        return pooled
