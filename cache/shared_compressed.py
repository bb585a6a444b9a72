"""Layers that share K/V (Gemma 3n, Gemma 4: ``LayerSpec.kv_from``) over a compressed cache.

Such a layer computes no K/V: its queries attend over the compressed slots of its source, the last
earlier layer of its kind (window or global), which earlier in the same forward has already stored
the step's tokens.  It stores nothing itself (``nbytes`` 0, no footprint: bits per value count the
sources alone), as :class:`.plain.SharedLayerCache` does over the plain cache.

The source's keys live in its own basis (rotation, centering, query-aware smoothing: cache/keybasis.py),
exact for attention whatever the query, so the sharing layer's queries go through the source's query
transform; its own spec (scale, window, softcap, sinks) sets the attention.  A decode step (up to
``MAX_DECODE_T`` tokens) reads the stored slots with the source's decode kernel.  A prompt chunk
must see what the source saw before it stored the chunk: a window layer's ring keeps only
``window + MAX_DECODE_T`` tokens, so after a long chunk went in its first rows' keys are gone, and the
chunk's own keys, fp16 while the source attended, may since have been quantized.  So the source keeps
each head's rows of its last chunk (``CompressedLayerCache.keep_chunk`` / ``shared_chunk``), with its
query basis as it was then (the chunk's first spill may fix the basis), and the sharing layers attend
over exactly those; a chunk that came in another way (no snapshot for these positions) attends over
the stored slots, masked causally by position.

Eviction policies: the source's policy ranks its slots by the attention of the source and of every layer
that reads it (a token only the sharers attend to must not be evicted as one nobody reads).  A decode
step's sharers run the source's kernel with the source policy's accumulator (``Policy.shared_acc``):
they run after the source within a step, so their probabilities land after its ``after_step`` and
before its next victims, and its next ``before_step`` (TOVA's reset, SnapKV's fresh ``acc``) comes
after those victims; the score itself takes them (G-KV folds them as its ``after_step`` would).  A
prompt chunk's sharers hand their probabilities to ``Policy.prefill_shared`` (what the policy's own
prefill makes of them, added).  A policy's source is a global layer (window layers take none), whose
sharers read its stored slots, so their columns are its slots; they attend after the source stored
the chunk, so the chunk's own evictions (when it overflows the budget) were ranked by the source's
attention alone: every later decision (the next chunk's, each decode step's) sees both.  A mixed
cache's precision ranking (an internal H2O) takes the sharers' attention alike.  The GPU's form:
cache/gpu_shared_compressed.py.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..ops.cpu.attention import attend_group
from .base import LayerCache, LayerSpec, SharedKVLayerCache
from .compressed import MAX_DECODE_T, CompressedLayerCache
from .insert import fwht_rows

_EMPTY2 = np.zeros((0, 0), np.float32)


class SharedCompressedLayerCache(SharedKVLayerCache):
    """A layer that reads ``source``'s compressed K/V (``spec.kv_from``) and stores none; see the module docstring.
    ``k`` and ``v`` are ignored (the model computes none); resetting and truncating are the source's."""

    def __init__(self, spec: LayerSpec, source: CompressedLayerCache) -> None:
        if source.key_dim != spec.head_dim or source.spec.head_dim_v != spec.head_dim_v or source.spec.n_head_kv != spec.n_head_kv:
            raise ValueError(f"a layer sharing K/V has heads {spec.n_head_kv} x {spec.head_dim}/{spec.head_dim_v}, its source "
                             f"{source.spec.n_head_kv} x {source.key_dim}/{source.spec.head_dim_v}; they must match")  # fmt: skip
        self.spec = spec
        self.source = source
        # a window layer's ring may have dropped, by the end of a long prompt chunk, keys the chunk's first rows need:
        # its prefill keeps a copy of what it attended over.  A global layer's stored slots hold every key, so its
        # sharers read those (the chunk's keys as stored) rather than a float32 copy of every head's rows, which would
        # grow with the context and outlive the prompt
        source.keep_chunk = source.spec.window > 0
        n_kv, D, Dv = spec.n_head_kv, spec.head_dim, spec.head_dim_v
        self._sinks = np.asarray(spec.sink_logits, np.float32)  # [n_head] or empty
        self._alibi = np.asarray(spec.alibi_slopes, np.float32)  # (empty for the Gemmas)
        # decode scratch, allocated once (the source's is its own layer's: same shapes, but kept apart)
        self._s = np.zeros((n_kv, spec.n_head // n_kv, source.N), np.float32)
        self._qr = np.zeros((MAX_DECODE_T, spec.n_head, D), np.float32)
        self._or = np.zeros((MAX_DECODE_T, spec.n_head, Dv), np.float32)

    def update_and_attend(self, q, k, v, pos, out) -> None:
        q = np.ascontiguousarray(q, np.float32)
        if q.shape[0] <= MAX_DECODE_T:
            self._attend_decode(q, np.ascontiguousarray(pos, np.int32), out)
        else:
            self._attend_chunk(q, pos, out)

    def _attend_decode(self, q: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
        """A decode step's queries over the source's slots, by the source's decode kernel and this layer's spec."""
        src, s = self.source, self.spec
        src.shared_chunk = None  # (a prompt chunk's snapshot is no longer read: free it)
        T = q.shape[0]
        qr = src.basis.queries(q, out=self._qr[:T])
        o = out if src.rot_v is None else self._or[:T]
        pol = src.policy if src.policy is not None and src.policy.needs_probs else None
        src.attend_slots(qr, pos, s, o, self._s, _EMPTY2 if pol is None else pol.shared_acc(), self._sinks, self._alibi)
        if pol is not None:
            pol.after_shared()
        if src.rot_v is not None:
            fwht_rows(o, out)

    def _attend_chunk(self, q: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
        """A prompt chunk's queries over what the source attended its own chunk over (its snapshot), or else over
        its stored slots, causally by position (BLAS, as the source's prefill)."""
        src, s = self.source, self.spec
        T, H, _ = q.shape
        n_kv = s.n_head_kv
        gqa = H // n_kv
        pq = np.asarray(pos, np.int64)
        snap = src.shared_chunk
        if snap is not None and not np.array_equal(snap[0], pq):
            snap = None
        qr = (snap[1] if snap is not None else src.basis).queries(q)
        o = np.empty((T, H, s.head_dim_v), np.float32)
        pol = src.policy if src.policy is not None and src.policy.needs_probs else None
        for h in range(n_kv):
            ids = None
            if snap is not None:  # (a window layer's: no policy)
                pk, kall, vall, bias = snap[2][h]
            else:
                ids, kall, vall = src.stored_rows(h)
                pk = src.pos[h if src.P > 1 else 0, ids].astype(np.int64)
                bias = src.logw[h, ids] if src.logw.size else None
            g = slice(h * gqa, (h + 1) * gqa)
            probs = attend_group(qr[:, g], kall[: len(pk)], vall[: len(pk)], pk, pq, s.window, s.scale, s.softcap, o[:, g], bias,
                                 probs=pol is not None and ids is not None, sink_logits=self._sinks[g] if self._sinks.size else None,
                                 alibi=self._alibi[g] if self._alibi.size else None)  # fmt: skip
            if pol is not None and ids is not None:  # (the columns are the stored slots: the sharer's share of their scores)
                pol.prefill_shared(h, probs, ids)
        if src.rot_v is not None:  # back from the cache basis by the butterflies, as the source's prefill does
            fwht_rows(o, out)
        else:
            out[:] = o


def make_shared_compressed(specs: list[LayerSpec], make: Callable[[list[LayerSpec]], list[LayerCache]], device: str = "cpu") -> list[LayerCache]:
    """Layer caches for a model whose layers ``kv_from >= 0`` read an earlier layer's K/V: ``make`` builds the
    layers that store (the compressed caches of ``make_cache``, warm tiers sized over those alone), each sharing
    layer a :class:`SharedCompressedLayerCache` over its source's (on ``device="gpu"``, cache/gpu_shared_compressed.py's)."""
    cls = SharedCompressedLayerCache
    if device == "gpu":  # imported here: the CPU path never needs CuPy
        from .gpu_shared_compressed import GPUSharedCompressedLayerCache as cls
    own = iter(make([spec for spec in specs if spec.kv_from < 0]))
    layers: list[LayerCache] = []
    for spec in specs:
        if spec.kv_from < 0:
            layers.append(next(own))
            continue
        source = layers[spec.kv_from]
        if not isinstance(source, CompressedLayerCache):
            raise ValueError(f"a layer sharing K/V reads layer {spec.kv_from}, which keeps no compressed K/V")
        layers.append(cls(spec, source))
    return layers
