"""TOVA: evict the token the current query attends to least.

Oren et al., *Transformers are Multi-State RNNs*,
https://arxiv.org/abs/2401.06104.  The score is the attention of the latest
query only (summed over the query heads of the GQA group), reset every step.

Shapes: score = acc [n_kv, N] float32 (an array of ``xp``, see :mod:`.base`),
zeroed before each decode step.
"""

from __future__ import annotations

import numpy as np

from .base import INSERT_ZERO, STEP_RESET, Policy


class TOVA(Policy):
    name = "tova"
    fused = (INSERT_ZERO, STEP_RESET)

    def before_step(self) -> None:
        self.score[:] = 0.0

    def prefill(self, head: int, probs: np.ndarray | None, old: np.ndarray) -> None:
        last = self._up(probs[-1])  # [n_old + T]: the last query of the chunk
        self.score[head, self._up(old)] = last[: len(old)]
        self._pending[head] = [(self.score, last[len(old) :])]
