"""Layers that share K/V (Gemma 3n, Gemma 4) over the GPU's compressed cache: cache/shared_compressed.py on the device.

A sharing layer reads its source's device storage (a :class:`~.gpu_compressed.GPUCompressedLayerCache`) and stores
nothing.  A decode step's queries go into the source's key basis and through the source's decode kernel with this
layer's spec; its launches depend on what the source's do (the slots a step spans, the basis), so in a captured
decode step its graph key is the source's (as cache/gpu_shared.py's over the plain ring).  A prompt chunk attends
over the fp16 rows the source's device prefill gathered for its own chunk (``shared_chunk``, kept on the device with
the basis they were in); a chunk the source took on the host (before its first calibration, or a mixed cache's)
left the CPU's snapshot, which the CPU's code reads on the host.

A source with an eviction policy (a global layer) keeps no chunk, as on the CPU: its sharers' prompt chunks attend over
its stored slots, on the device as the source's own policy prefill does (every slot gathered into fp16, batched GEMMs),
their probabilities handed to the policy there (``Policy.prefill_shared``).  A decode step's kernel writes the sharer's probabilities into the source's ``d_acc`` (free again: the source
added its own into the policy) and they are added into ``Policy.shared_acc`` on the device: array operations a captured
decode step replays, no host decision.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops.gpu import attention as attn
from ..ops.gpu import kernels as K
from ..ops.gpu import kvquant
from ..ops.gpu import qattention as qa
from ..ops.gpu.arrays import device_out, is_device, positions, to_device
from .base import LayerSpec
from .compressed import MAX_DECODE_T
from .gpu_compressed import GPUCompressedLayerCache
from .gpu_shared import GPUSharedHooks
from .shared_compressed import SharedCompressedLayerCache


class GPUSharedCompressedLayerCache(GPUSharedHooks, SharedCompressedLayerCache):
    """A layer that reads ``source``'s compressed K/V on the device and stores none (``k`` and ``v`` are ignored)."""

    HOST = SharedCompressedLayerCache

    def __init__(self, spec: LayerSpec, source: GPUCompressedLayerCache) -> None:
        super().__init__(spec, source)
        # (on the device: references to the rows its prefill gathered anyway, no copy; a policy's source keeps none, as
        # on the CPU: its sharers read its stored slots, whose scores their attention joins)
        source.keep_chunk = source.policy is None
        self.d_sinks = to_device(self._sinks) if self._sinks.size else None

    def update_and_attend(self, q, k, v, pos, out) -> None:
        src, s = self.source, self.spec
        xp = K.runtime().xp
        T = q.shape[0]
        snap = src.shared_chunk
        if T <= MAX_DECODE_T:
            src.shared_chunk = None  # (a prompt chunk's rows are no longer read: free them)
            src._sync()  # (the source's step mirrored its writes already: nothing goes up in a steady step)
            qd = src._device_queries(q)
            p0, p1 = src.d_pools
            pol = src.policy if src.d_acc is not None else None  # (d_acc: a policy that reads probabilities)
            with device_out(out) as od:
                o = od if src.d_rot_v is None else xp.empty((T, s.n_head, s.head_dim_v), np.float32)
                qa.attend_decode_q(
                    qd, positions(pos), src.d_k16, src.d_v16, p0, p1, src.d_luts, src.kv.group,
                    src.d_pos, src.d_logw, s.window, s.scale, s.softcap, o, None if pol is None else src.d_acc, self.d_sinks,
                )  # fmt: skip
                if src.d_rot_v is not None:  # back from the rotated V basis, as the source's decode
                    kvquant.fwht_rows(o, od)
            if pol is not None:  # (on the device, after the source's step: see the module docstring)
                acc = pol.shared_acc()
                acc += src.d_acc
                pol.after_shared()
            return
        ph = K.runtime().asnumpy(pos).astype(np.int32) if is_device(pos) else np.asarray(pos, np.int32)
        if snap is not None and len(snap) == 6 and np.array_equal(snap[0], ph):  # the source's device prefill's rows
            _, db, kbuf, vbuf, kpos, n = snap
            with device_out(out) as od:
                o = od if src.d_rot_v is None else xp.empty((T, s.n_head, s.head_dim_v), np.float32)
                attn.attend_prefill(src._per_head(to_device(q), db.qin), kbuf, vbuf, kpos, n, positions(ph), s.window, s.scale,
                                    s.softcap, o, alibi=None, sinks=self.d_sinks)  # fmt: skip
                if src.d_rot_v is not None:
                    xp.matmul(o, src.d_rot_v, out=od)
            return
        if src.policy is not None and src._on_device and s.window == 0 and not self._alibi.size:
            self._attend_slots_on_device(q, ph, out)
            return
        # the source took its chunk on the host (its snapshot the CPU's), or none matches: the CPU's code, on the host
        oh = np.empty((T, s.n_head, s.head_dim_v), np.float32)
        super()._attend_chunk(np.ascontiguousarray(K.runtime().asnumpy(q) if is_device(q) else q, np.float32), ph, oh)
        out[...] = to_device(oh)

    def _attend_slots_on_device(self, q: Any, ph: np.ndarray, out: Any) -> None:
        """A prompt chunk (positions ``ph``) over the stored slots of a source with a policy, which stored the chunk
        already, on the device: what the CPU's ``_attend_chunk`` computes there (causal by position), as the source's
        device prefill does it (every slot gathered into fp16 once, empty ones masked by position -1; two batched
        GEMMs per KV head group); the probabilities, each group's query heads summed, to ``Policy.prefill_shared``
        (slot by slot, on the device: nothing comes down)."""
        src, s = self.source, self.spec
        xp = src._xp
        T, H, D = q.shape
        n_kv, N = s.n_head_kv, src.N
        gqa = H // n_kv
        src._sync()
        qd = src._device_queries(q).reshape(T, n_kv, gqa, D).transpose(1, 2, 0, 3)  # [n_kv, gqa, T, D] the cache basis
        kbuf = xp.empty((n_kv, N, D), np.uint16)
        vbuf = xp.empty((n_kv, N, s.head_dim_v), np.uint16)
        p0, p1 = src.d_pools
        ids = xp.arange(N, dtype=np.int32)
        qa.gather_f16(src.d_k16, p0, p1, src.d_luts, src.kv.group, ids, kbuf)
        qa.gather_f16(src.d_v16, p0, p1, src.d_luts, src.kv.group, ids, vbuf, values=True)
        kall = kbuf.view(np.float16).astype(np.float32)  # [n_kv, N, D]
        vall = vbuf.view(np.float16).astype(np.float32)
        sc = xp.matmul(qd, kall[:, None].transpose(0, 1, 3, 2)) * np.float32(s.scale)  # [n_kv, gqa, T, N]
        if s.softcap > 0:
            sc = np.float32(s.softcap) * xp.tanh(sc / np.float32(s.softcap))
        if src.logw.size:  # KeepKV: a merged slot stands for several tokens
            sc = sc + src.d_logw[:, None, None, :]
        kpos = src.d_pos[:, None, None, :]  # [P, 1, 1, N]
        see = (kpos >= 0) & (kpos <= positions(ph)[None, None, :, None])
        sc = xp.where(see, sc, np.float32(-np.inf))
        # (a row may see no slot: without sinks, a budget under the chunk evicts its first tokens before this reads them)
        mx = sc.max(axis=-1, keepdims=True)
        mx = xp.where(xp.isfinite(mx), mx, np.float32(0.0))
        e = xp.where(see, xp.exp(sc - mx), np.float32(0.0))
        den = e.sum(axis=-1, keepdims=True)
        if self.d_sinks is not None:  # a sink's share joins each denominator, as the CPU's (exponent clamped at 80)
            den = den + xp.exp(xp.minimum(self.d_sinks.reshape(n_kv, gqa, 1, 1) - mx, np.float32(80.0)))
        pr = e / xp.maximum(den, np.float32(1e-30))  # [n_kv, gqa, T, N]
        o = xp.matmul(pr, vall[:, None]).transpose(2, 0, 1, 3).reshape(T, H, s.head_dim_v)
        with device_out(out) as od:
            if src.d_rot_v is None:
                od[...] = o
            else:  # back from the rotated V basis
                xp.matmul(o, src.d_rot_v, out=od)
        pol = src.policy
        if pol.needs_probs:
            probs = pr.sum(axis=1)  # [n_kv, T, N]
            every = np.arange(N, dtype=np.int64)  # (an empty slot's column is 0: nothing added)
            for h in range(n_kv):
                pol.prefill_shared(h, probs[h], every)

    # ------------------------------------------------------------ CUDA graphs (runtime/graphs.py)
    def graph_key(self, p: int) -> Any:
        """The source's: the slots a decode step at ``p`` spans and its key basis.  None (not captured) where the
        runtime records no array operations in a capture (the emulator's): the queries go into the source's basis by a
        CuPy product, which the source's own steps do inside its push kernel."""
        return self.source.graph_key(p) if getattr(K.runtime(), "records_xp", False) else None
