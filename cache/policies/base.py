"""What every eviction policy shares: per-slot scores, moving them with their token, picking victims.

A policy only *scores*; the cache decides when to evict and calls
:meth:`Policy.victim`.  Scores come from what the kernels already compute:
the attention probabilities the decode kernel adds into :attr:`Policy.acc`
(summed over the query heads of each KV head, so a GQA group shares one
decision), the prefill attention matrix, and the keys themselves.

Shapes (``n_kv`` KV heads, ``N`` slots of the layer, ``D`` head size)::

    score  [n_kv, N]  float32   importance, higher = keep
    acc    [n_kv, N]  float32   where the kernel adds this step's probabilities
    probs  [T, n_cols]        prefill attention of T queries over one KV head's columns
"""

from __future__ import annotations

import numpy as np


class Policy:
    """Base: a heavy-hitter-style accumulator; subclasses override the hooks.

    Parameters
    ----------
    n_kv : int
        KV heads of the layer.
    n_slots : int
        Slots of the layer (fp16 area and pools).
    """

    name = "base"
    needs_probs = True  # the attention kernels must report probabilities

    def __init__(self, n_kv: int, n_slots: int) -> None:
        self.score = np.zeros((n_kv, n_slots), np.float32)  # [n_kv, N]
        self.acc = self.score  # [n_kv, N]; accumulators may alias score
        self._pending: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}  # head -> (array, [T] values)

    # ------------------------------------------------------------ hooks
    def per_slot(self) -> list[np.ndarray]:
        """Arrays [n_kv, N] whose entries travel with a token from slot to slot."""
        return [self.score] if self.acc is self.score else [self.score, self.acc]

    def on_insert(self, slots: np.ndarray, pos: int, k: np.ndarray) -> None:
        """A token enters ``slots`` ([n_kv] int64, one per head); ``k``: [n_kv, D] float32."""
        for arr in self.per_slot():
            arr[np.arange(len(slots)), slots] = 0.0

    def before_step(self) -> None:
        """Called before the decode kernel adds probabilities into :attr:`acc`."""

    def after_step(self) -> None:
        """Called after it; fold :attr:`acc` into :attr:`score`."""

    def prefill(self, head: int, probs: np.ndarray | None, old: np.ndarray) -> None:
        """Score from a prefill chunk's attention (one KV head).

        probs: [T, n_old + T] float32, the attention of the chunk's T queries
        (summed over the head's query heads) over its ``n_old`` stored slots
        ``old`` ([n_old] int64), then over the chunk's own T tokens; None when
        :attr:`needs_probs` is False.  Update the stored slots' scores and keep
        the new tokens' for :meth:`adopt`.
        """
        n_old = len(old)
        col = probs.sum(axis=0)  # [n_old + T]
        self.score[head, old] += col[:n_old]
        self._pending[head] = [(self.score, col[n_old:])]

    def adopt(self, slots: np.ndarray, t: int) -> None:
        """Row ``t`` of the last prefill chunk entered ``slots`` ([n_kv] int64): give it its scores."""
        for h, items in self._pending.items():
            for arr, vals in items:
                arr[h, slots[h]] = vals[t]

    # ------------------------------------------------------------ selection
    def move(self, head: int, src: int, dst: int) -> None:
        """The token of ``head`` in slot ``src`` now lives in slot ``dst``."""
        for arr in self.per_slot():
            arr[head, dst] = arr[head, src]

    def fold(self, head: int, src: int, dst: int) -> None:
        """The token in ``src`` was merged into ``dst``: its importance adds up."""
        self.score[head, dst] += self.score[head, src]

    def rank(self, head: int, slots: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Importance of candidate ``slots`` of ``head`` ([n] -> [n] float); ``pos``: their positions."""
        return self.score[head, slots]

    def victim(self, head: int, lo: int, hi: int, pos: np.ndarray) -> int:
        """The slot in ``[lo, hi)`` of ``head`` to evict: the least important (oldest on ties).

        pos: [hi - lo] int32 positions of those slots (all occupied).
        """
        r = self.rank(head, np.arange(lo, hi), pos)
        m = r.min()
        cand = np.flatnonzero(r == m)
        return lo + int(cand[np.argmin(pos[cand])]) if len(cand) > 1 else lo + int(cand[0])

    def top_k(self, head: int, slots: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` most important of ``slots`` (for prompt compression and tests)."""
        r = self.rank(head, slots, pos)
        order = np.lexsort((-pos, -r))  # by score desc, then newest first
        return slots[order[:k]]
