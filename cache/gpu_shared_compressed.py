"""Layers that share K/V (Gemma 3n, Gemma 4) over the GPU's compressed cache: cache/shared_compressed.py on the device.

A sharing layer reads its source's device storage (a :class:`~.gpu_compressed.GPUCompressedLayerCache`) and stores
nothing.  A decode step's queries go into the source's key basis and through the source's decode kernel with this
layer's spec; its launches depend on what the source's do (the slots a step spans, the basis), so in a captured
decode step its graph key is the source's (as cache/gpu_shared.py's over the plain ring).  A prompt chunk attends
over the fp16 rows the source's device prefill gathered for its own chunk (``shared_chunk``, kept on the device with
the basis they were in); a chunk the source took on the host (before its first calibration, or a mixed cache's)
left the CPU's snapshot, which the CPU's code reads on the host.
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
        source.keep_chunk = True  # (on the device: references to the rows its prefill gathered anyway, no copy)
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
            with device_out(out) as od:
                o = od if src.d_rot_v is None else xp.empty((T, s.n_head, s.head_dim_v), np.float32)
                qa.attend_decode_q(
                    qd, positions(pos), src.d_k16, src.d_v16, p0, p1, src.d_luts, src.kv.group,
                    src.d_pos, src.d_logw, s.window, s.scale, s.softcap, o, None, self.d_sinks,
                )  # fmt: skip
                if src.d_rot_v is not None:  # back from the rotated V basis, as the source's decode
                    kvquant.fwht_rows(o, od)
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
        # the source took its chunk on the host (its snapshot the CPU's), or none matches: the CPU's code, on the host
        oh = np.empty((T, s.n_head, s.head_dim_v), np.float32)
        super()._attend_chunk(np.ascontiguousarray(K.runtime().asnumpy(q) if is_device(q) else q, np.float32), ph, oh)
        out[...] = to_device(oh)

    # ------------------------------------------------------------ CUDA graphs (runtime/graphs.py)
    def graph_key(self, p: int) -> Any:
        """The source's: the slots a decode step at ``p`` spans and its key basis.  None (not captured) where the
        runtime records no array operations in a capture (the emulator's): the queries go into the source's basis by a
        CuPy product, which the source's own steps do inside its push kernel."""
        return self.source.graph_key(p) if getattr(K.runtime(), "records_xp", False) else None
