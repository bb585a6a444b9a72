"""Batched decode steps on the GPU replayed from captured CUDA graphs: one graph per batch of caches.

A batch of decode steps (a server's parallel slots, ``Engine.forward_batch``)
launches what one step launches, its store and attention once a layer for all
the sequences (cache/gpu_plain.py ``batch_update_and_attend``, the rings found
in a table made once per batch: ops/gpu/batch_attention.py): for a small model the host's
launching sets the pace, as for one step (runtime/graphs.py), and an eager
batch of two would be slower than two replayed steps.  So a batch of one-token
steps is captured too, and replayed while the same caches decode together:
the tokens and positions are read from a device buffer the host refills before
each replay (one small upload), every cache's K/V pointers and attended slots
are the graph's.  The key is the batch (its caches, in order) and each layer's
``graph_key`` (the plain ring's slots attended, which move every ``DECODE_CHUNK``
tokens), so the sequences of a server's slots, decoding together, capture
anew about once per ``DECODE_CHUNK / B`` steps.

Only batches whose every layer is the plain fp16 ring take graphs (its step
needs no host plan, and storing a step again changes nothing, so a capture's
check replays it in place); the compressed cache's batches, a model with a
step key of its own (M-RoPE's shift) and a debug hook decode eagerly.  (What
stands in the way of the compressed cache's: its step is not idempotent (tokens
move between its pools), so a capture's check needs every sequence's layers
snapshotted and restored; its slots are planned on the host each step
(``graph_step``), so a replay needs n_seq x n_layer plans in the input buffer,
served to each layer while capturing (``serve_plan``) as runtime/graphs.py does
for one; and its attention launches per sequence, through qattention.cu.)  A
capture is checked as runtime/graphs.py checks one: a replay must give the
eager step's logits, else batched graphs are off for the engine (one line on
stderr) and batches decode eagerly; one-sequence steps keep their graphs.
"""

from __future__ import annotations

import sys
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from ..cache.base import KVCache
from ..cache.gpu_plain import GPUPlainLayerCache
from ..ops.gpu.arrays import serve_positions
from .graphs import DecodeGraphs

MAX_GRAPHS = 4  # captured batches kept (a server's slots decoding together: one per batch and span of slots)


class BatchDecodeGraphs:
    """Batches of one-token decode steps, captured and replayed (see the module docstring); graphs on and off with
    the engine's :class:`~.graphs.DecodeGraphs` ``one``, and off alone after a failed capture."""

    def __init__(self, one: DecodeGraphs, n_vocab: int) -> None:
        self.one = one
        self.model, self.rt = one.model, one.rt
        self.n_vocab = n_vocab
        self.enabled = True
        self.width = 0  # the widest batch the buffers below take (grown as wider batches come)
        self.h_in = self.d_in = self.d_logits = None  # the batch's token ids, then their positions; its logits
        self.graphs: OrderedDict[tuple, tuple[list[weakref.ref], Any]] = OrderedDict()
        self.n_captures = 0
        self.n_replays = 0

    def decode(self, caches: list[KVCache], mux: KVCache, tokens: np.ndarray, pos: np.ndarray, logits: Any,
               eager: Callable[[], None]) -> bool:  # fmt: skip
        """The batch's decode steps (``tokens`` [B] at ``pos`` [B], one each, ``mux`` the caches' batch) with the
        logits into the device array ``logits`` [B, n_vocab]: replayed, or run by ``eager()`` and captured.  False:
        not a batch graphs take (the caller runs it eagerly)."""
        key = self._key(caches, pos)
        if key is None:
            return False
        B = len(caches)
        self._fit(B)
        entry = self.graphs.get(key)
        if entry is not None and all(r() is c for r, c in zip(entry[0], caches)):
            self.graphs.move_to_end(key)
            self._replay(entry[1], tokens, pos)
            logits[...] = self.d_logits[:B]
            self.n_replays += 1
            return True
        eager()
        self._capture(caches, mux, key, tokens, pos, logits, eager)
        return True

    def _key(self, caches: list[KVCache], pos: np.ndarray) -> tuple | None:
        one = self.one
        if not (self.enabled and one.enabled) or self.model.debug_hook is not None or hasattr(self.model, "decode_graph_key"):
            return None
        if any(type(layer) is not GPUPlainLayerCache for c in caches for layer in c.layers):
            return None
        slots = tuple(layer.graph_key(int(p)) for c, p in zip(caches, pos.tolist()) for layer in c.layers)
        return (tuple(id(c) for c in caches), *slots)

    def _fit(self, B: int) -> None:
        """Buffers for batches of ``B``: 4 rows, grown to the next power of two, dropping the graphs that read the old
        ones (a buffer for ``n_batch`` rows of logits would hold ~150 MB of a large vocabulary's)."""
        if B <= self.width:
            return
        self.graphs.clear()
        self.width = w = max(4, 1 << (B - 1).bit_length())
        xp = self.model.be.xp
        self.h_in = np.zeros(2 * w, np.int32)
        self.d_in = xp.zeros(2 * w, np.int32)
        self.d_logits = xp.zeros((w, self.n_vocab), np.float32)

    def _replay(self, graph: Any, tokens: np.ndarray, pos: np.ndarray) -> None:
        B = len(tokens)
        h = self.h_in[: 2 * B]
        h[:B], h[B:] = tokens, pos
        if hasattr(self.d_in, "set"):
            self.d_in[: 2 * B].set(h)  # CuPy: one host-to-device copy
        else:  # the emulator: device arrays are numpy's
            self.d_in[: 2 * B] = h
        graph.launch()

    def _capture(self, caches: list[KVCache], mux: KVCache, key: tuple, tokens: np.ndarray, pos: np.ndarray, want: Any,
                 eager: Callable[[], None]) -> None:  # fmt: skip
        """Capture the batch's step, which ``eager()`` just ran, writing ``want``, and keep it if a replay gives the
        same logits (the plain ring's step stores what it stored again: nothing to put back first)."""
        B = len(caches)
        pos_h = np.ascontiguousarray(pos, np.int32)
        tok_d, pos_d = self.d_in[:B], self.d_in[B : 2 * B]

        def step() -> None:
            serve_positions(pos_h, pos_d)  # the RoPE and every sequence's cache read the positions from the buffer
            self.model.forward(tok_d, pos_h, mux, np.arange(B), self.d_logits[:B])

        try:
            graph = self.rt.capture(step)
        except Exception as e:  # noqa: BLE001 - any failure: batches stay eager
            self._off(f"capturing a batch of decode steps failed ({type(e).__name__}: {e})")
            return
        finally:
            serve_positions(None, None)
        self._replay(graph, tokens, pos)
        got, ref = self.rt.asnumpy(self.d_logits[:B]), self.rt.asnumpy(want)
        err = float(np.abs(got - ref).max()) / max(float(np.abs(ref).max()), 1e-30)
        if not err <= 1e-5:  # (NaN fails too)
            eager()  # (what the eager step stored and wrote, again)
            self._off(f"a replayed batch of decode steps differs from the eager one by {err:.1e}")
            return
        if len(self.graphs) >= MAX_GRAPHS:
            self.graphs.popitem(last=False)
        self.graphs[key] = ([weakref.ref(c) for c in caches], graph)
        self.n_captures += 1

    def _off(self, why: str) -> None:
        self.enabled = False
        self.graphs.clear()
        print(f"kvrun: CUDA graphs off for batches of sequences, decoding them eagerly: {why}", file=sys.stderr)
