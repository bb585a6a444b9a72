"""Gemma 4's assistant (llama.cpp's ``gemma4-assistant``): the MTP draft head Google ships beside a Gemma 4 as a GGUF
of its own (``mtp-gemma-4-*.gguf``), for speculative decoding with ``-md``.

It is no language model alone: each step reads three things of its target's, as llama.cpp's graph
(src/models/gemma4-assistant.cpp) and its draft loop (common/speculative.cpp, ``draft-mtp`` with shared memory) do:

- the target's token embedding of the token it drafts after, times sqrt(target width);
- the target's post-final-norm hidden state ``h`` (llama.cpp's ``h_nextn``) of the position before, and later its own
  ``h_next`` (``nextn.post_projection`` of its normed output, back to the target's width);
- the target's KV cache: its blocks compute Q alone and attend over the target's last window layer (window blocks) or
  its last global layer (global blocks), storing nothing.

The two embeddings side by side go through ``nextn.pre_projection`` to the head's own width, then Gemma 4's blocks
(sandwich norms, per-head Q norm, rope, unscaled attention, GELU-gated FFN, ``layer_output_scale``), the final norm, and
the head's own ``token_embd`` as the output (no soft-cap).  Every drafted token sits at the same position: the one
after what the target's cache holds (Transformers' Gemma 4 assistant, as llama.cpp has it).

On ``--device gpu`` the head runs beside a target on the device: its blocks are backend ops on device buffers, Q
attending over the target's device cache, and the target's hidden rows stay on the device, stored at their positions
(read from a device buffer: ops/gpu/ssm.py's ``store``) in a ring each sequence keeps, so the target's decode step,
captured as a CUDA graph and replayed, files its row and brings nothing down.  Drafting is host-driven, as llama.cpp's
draft loop: each step's logits come down once, where the loop picks its token; ``h_next`` stays on the device.  Each
op of a step writes a fixed one-row buffer of the head's, so a drafted token allocates no device memory.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, KvrunError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from ..ops.cpu.topk import draft_pick
from ..ops.gpu import ssm as gpu_ssm  # (the device rows' store; importing ops.gpu loads no CuPy)
from ..ops.gpu.arrays import positions, to_device
from .common import TENSOR_NAMES, Buffers, Model, WeightLoader
from .gemma3n import Gemma3nModel
from .gemma4 import gemma4_ropes

TENSOR_NAMES.update({  # (layer_out_scale as models/gemma4.py names it)
    "layer_out_scale": "blk.{i}.layer_output_scale.weight",
    "nextn_pre": "nextn.pre_projection.weight",
    "nextn_post": "nextn.post_projection.weight",
})

MAX_CACHES = 64  #: the sequences (caches) whose target rows are kept: a server's slots and sessions, at most this many
TOP_K = 10  #: llama.cpp's MTP draft sampler: top-k 10, its first candidate's probability among them against p_min


@dataclass
class AssistantBlock:
    """One of the head's blocks: Gemma 4's, less K and V (read from the target's cache)."""

    swa: bool
    head_dim: int
    attn_norm: Any
    wq: Weight
    q_norm: Any
    wo: Weight
    attn_post_norm: Any
    ffn_norm: Any
    w_gate: Weight
    w_up: Weight
    w_down: Weight
    ffn_post_norm: Any
    out_scale: float


class Gemma4AssistantModel(Model):
    archs = ("gemma4-assistant",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        Model.__init__(self, g, cfg, backend, n_ctx, n_batch)
        self.on_device = backend.name != "cpu"  # (the CPU's arithmetic is host numpy around the backend's ops)
        #: on a device, each op's output of a draft step (one token): allocated at the first step, written by each after
        self.step_buf = Buffers(1, backend.zeros)
        c = cfg
        w = WeightLoader(g, backend)
        self.n_embd_out = int(g.arch_get("embedding_length_out", c.n_embd) or c.n_embd)
        if self.n_embd_out == c.n_embd:
            raise GGUFError(f"{g.path}: a Gemma 4 assistant's embedding_length_out carries the target's width; it is missing")
        self.head_dim_swa = int(g.arch_get("attention.key_length_swa", c.head_dim))
        self.tok_embd = w.matrix("tok_embd")  # (the output head: tied)
        self.output_norm = w.vector("output_norm")
        self.pre_proj = w.matrix("nextn_pre")
        self.post_proj = w.matrix("nextn_post")
        self.blocks = [self.load_block(w, i) for i in range(c.n_layer)]
        self.rope_global, self.rope_local = gemma4_ropes(g, w, c, n_ctx, all(b.swa for b in self.blocks))  # (Gemma 4's)

    def load_block(self, w: WeightLoader, i: int) -> AssistantBlock:
        swa = self.cfg.is_swa(i)
        return AssistantBlock(
            swa=swa,
            head_dim=self.head_dim_swa if swa else self.cfg.head_dim,
            attn_norm=w.vector("attn_norm", i),
            wq=w.matrix("wq", i),
            q_norm=w.vector("q_norm", i),
            wo=w.matrix("wo", i),
            attn_post_norm=w.vector("attn_post_norm", i),
            ffn_norm=w.vector("ffn_norm", i),
            w_gate=w.matrix("w_gate", i),
            w_up=w.matrix("w_up", i),
            w_down=w.matrix("w_down", i),
            ffn_post_norm=w.vector("ffn_post_norm", i),
            out_scale=float(s[0]) if (s := w.host_vector("layer_out_scale", i, required=False)) is not None else 1.0,
        )

    # (on the CPU Gemma 3n's host helpers: numpy rows through the backend's linear, RMSNorm and GELU; on a device the
    # same ops into the step's buffer ``name``: one row, written again by the next step)
    def out(self, name: str, *dims: int) -> Any:
        """The device buffer ``name`` ``[1, *dims]`` of a draft step (:attr:`step_buf`)."""
        return self.step_buf.get(name, 1, *dims)

    def linear(self, w: Weight, x: Any, name: str) -> Any:
        if not self.on_device:
            return Gemma3nModel.linear(self, w, x)
        out = self.out(name, w.n_rows)
        self.be.linear(w, x, out)
        return out

    def rms_norm(self, x: Any, w: Any, name: str) -> Any:
        if not self.on_device:
            return Gemma3nModel.rms_norm(self, x, w)
        out = self.out(name, *x.shape[1:])
        self.be.rms_norm(x, w, self.cfg.norm_eps, out)
        return out

    def gelu(self, x: Any, name: str) -> Any:
        if not self.on_device:
            return Gemma3nModel.gelu(self, x)
        out = self.out(name, *x.shape[1:])
        self.be.gelu(x, out)
        return out

    def add(self, x: Any, y: Any) -> Any:
        """``x + y``: a new host array on the CPU; on a device ``x`` itself, added to in place."""
        if not self.on_device:
            return x + y
        self.be.add(x, y)
        return x

    def layer_specs(self) -> list[LayerSpec]:
        return []  # (it keeps no cache: it reads its target's)

    @classmethod
    def cache_widths(cls, cfg: ModelConfig, g: GGUFFile, bits: int = 16) -> tuple[int, ...]:
        """None of its layers keeps K/V (`kvrun info`'s KV cost: 0): its blocks read the target's cache."""
        return (0,) * cfg.n_layer

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        raise KvrunError("a gemma4-assistant file is a draft head, not a model: give it with -md beside its Gemma 4")

    # ------------------------------------------------------------------ the draft side
    def sources(self, target: Model) -> list[int]:
        """The target layer whose K/V each block reads (llama.cpp: the target's last window layer for a window block,
        its last global layer for a global one), after the target's own K/V sharing; a one-line error where the
        head does not fit ``target``."""
        t, c = target.cfg, self.cfg
        if t.arch != "gemma4" or t.n_embd != self.n_embd_out:
            raise KvrunError(f"the Gemma 4 assistant fits a gemma4 model {self.n_embd_out} wide; the target is "
                             f"{t.arch} {t.n_embd} wide: give the assistant made for this model")  # fmt: skip
        out = []
        for b in self.blocks:
            il = t.n_layer - 2 if b.swa else t.n_layer - 1
            L = target.layers[il]
            if L.swa != b.swa or L.head_dim != b.head_dim or c.n_head % L.n_head_kv:
                raise KvrunError(f"the Gemma 4 assistant's {'window' if b.swa else 'global'} heads ({b.head_dim} wide) do not "
                                 f"fit its target's layer {il}: give the assistant made for this model")  # fmt: skip
            out.append(target.kv_source(il))
        return out

    def step(self, token: int, h: Any, pos: int, target: Model, cache: KVCache, sources: list[int]) -> tuple[np.ndarray, Any]:
        """One draft step: the logits after ``token`` and the ``h_next`` the next step reads, ``h`` the target's
        hidden state of the position before (or the last step's ``h_next``), ``pos`` the position after the cache's.
        On a device the logits come down (the draft loop picks from them); ``h`` and ``h_next`` stay there, both (the
        emulator's logits too) the step's buffers, which the next step writes again."""
        c, be, n = self.cfg, self.be, self.n_embd_out
        if self.on_device:
            e = self.out("embd", n)
            be.get_rows(target.tok_embd, np.array([token], np.int32), e)
            be.scale(e, float(np.float32(math.sqrt(n))))
            xh = self.out("embd_h", 2 * n)
            self.be.copy(e, xh[:, :n])
            self.be.copy(h.reshape(1, -1), xh[:, n:])
        else:
            e = np.empty((1, n), np.float32)
            be.get_rows(target.tok_embd, np.array([token], np.int32), e)
            xh = np.concatenate([e * np.float32(math.sqrt(n)), h.reshape(1, -1).astype(np.float32)], axis=1)
        x = self.linear(self.pre_proj, xh, "x")
        p = np.array([pos], np.int32)
        for b, src in zip(self.blocks, sources):  # (x: the last block's ffn_post, read before this one writes it again)
            xn = self.rms_norm(x, b.attn_norm, "attn_in")
            q3 = self.linear(b.wq, xn, "q").reshape(1, c.n_head, b.head_dim)
            be.rms_norm_heads(q3, b.q_norm, c.norm_eps)
            cos, sin = self.rope_local if b.swa else self.rope_global
            be.rope(q3, p, cos, sin, c.rope_neox)
            layer = cache[src]
            spec = LayerSpec(c.n_head, layer.spec.n_head_kv, b.head_dim, b.head_dim, c.sliding_window if b.swa else 0, 1.0)
            if self.on_device:
                att3 = self.out("attn", c.n_head, b.head_dim)
                layer.attend(q3, positions(p), att3, spec)  # (the device cache's: device queries, positions, output)
            else:
                att3 = np.empty_like(q3)
                layer.attend(np.ascontiguousarray(q3), p, att3, spec)
            a = self.add(self.rms_norm(self.linear(b.wo, att3.reshape(1, -1), "attn_out"), b.attn_post_norm, "attn_post"), x)
            f = self.rms_norm(a, b.ffn_norm, "ffn_in")
            gate, up = self.gelu(self.linear(b.w_gate, f, "gate"), "gelu"), self.linear(b.w_up, f, "up")
            if self.on_device:
                be.mul(gate, up.reshape(-1))  # (one row: up's values over it, element by element)
            else:
                gate = gate * up
            x = self.add(self.rms_norm(self.linear(b.w_down, gate, "ffn_out"), b.ffn_post_norm, "ffn_post"), a)
            if b.out_scale != 1.0:
                if self.on_device:
                    be.scale(x, b.out_scale)
                else:
                    x = x * np.float32(b.out_scale)
        xo = self.rms_norm(x, self.output_norm, "out_norm")
        if self.on_device:
            return be.to_host(self.linear(self.tok_embd, xo, "logits"))[0], self.linear(self.post_proj, xo, "h_next")
        return self.linear(self.tok_embd, xo, "logits")[0], self.linear(self.post_proj, xo, "h_next")[0]

    def drafter(self, target: Any, p_min: float) -> Gemma4AssistantDraft:
        """The draft side for ``target`` (an Engine: runtime/engine.py's ``-md``); a one-line error where it does not fit."""
        return Gemma4AssistantDraft(self, target.model, target.cfg.n_vocab, p_min)


class Gemma4AssistantDraft:
    """Drafts with the head beside its target (``Engine.draft``: ``draft(tokens, k, cache)``, as runtime/speculative.py's
    DraftModel).  It keeps the target's last forward's post-final-norm rows by position (llama.cpp's ``h_nextn``,
    which its target context outputs for every token), handed over by the target's output head through its
    ``hidden_sink`` (models/common.py), so the target's arithmetic is untouched.

    On a device the rows stay there, each sequence's in a ring of its own (:attr:`rings`, row ``position % len``) that
    a kernel stores them into at their positions read from the device, so a decode step captured as a CUDA graph files
    its row on each replay.  The host does not see a replay: it reads the row the last forward at a position filed
    there (the ring outlasts the rows a forward checks and its cache gives back: twice a batch)."""

    def __init__(self, head: Gemma4AssistantModel, target: Model, n_vocab: int, p_min: float) -> None:
        self.head, self.target, self.n_vocab, self.p_min = head, target, n_vocab, p_min
        self.sources = head.sources(target)
        #: id(cache) -> {position: the target's normed hidden row there}, each cache's last forward's rows
        #: (a server's batched forward: each sequence's rows under its own cache, cache/batch.py's bounds)
        self.hidden: dict[int, dict[int, np.ndarray]] = {}
        #: on a device, each sequence's ring of rows by position (fixed: a captured step writes it on each replay)
        self.rings: weakref.WeakKeyDictionary[KVCache, Any] = weakref.WeakKeyDictionary()
        self.n_ring = min(target.n_ctx, 2 * target.n_batch)
        target.hidden_sink = self.keep_rows

    def keep_rows(self, rows: Any, out_rows: np.ndarray, pos: np.ndarray | None, cache: KVCache | None) -> None:
        """The target's ``hidden_sink``: files its forward's normed ``rows`` (batch indices ``out_rows`` at positions
        ``pos``) under each one's sequence's cache, replacing what that cache's last forward left; the caches
        seen longest ago dropped past :data:`MAX_CACHES`."""
        if pos is None or cache is None:  # (Gemma 4's forwards hand both on; nothing to file a row under without)
            return
        if self.head.on_device:
            self._keep_device(rows, np.asarray(out_rows), np.asarray(self.target.be.to_host(pos)), cache)
            return
        rows = np.array(self.target.be.to_host(rows), np.float32, copy=True)
        out_rows = np.asarray(out_rows)
        at = np.asarray(self.target.be.to_host(pos))[out_rows].tolist()
        caches, starts = getattr(cache, "caches", [cache]), np.asarray(getattr(cache, "bounds", [0]))
        owner = np.searchsorted(starts, out_rows, side="right") - 1
        for j in np.unique(owner).tolist():
            mine = np.flatnonzero(owner == j)
            self.hidden.pop(id(caches[j]), None)  # (newest last: the oldest caches' rows go first)
            self.hidden[id(caches[j])] = {at[r]: rows[r] for r in mine.tolist()}
        while len(self.hidden) > MAX_CACHES:
            del self.hidden[next(iter(self.hidden))]

    def _keep_device(self, rows: Any, out_rows: np.ndarray, pos: np.ndarray, cache: KVCache) -> None:
        """:meth:`keep_rows` on a device: each sequence's rows stored by a kernel into its ring at their positions, read
        from the forward's device positions (a captured step's: the buffer each replay refills)."""
        pd, n = positions(pos), rows.shape[1]
        caches, starts = getattr(cache, "caches", [cache]), np.asarray(getattr(cache, "bounds", [0]))
        owner = np.searchsorted(starts, out_rows, side="right") - 1
        for j in np.unique(owner).tolist():
            mine = np.flatnonzero(owner == j)  # (consecutive: out_rows increase)
            at = out_rows[mine]
            if (np.diff(at) == 1).all():  # (a captured step's rows are: a slice of the device positions)
                p = pd[int(at[0]) : int(at[-1]) + 1]
            else:  # (an eager batch's wanted rows apart: their positions uploaded)
                p = to_device(pos[at], np.int32)
            ring = self.rings.get(caches[j])
            if ring is None:
                ring = self.rings[caches[j]] = self.head.be.zeros((self.n_ring, n))
            gpu_ssm.store(rows[int(mine[0]) : int(mine[-1]) + 1], n, 0, n, ring, 0, self.n_ring, p, len(mine))

    def hidden_state(self, cache: KVCache, pos: int) -> np.ndarray | None:
        """The target's post-final-norm row at ``pos`` in ``cache``'s sequence, if its last forward gave it (on a device:
        the row filed last at ``pos``, brought down)."""
        h = self._device_row(cache, pos)
        if h is not None:
            return self.head.be.to_host(h)[0]
        return self.hidden.get(id(cache), {}).get(pos)

    def _device_row(self, cache: KVCache, pos: int) -> Any:
        """On a device, the ring's row ``[1, n]`` filed last at ``pos`` (one of the last :attr:`n_ring` positions below
        the cache's offset); None elsewhere."""
        ring = self.rings.get(cache) if self.head.on_device else None
        if ring is None or not 0 <= pos < cache.offset or cache.offset - pos > self.n_ring:
            return None
        r = pos % self.n_ring
        return ring[r : r + 1]

    def draft(self, tokens: list[int], k: int, cache: KVCache | None = None) -> list[int]:
        """Up to ``k`` tokens after ``tokens`` (the whole text; its last one not yet in ``cache``, the target's), each
        step at the position after the cache's, stopping where the head is unsure (llama.cpp's top-10 probability
        against ``--draft-p-min``); none without the target's hidden state of the position before."""
        if cache is None or k <= 0:
            return []
        pos = cache.offset
        h = self._device_row(cache, pos - 1) if self.head.on_device else self.hidden_state(cache, pos - 1)
        if h is None or pos != len(tokens) - 1:
            return []
        out: list[int] = []
        tok = tokens[-1]
        while len(out) < k:
            logits, h = self.head.step(tok, h, pos, self.target, cache, self.sources)
            t, p = draft_pick(logits, TOP_K)
            if p < self.p_min or t >= self.n_vocab:
                break
            out.append(t)
            tok = t
        return out
