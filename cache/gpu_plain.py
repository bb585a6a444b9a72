"""The uncompressed cache on the GPU: cache/plain.py's fp16 ring buffer in device memory.

Same layout and slot rule (slot = position % capacity, one position per slot,
-1 = empty) and same capacities as :mod:`.plain`, so the two are
interchangeable and comparable; attention runs in the CUDA kernels of
``ops/gpu/attention.cu`` (split-K decode, tiled prefill).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops.gpu import attention as attn
from ..ops.gpu import batch_attention as batch_attn
from ..ops.gpu import kernels as K
from ..ops.gpu.arrays import device_out, is_device, positions, to_device
from .base import LayerCache, LayerSpec
from .plain import copy_ring, holds_seen, ring_capacity

DECODE_MAX_TOKENS = 4  # as cache/plain.py: up to this many queries take the decode kernels


class GPUPlainLayerCache(LayerCache):
    """fp16 K/V on the device in a ring of ``capacity`` slots, slot = position % capacity."""

    def __init__(self, spec: LayerSpec, capacity: int) -> None:
        xp = K.runtime().xp
        self.spec = spec
        self.capacity = capacity
        # k: [n_head_kv, capacity, head_dim] float16; v likewise with head_dim_v (``v_in_k``: a view of k's last
        # channels, and ``v_rows`` the kernels' flat view of them: attention.v_of_k)
        self.k = xp.zeros((spec.n_head_kv, capacity, spec.head_dim), np.float16)
        self.v = self.k[:, :, spec.head_dim - spec.head_dim_v :] if spec.v_in_k else xp.zeros((spec.n_head_kv, capacity, spec.head_dim_v), np.float16)
        self.v_rows = attn.v_of_k(self.k, spec.head_dim_v) if spec.v_in_k else self.v
        self.v_store = None if spec.v_in_k else self.v  # (None: kv_store writes K alone)
        self.pos = xp.full(capacity, -1, np.int32)  # absolute position per slot
        # per query head: ALiBi's slopes and gpt-oss's sink logits, None where the layer has none (the kernels' flags)
        self.alibi = xp.asarray(np.asarray(spec.alibi_slopes, np.float32)) if spec.alibi_slopes else None
        self.sinks = xp.asarray(np.asarray(spec.sink_logits, np.float32)) if spec.sink_logits else None
        self.used = 0  # slots [0, used) have been written at least once

    def update_and_attend(self, q, k, v, pos, out) -> None:
        T = k.shape[0]
        if T > self.capacity:
            raise ValueError(f"batch of {T} tokens exceeds the layer cache of {self.capacity} slots")
        # the host needs the slots anyway to know how far the ring has filled
        pos_h = K.runtime().asnumpy(pos) if is_device(pos) else np.asarray(pos)
        self.note_positions(pos_h)
        pd = positions(pos_h)
        qd, kd, vd = to_device(q), to_device(k), to_device(v)
        attn.kv_store(kd, vd, pd, self.k, self.v_store, self.pos)
        with device_out(out) as od:
            self.attend(qd, pd, od, self.spec, alibi=self.alibi, sinks=self.sinks)

    def attend(self, qd: Any, pd: Any, od: Any, spec: LayerSpec, *, alibi: Any = None, sinks: Any = None) -> None:
        """The device queries ``qd`` ``[T, n_head, head_dim]`` at positions ``pd`` over what is stored, storing
        nothing, into ``od``, with ``spec``'s window, scale and soft-cap (a sharing layer's own: cache/gpu_shared.py):
        the decode kernel for a few tokens, else the tiled one."""
        T = qd.shape[0]
        if T <= DECODE_MAX_TOKENS and spec.head_dim <= attn.DECODE_MAX_D:
            attn.attend_decode(qd, self.k, self.v_rows, self.pos, self.decode_slots(), pd, spec.window, spec.scale, spec.softcap, od,
                               alibi=alibi, sinks=sinks)  # fmt: skip
        else:  # (heads wider than the decode kernel's, Gemma 4's 512: a decode step takes the tiled kernel too, over whole splits)
            attn.attend_prefill(qd, self.k, self.v_rows, self.pos, self.used if T > DECODE_MAX_TOKENS else self.decode_slots(), pd,
                                spec.window, spec.scale, spec.softcap, od, alibi=alibi, sinks=sinks)  # fmt: skip

    @staticmethod
    def batch_update_and_attend(layers: list[LayerCache], q: Any, k: Any, v: Any, pos: np.ndarray, bounds: list[int], out: Any) -> bool:
        """Several sequences' rows in one layer of a batched forward (cache/batch.py): :func:`batch_update_and_attend`."""
        return batch_update_and_attend(layers, q, k, v, pos, bounds, out)

    def note_positions(self, pos: np.ndarray) -> None:
        """Host bookkeeping of a step storing positions ``pos``: how far the ring has filled."""
        self.used = max(self.used, int((pos % self.capacity).max()) + 1)

    def decode_slots(self) -> int:
        """Slots a decode step attends over: ``used`` rounded up to whole splits of the decode
        kernel (the extra slots are empty, so masked).  The launches of a decode step then stay
        the same for DECODE_CHUNK tokens at a time, which a captured CUDA graph needs."""
        return min(self.capacity, K.cdiv(self.used, attn.DECODE_CHUNK) * attn.DECODE_CHUNK)

    # ------------------------------------------------------------ CUDA graphs (runtime/graphs.py)
    def graph_key(self, p: int) -> int:
        """What a captured one-token decode step at ``p`` depends on besides its buffers: the slots it attends
        over.  Notes the position first (a max: the eager step of a miss noting it again does no harm)."""
        self.note_positions(np.array([p], np.int32))
        return self.decode_slots()

    def graph_step(self, p: int) -> None:
        """The host's part of a replayed step: none left (``graph_key`` noted the position)."""
        return None

    def serve_plan(self, buf: object) -> None:
        """(Nothing to plan: a step's slot is its position modulo the capacity, read on the device.)"""

    def snapshot(self) -> None:
        """Nothing to keep: a step stores its K/V at its position's slot, so running it again changes nothing."""
        return None

    def restore(self, snap: None) -> None:
        pass

    # ------------------------------------------------------------ session files (cache/hostcopy.py)
    def to_host(self, moved: dict[int, LayerCache]) -> LayerCache:
        """The CPU's :class:`~.plain.PlainLayerCache` holding what this one holds: the same fp16 bits in the same slots."""
        from .plain import PlainLayerCache

        rt, h = K.runtime(), PlainLayerCache(self.spec, self.capacity)
        h.k[...] = rt.asnumpy(self.k).view(np.uint16)
        if not self.spec.v_in_k:  # (else h's V is its K's last channels, as here)
            h.v[...] = rt.asnumpy(self.v).view(np.uint16)
        h.pos[...] = rt.asnumpy(self.pos)
        h.used = self.used
        return h

    def load_host(self, src: LayerCache) -> None:
        """Hold what the CPU's ``src`` (a session file's :class:`~.plain.PlainLayerCache`) holds."""
        from .hostcopy import refuse
        from .plain import PlainLayerCache

        if type(src) is not PlainLayerCache or src.spec != self.spec or src.capacity != self.capacity:
            raise refuse(src, self)
        self.k[...] = to_device(src.k.view(np.float16), np.float16)
        if not self.spec.v_in_k:
            self.v[...] = to_device(src.v.view(np.float16), np.float16)
        self.pos[...] = to_device(src.pos, np.int32)
        self.used = src.used

    def n_tokens(self) -> int:
        return int((self.pos >= 0).sum())

    def nbytes(self) -> int:
        return int(self.k.nbytes + (0 if self.spec.v_in_k else self.v.nbytes) + self.pos.nbytes)

    def reset(self) -> None:
        self.pos.fill(-1)
        self.used = 0

    def truncate(self, n_past: int) -> None:
        self.pos[self.pos >= n_past] = -1

    def can_truncate(self, n_past: int) -> bool:
        """As the CPU ring's: whether the next token at ``n_past`` finds every position it sees (one copy down)."""
        return self.spec.window == 0 or holds_seen(K.runtime().asnumpy(self.pos), self.spec, n_past)

    def copy_prefix(self, src: LayerCache, n_past: int) -> bool:
        """As the CPU ring's (cache/plain.py :func:`~.plain.copy_ring`), device to device."""
        return copy_ring(self, src, n_past, K.runtime().asnumpy)


def batch_update_and_attend(layers: list[LayerCache], q: Any, k: Any, v: Any, pos: np.ndarray, bounds: list[int], out: Any) -> bool:
    """A batch's rows, sequence ``i`` rows ``bounds[i]:bounds[i + 1]`` into ``layers[i]`` (cache/batch.py): each
    sequence's K/V stored and attended as it would be alone, by the same arithmetic (the decode rows of all
    sequences in one launch each: ops/gpu/batch_attention.py).  The positions go up once for the
    forward (``positions``: the RoPE's copy, whose slices each sequence reads) and the host makes no decision that
    depends on device data, so a batch of decode steps can be captured as a CUDA graph (runtime/batch_graphs.py).
    False (nothing done) unless every layer is a :class:`GPUPlainLayerCache` and ``pos`` is on the host."""
    if any(type(L) is not GPUPlainLayerCache for L in layers) or is_device(pos) and not isinstance(pos, np.ndarray):
        return False
    pos_h = np.asarray(pos)
    pd = positions(pos_h)
    qd, kd, vd = to_device(q), to_device(k), to_device(v)
    # the sequences' decode rows: one store and one attention launch for all (ops/gpu/batch_attention.py), the
    # rings found in a table made once per batch composition; a prompt chunk goes alone, as before
    spec = layers[0].spec
    together = not spec.v_in_k and batch_attn.fits(spec.n_head, spec.n_head_kv, spec.head_dim)  # (its table: dense V rows)
    rings: list[GPUPlainLayerCache] = []
    rows: list[int] = []
    n_slots = 0
    with device_out(out) as od:
        for i, L in enumerate(layers):
            lo, hi = bounds[i], bounds[i + 1]
            L.note_positions(pos_h[lo:hi])
            if together and hi - lo <= DECODE_MAX_TOKENS:
                rings += [L] * (hi - lo)
                rows += range(lo, hi)
                n_slots = max(n_slots, L.decode_slots())
                continue
            attn.kv_store(kd[lo:hi], vd[lo:hi], pd[lo:hi], L.k, L.v_store, L.pos)
            L.attend(qd[lo:hi], pd[lo:hi], od[lo:hi], L.spec, alibi=L.alibi, sinks=L.sinks)
        if rows:
            t = batch_attn.table(rings, rows)
            batch_attn.kv_store(kd, vd, pd, t)
            batch_attn.attend_decode(qd, pd, t, n_slots, spec.window, spec.scale, spec.softcap, od,
                                     alibi=layers[0].alibi, sinks=layers[0].sinks)  # fmt: skip
    return True


def make_gpu_plain_cache(specs: list[LayerSpec], n_ctx: int, n_batch: int) -> list[LayerCache]:
    """One :class:`GPUPlainLayerCache` per layer spec (capacities as ``make_plain_cache``; a ``GPUSharedLayerCache``
    where it reads another's)."""
    layers: list[LayerCache] = []
    for spec in specs:
        if spec.kv_from >= 0:  # (Gemma 3n's, Gemma 4's K/V sharing: cache/gpu_shared.py)
            from .gpu_shared import GPUSharedLayerCache

            layers.append(GPUSharedLayerCache(spec, layers[spec.kv_from]))
            continue
        layers.append(GPUPlainLayerCache(spec, ring_capacity(spec, n_ctx, n_batch)))  # (Llama 4's chunks a ring too)
    return layers
