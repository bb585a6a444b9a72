"""EAGLE-3 draft heads (llama.cpp's ``eagle3``): a one-block draft that drafts from three of its target's layers'
hidden states, for speculative decoding with ``-md`` (llama.cpp's ``--spec-type draft-eagle3``).

It is no language model alone.  As llama.cpp's graph (src/models/eagle3.cpp) and its draft loop (common/speculative.cpp,
``draft-eagle3``) run it:

- the encoder: the target's hidden states at the file's three ``target_layers`` (llama.cpp's layer *inputs*: id L is
  the residual stream after layer L - 1, id n_layer the one before the output norm), side by side in the file's order
  (3 * ``target_hidden_size`` wide), RMS-normed by ``enc.output_norm`` where ``norm_before_fc`` says, through ``fc`` to
  the draft's width: g, one row per target position;
- the decoder, at position P, the pair (the token at P + 1, g at P): its token embedding (the draft's own
  ``token_embd``, else the target's) normed by ``attn_norm``, g normed by ``attn_norm_2`` (the checkpoint's
  ``hidden_norm``), the two side by side (2 * n_embd) into Q, K and V; Llama's rope (``rope_freqs`` where the file has
  one), causal attention over the draft's own cache, the output added to g itself (to normed g where
  ``norm_before_residual`` says), RMSNorm, SwiGLU, residual: the pre-norm state; then ``output_norm`` and the output
  head (the draft's own, else the target's) over the draft vocabulary, which ``d2t`` (int64, each draft token's target
  id) spreads over the target's, -inf elsewhere;
- drafting: the pairs up to the last position the target holds (its token the target's freshest pick), then each
  drafted token paired with the step before's pre-norm state in place of g, one position on.

Its target hands the layers' outputs over through ``Model.layer_tap`` (models/common.py): each forward of the Llama
family's gives the tap its positions and cache, then its ``l_out`` rows of those layers (all the forward's tokens), so
the target's arithmetic is untouched; a target whose forward does not is refused in one line.

On ``--device gpu`` the head runs beside a target on the device: its encoder and block are backend ops on device
buffers, and the tap files the layers' rows on the device (ops/gpu/ssm.py's ``store``: rows copied in at positions
read from a device buffer), so the target's decode step, captured as a CUDA graph and replayed, files its row with
the rest of the step and brings nothing down.  Drafting is host-driven, as llama.cpp's draft loop: each drafted
token's draft logits come down once, where the loop picks it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType

from ..cache.base import KVCache, LayerSpec
from ..cache.factory import make_cache
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, KvrunError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from ..ops.cpu.topk import draft_pick
from ..ops.gpu import ssm as gpu_ssm  # (the device tap's row store; importing ops.gpu loads no CuPy)
from ..ops.gpu.arrays import positions, to_device
from .common import TENSOR_NAMES, Model, WeightLoader, make_rope

TENSOR_NAMES.update({
    "fc": "fc.weight",  # the feature fusion: 3 target layers to the draft's width
    "enc_output_norm": "enc.output_norm.weight",  # (norm_before_fc) the fused features' RMSNorm
    "attn_norm_2": "blk.{i}.attn_norm_2.weight",  # the checkpoint's hidden_norm, on g
})  # fmt: skip

TOP_K = 10  #: llama.cpp's draft sampler: top-k 10, its first candidate's probability among them against p_min


@dataclass
class Eagle3Block:
    attn_norm: Any  # [n_embd] on the token embedding
    attn_norm_2: Any  # [n_embd] on g
    wq: Weight  # [n_head*head_dim, 2*n_embd]
    wk: Weight  # [n_head_kv*head_dim, 2*n_embd]
    wv: Weight
    wo: Weight  # [n_embd, n_head*head_dim]
    ffn_norm: Any
    w_gate: Weight
    w_up: Weight
    w_down: Weight


class Eagle3Model(Model):
    archs = ("eagle3",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.on_device = backend.name != "cpu"  # (the CPU's arithmetic is host numpy around the backend's ops)
        c, path = cfg, g.path
        if c.n_layer != 1:  # (llama.cpp's graph asserts it)
            raise GGUFError(f"{path}: an EAGLE-3 draft has one decoder block, this file states {c.n_layer}; it is not a supported draft")
        if g.arch_get("attention.layer_norm_rms_epsilon") is None:
            raise GGUFError(f"{path}: metadata eagle3.attention.layer_norm_rms_epsilon is missing; the file is not a complete draft")
        layers = g.arch_get("target_layers")
        if layers is None:
            raise GGUFError(f"{path}: metadata eagle3.target_layers is missing (EAGLE-3 model requires 'extract_layers')")
        if not hasattr(layers, "__len__") or len(layers) != 3:
            raise GGUFError(f"{path}: eagle3.target_layers must name exactly 3 target layers, it names {layers!r}")
        #: the target layers (llama.cpp's extract_layers: layer inputs) whose states the encoder reads, in this order
        self.target_layers = tuple(int(x) for x in layers)
        n_tgt = g.arch_get("target_hidden_size")
        if n_tgt is None:
            raise GGUFError(f"{path}: metadata eagle3.target_hidden_size is missing; the file is not a complete draft")
        self.n_embd_tgt = int(n_tgt)
        self.norm_before_residual = bool(g.arch_get("norm_before_residual", False))
        self.norm_before_fc = bool(g.arch_get("norm_before_fc", False))
        if c.head_dim != c.head_dim_v:  # (llama.cpp's graph asserts it)
            raise GGUFError(f"{path}: an EAGLE-3 draft's K and V heads are alike; this file's are {c.head_dim} and {c.head_dim_v} wide")
        w = WeightLoader(g, backend)
        n, n_in = c.n_embd, 3 * self.n_embd_tgt
        self.fc = self._shaped(w, "fc", n, n_in)
        self.enc_norm = self._sized(w, "enc_output_norm", n_in) if self.norm_before_fc else None
        self.output_norm = self._sized(w, "output_norm", n)
        self.tok_embd = self._shaped(w, "tok_embd", None, n, required=False)  # (None: the target's)
        self.d2t = self._d2t(g)
        self.n_draft_vocab = len(self.d2t) if self.d2t is not None else c.n_vocab
        self.output = self._shaped(w, "output", self.n_draft_vocab, n, required=False)  # (None: the target's)
        if self.output is None and self.d2t is not None and self.n_draft_vocab != c.n_vocab:
            raise GGUFError(f"{path}: d2t maps {self.n_draft_vocab} draft tokens but the file has no output head of "
                            "that vocabulary (the target's covers all of its own); the file is not a supported draft")  # fmt: skip
        q, kv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        self.block = Eagle3Block(
            attn_norm=self._sized(w, "attn_norm", n, 0),
            attn_norm_2=self._sized(w, "attn_norm_2", n, 0),
            wq=self._shaped(w, "wq", q, 2 * n, 0),
            wk=self._shaped(w, "wk", kv, 2 * n, 0),
            wv=self._shaped(w, "wv", kv, 2 * n, 0),
            wo=self._shaped(w, "wo", n, q, 0),
            ffn_norm=self._sized(w, "ffn_norm", n, 0),
            w_gate=self._shaped(w, "w_gate", c.n_ff, n, 0),
            w_up=self._shaped(w, "w_up", c.n_ff, n, 0),
            w_down=self._shaped(w, "w_down", n, c.n_ff, 0),
        )
        self.rope_cos, self.rope_sin = make_rope(c, n_ctx, c.rope_theta, w.host_vector("rope_freqs", required=False))

    @staticmethod
    def _shaped(w: WeightLoader, role: str, rows: int | None, cols: int, i: int | None = None, required: bool = True) -> Weight | None:
        """A matrix of ``rows`` x ``cols`` (rows None: any), a one-line error otherwise (llama.cpp's create_tensor)."""
        m = w.matrix(role, i, required)
        if m is not None and (m.n_cols != cols or (rows is not None and m.n_rows != rows)):
            name = TENSOR_NAMES[role].format(i=i)
            raise GGUFError(f"{w.g.path}: tensor {name!r} is {m.n_rows} x {m.n_cols}, expected {rows or m.n_rows} x {cols}; "
                            "the file is not a supported draft")  # fmt: skip
        return m

    @staticmethod
    def _sized(w: WeightLoader, role: str, n: int, i: int | None = None) -> Any:
        v = w.host_vector(role, i)
        if v.shape[0] != n:
            raise GGUFError(f"{w.g.path}: tensor {TENSOR_NAMES[role].format(i=i)!r} has {v.shape[0]} values, expected {n}; "
                            "the file is not a supported draft")  # fmt: skip
        return w.be.vector(v)

    def _d2t(self, g: GGUFFile) -> np.ndarray | None:
        """``d2t``: each draft token's target id (int64, absolute: the converter adds the checkpoint's offsets), or None
        (the draft's vocabulary is the target's)."""
        t = g.tensors.get("d2t")
        if t is None:
            return None
        if t.qtype != GGMLQuantizationType.I64:  # (llama.cpp's graph asserts it)
            raise GGUFError(f"{g.path}: tensor 'd2t' has type {t.type_name}, expected I64; the file is not a supported draft")
        ids = t.data.view(np.int64).reshape(-1).copy()
        if ids.size == 0 or ids.min() < 0 or ids.max() >= self.cfg.n_vocab:
            raise GGUFError(f"{g.path}: d2t holds target ids outside the vocabulary of {self.cfg.n_vocab}; the file is not a supported draft")
        return ids

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim, 0, 1.0 / np.sqrt(c.head_dim))]

    def new_cache(self) -> KVCache:
        """An empty cache of the decoder's one block (its own K/V)."""
        return KVCache(make_cache(self.layer_specs(), self.n_ctx, self.n_batch, device=self.be.name))

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        raise KvrunError("an eagle3 file is a draft head, not a model: give it with -md beside the model it was made for")

    # ------------------------------------------------------------------ the graph
    def _zeros(self, *shape: int) -> Any:
        return self.be.zeros(shape) if self.on_device else np.zeros(shape, np.float32)

    def _host(self, x: Any) -> Any:
        """``x`` as the CPU's ops take it (contiguous float32); a device array as it is."""
        return x if self.on_device else np.ascontiguousarray(x, np.float32)

    def _linear(self, w: Weight, x: Any) -> Any:
        out = self._zeros(x.shape[0], w.n_rows)
        self.be.linear(w, self._host(x), out)
        return out

    def _norm(self, x: Any, w: Any) -> Any:
        x = self._host(x)
        out = self._zeros(*x.shape)
        self.be.rms_norm(x, w, self.cfg.norm_eps, out)
        return out

    def encode(self, features: np.ndarray) -> np.ndarray:
        """g ``[T, n_embd]`` of the target's fused features ``[T, 3 * target_hidden_size]`` (the encoder graph)."""
        x = np.ascontiguousarray(features, np.float32)
        if self.enc_norm is not None:
            x = self._norm(x, self.enc_norm)
        return self._linear(self.fc, x)

    def encode_into(self, features: Any, xn: Any, g: Any) -> None:
        """:meth:`encode` into ``g``, ``xn`` the normed features' room: a device tap's fixed buffers, which a captured
        decode step of the target writes again each replay."""
        if self.enc_norm is not None:
            self.be.rms_norm(features, self.enc_norm, self.cfg.norm_eps, xn)
            features = xn
        self.be.linear(self.fc, features, g)

    def decode(self, tokens: np.ndarray, g: np.ndarray, pos: np.ndarray, cache: KVCache, tok_embd: Weight) -> np.ndarray:
        """The decoder over the pairs (``tokens[i]``, ``g[i]``) at positions ``pos`` [T] after what ``cache`` (:meth:`new_cache`)
        holds, ``tok_embd`` the draft's or its target's: the pre-norm states ``[T, n_embd]`` (the next step's g)."""
        c, be, B = self.cfg, self.be, self.block
        T = len(tokens)
        g = self._host(g).reshape(T, c.n_embd)
        e = self._zeros(T, c.n_embd)
        be.get_rows(tok_embd, np.asarray(tokens, np.int32), e)
        gn = self._norm(g, B.attn_norm_2)
        x = self.concat(self._norm(e, B.attn_norm), gn)
        q3 = self._linear(B.wq, x).reshape(T, c.n_head, c.head_dim)
        k3 = self._linear(B.wk, x).reshape(T, c.n_head_kv, c.head_dim)
        v3 = self._linear(B.wv, x).reshape(T, c.n_head_kv, c.head_dim)
        pos = np.asarray(pos, np.int32)
        be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
        att3 = self._zeros(*q3.shape)
        cache[0].update_and_attend(q3, k3, v3, pos, att3)
        cache.offset = int(pos[-1]) + 1
        h = self._linear(B.wo, att3.reshape(T, -1))
        res = gn if self.norm_before_residual else g  # (llama.cpp: the raw g unless norm_before_residual)
        if self.on_device:
            be.add(h, res)
        else:
            h += res
        hn = self._norm(h, B.ffn_norm)
        gate, up = self._linear(B.w_gate, hn), self._linear(B.w_up, hn)
        f = self._zeros(*h.shape)
        be.linear_glu(B.w_down, gate, up, f, "silu")
        if self.on_device:
            be.add(f, h)
            return f
        return f + h

    def concat(self, embd_normed: Any, g_normed: Any) -> Any:
        """What Q, K and V read: the normed token embedding, then normed g (llama.cpp's ggml_concat order)."""
        if not self.on_device:
            return np.concatenate([embd_normed, g_normed], axis=1)
        T, n = embd_normed.shape
        x = self._zeros(T, 2 * n)
        self.be.copy(embd_normed, x[:, :n])
        self.be.copy(g_normed, x[:, n:])
        return x

    def draft_logits(self, prenorm: Any, output: Weight) -> Any:
        """Logits over the draft vocabulary ``[T, n_draft_vocab]`` of pre-norm states, ``output`` the draft's or its
        target's (a device array on a device: the draft loop brings down the row it picks from)."""
        return self._linear(output, self._norm(prenorm, self.output_norm))

    def target_logits(self, prenorm: Any, output: Weight) -> np.ndarray:
        """llama.cpp's logits ``[T, n_vocab]``: the draft vocabulary's spread over the target's by ``d2t``, -inf elsewhere."""
        ld = self.be.to_host(self.draft_logits(prenorm, output))
        if self.d2t is None:
            return ld
        out = np.full((ld.shape[0], self.cfg.n_vocab), -np.inf, np.float32)
        out[:, self.d2t] = ld
        return out

    # ------------------------------------------------------------------ the draft side
    def drafter(self, target: Any, p_min: float) -> Eagle3Draft:
        """The draft side for ``target`` (an Engine: runtime/engine.py's ``-md``); a one-line error where it does not fit."""
        return Eagle3Draft(self, target, p_min)


@dataclass
class _Sequence:
    """One target sequence's draft state: g by position (filed by the target's forwards), the draft's cache and the
    tokens its real pairs were made of."""

    cache: KVCache
    g: Any  # [capacity, n_embd]; rows [0, n_valid) are the target's current positions' (on a device: n_ctx rows, fixed)
    n_valid: int = 0
    n_real: int = 0  # the draft cache's positions [0, n_real) hold real pairs (token at P + 1, g at P)
    held: tuple[int, ...] = ()  # the text those pairs were made of: held[P + 1] at P


class Eagle3Draft:
    """Drafts with the head beside its target (``Engine.draft``: ``draft(tokens, k, cache)``, as runtime/speculative.py's
    DraftModel).  It is the target model's ``layer_tap`` (models/common.py): each forward hands it its positions and
    cache (:meth:`begin`), then the output of the layers the head reads (:meth:`take`), which it fuses into g rows kept
    by position under the forward's cache (each sequence of a batched forward its own, cache/batch.py's bounds);
    ``draft`` pairs them with the text in the draft's own cache (one per target cache) and drafts on from the last.
    A cache that takes another's prefix without a forward (a server's slot: ``Engine.copy_prefix``) takes its rows
    with it (:meth:`copy_prefix`), else the draft would pair the rows of the text it held before.

    On a device the rows stay there: the forward's layers copied side by side into a fixed buffer, fused into g and
    stored at their positions (read from the device) in each sequence's fixed g buffer, all kernels, so a decode step
    captured as a CUDA graph files its row on each replay.  The host does not see a replay: there it takes every
    position below the target cache's offset as filed (a prefix copied in brings its rows, :meth:`copy_prefix`; a
    sequence whose first forward the tap saw not at position 0 keeps none, and drafts nothing)."""

    def __init__(self, head: Eagle3Model, target: Any, p_min: float) -> None:
        model, t = target.model, target.cfg
        self.head, self.target, self.p_min, self.n_vocab = head, model, p_min, t.n_vocab
        c = head.cfg
        if t.n_embd != head.n_embd_tgt:
            raise KvrunError(f"the eagle3 draft reads a target {head.n_embd_tgt} wide; {t.arch} {t.name!r} is {t.n_embd} "
                             "wide: give the draft made for this model")  # fmt: skip
        if not all(1 <= il <= t.n_layer for il in head.target_layers):
            raise KvrunError(f"the eagle3 draft reads target layers {list(head.target_layers)}; of this {t.n_layer}-layer "
                             f"target kvrun hands it the inputs of layers 1 to {t.n_layer - 1} and ({t.n_layer}) the last "
                             "one's output: give the draft made for this model")  # fmt: skip
        shared = [what for what, mine in (("token embedding", head.tok_embd), ("output head", head.output)) if mine is None]
        if shared and c.n_embd != t.n_embd:
            raise KvrunError(f"the eagle3 draft ({c.n_embd} wide) uses its target's {' and '.join(shared)}, but the target "
                             f"is {t.n_embd} wide: give the draft made for this model")  # fmt: skip
        #: l_out index (the target layer's index; llama.cpp's layer input id minus one) -> the feature slots it fills
        self.slots: dict[int, list[int]] = {}
        for k, il in enumerate(head.target_layers):
            self.slots.setdefault(il - 1, []).append(k)
        self.layers = frozenset(self.slots)  # (what Model.trace asks)
        n = t.n_embd
        self.on_device = head.on_device
        self.features = head._zeros(target.n_batch, 3 * n)  # the forward's rows, as they come
        if self.on_device:  # (fixed buffers: a captured decode step of the target writes them again each replay)
            self.rows = to_device(np.arange(target.n_batch, dtype=np.int32), np.int32)  # (where each row goes in features)
            self.xn = head._zeros(target.n_batch, 3 * n) if head.enc_norm is not None else None
            self.g = head._zeros(target.n_batch, c.n_embd)
        self.taken: set[int] = set()
        self.forward_at: tuple[Any, KVCache] | None = None  # the forward under way's positions and cache
        self.seqs: weakref.WeakKeyDictionary[KVCache, _Sequence] = weakref.WeakKeyDictionary()
        self.probing = self.probed = False  # (the check below: a forward on a scratch cache, nothing kept)
        self._check_target(target)
        self.tok_embd = head.tok_embd if head.tok_embd is not None else model.tok_embd  # (Llama's: the check above)
        self.output = head.output if head.output is not None else model.output

    def _check_target(self, target: Any) -> None:
        """One forward of one token on a scratch cache: the target's forward must hand the tap its positions and cache,
        then every layer the head reads (a one-line error naming the architecture otherwise)."""
        model = self.target
        model.layer_tap, self.probing = self, True
        try:
            model.forward(np.zeros(1, np.int32), np.zeros(1, np.int32), target.new_cache(), np.arange(1), np.empty((1, self.n_vocab), np.float32))
        finally:
            self.probing = False
        if not self.probed:
            model.layer_tap = None
            raise KvrunError(f"{target.cfg.arch}'s forward in kvrun does not hand EAGLE-3 its layers' outputs and positions; "
                             "kvrun's eagle3 drafts beside the Llama family (llama, qwen2, qwen3, mistral ...)")  # fmt: skip

    # ------------------------------------------------------------------ the tap (LlamaModel.forward, Model.trace)
    def begin(self, pos: Any, cache: KVCache) -> None:
        """A forward starts: its positions ``pos`` [T] and its cache (a batch's BatchedKVCache)."""
        self.forward_at, self.taken = (pos, cache), set()

    def take(self, il: int, x: Any) -> None:
        """Layer ``il``'s output rows ``x`` [T, n_embd] of the forward under way (copied: the buffer moves on); once the
        last layer the head reads is in, the rows are fused into g and kept under each one's sequence at its position."""
        n = self.head.n_embd_tgt
        if self.on_device:
            for k in self.slots[il]:  # (row t to features' row t, columns k * n ..: kernels, as a captured step needs)
                gpu_ssm.store(x, n, 0, n, self.features, k * n, len(self.rows), self.rows, x.shape[0])
        else:
            rows = self.target.be.to_host(x)
            for k in self.slots[il]:
                self.features[: len(rows), k * n : (k + 1) * n] = rows
        self.taken.add(il)
        if self.taken != self.layers or self.forward_at is None:
            return
        (pos, cache), self.forward_at = self.forward_at, None
        if self.probing:
            self.probed = True
            return
        pos = np.asarray(self.target.be.to_host(pos))  # (the host's positions: a captured step's are the capture's)
        T = len(pos)
        caches, starts = getattr(cache, "caches", [cache]), list(getattr(cache, "bounds", [0]))
        if self.on_device:
            self.head.encode_into(self.features[:T], self.xn[:T] if self.xn is not None else None, self.g[:T])
            pd = positions(pos)  # (the forward's device positions: a captured step's the buffer each replay refills)
            for seq_cache, lo, hi in zip(caches, starts, starts[1:] + [T]):
                if hi > lo:
                    self._keep_device(seq_cache, int(pos[lo]), self.g[lo:hi], pd[lo:hi])
            return
        g = self.head.encode(self.features[:T])
        for seq_cache, lo, hi in zip(caches, starts, starts[1:] + [T]):
            if hi > lo:
                self._keep(seq_cache, int(pos[lo]), g[lo:hi])

    def _keep_device(self, cache: KVCache, p0: int, g: Any, pd: Any) -> None:
        """:meth:`_keep` on a device: ``g``'s rows stored at the positions ``pd`` (device) by a kernel."""
        if cache not in self.seqs and p0 > 0:  # (positions before these never filed: a prefix copied in without its
            return  # rows, a session loaded; the host would take them as filed: no sequence, no drafts, until it starts over)
        s = self._sequence(cache)
        n = g.shape[1]
        gpu_ssm.store(g, n, 0, n, s.g, 0, len(s.g), pd, g.shape[0])
        s.n_valid = p0 + g.shape[0]

    def _sequence(self, cache: KVCache) -> _Sequence:
        """``cache``'s sequence, made empty where it has none: its g on a device the fixed ``n_ctx`` rows captured
        steps store into, on the host grown as rows are filed."""
        s = self.seqs.get(cache)
        if s is None:
            h = self.head
            g = h._zeros(h.n_ctx, h.cfg.n_embd) if self.on_device else np.zeros((0, h.cfg.n_embd), np.float32)
            s = self.seqs[cache] = _Sequence(h.new_cache(), g)
        return s

    def _keep(self, cache: KVCache, p0: int, g: np.ndarray) -> None:
        s = self._sequence(cache)
        if p0 > s.n_valid:  # (positions before these never filed: a prefix copied in, a session loaded) nothing to pair
            return
        end = p0 + len(g)
        if end > len(s.g):
            grown = np.zeros((min(max(end, 2 * len(s.g), 64), self.head.n_ctx), s.g.shape[1]), np.float32)
            grown[: s.n_valid] = s.g[: s.n_valid]
            s.g = grown
        s.g[p0:end] = g
        s.n_valid = end

    def copy_prefix(self, dst: KVCache, src: KVCache, n: int) -> None:
        """``dst`` now holds ``src``'s positions [0, n) without a forward (KVCache.copy_prefix): its sequence takes
        ``src``'s g rows [0, n) (on a device, a copy kernel), and of the draft's own cache the real pairs made of that
        prefix where the cache can copy them (else it is fed again from the start); with no rows of ``src`` to take,
        ``dst``'s are unfiled."""
        head, s = self.head, self.seqs.get(src)
        if self.on_device:
            if s is None:
                self.seqs.pop(dst, None)  # (the next forward, not at 0, files nothing: see _keep_device)
                return
            d = self._sequence(dst)
            if n > 0:
                head.be.copy(s.g[:n], d.g[:n])
            d.n_valid = n
        else:
            d = self._sequence(dst)
            filed = 0 if s is None else min(n, s.n_valid)  # (past src's filed rows: unfiled, _keep files nothing after)
            if filed > len(d.g):
                d.g = np.zeros((filed, head.cfg.n_embd), np.float32)
            if filed:
                d.g[:filed] = s.g[:filed]
            d.n_valid = filed
        # (pair P is (token P + 1, g at P): those below n - 1 are of the copied prefix alone)
        m = 0 if s is None else min(s.n_real, n - 1)
        if m > 0 and d.cache.copy_prefix(s.cache, m):
            d.n_real, d.held = m, s.held[: m + 1]
        else:
            d.cache.reset()
            d.n_real, d.held = 0, ()

    def g_rows(self, cache: KVCache, n: int) -> np.ndarray | None:
        """g of positions [0, n) of ``cache``'s sequence, as the target's forwards filed them (None: not all filed; on a
        device, where replayed steps file unseen, not all below the cache's offset), brought down."""
        s = self.seqs.get(cache)
        filed = 0 if s is None else cache.offset if self.on_device else s.n_valid
        return None if filed < n else self.head.be.to_host(s.g[:n])

    # ------------------------------------------------------------------ drafting
    def pair_tokens(self, tokens: list[int], lo: int, hi: int) -> np.ndarray:
        """The tokens paired with g at positions [lo, hi): each position's next one (EAGLE-3's input convention)."""
        return np.asarray(tokens[lo + 1 : hi + 1], np.int32)

    def catch_up(self, tokens: list[int], cache: KVCache) -> np.ndarray | None:
        """The draft's cache for ``cache``'s sequence brought to the text ``tokens`` (its last one the target's freshest
        pick, not yet in ``cache``): the real pairs (token at P + 1, g at P) up to the last position the target holds,
        fed from the first one no longer true (the text changed, the target went back, or last round's drafted steps).
        Returns the pre-norm states of the pairs fed, the last one's the state drafting starts from; None where the
        target's states of the text are not all at hand."""
        O = cache.offset
        s = self.seqs.get(cache)
        # (on a device, replayed decode steps filed their rows unseen: every position below O is taken as filed)
        if O < 1 or O != len(tokens) - 1 or s is None or (s.n_valid < O and not self.on_device):
            return None
        head = self.head
        # (g at P is the target's of the text up to P: where the text is unchanged, so are the pairs, whatever the
        # target fed again; from where it changed on, they are fed anew)
        same = next((i for i, (a, b) in enumerate(zip(s.held, tokens)) if a != b), min(len(s.held), len(tokens)))
        keep = max(0, min(s.n_real, same - 1, O - 1))  # (the last pair is fed again at least: its state drafts)
        if keep < s.cache.offset:
            s.cache.truncate(keep)
        states = []
        for lo in range(keep, O, head.n_batch):
            hi = min(O, lo + head.n_batch)
            states.append(head.decode(self.pair_tokens(tokens, lo, hi), s.g[lo:hi], np.arange(lo, hi), s.cache, self.tok_embd))
        s.n_real, s.held = O, tuple(tokens)
        if not self.on_device:
            return np.concatenate(states)
        if len(states) == 1:
            return states[0]
        out, r = head._zeros(sum(len(x) for x in states), head.cfg.n_embd), 0
        for x in states:  # (the chunks side by side on the device)
            head.be.copy(x, out[r : r + len(x)])
            r += len(x)
        return out

    def draft(self, tokens: list[int], k: int, cache: KVCache | None = None) -> list[int]:
        """Up to ``k`` tokens after ``tokens`` (the whole text; its last one not yet in ``cache``, the target's), each
        drafted token paired with the step before's pre-norm state one position on, stopping where the draft is unsure
        (llama.cpp's top-10 probability against ``--draft-p-min``); none where the target's states are not at hand."""
        states = self.catch_up(tokens, cache) if cache is not None and k > 0 else None
        if states is None:
            return []
        head, h, P = self.head, states[-1:], cache.offset
        s = self.seqs[cache]
        out: list[int] = []
        while True:
            ld = head.be.to_host(head.draft_logits(h, self.output))[0]  # (a device's: the one copy down a step)
            i, p = draft_pick(ld, TOP_K)
            t = int(head.d2t[i]) if head.d2t is not None else i
            if p < self.p_min or t >= self.n_vocab:
                break  # (the draft is unsure: such tokens are seldom kept)
            out.append(t)
            if len(out) == k:
                break
            h = head.decode(np.array([t], np.int32), h, np.array([P], np.int32), s.cache, self.tok_embd)
            P += 1
        return out
