"""Poolside's Laguna (Laguna-XS.2 30B-A3B, S.2 118B-A8B, M.1 230B-A10B), as llama.cpp's ``laguna`` graph.

Pre-norm decoder (RMSNorm -> attention -> residual -> RMSNorm -> FFN -> residual; no post-norms, no embedding
scale), with what sets it apart:

* an attention output gate by ``softplus`` (not AFMoE's sigmoid) of ``attn_gate`` times the attention's input, before
  ``attn_output``: one gate a head (``attn_gate`` ``[n_head, n_embd]``, XS.2) or one a value (``[n_head * head_dim,
  n_embd]``, M.1), told apart layer by layer by the tensor's width as llama.cpp's loader does;
* each layer its own number of query heads where ``head_count`` is a list (XS.2: 48 on the global layers, 64 on the
  window ones), the KV heads alike where listed; Q and K RMS-normalised head by head before the neox rope;
* windows where the file states ``sliding_window`` (M.1 states none: every layer global): the layers its
  ``sliding_window_pattern`` flags, else 3 window layers after each global one (llama.cpp's pattern of 4, global
  first); rope per kind of layer: the global layers rotate ``rope.dimension_count`` with the file's scaling (YaRN in
  the checkpoints), the window layers ``rope.dimension_count_swa`` at ``rope.freq_base_swa`` plainly (no scaling,
  no YaRN magnitude: llama.cpp's ``rope_freq_scale_train_swa`` 1 and attention factor 1);
* the first ``leading_dense_block_count`` layers a dense SwiGLU FFN, the others a mixture of experts (``moe.py``)
  routed by ``expert_gating_func`` (sigmoid unless stated), chosen with ``exp_probs_b``, renormalised where
  ``expert_weights_norm`` says, times ``expert_weights_scale``, beside one shared expert
  ``expert_shared_feed_forward_length`` wide (else ``expert_feed_forward_length`` x ``expert_shared_count``);
  the output head the token embeddings where the file has no ``output.weight``.

On ``--device gpu`` the softplus gate is a kernel (the backend's ``softplus_mul``), the experts route in moe.cu's
kernels (the selection bias and the shared expert included): a decode step brings nothing to the host and is
captured as a CUDA graph.
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
from ..ops.backend import Backend
from .common import WeightLoader, make_rope
from .llama import LlamaModel
from .mimo2 import per_layer
from .moe import expert_groups, gating_func, load_moe, moe_or_swiglu_add, weights_scale
from .step35 import Step35Layer


#: llama.cpp's expert_gating_func values the graph runs (0, unstated: sigmoid, as llama.cpp defaults it for laguna)
GATING = {0: "sigmoid", 1: "softmax", 2: "sigmoid"}


@dataclass
class LagunaLayer(Step35Layer):
    gate_per_head: bool = True  # attn_gate one row a head (XS.2); False: one a value (M.1)
    bqkv: tuple[Any, Any, Any] = (None, None, None)  # Q, K and V's biases, each where the file has it (create_tensor_qkv)


class LagunaModel(LlamaModel):
    archs = ("laguna",)
    #: the metadata llama.cpp requires
    required_keys = ("attention.layer_norm_rms_epsilon", "leading_dense_block_count", "expert_feed_forward_length")

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in self.required_keys:
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata laguna.{key} is missing; the file is not a complete model")
        self.n_heads = per_layer(g, "attention.head_count", cfg.n_layer, cfg.n_head)
        self.n_kv = per_layer(g, "attention.head_count_kv", cfg.n_layer, cfg.n_head_kv)
        if g.arch_get("attention.key_length") is None:  # (llama.cpp: n_embd over the first layer's heads, not the widest's)
            hd = cfg.n_embd // self.n_heads[0]
            cfg = dataclasses.replace(cfg, head_dim=hd, head_dim_v=int(g.arch_get("attention.value_length", hd)),
                                      rope_dim=int(g.arch_get("rope.dimension_count", hd)))  # fmt: skip
        if cfg.head_dim_v != cfg.head_dim:
            raise GGUFError(f"{g.path}: laguna's key_length {cfg.head_dim} and value_length {cfg.head_dim_v} differ; "
                            "llama.cpp requires them equal")  # fmt: skip
        self.n_dense_lead = int(g.arch_get("leading_dense_block_count"))
        self.gating = gating_func(g, GATING)
        self.weights_scale = weights_scale(g)
        self.groups = expert_groups(g, cfg.n_expert)
        n_shared = int(g.arch_get("expert_shared_count", 1) or 1)
        self.n_ff_shexp = int(g.arch_get("expert_shared_feed_forward_length", 0) or 0) or cfg.n_ff_exp * n_shared
        n_rot_swa = int(g.arch_get("rope.dimension_count_swa", cfg.rope_dim) or cfg.rope_dim)
        # (the global layers rotate the graph's n_rot, which llama.cpp takes from layer 0: the window width where a
        # file's pattern makes layer 0 a window layer)
        n_rot = n_rot_swa if cfg.is_swa(0) else cfg.rope_dim
        super().__init__(g, dataclasses.replace(cfg, rope_dim=n_rot), backend, n_ctx, n_batch)
        local = dataclasses.replace(cfg, rope_dim=n_rot_swa, rope_scaling_type="none", yarn_attn_factor=1.0)
        self.rope_local = make_rope(local, n_ctx, cfg.rope_theta_swa or cfg.rope_theta)

    def load_layer(self, w: WeightLoader, i: int) -> LagunaLayer:  # type: ignore[override]
        c, H, n_kv = self.cfg, self.n_heads[i], self.n_kv[i]
        wq, wk, wv, bq, bk, bv = w.qkv(i, (H * c.head_dim, n_kv * c.head_dim, n_kv * c.head_dim))
        m = {"wq": wq, "wk": wk, "wv": wv, "wo": w.matrix("wo", i), "attn_gate": w.matrix("attn_gate", i)}
        want = {"wq": (H * c.head_dim, c.n_embd), "wk": (n_kv * c.head_dim, c.n_embd), "wv": (n_kv * c.head_dim, c.n_embd),
                "wo": (c.n_embd, H * c.head_dim)}  # fmt: skip
        gate_rows = m["attn_gate"].shape[0]
        want["attn_gate"] = (gate_rows if gate_rows in (H, H * c.head_dim) else H, c.n_embd)  # (one a head or one a value)
        for role, shape in want.items():
            if tuple(m[role].shape) != shape:
                raise GGUFError(f"{w.g.path}: blk.{i} {role} has shape {tuple(m[role].shape)}, expected {shape}; "
                                "the file is not a supported model")  # fmt: skip
        q_norm, k_norm, full = self.load_qk_norm(w, i, required=True)
        if full:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm span all heads; laguna's are one head ({c.head_dim}) wide")
        L = LagunaLayer(attn_norm=w.vector("attn_norm", i), n_head=H, n_kv=n_kv, q_norm=q_norm, k_norm=k_norm,
                        ffn_norm=w.vector("ffn_norm", i), gate_per_head=gate_rows == H,
                        bqkv=(bq, bk, bv), **m)  # fmt: skip
        if i < self.n_dense_lead:
            L.w_gate, L.w_up, L.w_down = (w.matrix(r, i) for r in ("w_gate", "w_up", "w_down"))
            return L
        w.host_vector("exp_probs_b", i)  # (llama.cpp requires it: a one-line error naming it where it is missing)
        L.moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, c.expert_weights_norm, gating=self.gating, shared="plain")
        if L.moe.shared.gate.shape[0] != self.n_ff_shexp:
            raise GGUFError(f"{w.g.path}: blk.{i}.ffn_gate_shexp.weight has {L.moe.shared.gate.shape[0]} rows, expected "
                            f"{self.n_ff_shexp}; the file is not a supported model")  # fmt: skip
        L.moe.weights_scale = self.weights_scale
        L.moe.n_group, L.moe.n_group_used = self.groups
        return L

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = 1.0 / np.sqrt(c.head_dim)
        return [LayerSpec(L.n_head, L.n_kv, c.head_dim, c.head_dim, c.sliding_window if c.is_swa(il) else 0, scale)
                for il, L in enumerate(self.layers)]  # fmt: skip

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T, D = len(tokens), c.head_dim
        x, xn = buf.get("x", T, c.n_embd), buf.get("xn", T, c.n_embd)
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            H, n_kv, n_g = L.n_head, L.n_kv, L.attn_gate.shape[0]
            q, att, g = buf.get(f"q{H}", T, H * D), buf.get(f"att{H}", T, H * D), buf.get(f"gate{n_g}", T, n_g)  # (by width)
            k, v = buf.get(f"k{n_kv}", T, n_kv * D), buf.get(f"v{n_kv}", T, n_kv * D)
            q3, k3, v3, att3 = q.reshape(T, H, D), k.reshape(T, n_kv, D), v.reshape(T, n_kv, D), att.reshape(T, H, D)
            # (the gate of the attention's input, as Q, K and V)
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv, L.attn_gate), (q, k, v, g))
            self.trace("attn_norm", il, xn)
            for y, b in zip((q, k, v), L.bqkv):
                if b is not None:
                    be.add_bias(y, b)
            cos, sin = self.rope_local if c.is_swa(il) else (self.rope_cos, self.rope_sin)
            be.norm_rope_qk(q3, k3, L.q_norm, L.k_norm, c.norm_eps, pos, cos, sin, c.rope_neox)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("attn_out", il, att)
            be.softplus_mul(att, g)  # (g [T, H]: one gate over each head's D values; [T, H * D]: one a value)
            be.linear_add(L.wo, att, x)
            moe_or_swiglu_add(be, L, x, xn, c.norm_eps, buf)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
