"""StreamingLLM: keep the attention sinks and the most recent tokens.

Xiao et al., *Efficient Streaming Language Models with Attention Sinks*,
https://arxiv.org/abs/2309.17453.  Sinks are kept by the cache itself; this
policy scores a token by its position, so the victim is always the oldest
non-sink token.  Attention-free: ``needs_probs`` is False.

Shapes: score [n_kv, N] float32 (the position), an array of ``xp`` as in :mod:`.base`.
"""

from __future__ import annotations

import numpy as np

from .base import INSERT_POS, STEP_NONE, Array, Column, Policy


class Streaming(Policy):
    name = "streaming"
    needs_probs = False
    fused = (INSERT_POS, STEP_NONE)

    def on_insert(self, slots: np.ndarray | Column, pos: int | Array, k: np.ndarray) -> None:
        # (a position on the device, in a captured step, is int32: cast as the score is, not left to the scatter)
        self.score[self._heads(slots)] = pos if isinstance(pos, (int, np.integer)) else pos.astype(np.float32)

    def insert_chunk(self, pos: Array, k: Array, first: int = 0) -> Array:
        p = self._up(pos).astype(np.float32)  # [T]
        return self.xp.ascontiguousarray(self.xp.broadcast_to(p[None, None], (1, self.score.shape[0], p.shape[0])))

    def prefill(self, head: int, probs: np.ndarray | None, old: np.ndarray) -> None:
        pass  # positions are set by on_insert

    def fold_arrays(self) -> list[Array]:
        return []  # a merged token keeps its own position
