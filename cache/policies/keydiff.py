"""KeyDiff: attention-free eviction by key dissimilarity.

Park et al., *KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context
LLM Inference in Resource-Constrained Environments*,
https://arxiv.org/abs/2504.15364.  Keys that point the same way as the mean
(anchor) key carry little distinct information; a token's score is minus the
cosine similarity of its key to the anchor, the running mean of the
normalised keys of its KV head, taken when the token enters the cache.

Shapes: score [n_kv, N] float32 (an array of ``xp``, see :mod:`.base`);
anchor [n_kv, D] float32 (sum of unit keys), on the host with the keys it
comes from: only the new token's [n_kv] scores go up.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Policy


class KeyDiff(Policy):
    name = "keydiff"
    needs_probs = False

    def __init__(self, n_kv: int, n_slots: int, xp: Any = np) -> None:
        super().__init__(n_kv, n_slots, xp)
        self.anchor: np.ndarray | None = None  # [n_kv, D]

    def on_insert(self, slots: np.ndarray, pos: int, k: np.ndarray) -> None:
        unit = k / np.maximum(np.linalg.norm(k, axis=1, keepdims=True), 1e-12)  # [n_kv, D]
        if self.anchor is None:
            self.anchor = np.zeros_like(unit)
        a = self.anchor / np.maximum(np.linalg.norm(self.anchor, axis=1, keepdims=True), 1e-12)
        self.score[self._heads(slots)] = self._up(-(unit * a).sum(axis=1))
        self.anchor += unit

    def prefill(self, head: int, probs: np.ndarray | None, old: np.ndarray) -> None:
        pass  # keys are scored by on_insert

    def fold(self, head: int, src: int, dst: int) -> None:
        pass
