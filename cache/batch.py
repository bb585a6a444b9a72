"""Several sequences' caches behind one :class:`~.base.KVCache`, for one forward pass over all of them.

A batched forward (a server's parallel slots: ``runtime/batcher.py``) feeds the
tokens of several sequences as one batch: each sequence's tokens are a run of
consecutive rows, at that sequence's own positions.  The weight products take
the whole batch at once (read once for all sequences: decode is memory-bound,
so a batch of decode steps costs little more than one); attention is the only
work that must not mix the sequences, and the model reaches it only through
``LayerCache.update_and_attend``.  So this cache hands each run of rows to its
own sequence's layer cache, and the models stay as they are.

Only attention layers batch this way: a convolution's or a state-space mixer's
state (LFM2, Mamba-2) and Gemma 3n's shared K/V read the batch in order as one
sequence (:func:`batchable`).
"""

from __future__ import annotations

import numpy as np

from .base import KVCache, LayerCache, LayerSpec
from .plain import decode_steps


def batchable(specs: list[LayerSpec]) -> bool:
    """Whether a model with these layers can feed several sequences in one forward (every layer plain attention)."""
    return all(not (s.conv or s.ssm or s.ssm_attn or s.deltanet or s.rwkv or s.mamba) and s.kv_from < 0 for s in specs)


class BatchedLayerCache(LayerCache):
    """One layer of :class:`BatchedKVCache`: rows ``bounds[i]:bounds[i+1]`` go to ``layers[i]``."""

    def __init__(self, layers: list[LayerCache], bounds: list[int]) -> None:
        self.layers = layers
        self.bounds = bounds
        self.spec = layers[0].spec

    def update_and_attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
        b = self.bounds
        if decode_steps(self.layers, q, k, v, pos, b, out):  # (the fp16 rings' decode steps: one call for all)
            return
        gpu = getattr(self.layers[0], "batch_update_and_attend", None)  # (the GPU's fp16 rings: cache/gpu_plain.py)
        if gpu is not None and gpu(self.layers, q, k, v, pos, b, out):
            return
        for i, layer in enumerate(self.layers):
            lo, hi = b[i], b[i + 1]
            layer.update_and_attend(q[lo:hi], k[lo:hi], v[lo:hi], pos[lo:hi], out[lo:hi])

    def n_tokens(self) -> int:
        return sum(layer.n_tokens() for layer in self.layers)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def reset(self) -> None:
        raise TypeError("a batch's caches are reset one by one, each by its own sequence")

    def truncate(self, n_past: int) -> None:
        raise TypeError("a batch's caches are truncated one by one, each by its own sequence")


class BatchedKVCache(KVCache):
    """The caches of the sequences of one batch: ``caches[i]`` takes ``counts[i]`` consecutive rows, in order.

    The positions the forward gets are each sequence's own (``positions()``); the
    offsets are the sequences' business (:meth:`advance` moves them after the forward)."""

    def __init__(self, caches: list[KVCache], counts: list[int]) -> None:
        if len(caches) != len(counts) or not caches:
            raise ValueError("a batch needs one row count per cache, and at least one cache")
        if len({id(c) for c in caches}) != len(caches):
            raise ValueError("a sequence may take one run of rows in a batch: its tokens in order")
        n_layer = len(caches[0])
        if any(len(c) != n_layer for c in caches):
            raise ValueError("the caches of a batch must be of one model")
        self.caches = caches
        self.counts = counts
        bounds = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()
        super().__init__([BatchedLayerCache([c.layers[il] for c in caches], bounds) for il in range(n_layer)])
        self.bounds = bounds

    def positions(self) -> np.ndarray:
        """The batch's rows' positions: each sequence's next ``count`` positions after what its cache holds."""
        return np.concatenate([np.arange(c.offset, c.offset + n, dtype=np.int32) for c, n in zip(self.caches, self.counts)])

    def advance(self) -> None:
        """After the forward: each sequence's cache holds its rows."""
        for c, n in zip(self.caches, self.counts):
            c.offset += n
