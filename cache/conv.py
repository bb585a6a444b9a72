"""The state of a short causal convolution layer (LFM2's ``shortconv``), kept beside the attention
layers' K/V in the same :class:`~.base.KVCache`.

A convolution of ``kernel`` positions needs, for the next token, the inputs of the ``kernel - 1``
before it: that is all llama.cpp keeps.  kvrun keeps a ring of the last :data:`RING` inputs instead,
so that the cache can still go back a few tokens (a refused draft of lookup or speculative
decoding, a chat turn whose closing tokens are re-rendered): a truncation further back than the
ring reaches makes the whole cache start over (:meth:`KVCache.truncate`), and the text is fed
again.  The state is float32 and small (RING x channels per layer), never quantized or evicted.
"""

from __future__ import annotations

import numpy as np

from .base import LayerCache, LayerSpec, copy_state

RING = 64  #: inputs kept per layer (a draft is at most 16 tokens)


class ConvLayerCache(LayerCache):
    def __init__(self, spec: LayerSpec) -> None:
        self.spec = spec
        self.d_conv = spec.conv_kernel - 1  # inputs before a token that its output reads
        self.ring = np.zeros((RING, spec.conv), np.float32)  # [RING, channels]: input at position p in row p % RING
        self.offset = 0  # positions seen

    def window(self, bx: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """The ``d_conv`` inputs before ``pos[0]`` then ``bx`` ``[T, channels]`` (stored): ``[d_conv + T, channels]``,
        zeros before position 0, as the convolution reads them."""
        T, p0 = bx.shape[0], int(pos[0])
        if p0 != self.offset:
            raise ValueError(f"a convolution layer continues at position {self.offset}, not {p0}")
        prev = np.zeros((self.d_conv, self.spec.conv), np.float32)
        for j in range(self.d_conv):
            p = p0 - self.d_conv + j
            if p >= 0:
                prev[j] = self.ring[p % RING]
        keep = min(T, RING)
        rows = (np.arange(p0 + T - keep, p0 + T)) % RING
        self.ring[rows] = bx[T - keep :]
        self.offset = p0 + T
        return np.concatenate([prev, bx])

    def update_and_attend(self, q, k, v, pos, out) -> None:  # (LayerCache's protocol: not this layer's)
        raise TypeError("a convolution layer has no attention")

    def n_tokens(self) -> int:
        return self.offset

    def nbytes(self) -> int:
        return int(self.ring.nbytes)

    def reset(self) -> None:
        self.offset = 0

    def can_truncate(self, n_past: int) -> bool:
        return n_past == 0 or n_past - self.d_conv >= self.offset - RING

    def truncate(self, n_past: int) -> None:
        self.offset = n_past

    def copy_prefix(self, src: LayerCache, n_past: int) -> bool:
        """``src``'s ring, gone back to ``n_past`` (as far as ``can_truncate`` reaches: a fork's whole text always)."""
        return copy_state(self, src, n_past)
