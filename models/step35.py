"""StepFun Step-3.5-Flash (196B-A11B), as llama.cpp's ``step35`` graph.

Pre-norm decoder (RMSNorm -> attention -> residual -> RMSNorm -> FFN -> residual), with what sets it apart:

* hybrid attention: the layers the file's ``sliding_window_pattern`` flags attend within a window and rotate at
  ``rope.freq_base_swa``, the others globally at ``rope.freq_base``; each layer its own number of query heads
  (``head_count`` a list: Step-3.5-Flash's window layers have 96, its global ones 64), the KV heads alike where listed;
* partial neox rope per layer: the global layers rotate half of ``rope.dimension_count`` (llama.cpp halves it for
  step35: the model's partial_rotary_factor 0.5 there) with Llama 3's ``rope_freqs`` (its first entries), the window
  layers ``rope.dimension_count_swa`` (else ``rope.dimension_count``) without factors;
* Q and K RMS-normalised head by head (QK-norm, where the layer has ``attn_q_norm``/``attn_k_norm``) before rope;
* gated attention, one gate a head: ``sigmoid(attn_gate x)`` (``[n_head, n_embd]``) times each head's output before
  ``attn_output`` (where the layer has ``attn_gate``);
* a dense SwiGLU FFN where a layer has no router (the first three), elsewhere a mixture of experts (``moe.py``) routed
  by ``expert_gating_func`` (sigmoid unless stated), chosen with ``exp_probs_b``, renormalised where
  ``expert_weights_norm`` says, times ``expert_weights_scale``, beside a shared expert every token runs; an output head
  of its own; scores scaled by ``1/sqrt(key_length)``.

Clamped SwiGLU where the file says (``swiglu_clamp_exp`` for the routed experts, ``swiglu_clamp_shexp`` for the shared
expert and the dense FFNs, one limit or one a layer, 0 for none): ``min(silu(gate), limit) * clamp(up, -limit, limit)``
(``moe.swiglu_clamped``; Step-3.5-Flash clamps its last layers).  The last ``nextn_predict_layers`` of ``block_count`` are
multi-token-prediction layers, which kvrun neither runs nor reads.  On ``--device gpu`` the clamped SwiGLUs and the
attention gate are kernels (moe2.cu), the experts routed in moe.cu's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import Buffers, WeightLoader, make_rope
from .llama import LlamaModel
from .mimo2 import per_layer
from .moe import MoE, check_expert_counts, gating_func, load_moe, moe_or_swiglu_add, weights_scale


#: llama.cpp's expert_gating_func values the graph runs (0, unstated: sigmoid, as llama.cpp defaults it for step35)
GATING = {0: "sigmoid", 1: "softmax", 2: "sigmoid"}


@dataclass
class Step35Layer:
    attn_norm: Any  # [n_embd]
    wq: Weight  # [n_head*head_dim, n_embd] (n_head this layer's)
    wk: Weight  # [n_kv*head_dim, n_embd]
    wv: Weight  # [n_kv*head_dim_v, n_embd]
    wo: Weight  # [n_embd, n_head*head_dim_v]
    n_head: int
    n_kv: int
    q_norm: Any  # [head_dim] or None
    k_norm: Any
    attn_gate: Weight | None  # [n_head, n_embd]: one gate a head, or None
    ffn_norm: Any  # [n_embd]
    w_gate: Weight | None = None  # a dense layer's SwiGLU FFN
    w_up: Weight | None = None
    w_down: Weight | None = None
    moe: MoE | None = None  # the others' mixture of experts (with the shared expert)
    swiglu_limit: float = 0.0  # > 0: the dense FFN's SwiGLU clamped (moe.swiglu_clamped; llama.cpp's swiglu_clamp_shexp)


def per_layer_head_specs(cfg: ModelConfig, layers: list[Any]) -> list[LayerSpec]:
    """Each layer's cache: its own query and KV heads (``L.n_head``, ``L.n_kv``), the window where the pattern flags
    the layer, scores scaled by ``1/sqrt(key_length)``."""
    scale = 1.0 / np.sqrt(cfg.head_dim)
    return [LayerSpec(L.n_head, L.n_kv, cfg.head_dim, cfg.head_dim_v, cfg.sliding_window if cfg.is_swa(il) else 0, scale)
            for il, L in enumerate(layers)]  # fmt: skip


def head_buffers(buf: Buffers, T: int, H: int, n_kv: int, D: int, Dv: int) -> tuple[Any, ...]:
    """A step's ``q, k, v, att`` for a layer of ``H`` query and ``n_kv`` KV heads (a buffer per head count), then the
    same four by head (``q3, k3, v3, att3``)."""
    q, att = buf.get(f"q{H}", T, H * D), buf.get(f"att{H}", T, H * Dv)
    k, v = buf.get(f"k{n_kv}", T, n_kv * D), buf.get(f"v{n_kv}", T, n_kv * Dv)
    return q, k, v, att, q.reshape(T, H, D), k.reshape(T, n_kv, D), v.reshape(T, n_kv, Dv), att.reshape(T, H, Dv)


def gate_heads(be: Backend, buf: Buffers, attn_gate: Weight, xn: Any, att3: Any) -> None:
    """``att3`` ``[T, H, Dv]`` times ``sigmoid(attn_gate xn)``, one gate a head, in place."""
    T, H = att3.shape[0], att3.shape[1]
    g = buf.get(f"attn_gate{H}", T, H)
    be.linear(attn_gate, xn, g)
    be.sigmoid_mul(att3, g)  # (one gate over each head's values; on the GPU a kernel: a captured decode step stays there)


class Step35Model(LlamaModel):
    archs = ("step35",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        for key in ("expert_feed_forward_length", "attention.sliding_window"):  # (llama.cpp requires them)
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata step35.{key} is missing; the file is not a complete model")
        # (one value or one a layer, 0 where unstated; llama.cpp clamps where it is above 1e-6)
        self.clamp_exp, self.clamp_shexp = (
            [v if v > 1e-6 else 0.0 for v in per_layer(g, key, cfg.n_layer, 0, float)] for key in ("swiglu_clamp_exp", "swiglu_clamp_shexp")
        )
        self.n_heads = per_layer(g, "attention.head_count", cfg.n_layer, cfg.n_head)
        self.n_kv = per_layer(g, "attention.head_count_kv", cfg.n_layer, cfg.n_head_kv)
        self.gating = gating_func(g, GATING)
        self.weights_scale = weights_scale(g)
        self.n_rot_swa = int(g.arch_get("rope.dimension_count_swa", cfg.rope_dim) or cfg.rope_dim)
        # (the global layers rotate half of rope.dimension_count: Llama's rope tables and rope_factors at that width)
        super().__init__(g, dataclasses.replace(cfg, rope_dim=cfg.rope_dim // 2), backend, n_ctx, n_batch)
        if self.output is self.tok_embd:  # (llama.cpp requires the output head)
            WeightLoader(g, backend).matrix("output")
        local = dataclasses.replace(cfg, rope_dim=self.n_rot_swa, rope_scaling_type="none")
        self.rope_local = make_rope(local, n_ctx, cfg.rope_theta_swa or cfg.rope_theta)

    def rope_factors(self, w: WeightLoader, n_ctx: int) -> np.ndarray | None:
        """The global layers' share of ``rope_freqs`` (llama.cpp's one tensor, sized for the widest layer's rope): its first
        ``n_rot / 2`` entries."""
        f = w.host_vector("rope_freqs", required=False)
        return None if f is None else f[: self.cfg.rope_dim // 2]

    def load_layer(self, w: WeightLoader, i: int) -> Step35Layer:  # type: ignore[override]
        c, H, n_kv = self.cfg, self.n_heads[i], self.n_kv[i]
        want = {"wq": (H * c.head_dim, c.n_embd), "wk": (n_kv * c.head_dim, c.n_embd),
                "wv": (n_kv * c.head_dim_v, c.n_embd), "wo": (c.n_embd, H * c.head_dim_v)}  # fmt: skip
        m = {role: w.matrix(role, i) for role in want}
        gate = w.matrix("attn_gate", i, required=False)
        if gate is not None:
            want["attn_gate"] = (H, c.n_embd)
            m["attn_gate"] = gate
        for role, shape in want.items():
            if tuple(m[role].shape) != shape:
                raise GGUFError(f"{w.g.path}: blk.{i} {role} has shape {tuple(m[role].shape)}, expected {shape}; the file is not a supported model")
        q_norm, k_norm = w.vector("q_norm", i, required=False), w.vector("k_norm", i, required=False)
        for role, n in (("q_norm", q_norm), ("k_norm", k_norm)):
            if n is not None and n.shape[0] != c.head_dim:
                raise GGUFError(f"{w.g.path}: blk.{i}.attn_{role} has {n.shape[0]} weights, expected one head's ({c.head_dim})")
        L = Step35Layer(attn_norm=w.vector("attn_norm", i), n_head=H, n_kv=n_kv, q_norm=q_norm, k_norm=k_norm,
                        attn_gate=m.pop("attn_gate", None), ffn_norm=w.vector("ffn_norm", i), **m)  # fmt: skip
        if w.has("ffn_gate_inp", i):
            L.moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, c.expert_weights_norm,
                             gating=self.gating, shared="plain")  # fmt: skip
            L.moe.weights_scale = self.weights_scale
            L.moe.swiglu_limit, L.moe.shared.swiglu_limit = self.clamp_exp[i], self.clamp_shexp[i]
        else:
            L.w_gate, L.w_up, L.w_down = (w.matrix(r, i) for r in ("w_gate", "w_up", "w_down"))
            L.swiglu_limit = self.clamp_shexp[i]  # (llama.cpp's build_ffn clamps the dense FFN by the shared expert's)
        return L

    def layer_specs(self) -> list[LayerSpec]:
        return per_layer_head_specs(self.cfg, self.layers)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T, D, Dv = len(tokens), c.head_dim, c.head_dim_v
        x, xn = buf.get("x", T, c.n_embd), buf.get("xn", T, c.n_embd)
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            q, k, v, att, q3, k3, v3, att3 = head_buffers(buf, T, L.n_head, L.n_kv, D, Dv)
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            self.trace("attn_norm", il, xn)
            if L.q_norm is not None:
                be.rms_norm_heads(q3, L.q_norm, c.norm_eps)
            if L.k_norm is not None:
                be.rms_norm_heads(k3, L.k_norm, c.norm_eps)
            cos, sin = self.rope_local if c.is_swa(il) else (self.rope_cos, self.rope_sin)
            be.rope_qk(q3, k3, pos, cos, sin, c.rope_neox)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            if L.attn_gate is not None:  # (one gate a head)
                gate_heads(be, buf, L.attn_gate, xn, att3)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)
            moe_or_swiglu_add(be, L, x, xn, c.norm_eps, buf, L.swiglu_limit)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
