"""The protocol between models and KV caches.

A model touches its cache only through :meth:`LayerCache.update_and_attend`:
it hands over the new tokens' K and V with their absolute positions and the
queries, and gets the attention output back.  Where and at which precision K/V
are kept, which tokens are evicted or merged, and how attention reads them is
the cache's business, so a new policy or width needs no change in ``models/``.

Shapes::

    q    [T, n_head, head_dim]       float32 (RoPE applied)
    k    [T, n_head_kv, head_dim]    float32 (RoPE applied)
    v    [T, n_head_kv, head_dim_v]  float32
    pos  [T]                         int32, absolute positions, increasing
    out  [T, n_head, head_dim_v]     float32
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerSpec:
    """What a layer's cache must hold and how its attention is masked."""

    n_head: int
    n_head_kv: int
    head_dim: int
    head_dim_v: int
    window: int = 0  # sliding window in tokens (0: global attention)
    #: (a negative window -c: Llama 4's chunked attention, each query seeing the keys of its own chunk of c positions
    #: from the chunk's start, ops/cpu/attention.py, ops/gpu/attention.cu; its caches a ring of c + n_batch slots, cache/plain.py)
    scale: float = 1.0  # multiplier of q.k
    softcap: float = 0.0  # attention logit soft-capping (0: off)
    #: gpt-oss's learned attention sinks: a logit per query head that joins the softmax's denominator
    #: and adds no value, so a head may attend to nothing (empty: none).  A tuple: specs are hashable
    sink_logits: tuple[float, ...] = ()
    #: > 0: not an attention layer but a short causal convolution (LFM2) over this many channels, with a
    #: kernel of ``conv_kernel`` positions: its cache keeps the last inputs (cache/conv.py)
    conv: int = 0
    conv_kernel: int = 0
    #: not empty: not an attention layer but Mamba-2's state-space mixer, ``(d_conv, n_head, head_dim, n_group,
    #: d_state)``: its cache keeps the convolution's last inputs and the state per head (cache/ssm.py)
    ssm: tuple[int, ...] = ()
    #: >= 0: this layer stores no K/V of its own but attends over layer ``kv_from``'s (Gemma 3n's KV sharing: its
    #: last layers reuse the last earlier layer of their kind), which wrote this step's tokens first
    kv_from: int = -1
    #: with ``ssm``: the layer attends as well, beside its mixer (Falcon-H1), so its cache keeps K/V and the state
    #: both (cache/ssm.py's ParallelSSMLayerCache; the attention's sizes are the fields above)
    ssm_attn: bool = False
    #: not empty: not an attention layer but a Gated DeltaNet (Qwen3.5's, Qwen3-Next's linear attention), ``(d_conv,
    #: n_k_heads, n_v_heads, d_k, d_v)``: its cache keeps the convolution's last inputs and a state [d_v, d_k] per value
    #: head (cache/deltanet.py)
    deltanet: tuple[int, ...] = ()
    #: not empty: not an attention layer but an RWKV block, ``(n_embd, head_size, version)`` (version 7 or 6): its cache
    #: keeps the WKV state per head and the token shift's last inputs (cache/rwkv.py)
    rwkv: tuple[int, ...] = ()
    #: not empty: not an attention layer but Mamba 1's mixer, ``(d_conv, d_inner, d_state)``: its cache keeps the
    #: convolution's last inputs and a state [d_state] per channel (cache/mamba.py)
    mamba: tuple[int, ...] = ()
    #: the keys' last channel is their position (ALiBi as a dot product: models/bloom.py), exact only in fp16, so only
    #: the plain CPU cache holds it
    position_channel: bool = False
    #: not empty: ALiBi's slope per query head, the score of a key at pk from a query at pq getting ``slope * (pk - pq)``
    #: in the attention kernels themselves (the GPU caches' form of ALiBi: models/bloom.py; the CPU's is
    #: ``position_channel``)
    alibi_slopes: tuple[float, ...] = ()
    #: V is K's last ``head_dim_v`` channels (multi-head latent attention's absorbed form, models/mla.py: K ``[rope key,
    #: latent]``, V the latent; the model's ``v`` equals those channels of its ``k``): the plain caches store K alone
    #: and their attention reads V through K's rows, as llama.cpp's ``is_mla`` cache (576 values a token, not 1088).
    #: The compressed caches keep V apart whatever this says (their K is quantized per channel, V per token)
    v_in_k: bool = False


class LayerCache(ABC):
    """One layer's K/V store and the attention that reads it."""

    spec: LayerSpec

    @abstractmethod
    def update_and_attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
        """Store k, v at ``pos`` and write attention of ``q`` over the cache into ``out``."""

    @abstractmethod
    def n_tokens(self) -> int:
        """Tokens held now."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of K/V storage and its metadata actually allocated."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every token."""

    @abstractmethod
    def truncate(self, n_past: int) -> None:
        """Forget every token at position >= ``n_past``."""

    def can_truncate(self, n_past: int) -> bool:
        """Whether :meth:`truncate` can go back to ``n_past`` (a recurrent state keeps only the recent past)."""
        return True


def copy_state(dst: LayerCache, src: LayerCache, n_past: int, keep: tuple[str, ...] = ()) -> bool:
    """A host layer's ``copy_prefix`` (a recurrent layer's, the compressed cache's): ``dst`` takes a copy of ``src``'s
    whole state (a state, its ring of recent inputs and copies; quantized pools, key basis and policy scores), gone back
    to ``n_past`` as ``src.truncate`` would go, and nothing of its own (what it derived from its old state is gone
    too); False where ``src`` is another kind or cannot go back that far.  ``keep``: attributes that stay ``dst``'s
    own (an attention cache it holds beside its state)."""
    if type(src) is not type(dst) or src.spec != dst.spec or not src.can_truncate(n_past):
        return False
    state = copy.deepcopy({n: v for n, v in vars(src).items() if n not in keep}, {id(np): np})
    own = {n: v for n, v in vars(dst).items() if n in keep}
    vars(dst).clear()
    vars(dst).update(state, **own)
    dst.truncate(n_past)
    return True


class SharedKVLayerCache(LayerCache):
    """A layer that reads another layer's K/V (``spec.kv_from``, Gemma 3n's and Gemma 4's KV sharing) and stores none:
    its tokens are its ``source``'s, and resetting and truncating are the source's (cache/plain.py's, the compressed
    cache's cache/shared_compressed.py, their GPU twins)."""

    source: LayerCache

    def n_tokens(self) -> int:
        return self.source.n_tokens()

    def nbytes(self) -> int:
        return 0

    def reset(self) -> None:
        pass  # (the source's reset clears what this layer reads)

    def truncate(self, n_past: int) -> None:
        pass

    def copy_prefix(self, src: LayerCache, n_past: int) -> bool:
        """Nothing to copy: the source layer, earlier in the same cache, copies the K/V this one reads.  ``src`` must
        be a sharing layer of the same kind and spec (KVCache.copy_prefix)."""
        return type(src) is type(self) and src.spec == self.spec


class Media(ABC):
    """What media (pictures) leave on a sequence's cache beside its layers' K/V, in :attr:`KVCache.media` under their
    own class: Qwen2-VL's images' M-RoPE grids (cache/mrope.py), a picture's float K/V while its pieces are fed
    (cache/picture_block.py).  Immutable where it outlives a forward: a prefix copy shares what it keeps.  A kind a
    saved chat keeps must be a class of ``kvrun.cache`` (runtime/sessionfile.py unpickles no other)."""

    @abstractmethod
    def kept(self, n_past: int) -> Media | None:
        """What still holds once positions >= ``n_past`` are forgotten (truncated, or not copied); None: nothing."""


class KVCache:
    """All layers' caches of one sequence, plus the next free position and what its media left (:class:`Media`)."""

    def __init__(self, layers: list[LayerCache]) -> None:
        self.layers = layers
        self.offset = 0  # absolute position of the next token
        #: by kind: every operation that forgets positions (reset, truncate, copy_prefix) cuts them, so no media
        #: state outlives the rows it describes; empty for a text-only chat (one dict look-up is what it costs)
        self.media: dict[type[Media], Media] = {}

    def __getitem__(self, il: int) -> LayerCache:
        return self.layers[il]

    def __len__(self) -> int:
        return len(self.layers)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
        self.offset = 0
        self.media = {}

    def truncate(self, n_past: int) -> int:
        """Forget positions >= ``n_past``; where a layer cannot go back that far (a convolution's state
        keeps only its recent inputs) the whole cache starts over empty.  Returns the positions kept."""
        if n_past > self.offset:
            raise ValueError(f"cannot truncate to {n_past}: only {self.offset} positions are cached")
        if not all(layer.can_truncate(n_past) for layer in self.layers):
            self.reset()
            return 0
        for layer in self.layers:
            layer.truncate(n_past)
        self.offset = n_past
        self.media = _kept(self.media, n_past)
        return n_past

    def copy_prefix(self, src: KVCache, n_past: int) -> bool:
        """Hold exactly what ``src`` holds at positions ``< n_past`` (each layer's ``copy_prefix``, where every layer
        has one); False, and this cache empty, where a layer cannot (a ring or an eviction that dropped a position the
        next token sees, a merging compressed cache, a recurrent state that cannot go back to ``n_past``)."""
        if n_past > src.offset or len(src.layers) != len(self.layers):
            return False
        for mine, theirs in zip(self.layers, src.layers):
            if not (hasattr(mine, "copy_prefix") and mine.copy_prefix(theirs, n_past)):
                self.reset()
                return False
        self.offset = n_past
        self.media = _kept(src.media, n_past)
        return True

    def describe(self) -> str:
        return type(self.layers[0]).__name__ if self.layers else "empty"


def _kept(media: dict[type[Media], Media], n_past: int) -> dict[type[Media], Media]:
    """What of ``media`` still holds below ``n_past`` (a new dict: a prefix copy never shares the map itself)."""
    cut = {kind: m.kept(n_past) for kind, m in media.items()}
    return {kind: m for kind, m in cut.items() if m is not None}
