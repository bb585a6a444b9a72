"""Decode steps on the GPU replayed from captured CUDA graphs.

A one-token decode step of a small model is ~200 kernel launches (SmolLM2:
213), and on a GPU the host's work before each launch (kvrun's Python, then
CuPy's and the driver's), not the kernels, sets the pace.  With the plain fp16
cache a decode step launches the same kernels with the same arguments for
``DECODE_CHUNK`` (128) tokens at a time (``GPUPlainLayerCache.decode_slots``),
except for the token and its position.  So the step is captured once as a CUDA
graph that reads those two from a device buffer; later steps refill the buffer
(one small upload) and replay the graph (one driver call), and only the host's
bookkeeping of the cache runs in Python.

A capture follows an eager step of the same shape (so every kernel is loaded),
and its first replay must give that step's logits (it stores the same K/V
again, so the cache is unchanged).  Any failure, whether a runtime without
capture, a copy inside the step, or logits that differ, turns graphs off for
the engine with one line on stderr, and decoding goes on eagerly.
``KVRUN_CUDA_GRAPHS=0`` turns them off.  Compressed caches always run eagerly:
their host-side slot planning changes the launches from step to step.
"""

from __future__ import annotations

import os
import sys
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np

from ..cache.base import KVCache
from ..cache.gpu_plain import GPUPlainLayerCache
from ..ops.gpu import kernels as K
from ..ops.gpu.arrays import is_device, serve_positions

MAX_GRAPHS = 4  # captured steps kept (a chat's cache needs one per 128 tokens of context, in turn)


def graphs_wanted() -> bool:
    return os.environ.get("KVRUN_CUDA_GRAPHS", "1") != "0"


class DecodeGraphs:
    """One-token decode steps of a model on the GPU backend, captured and replayed (see the module docstring)."""

    def __init__(self, model: Any, xp: Any, n_vocab: int) -> None:
        self.model = model
        self.rt = K.runtime()
        self.enabled = graphs_wanted() and hasattr(self.rt, "capture")
        self.d_in = xp.zeros(2, np.int32)  # the step's token id and position, refilled before each replay
        self.d_logits = xp.zeros((1, n_vocab), np.float32)
        self.graphs: OrderedDict[tuple, tuple[weakref.ref, Any]] = OrderedDict()
        self.n_captures = 0
        self.n_replays = 0
        self.verify = True  # check a capture's first replay against the eager step (tools that fake launches turn it off)

    def usable(self, cache: KVCache) -> bool:
        """Whether decode steps on ``cache`` may replay graphs: the plain cache, and no debug hook (it copies intermediates down)."""
        return (
            self.enabled
            and self.model.debug_hook is None
            and bool(cache.layers)
            and all(type(layer) is GPUPlainLayerCache for layer in cache.layers)
        )

    def replay(self, cache: KVCache, token: int, pos: int, dst: Any) -> bool:
        """The decode step of ``token`` at ``pos`` from its captured graph, logits into ``dst``
        [1, n_vocab]; False when none is captured for it (the caller runs it eagerly)."""
        pos_h = np.array([pos], np.int32)
        for layer in cache.layers:  # (an eager step after a miss notes the same again: no harm)
            layer.note_positions(pos_h)
        key = self._key(cache)
        entry = self.graphs.get(key)
        if entry is None or entry[0]() is not cache:
            return False
        self.graphs.move_to_end(key)
        self._upload(token, pos)
        entry[1].launch()
        self._logits_into(dst)
        self.n_replays += 1
        return True

    def capture(self, cache: KVCache, token: int, pos: int, dst: Any) -> None:
        """Capture the decode step of ``token`` at ``pos``, which just ran eagerly and wrote ``dst``,
        and keep it if its replay gives the same logits."""
        key = self._key(cache)
        pos_h = np.array([pos], np.int32)
        tok_d, pos_d = self.d_in[:1], self.d_in[1:]

        def step() -> None:
            serve_positions(pos_h, pos_d)  # the layers' RoPE and cache read the position from the buffer
            self.model.forward(tok_d, pos_h, cache, np.arange(1), self.d_logits)

        try:
            graph = self.rt.capture(step)
        except Exception as e:  # noqa: BLE001 - any failure: stay eager
            self._off(f"capturing a decode step failed ({type(e).__name__}: {e})")
            return
        finally:
            serve_positions(None, None)
        if self.verify:
            self._upload(token, pos)
            graph.launch()  # the same token at the same position: stores the same K/V again
            got = self.rt.asnumpy(self.d_logits)
            want = self.rt.asnumpy(dst) if is_device(dst) else np.asarray(dst)
            err = float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-30)
            if not err <= 1e-5:  # (NaN fails too)
                self._off(f"a replayed decode step differs from the eager one by {err:.1e}")
                return
        if len(self.graphs) >= MAX_GRAPHS:
            self.graphs.popitem(last=False)
        self.graphs[key] = (weakref.ref(cache), graph)
        self.n_captures += 1

    @staticmethod
    def _key(cache: KVCache) -> tuple:
        """What a captured step depends on besides its buffers: the cache, and each layer's decode slots
        (once the step's position is noted)."""
        return (id(cache), *(layer.decode_slots() for layer in cache.layers))

    def _upload(self, token: int, pos: int) -> None:
        h = np.array([token, pos], np.int32)
        if hasattr(self.d_in, "set"):
            self.d_in.set(h)  # CuPy: one host-to-device copy
        else:  # the emulator: device arrays are numpy's
            self.d_in[...] = h

    def _logits_into(self, dst: Any) -> None:
        if is_device(dst):
            dst[...] = self.d_logits
        else:
            dst[...] = self.rt.asnumpy(self.d_logits)

    def _off(self, why: str) -> None:
        self.enabled = False
        self.graphs.clear()
        print(f"kvrun: CUDA graphs off, decoding eagerly: {why}", file=sys.stderr)
