"""The uncompressed cache: an fp16 ring buffer per layer.

Global layers get one slot per context position; sliding-window layers get a
ring of ``window + n_batch`` slots, enough that writing a prefill chunk never
overwrites a key some query of that chunk still sees.  Llama 4's chunked layers
(window -c) get a ring of ``c + n_batch`` as llama.cpp's iSWA cache sizes them
(``n_swa + n_ubatch``): a query at p sees from its chunk's start p - p % c, at
most c - 1 positions back, so the same bound holds (:func:`ring_capacity`).
"""

from __future__ import annotations

import numpy as np

from ..ops.cpu.attention import attend_prefill_f16
from ..ops.cpu.batchdecode import decode_steps_f16
from ..ops.cpu.f16 import scatter_f16
from ..ops.cpu.parallel import split_threads
from ..ops.cpu.qattention import decode_step_f16
from .base import LayerCache, LayerSpec, SharedKVLayerCache



class PlainLayerCache(LayerCache):
    """fp16 K/V in a ring of ``capacity`` slots, slot = position % capacity."""

    def __init__(self, spec: LayerSpec, capacity: int) -> None:
        self.spec = spec
        self.capacity = capacity
        # k: [n_head_kv, capacity, head_dim] float16 bits; v likewise with head_dim_v (``v_in_k``: a view of k's rows)
        self.k = np.zeros((spec.n_head_kv, capacity, spec.head_dim), np.uint16)
        self.v = v_of_k(self.k, spec) if spec.v_in_k else np.zeros((spec.n_head_kv, capacity, spec.head_dim_v), np.uint16)
        self.pos = np.full(capacity, -1, np.int32)  # absolute position per slot
        self._s = np.zeros((spec.n_head_kv, spec.n_head // spec.n_head_kv, capacity), np.float32)  # decode scores
        # decode: the compressed cache's kernel cut to fp16 rows (decode_step_f16): fp16 tiles
        # through the register-blocked tile kernels, split-K where heads do not share out over threads
        self.used = 0  # slots [0, used) have been written at least once
        self._sinks = np.asarray(spec.sink_logits, np.float32)  # [n_head] or empty
        self.addrs = (self.k.ctypes.data, self.v.ctypes.data, self.pos.ctypes.data, self._s.ctypes.data)  # (decode_steps)

    def __getstate__(self) -> dict:
        """(``v_in_k``: V is not saved, a view would pickle as a copy of its own; :meth:`__setstate__` views K again.)"""
        return {n: a for n, a in self.__dict__.items() if n != "v" or not self.spec.v_in_k}

    def __setstate__(self, state: dict) -> None:
        """A session file's layer (runtime/sessionfile.py): its arrays are new ones, so are their addresses."""
        self.__dict__.update(state)
        if self.spec.v_in_k:
            self.v = v_of_k(self.k, self.spec)
        self.addrs = (self.k.ctypes.data, self.v.ctypes.data, self.pos.ctypes.data, self._s.ctypes.data)

    def attend(self, q, pos, out, spec: LayerSpec) -> None:
        """Attention of ``q`` at ``pos`` over what is stored, storing nothing (:class:`SharedLayerCache`)."""
        attend_prefill_f16(q, self.k, self.v, self.pos, pos, spec.window, spec.scale, spec.softcap, out, self._sinks, self.spec.v_in_k)

    def update_and_attend(self, q, k, v, pos, out) -> None:
        T = k.shape[0]
        if T > self.capacity:
            raise ValueError(f"batch of {T} tokens exceeds the layer cache of {self.capacity} slots")
        s = self.spec
        if T <= 4:  # a decode step: stored and attended in one Numba call
            self.used = decode_step_f16(
                np.ascontiguousarray(q, np.float32), k, _no_values(k) if s.v_in_k else v, pos, self.k, self.v, self.pos, self.used,
                s.window, s.scale, s.softcap, out, self._s, split_threads(), self._sinks,
            )  # fmt: skip
        else:
            self.store(k, v, pos)
            attend_prefill_f16(q, self.k, self.v, self.pos, pos, s.window, s.scale, s.softcap, out, self._sinks, s.v_in_k)

    def store(self, k, v, pos) -> None:
        """Store k, v at ``pos`` as :meth:`update_and_attend` does (a decode step's kernel rounds to fp16 alike), with
        no attention: a picture's rows, which attend both ways after (cache/picture_block.py)."""
        if k.shape[0] > self.capacity:
            raise ValueError(f"batch of {k.shape[0]} tokens exceeds the layer cache of {self.capacity} slots")
        slots = pos % self.capacity
        # [T, n_kv, D] -> [n_kv, T, D] scatter into the ring
        scatter_f16(k, slots, self.k)
        if not self.spec.v_in_k:  # (else V is K's last channels, stored with it)
            scatter_f16(v, slots, self.v)
        self.pos[slots] = pos
        self.used = max(self.used, int(slots.max()) + 1)

    def n_tokens(self) -> int:
        return int((self.pos >= 0).sum())

    def nbytes(self) -> int:
        return self.k.nbytes + (0 if self.spec.v_in_k else self.v.nbytes) + self.pos.nbytes

    def reset(self) -> None:
        self.pos[:] = -1
        self.used = 0

    def truncate(self, n_past: int) -> None:
        self.pos[self.pos >= n_past] = -1

    def can_truncate(self, n_past: int) -> bool:
        """Whether the next token at ``n_past`` finds every position it sees (a ring may have written over them)."""
        return self.spec.window == 0 or holds_seen(self.pos, self.spec, n_past)

    def copy_prefix(self, src: LayerCache, n_past: int) -> bool:
        """Hold what ``src`` (a cache of the same layer) holds at positions ``< n_past``, and nothing else: a
        server's new conversation takes the system prompt another slot evaluated, instead of evaluating it
        again (:func:`copy_ring`)."""
        return copy_ring(self, src, n_past)


def copy_ring(dst: LayerCache, src: LayerCache, n_past: int, host=np.asarray) -> bool:
    """Either device's fp16 ring's ``copy_prefix`` (``dst`` and ``src`` of one class; ``host`` brings positions down):
    a global layer copies the first ``n_past`` slots, a sliding window's ring all it used, into ``dst``'s own arrays
    (a captured CUDA graph holds their addresses).  False (and ``dst`` empty): ``src`` is another kind of cache, or
    its ring has written over a position the next tokens attend to."""
    if type(src) is not type(dst) or src.spec != dst.spec or src.capacity != dst.capacity:
        return False
    hi = min(src.used, n_past) if dst.capacity >= n_past else src.used  # (positions < n_past sit in slots < n_past)
    dst.k[:, :hi] = src.k[:, :hi]
    if not dst.spec.v_in_k:  # (else V is K's last channels, copied with it)
        dst.v[:, :hi] = src.v[:, :hi]
    dst.pos[:hi] = src.pos[:hi]
    dst.pos[hi:] = -1
    dst.used = hi  # (the GPU's decode_slots: a decode step spans the copied slots, rounded up to whole splits)
    dst.truncate(n_past)
    if not holds_seen(host(dst.pos), dst.spec, n_past):  # (exact only if every position the next token sees is here)
        dst.reset()
        return False
    return True


def decode_steps(layers: list[LayerCache], q, k, v, pos, bounds: list[int], out) -> bool:
    """A batch's decode steps, sequence ``i`` rows ``bounds[i]:bounds[i + 1]`` into ``layers[i]``, in one call
    (ops/cpu/batchdecode.py): each sequence's result is the one it gets alone.  False (nothing done) unless every
    layer is a :class:`PlainLayerCache` of one shape and every sequence feeds 1 to 4 tokens (decode steps, drafts), and
    stores V apart (the batched kernel takes each ring's V as a dense array at an address; ``v_in_k``'s sequences go
    one by one)."""
    first = layers[0]
    if first.spec.v_in_k or any(type(L) is not PlainLayerCache or L.capacity != first.capacity or (L.spec is not first.spec and L.spec != first.spec) for L in layers):
        return False
    b = np.asarray(bounds, np.int64)
    n = np.diff(b)
    if n.min() < 1 or n.max() > 4:
        return False
    used = np.array([L.used for L in layers], np.int64)
    s = first.spec
    decode_steps_f16(np.ascontiguousarray(q, np.float32), k, v, pos, b, np.array([L.addrs for L in layers], np.int64),
                     first.capacity, s.n_head // s.n_head_kv, used, s.window, s.scale, s.softcap, out, split_threads(),
                     first._sinks)  # fmt: skip
    for L, u in zip(layers, used.tolist()):
        L.used = u
    return True


def v_of_k(k: np.ndarray, spec: LayerSpec) -> np.ndarray:
    """V read through K's rows (``spec.v_in_k``, MLA's latent): k's last ``head_dim_v`` channels, a view
    ``[n_head_kv, capacity, head_dim_v]`` whose rows are K's stride apart."""
    return k[:, :, spec.head_dim - spec.head_dim_v :]


def _no_values(k: np.ndarray) -> np.ndarray:
    """A decode step's V where it is K's last channels (stored with K): none to write, ``[T, n_kv, 0]``."""
    return np.empty((k.shape[0], k.shape[1], 0), np.float32)


class SharedLayerCache(SharedKVLayerCache):
    """A layer that reads another layer's K/V (``spec.kv_from``, Gemma 3n) and stores none: ``k`` and ``v`` are
    ignored (the model computes none), the queries attend over the source's slots, which that layer, earlier
    in the same step, has already filled with this step's tokens.  Resetting and truncating are the source's."""

    def __init__(self, spec: LayerSpec, source: PlainLayerCache) -> None:
        self.spec = spec
        self.source = source

    def update_and_attend(self, q, k, v, pos, out) -> None:
        self.source.attend(np.ascontiguousarray(q, np.float32), pos, out, self.spec)


def make_plain_cache(specs: list[LayerSpec], n_ctx: int, n_batch: int) -> list[LayerCache]:
    """One :class:`PlainLayerCache` per layer spec (a :class:`SharedLayerCache` where it reads another's)."""
    layers: list[LayerCache] = []
    for spec in specs:
        if spec.kv_from >= 0:
            layers.append(SharedLayerCache(spec, layers[spec.kv_from]))
            continue
        layers.append(PlainLayerCache(spec, ring_capacity(spec, n_ctx, n_batch)))
    return layers


def ring_capacity(spec: LayerSpec, n_ctx: int, n_batch: int) -> int:
    """Slots of a layer's fp16 ring (both devices'): the context for a global layer; ``|window| + n_batch`` for a
    sliding window or Llama 4's chunks (window -c), as llama.cpp's iSWA cache (``n_swa + n_ubatch``, unpadded here).
    A chunk of T <= n_batch tokens from p0 overwrites positions below p0 + T - capacity <= p0 - |window|, and its
    first query sees back to p0 - |window| + 1 at most (a window's ``pq - pk < w``, a chunk's start p0 - p0 % c)."""
    return n_ctx if spec.window == 0 else min(n_ctx, abs(spec.window) + n_batch)


def holds_seen(pos: np.ndarray, spec: LayerSpec, n_past: int) -> bool:
    """Whether slots holding positions ``pos`` (-1: empty) hold every position below ``n_past`` that a token at
    ``n_past`` sees: back to the window's start, or the chunk's (window -c), or all of them (a global layer)."""
    w = spec.window
    lo = max(0, n_past - w + 1) if w > 0 else n_past - n_past % -w if w < 0 else 0
    return int(((pos >= lo) & (pos < n_past)).sum()) == n_past - lo
