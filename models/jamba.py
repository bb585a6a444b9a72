"""AI21's Jamba (Jamba-v0.1, Jamba-1.5-Mini/Large, Jamba-1.6/1.7-Mini), as llama.cpp's ``jamba`` graph: Mamba 1 mixers
(``mamba.py``) interleaved with grouped-query attention layers, as Granite 4.0-H mixes Mamba-2 and attention
(``granitehybrid.py``).  Every layer is pre-norm (RMSNorm), its operator then an FFN, each with a residual add::

    x = x + op(rms_norm(x) * attn_norm),  op: Mamba 1 | attention (no rope: the Mamba layers carry order)
    x = x + ffn(rms_norm(x) * ffn_norm),  ffn: SwiGLU | a mixture of experts

Which operator a layer runs is its ``head_count_kv`` (0: Mamba; the converter writes one attention layer in every
``attn_layer_period`` from ``attn_layer_offset``, 1 in 8 in the published checkpoints); which FFN, whether the layer has a
router (``ffn_gate_inp``; every ``expert_layer_period``-th layer, every other one in Jamba, 16 experts of which 2 a token,
softmax weights as the router gave them: llama.cpp's ``norm_w`` false).  Jamba's Mamba 1 normalises the scan's ``dt``,
``B`` and ``C`` (RMSNorm with weights ``ssm_dt_norm``, ``ssm_b_norm``, ``ssm_c_norm``) before the time step's projection
and the scan, as Falcon-Mamba does without weights.

The Mamba layers' state lives in the cache beside the attention layers' K/V (``cache/mamba.py``; on the GPU
``cache/gpu_ssm.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES, WeightLoader
from .mamba import MambaLayer, MambaModel
from .moe import MoE, load_moe, moe_add, weights_scale

TENSOR_NAMES.update({  # llama.cpp's LLM_TENSOR_SSM_DT_NORM, SSM_B_NORM, SSM_C_NORM (Jamba's, PLaMo 2's)
    "ssm_dt_norm": "blk.{i}.ssm_dt_norm.weight",
    "ssm_b_norm": "blk.{i}.ssm_b_norm.weight",
    "ssm_c_norm": "blk.{i}.ssm_c_norm.weight",
})  # fmt: skip


@dataclass
class JambaLayer:
    attn_norm: Any  # [n_embd]: the norm before the mixer or the attention
    ffn_norm: Any  # [n_embd]
    mamba: MambaLayer | None = None  # a Mamba layer's mixer (its attn_norm the one above), or the attention's weights below
    wq: Weight | None = None
    wk: Weight | None = None
    wv: Weight | None = None
    wo: Weight | None = None
    bq: Any = None  # [n_head*head_dim] or None (create_tensor_qkv's optional biases)
    bk: Any = None
    bv: Any = None
    w_gate: Weight | None = None  # a dense SwiGLU FFN, or None: the mixture of experts below
    w_up: Weight | None = None
    w_down: Weight | None = None
    moe: MoE | None = None


def dt_b_c_norms(w: WeightLoader, L: MambaLayer, i: int, dt_rank: int, d_state: int, prefix: str = "") -> MambaLayer:
    """``L`` with layer i's weighted RMS norms of dt, B and C (all three required, as llama.cpp's loader has them);
    ``prefix`` "plamo2_": the names PLaMo 2's files give them (no ``.weight``)."""
    for field, n in (("dt_norm", dt_rank), ("b_norm", d_state), ("c_norm", d_state)):
        role = f"{prefix}ssm_{field}"
        v = w.host_vector(role, i)
        if v.size != n:
            raise GGUFError(f"{w.g.path}: {TENSOR_NAMES[role].format(i=i)} has {v.size} values, expected {n}; the file is not a supported model")
        setattr(L, field, v)
    return L


class JambaModel(MambaModel):
    archs = ("jamba",)
    ROPE_ABSENCE = "the Mamba layers carry order"  # (rope-less attention among them)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if len(cfg.ssm_layers) != cfg.n_layer:
            raise GGUFError(f"{g.path}: {cfg.arch}.attention.head_count_kv has {len(cfg.ssm_layers)} entries for {cfg.n_layer} layers")
        if all(cfg.ssm_layers) or cfg.n_head_kv <= 0 or cfg.n_head % cfg.n_head_kv:
            raise GGUFError(f"{g.path}: {cfg.arch} attention with {cfg.n_head} heads over {cfg.n_head_kv} K/V heads; the file is not a supported model")
        self.moe_scale = weights_scale(g)  # (llama.cpp's w_scale: 0, unstated, scales nothing)
        super().__init__(g, cfg, backend, n_ctx, n_batch)  # (MambaModel's: the ssm sizes, embeddings, head, layers)

    def load_layer(self, w: WeightLoader, i: int) -> JambaLayer:  # type: ignore[override]
        c = self.cfg
        L = JambaLayer(attn_norm=w.vector("attn_norm", i), ffn_norm=w.vector("ffn_norm", i))
        if c.ssm_layers[i]:
            L.mamba = dt_b_c_norms(w, super().load_layer(w, i), i, self.dt_rank, self.d_state)
        else:
            L.wq, L.wk, L.wv, L.bq, L.bk, L.bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
            L.wo = w.matrix("wo", i)
        if w.has("ffn_gate_inp", i):  # (a router: this layer's FFN is the experts)
            L.moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, c.expert_weights_norm)
            L.moe.weights_scale = self.moe_scale
        else:
            L.w_gate, L.w_up, L.w_down = (w.matrix(r, i) for r in ("w_gate", "w_up", "w_down"))
        return L

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        attn = LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, 0, 1.0 / np.sqrt(c.head_dim_v))
        mamba = LayerSpec(1, 1, 1, 1, mamba=(self.d_conv, self.d_inner, self.d_state))
        return [mamba if ssm else attn for ssm in c.ssm_layers]

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            if L.mamba is not None:
                be.rms_norm(x, L.attn_norm, c.norm_eps, xn)
                be.linear_add(L.mamba.out_proj, self.mixer(L.mamba, cache[il], xn, pos), x)
            else:
                be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
                if L.bq is not None:
                    be.add_bias(q, L.bq)
                    be.add_bias(k, L.bk)
                    be.add_bias(v, L.bv)
                cache[il].update_and_attend(q3, k3, v3, pos, att3)  # (no rope)
                be.linear_add(L.wo, att, x)
            self.trace("attn_out", il, x)
            if L.moe is not None:
                be.rms_norm(x, L.ffn_norm, c.norm_eps, xn)
                moe_add(be, L.moe, xn, x, buf)
            else:
                be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
                be.linear_glu(L.w_down, gate, up, x, "silu", accumulate=True)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
