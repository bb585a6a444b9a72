"""Decode steps on the GPU replayed from captured CUDA graphs.

A one-token decode step of a small model is ~200 kernel launches (SmolLM2:
213-243), and on a GPU the host's work before each launch (kvrun's Python, then
CuPy's and the driver's), not the kernels, sets the pace.  So the step is
captured once as a CUDA graph and replayed: one driver call.  A graph keeps
every launch's pointers and scalars, so what changes from step to step is read
from one device buffer the host refills before each replay (one small upload):
the token, its position, and each layer's slots where the host plans them.

Each layer cache that can take part says so (the duck-typed protocol below).
With the plain fp16 cache a step launches the same kernels with the same
arguments for ``DECODE_CHUNK`` (128) tokens at a time
(``GPUPlainLayerCache.decode_slots``).  The compressed cache replays in its
policy-free steady state: the host plans the slots (``plan_push``, from the
positions alone) and the push kernel reads them from the buffer; its decode
attention always spans every slot.  With an eviction policy it replays once
the fp16 window and every pool are full: each step then spills, picks a victim
in each pool and merges on the device, and the policy's hooks are array
operations the capture records too (CuPy's are kernels), so only the window
slot changes, planned by the host into the buffer as above.  Policies whose
hooks cannot be captured yet (``Policy.capturable``: KeyDiff before its first
token; no hook sorts on the device, which CuPy does with Thrust, outside what a
graph can hold: SnapKV's ranks come from a kernel), runtimes that
cannot record array operations (the plain emulator, whose ``xp`` is numpy) and
the steps before the cache is calibrated or full decode eagerly: their launches
follow the data.

    graph_key(p) -> hashable | None   the step at p's launches (None: eager)
    graph_step(p) -> (j, jq, jc) | None   the host's part of a replay: the slots
    serve_plan(buf | None)            capturing: read the slots from buf
    snapshot() / restore(snap)        what a step changes, kept and put back

A capture follows an eager step of the same shape (so every kernel is loaded).
Then the state before that step is put back and the step is replayed: it must
give the eager step's logits (the plain cache's step is idempotent, so nothing
needs putting back).  Any failure, whether a runtime without capture, a copy
inside the step, or logits that differ, turns graphs off for the engine with
one line on stderr, puts the state back and runs the step eagerly again.
``KVRUN_CUDA_GRAPHS=0`` turns them off.
"""

from __future__ import annotations

import os
import sys
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from ..cache.base import KVCache
from ..ops.gpu import kernels as K
from ..ops.gpu.arrays import is_device, serve_positions

MAX_GRAPHS = 4  # captured steps kept (a chat's plain cache needs one per 128 tokens of context, in turn)
PLAN = 3  # int32s of a layer's slots in the input buffer (kvquant.cu kv_decode_push: j, jq, jc; kv_policy_push: j)


def graphs_wanted() -> bool:
    return os.environ.get("KVRUN_CUDA_GRAPHS", "1") != "0"


class DecodeGraphs:
    """One-token decode steps of a model on the GPU backend, captured and replayed (see the module docstring)."""

    def __init__(self, model: Any, xp: Any, n_vocab: int, n_layer: int) -> None:
        self.model = model
        self.rt = K.runtime()
        self.enabled = graphs_wanted() and hasattr(self.rt, "capture")
        # the step's token id, position, then each layer's slots: refilled before each replay
        self.h_in = np.zeros(2 + PLAN * n_layer, np.int32)
        self.d_in = xp.zeros(2 + PLAN * n_layer, np.int32)
        self.d_logits = xp.zeros((1, n_vocab), np.float32)
        self.graphs: OrderedDict[tuple, tuple[weakref.ref, Any]] = OrderedDict()
        self.n_captures = 0
        self.n_replays = 0
        self.verify = True  # check a capture's first replay against the eager step (tools that fake launches turn it off)

    def decode(self, cache: KVCache, token: int, pos: int, dst: Any, eager: Callable[[], None]) -> bool:
        """The decode step of ``token`` at ``pos``, logits into ``dst`` [1, n_vocab]: replayed from its
        captured graph, or run by ``eager()`` and captured.  False: not a step graphs take (the caller
        runs it eagerly)."""
        key = self._key(cache, pos)
        if key is None:
            return False
        entry = self.graphs.get(key)
        if entry is not None and entry[0]() is cache:
            self.graphs.move_to_end(key)
            self._replay(cache, entry[1], token, pos)
            self._logits_into(dst)
            self.n_replays += 1
            return True
        snaps = [layer.snapshot() for layer in cache.layers] if self.verify else None
        eager()
        self._capture(cache, key, token, pos, dst, snaps, eager)
        return True

    def _key(self, cache: KVCache, pos: int) -> tuple | None:
        """What a captured step at ``pos`` depends on besides its buffers: the cache and each layer's key; None
        when graphs are off or some layer cannot take a captured step now (a debug hook copies intermediates down)."""
        if not self.enabled or self.model.debug_hook is not None or not cache.layers:
            return None
        keys = []
        for layer in cache.layers:
            k = layer.graph_key(pos) if hasattr(layer, "graph_key") else None
            if k is None:
                return None
            keys.append(k)
        if hasattr(self.model, "decode_graph_key"):  # what the model's own step bakes in (an M-RoPE shift: models/mrope_text.py;
            # T5's encoded prompt, whose cross-attention K/V a step reads: models/t5.py)
            keys.append(self.model.decode_graph_key(cache, pos))
        return (id(cache), *keys)

    def _replay(self, cache: KVCache, graph: Any, token: int, pos: int) -> None:
        h = self.h_in
        h[0], h[1] = token, pos
        for i, layer in enumerate(cache.layers):
            plan = layer.graph_step(pos)
            if plan is not None:
                h[2 + PLAN * i : 2 + PLAN * (i + 1)] = plan
        if hasattr(self.d_in, "set"):
            self.d_in.set(h)  # CuPy: one host-to-device copy
        else:  # the emulator: device arrays are numpy's
            self.d_in[...] = h
        graph.launch()

    def _capture(self, cache: KVCache, key: tuple, token: int, pos: int, dst: Any, snaps: list | None, eager: Callable[[], None]) -> None:
        """Capture the decode step of ``token`` at ``pos``, which just ran eagerly and wrote ``dst``, and keep it if a
        replay from the state before that step (``snaps``) gives the same logits."""
        pos_h = np.array([pos], np.int32)
        tok_d, pos_d = self.d_in[:1], self.d_in[1:2]

        def step() -> None:
            serve_positions(pos_h, pos_d)  # the layers' RoPE and cache read the position from the buffer
            for i, layer in enumerate(cache.layers):
                layer.serve_plan(self.d_in[2 + PLAN * i : 2 + PLAN * (i + 1)])
            self.model.forward(tok_d, pos_h, cache, np.arange(1), self.d_logits)

        try:
            graph = self.rt.capture(step)
        except Exception as e:  # noqa: BLE001 - any failure: stay eager
            self._off(f"capturing a decode step failed ({type(e).__name__}: {e})")
            return
        finally:
            serve_positions(None, None)
            for layer in cache.layers:
                layer.serve_plan(None)
        if snaps is not None:
            for layer, snap in zip(cache.layers, snaps):
                layer.restore(snap)
            self._replay(cache, graph, token, pos)
            got = self.rt.asnumpy(self.d_logits)
            want = self.rt.asnumpy(dst) if is_device(dst) else np.asarray(dst)
            err = float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-30)
            if not err <= 1e-5:  # (NaN fails too)
                for layer, snap in zip(cache.layers, snaps):
                    layer.restore(snap)
                eager()  # the state the eager step left, again
                self._off(f"a replayed decode step differs from the eager one by {err:.1e}")
                return
        if len(self.graphs) >= MAX_GRAPHS:
            self.graphs.popitem(last=False)
        self.graphs[key] = (weakref.ref(cache), graph)
        self.n_captures += 1

    def _logits_into(self, dst: Any) -> None:
        if is_device(dst):
            dst[...] = self.d_logits
        else:
            dst[...] = self.rt.asnumpy(self.d_logits)

    def _off(self, why: str) -> None:
        self.enabled = False
        self.graphs.clear()
        print(f"kvrun: CUDA graphs off, decoding eagerly: {why}", file=sys.stderr)
