"""Gemma 4 (text; E2B, E4B, 31B, 26B-A4B): https://ai.google.dev/gemma/docs/core

Gemma 3's block (sandwich norms, per-head Q/K RMSNorm, GELU-gated FFN, window and global layers) with Gemma 3n's
per-layer inputs and K/V sharing, none of its AltUp or LAuReL; as llama.cpp's ``gemma4`` graph has it:

- Two kinds of layer, as ``sliding_window_pattern`` flags them: window layers with heads ``key_length_swa`` wide,
  rope base ``rope.freq_base_swa`` over ``rope.dimension_count_swa``; global layers with wider heads
  (``key_length``) and their own KV head count (a per-layer ``head_count_kv``), whose "proportional" rope turns a
  quarter of each head's pairs: ``rope_freqs`` holds 1 for those and 1e30 (no turn) for the rest.
- V is RMS-normed too (no weight); attention is unscaled; a global layer without ``attn_v`` uses K's projection as
  V (the 26B's and 31B's ``attention_k_eq_v``).
- Per-layer inputs (E2B, E4B: ``embedding_length_per_layer_input``): Gemma 3n's, added back after each layer's FFN
  through a GELU gate of the layer's output, ``proj`` and ``post_norm``.
- K/V sharing: the last ``attention.shared_kv_layers`` layers compute no K/V and attend over the last earlier layer
  of their kind (:meth:`Gemma3nModel.kv_source`); with ``use_double_wide_mlp`` their FFNs are twice as wide (a
  per-layer ``feed_forward_length``: each layer's width is its weights').
- Mixture of experts (26B-A4B): every layer's dense GELU MLP runs beside ``expert_count`` GELU experts (gate and up
  fused in ``ffn_gate_up_exps``), each half normed apart (``post_ffw_norm_1``; ``pre_ffw_norm_2``,
  ``post_ffw_norm_2``) and summed.  The router reads the layer's stream RMS-normed without a weight, times
  1/sqrt(n_embd) and ``ffn_gate_inp.scale``; softmax over the experts, the top ``expert_used_count`` renormalised,
  each chosen expert's output times its ``ffn_down_exps.scale``.
- Each layer's output is multiplied by its ``layer_output_scale``; logits are soft-capped where the file says.
- Images (a gemma4v mmproj, runtime/vision_gemma4.py): a picture's rows come in unscaled through ``Model.input_embd``,
  their per-layer inputs token 0's (llama.cpp's multimodal path), the rows of a forward seeing each other both ways
  (libmtmd decodes gemma4v's rows non-causally; cache/bidirectional.py).

The CPU's forward does Gemma 3n's host arithmetic (the per-layer inputs, the routing) in numpy; the GPU's
(:meth:`Gemma4Model.forward_device`) runs it in backend ops on device buffers (the per-layer inputs' gate in
ops/gpu/gemma.cu, the experts in moe.cu's kernels), so its decode steps are captured as CUDA graphs.  Pictures
(their rows seeing each other both ways) stay on the CPU's caches.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..cache.picture_block import update_and_attend_block
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES, Model, WeightLoader, make_rope
from .gemma3 import Gemma3Layer
from .gemma3n import Gemma3nModel
from .moe import expert, route

TENSOR_NAMES.update({  # Gemma 4's own (llama.cpp's LLM_TENSOR_LAYER_OUT_SCALE, FFN_PRE_NORM_2, FFN_POST_NORM_1/2, ...)
    "layer_out_scale": "blk.{i}.layer_output_scale.weight",
    "ffn_gate_inp_s": "blk.{i}.ffn_gate_inp.scale",
    "ffn_gate_up_exps": "blk.{i}.ffn_gate_up_exps.weight",
    "ffn_down_exps_s": "blk.{i}.ffn_down_exps.scale",
    "ffn_pre_norm_2": "blk.{i}.pre_ffw_norm_2.weight",
    "ffn_post_norm_1": "blk.{i}.post_ffw_norm_1.weight",
    "ffn_post_norm_2": "blk.{i}.post_ffw_norm_2.weight",
})  # fmt: skip


@dataclass
class Gemma4Experts:
    """A layer's routed half of the FFN (26B-A4B), beside its dense MLP."""

    router: Weight  # [n_expert, n_embd]
    router_scale: np.ndarray  # [n_embd]: the router's input times this, after an unweighted RMSNorm and 1/sqrt(n_embd)
    gate_up: list[Weight]  # per expert [2*n_ff_exp, n_embd]: gate rows, then up rows
    down: list[Weight]  # per expert [n_embd, n_ff_exp]
    down_scale: np.ndarray | None  # [n_expert]: each expert's output times its own
    pre_norm: Any  # pre_ffw_norm_2 [n_embd]: the experts' input norm
    post_norm_mlp: Any  # post_ffw_norm_1 [n_embd]: the dense MLP's output norm
    post_norm: Any  # post_ffw_norm_2 [n_embd]: the experts' output norm
    n_used: int
    norm_weights: bool = True  # the chosen experts' probabilities renormalised to sum 1 (llama.cpp fixes it for Gemma 4)
    #: the device forward's (the CPU's None): the experts stacked apart, gate, up, down (moe.cu's layout), and the
    #: router's input scale (times 1/sqrt(n_embd)) and the experts' output scales as device vectors
    gate_exps: Weight | None = None
    up_exps: Weight | None = None
    down_exps: Weight | None = None
    router_scale_dev: Any = None
    down_scale_dev: Any = None


@dataclass
class Gemma4Layer(Gemma3Layer):
    swa: bool  # a window layer (else global)
    n_head_kv: int
    head_dim: int  # of Q, K and V alike (llama.cpp requires it)
    has_kv: bool  # computes and stores its own K/V
    experts: Gemma4Experts | None
    per_layer_inp_gate: Weight | None  # [n_embd_per_layer, n_embd] (None: no per-layer inputs)
    per_layer_proj: Weight | None  # [n_embd, n_embd_per_layer]
    per_layer_post_norm: Any  # [n_embd]
    out_scale: float  # layer_output_scale (1: the file has none)


def gemma4_ropes(g: GGUFFile, w: WeightLoader, c: ModelConfig, n_ctx: int, all_swa: bool) -> tuple[Any, Any]:
    """(global, window) rope tables of Gemma 4 and its assistant: the global layers' proportional rope, rope_freqs' 1e30
    leaving most pairs unturned (llama.cpp requires the tensor wherever a layer is global, so not where ``all_swa``);
    the window layers' own base and width."""
    freqs = w.host_vector("rope_freqs", required=not all_swa)
    rope_global = make_rope(c, n_ctx, c.rope_theta, freqs)
    c_swa = dataclasses.replace(c, rope_dim=int(g.arch_get("rope.dimension_count_swa", c.rope_dim)))
    return rope_global, make_rope(c_swa, n_ctx, c.rope_theta_swa or c.rope_theta)


class Gemma4Model(Gemma3nModel):
    archs = ("gemma4",)
    takes_images = True  # its forward reads Model.input_embd (a gemma4v picture's rows: runtime/vision_gemma4.py)
    #: rows fed as embeddings read causally, as text (an audio clip's: libmtmd decodes gemma4a's rows causally,
    #: models/gemma4a_audio.py's feed_context sets it while a clip goes in); else they see each other (a picture's)
    causal_rows: bool = False

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        Model.__init__(self, g, cfg, backend, n_ctx, n_batch)  # (none of Gemma 3n's AltUp tensors to load)
        c = cfg
        w = WeightLoader(g, backend)
        self.g = g
        self.head_dim_swa = int(g.arch_get("attention.key_length_swa", c.head_dim))
        if int(g.arch_get("attention.value_length_swa", self.head_dim_swa)) != self.head_dim_swa or c.head_dim_v != c.head_dim:
            raise GGUFError(f"{g.path}: Gemma 4's key and value heads differ in width; llama.cpp requires them equal")
        kv = g.arch_get("attention.head_count_kv", c.n_head)
        self.kv_heads = [int(n) for n in kv] if hasattr(kv, "__len__") else [int(kv)] * c.n_layer
        self.tok_embd = w.matrix("tok_embd")
        self.output = w.matrix("output", required=False) or self.tok_embd
        self.output_norm = w.vector("output_norm")
        if c.n_embd_altup:  # per-layer inputs (Gemma 3n's tensors and arithmetic: Gemma3nModel.per_layer_inputs)
            self.per_layer_tok_embd = w.matrix("per_layer_tok_embd")
            self.per_layer_model_proj = w.matrix("per_layer_model_proj")
            self.per_layer_proj_norm = w.vector("per_layer_proj_norm")
        self.layers = [self.load_layer(w, i) for i in range(c.n_layer)]
        self.rope_global, self.rope_local = gemma4_ropes(g, w, c, n_ctx, all(L.swa for L in self.layers))
        self.ones = {d: backend.vector(np.ones(d, np.float32)) for d in {c.n_embd, c.head_dim, self.head_dim_swa}}  # (unweighted RMSNorms)

    def load_layer(self, w: WeightLoader, i: int) -> Gemma4Layer:  # type: ignore[override]
        c = self.cfg
        swa = c.is_swa(i)
        has_kv = c.n_layer_kv_from_start < 0 or i < c.n_layer_kv_from_start
        pl = c.n_embd_altup > 0
        return Gemma4Layer(
            swa=swa,
            n_head_kv=self.kv_heads[i],
            head_dim=self.head_dim_swa if swa else c.head_dim,
            has_kv=has_kv,
            attn_norm=w.vector("attn_norm", i),
            wq=w.matrix("wq", i),
            wk=w.matrix("wk", i) if has_kv else None,
            wv=w.matrix("wv", i, required=False) if has_kv else None,
            wo=w.matrix("wo", i),
            q_norm=w.vector("q_norm", i),
            k_norm=w.vector("k_norm", i) if has_kv else None,
            attn_post_norm=w.vector("attn_post_norm", i),
            ffn_norm=w.vector("ffn_norm", i),
            w_gate=w.matrix("w_gate", i),
            w_up=w.matrix("w_up", i),
            w_down=w.matrix("w_down", i),
            ffn_post_norm=w.vector("ffn_post_norm", i),
            experts=self.load_experts(w, i) if w.has("ffn_gate_inp", i) else None,
            per_layer_inp_gate=w.matrix("per_layer_inp_gate", i) if pl else None,
            per_layer_proj=w.matrix("per_layer_proj", i) if pl else None,
            per_layer_post_norm=w.vector("per_layer_post_norm", i) if pl else None,
            out_scale=float(s[0]) if (s := w.host_vector("layer_out_scale", i, required=False)) is not None else 1.0,
        )

    def load_experts(self, w: WeightLoader, i: int) -> Gemma4Experts:
        """Layer i's routed experts: fused ``ffn_gate_up_exps`` where the file has it, else gate and up apart."""
        c = self.cfg
        n, d, f = c.n_expert, c.n_embd, c.n_ff_exp
        if not 0 < c.n_expert_used <= n:
            raise GGUFError(f"{w.g.path}: expert_used_count {c.n_expert_used} is not in 1..{n} (expert_count)")
        if w.has("ffn_gate_up_exps", i):
            gate_up = w.experts("ffn_gate_up_exps", i, n, 2 * f, d)
            pairs = [expert(gate_up, e, n) for e in range(n)]
        else:  # (gate rows, then up rows: one product per expert, as the fused layout)
            gate, up = w.experts("ffn_gate_exps", i, n, f, d), w.experts("ffn_up_exps", i, n, f, d)
            pairs = [self.be.upload(np.concatenate([expert(gate, e, n).data, expert(up, e, n).data]), gate.qtype, (2 * f, d))
                     for e in range(n)]  # fmt: skip
        down = w.experts("ffn_down_exps", i, n, d, f)
        scale = w.host_vector("ffn_down_exps_s", i, required=False)
        if scale is not None and scale.size != n:
            raise GGUFError(f"{w.g.path}: blk.{i}.ffn_down_exps.scale has {scale.size} values, expected {n}; the file is not a supported model")
        if self.be.name != "cpu":
            return self.device_experts(w, i, down, scale)
        return Gemma4Experts(
            router=w.matrix("ffn_gate_inp", i),
            router_scale=w.host_vector("ffn_gate_inp_s", i),
            gate_up=pairs,
            down=[expert(down, e, n) for e in range(n)],
            down_scale=scale,
            pre_norm=w.vector("ffn_pre_norm_2", i),
            post_norm_mlp=w.vector("ffn_post_norm_1", i),
            post_norm=w.vector("ffn_post_norm_2", i),
            n_used=c.n_expert_used,
        )

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        specs = []
        for il, L in enumerate(self.layers):
            src = self.kv_source(il)
            specs.append(LayerSpec(c.n_head, L.n_head_kv, L.head_dim, L.head_dim, c.sliding_window if L.swa else 0,
                                   1.0, 0.0, kv_from=-1 if src == il else src))  # fmt: skip
        return specs

    # ------------------------------------------------------------------ forward
    def attention(self, il: int, L: Gemma4Layer, xn: np.ndarray, pos: np.ndarray, cache: KVCache) -> np.ndarray:  # type: ignore[override]
        """Self-attention of the normed stream; a layer that shares K/V computes Q alone; V is K's projection
        where the layer has no ``attn_v``."""
        c, be = self.cfg, self.be
        T, d = xn.shape[0], L.head_dim
        cos, sin = self.rope_local if L.swa else self.rope_global
        q3 = self.linear(L.wq, xn).reshape(T, c.n_head, d)
        att3 = np.empty((T, c.n_head, d), np.float32)
        if L.has_kv:
            k = self.linear(L.wk, xn)
            v3 = (self.linear(L.wv, xn) if L.wv is not None else k.copy()).reshape(T, L.n_head_kv, d)
            k3 = k.reshape(T, L.n_head_kv, d)
            be.norm_rope_qk(q3, k3, L.q_norm, L.k_norm, c.norm_eps, pos, cos, sin, c.rope_neox)
            self.norm_v(v3)
        else:
            k3 = v3 = None  # (the cache reads the source layer's)
            be.rms_norm_heads(q3, L.q_norm, c.norm_eps)
            be.rope(q3, pos, cos, sin, c.rope_neox)
        if self.input_embd is not None and not self.causal_rows:  # (a picture's rows see each other, as libmtmd's non-causal image batch)
            # (a layer sharing K/V reads its source's slots, a layer of its own kind: the same window and heads;
            # plain or compressed: cache/picture_block.py)
            update_and_attend_block(cache, il, q3, k3, v3, pos, att3)
        else:
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
        att = att3.reshape(T, c.n_head * d)
        self.trace("kqv_out", il, att)
        return self.linear(L.wo, att)

    def norm_v(self, v3: np.ndarray) -> None:
        """V's RMSNorm, per head, without a weight (in place)."""
        self.be.rms_norm_heads(v3, self.ones[v3.shape[2]], self.cfg.norm_eps)

    def mlp(self, L: Gemma4Layer, h: np.ndarray) -> np.ndarray:
        """The dense GELU-gated FFN of the normed rows ``h``."""
        return self.linear(L.w_down, self.gelu(self.linear(L.w_gate, h)) * self.linear(L.w_up, h))

    def routed(self, E: Gemma4Experts, x: np.ndarray) -> np.ndarray:
        """The experts' weighted sum for the stream ``x`` (each chosen expert run once over the tokens that chose it)."""
        c = self.cfg
        r = self.rms_norm(x, self.ones[c.n_embd]) * (E.router_scale * np.float32(1.0 / math.sqrt(c.n_embd)))
        top, wts = route(self.linear(E.router, np.ascontiguousarray(r, np.float32)), E.n_used, E.norm_weights, "softmax")
        if E.down_scale is not None:
            wts = wts * E.down_scale[top]
        h = self.rms_norm(x, E.pre_norm)
        out = np.zeros_like(h)
        for e in np.unique(top):
            rows, slot = np.nonzero(top == e)
            gu = self.linear(E.gate_up[e], h[rows])
            f = gu.shape[1] // 2
            out[rows] += self.linear(E.down[e], self.gelu(np.ascontiguousarray(gu[:, :f])) * gu[:, f:]) * wts[rows, slot][:, None]
        return out

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        if self.be.name != "cpu":
            self.forward_device(tokens, pos, cache, out_rows, logits)
            return
        c = self.cfg
        T = len(tokens)
        x = np.empty((T, c.n_embd), np.float32)
        if self.input_embd is not None:  # a picture's rows: unscaled; their per-layer inputs token 0's (tokens are 0)
            x[...] = self.input_embd
        else:
            self.be.get_rows(self.tok_embd, tokens, x)
            x *= np.float32(math.sqrt(c.n_embd))
        inp_per_layer = self.per_layer_inputs(tokens, x) if c.n_embd_altup else None

        for il, L in enumerate(self.layers):
            xn = self.rms_norm(x, L.attn_norm)
            self.trace("attn_norm", il, xn)
            a = self.rms_norm(self.attention(il, L, xn, pos, cache), L.attn_post_norm) + x
            h = self.rms_norm(a, L.ffn_norm)
            if L.experts is None:
                f = self.mlp(L, h)
            else:  # the dense MLP and the experts side by side, each normed apart
                E = L.experts
                f = self.rms_norm(self.mlp(L, h), E.post_norm_mlp) + self.rms_norm(self.routed(E, a), E.post_norm)
            x = self.rms_norm(f, L.ffn_post_norm) + a
            if inp_per_layer is not None:  # the layer's per-layer input, gated by its output, added back
                gate = self.gelu(self.linear(L.per_layer_inp_gate, x)) * inp_per_layer[il]
                x = x + self.rms_norm(self.linear(L.per_layer_proj, gate), L.per_layer_post_norm)
            if L.out_scale != 1.0:
                x *= np.float32(L.out_scale)
            self.trace("l_out", il, x)
        self.output_head(np.ascontiguousarray(x, np.float32), out_rows, logits, pos, cache)  # (pos, cache: for hidden_sink)

    # ------------------------------------------------------------------ the device forward (GPU)
    def device_experts(self, w: WeightLoader, i: int, down: Weight, scale: np.ndarray | None) -> Gemma4Experts:
        """Layer i's experts for the device forward: gate and up stacked apart (a fused ``ffn_gate_up_exps`` split
        on the device, each expert's gate rows then its up rows), as moe.cu's kernels read them."""
        c = self.cfg
        n, f = c.n_expert, c.n_ff_exp
        if w.has("ffn_gate_up_exps", i):
            gu = w.experts("ffn_gate_up_exps", i, n, 2 * f, c.n_embd)
            blocks = gu.data.reshape(n, 2 * f, -1)
            gate, up = (Weight(blocks[:, h * f : (h + 1) * f].copy().reshape(n * f, -1), gu.qtype, (n * f, c.n_embd)) for h in (0, 1))
        else:
            gate, up = w.experts("ffn_gate_exps", i, n, f, c.n_embd), w.experts("ffn_up_exps", i, n, f, c.n_embd)
        router_scale = w.host_vector("ffn_gate_inp_s", i)
        return Gemma4Experts(
            router=w.matrix("ffn_gate_inp", i),
            router_scale=router_scale,
            gate_up=[],
            down=[],
            down_scale=scale,
            pre_norm=w.vector("ffn_pre_norm_2", i),
            post_norm_mlp=w.vector("ffn_post_norm_1", i),
            post_norm=w.vector("ffn_post_norm_2", i),
            n_used=c.n_expert_used,
            gate_exps=gate,
            up_exps=up,
            down_exps=down,
            router_scale_dev=self.be.vector(router_scale * np.float32(1.0 / math.sqrt(c.n_embd))),
            down_scale_dev=None if scale is None else self.be.vector(scale),
        )

    def attention_device(self, il: int, L: Gemma4Layer, xn: Any, pos: Any, cache: KVCache, o: Any) -> None:  # type: ignore[override]
        """:meth:`attention` on device buffers (one set per head width and KV head count), its output projection
        into ``o``."""
        c, be, buf = self.cfg, self.be, self.buf
        T, d, nkv = xn.shape[0], L.head_dim, L.n_head_kv
        cos, sin = self.rope_local if L.swa else self.rope_global
        q, att = buf.get(f"q{d}", T, c.n_head * d), buf.get(f"att{d}", T, c.n_head * d)
        q3, att3 = q.reshape(T, c.n_head, d), att.reshape(T, c.n_head, d)
        k3 = v3 = None  # (a layer sharing K/V: the cache reads the source layer's)
        if L.has_kv:
            k, v = buf.get(f"k{d}_{nkv}", T, nkv * d), buf.get(f"v{d}_{nkv}", T, nkv * d)
            if L.wv is not None:
                be.linear_many((L.wq, L.wk, L.wv), xn, (q, k, v))
            else:  # V is K's projection, taken before K is normed and turned
                be.linear_many((L.wq, L.wk), xn, (q, k))
                be.copy(k, v)
            k3, v3 = k.reshape(T, nkv, d), v.reshape(T, nkv, d)
            be.norm_rope_qk(q3, k3, L.q_norm, L.k_norm, c.norm_eps, pos, cos, sin, c.rope_neox)
            self.norm_v(v3)
        else:
            be.linear(L.wq, xn, q)
            be.rms_norm_heads(q3, L.q_norm, c.norm_eps)
            be.rope(q3, pos, cos, sin, c.rope_neox)
        if self.input_embd is not None and not self.causal_rows:  # (a picture's rows: the CPU's caches only, cache/picture_block.py says so)
            update_and_attend_block(cache, il, q3, k3, v3, pos, att3)
        else:
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
        self.trace("kqv_out", il, att)
        be.linear(L.wo, att, o)

    def routed_device(self, E: Gemma4Experts, x: Any, out: Any) -> None:
        """``out = `` :meth:`routed` ``(x)``: routed by moe.cu's kernel (ids and weights stay on the device), each
        weight times its expert's scale, the experts' GELU products summed by moe.cu's."""
        c, be, buf = self.cfg, self.be, self.buf
        T, k, f = x.shape[0], E.n_used, E.gate_exps.n_rows // c.n_expert
        r = buf.get("moe_r", T, c.n_embd)
        be.rms_norm(x, self.ones[c.n_embd], c.norm_eps, r)
        be.mul_vec(r, E.router_scale_dev, r)
        logits = buf.get("moe_router", T, c.n_expert)
        be.linear(E.router, r, logits)
        ids, wts = buf.get("moe_ids", T, k, dtype=np.int32), buf.get("moe_wts", T, k)
        be.moe_route(logits, k, "softmax", E.norm_weights, 1.0, None, None, (0, 0), ids, wts)
        if E.down_scale_dev is not None:
            be.scale_by_expert(wts, ids, E.down_scale_dev)
        be.rms_norm(x, E.pre_norm, c.norm_eps, r)
        be.moe_experts(E.gate_exps, E.up_exps, E.down_exps, f, ids, wts, r, out, buf.get("moe_h", T, k * f), None, "gelu", False)

    def forward_device(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:  # type: ignore[override]
        """:meth:`forward`'s arithmetic in backend ops: every activation a device buffer, nothing brought to the host,
        so a decode step is captured."""
        c, be, buf = self.cfg, self.be, self.buf
        T, E, A, eps = len(tokens), c.n_embd, c.n_embd_altup, c.norm_eps
        x = buf.get("x", T, E)
        if self.input_embd is not None:  # a picture's rows: unscaled; their per-layer inputs token 0's (tokens are 0)
            x[...] = be.vector(self.input_embd)  # (host rows: uploaded on the GPU)
        else:
            be.get_rows(self.tok_embd, tokens, x)
            be.scale(x, math.sqrt(E))
        pl = self.per_layer_inputs_device(tokens, x) if A else None
        xn, o, f = buf.get("xn", T, E), buf.get("o", T, E), buf.get("g4_ffn", T, E)
        g = buf.get("pl_gate", T, A) if A else None
        for il, L in enumerate(self.layers):
            be.rms_norm(x, L.attn_norm, eps, xn)
            self.trace("attn_norm", il, xn)
            self.attention_device(il, L, xn, pos, cache, o)
            be.rms_norm_add(o, L.attn_post_norm, eps, x)  # (x: the attention's residual sum now)
            n_ff = L.w_gate.n_rows
            gate, up = buf.get(f"gate{n_ff}", T, n_ff), buf.get(f"up{n_ff}", T, n_ff)
            be.rms_norm(x, L.ffn_norm, eps, xn)
            be.linear_many((L.w_gate, L.w_up), xn, (gate, up))
            be.linear_glu(L.w_down, gate, up, f, "gelu")
            if L.experts is not None:  # the dense MLP and the experts side by side, each normed apart
                be.rms_norm(f, L.experts.post_norm_mlp, eps, f)
                self.routed_device(L.experts, x, o)
                be.rms_norm_add(o, L.experts.post_norm, eps, f)
            be.rms_norm_add(f, L.ffn_post_norm, eps, x)
            if pl is not None:  # the layer's per-layer input, gated by its output, added back
                be.linear(L.per_layer_inp_gate, x, g)
                be.gelu_mul_strided(g, pl, il * A)
                be.linear(L.per_layer_proj, g, o)
                be.rms_norm_add(o, L.per_layer_post_norm, eps, x)
            if L.out_scale != 1.0:
                be.scale(x, L.out_scale)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits, pos, cache)  # (pos, cache: for hidden_sink)
