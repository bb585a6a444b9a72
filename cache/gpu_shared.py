"""K/V sharing on the GPU: cache/plain.py's :class:`~.plain.SharedLayerCache` over a :class:`~.gpu_plain.GPUPlainLayerCache`.

Gemma 3n's and Gemma 4's last layers compute no K/V: each attends over the cache of an earlier layer of its kind
(``LayerSpec.kv_from``), which that layer, earlier in the same step, has already filled with the step's tokens.
This layer stores nothing and keeps nothing: its queries run through the source's ring with its own spec's
window, scale and soft-cap.  In a captured decode step its launches depend on what the source's do (the slots a
decode step spans), so its graph key is the source's.
"""

from __future__ import annotations

import numpy as np

from ..ops.gpu import kernels as K
from ..ops.gpu.arrays import device_out, is_device, positions, to_device
from .base import LayerCache, LayerSpec, SharedKVLayerCache
from .gpu_plain import GPUPlainLayerCache
from .plain import SharedLayerCache


class GPUSharedHooks:
    """The graph and session hooks every GPU layer that shares K/V has (this module's, and
    cache/gpu_shared_compressed.py's): nothing of its own to plan, snapshot or hold; its session form is ``HOST``, the
    CPU's sharing layer over the host copy of the source."""

    HOST: type  # (the CPU's twin: plain.SharedLayerCache, shared_compressed.SharedCompressedLayerCache)
    spec: LayerSpec
    source: LayerCache

    def graph_step(self, p: int) -> None:
        return None

    def serve_plan(self, buf: object) -> None:
        """(Nothing to plan: the source's slots are its own.)"""

    def snapshot(self) -> None:
        return None

    def restore(self, snap: None) -> None:
        pass

    # ------------------------------------------------------------ session files (cache/hostcopy.py)
    def to_host(self, moved: dict[int, LayerCache]) -> LayerCache:
        """The CPU's sharing layer over the host copy of the source (made first: it comes earlier)."""
        return self.HOST(self.spec, moved[id(self.source)])

    def load_host(self, src: LayerCache) -> None:
        """Nothing to hold (the source takes its saved K/V); ``src`` must be a sharing layer of the same spec."""
        from .hostcopy import refuse

        if type(src) is not self.HOST or src.spec != self.spec:
            raise refuse(src, self)


class GPUSharedLayerCache(GPUSharedHooks, SharedKVLayerCache):
    """A layer that reads ``source``'s K/V on the device and stores none (``k`` and ``v`` are ignored)."""

    HOST = SharedLayerCache

    def __init__(self, spec: LayerSpec, source: GPUPlainLayerCache) -> None:
        self.spec = spec
        self.source = source

    def update_and_attend(self, q, k, v, pos, out) -> None:
        pos_h = K.runtime().asnumpy(pos) if is_device(pos) else np.asarray(pos)
        with device_out(out) as od:
            self.source.attend(to_device(q), positions(pos_h), od, self.spec)

    # ------------------------------------------------------------ CUDA graphs (runtime/graphs.py)
    def graph_key(self, p: int) -> int:
        """The source's: the slots a decode step at ``p`` spans."""
        return self.source.graph_key(p)
