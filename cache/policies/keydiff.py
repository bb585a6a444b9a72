"""KeyDiff: attention-free eviction by key dissimilarity.

Park et al., *KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context
LLM Inference in Resource-Constrained Environments*,
https://arxiv.org/abs/2504.15364.  Keys that point the same way as the mean
(anchor) key carry little distinct information; a token's score is minus the
cosine similarity of its key to the anchor, the running mean of the
normalised keys of its KV head, taken when the token enters the cache.

Shapes: score [n_kv, N] float32 (an array of ``xp``, see :mod:`.base`);
anchor [n_kv, D] float32 (sum of unit keys), an array of ``xp`` too: the
GPU cache's device decode step hands it the new key on the device, and a
host-path key goes up.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Array, Column, Policy


class KeyDiff(Policy):
    name = "keydiff"
    needs_probs = False

    def __init__(self, n_kv: int, n_slots: int, xp: Any = np) -> None:
        super().__init__(n_kv, n_slots, xp)
        self.anchor: np.ndarray | None = None  # [n_kv, D]

    @property
    def capturable(self) -> bool:  # the anchor exists from the first token on (its allocation is not captured)
        return self.anchor is not None

    def on_insert(self, slots: np.ndarray | Column, pos: int | Array, k: Array) -> None:
        xp = self.xp
        k = self._up(k)  # a host key goes up; a device one (the GPU cache's device step) stays
        unit = _unit(xp, k)  # [n_kv, D]
        if self.anchor is None:
            self.anchor = xp.zeros_like(unit)
        self.score[self._heads(slots)] = -(unit * _unit(xp, self.anchor)).sum(axis=1)
        self.anchor += unit

    def insert_chunk(self, pos: Array, k: Array, first: int = 0) -> Array:
        xp = self.xp
        k = self._up(k)  # [T, n_kv, D]
        unit = _unit(xp, k)
        if self.anchor is None:
            self.anchor = xp.zeros_like(unit[0])
        # the anchor before each token, then after the chunk: [T + 1, n_kv, D] (a running sum, in order, as on_insert's)
        run = xp.cumsum(xp.concatenate([self.anchor[None], unit]), axis=0)
        self.anchor[...] = run[-1]
        return xp.ascontiguousarray(-(unit * _unit(xp, run[:-1])).sum(axis=2).T[None])  # [1, n_kv, T]

    def prefill(self, head: int, probs: np.ndarray | None, old: np.ndarray) -> None:
        pass  # keys are scored by on_insert

    def fold_arrays(self) -> list[Array]:
        return []  # a key's score is its own


def _unit(xp: Any, x: Array) -> Array:
    """``x`` scaled to unit length along its last axis (a zero vector stays zero)."""
    return x / xp.maximum(xp.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))
