"""LFM2 (Liquid AI's LFM2-350M / 700M / 1.2B / 2.6B) and LFM2-MoE (LFM2-8B-A1B):
https://www.liquid.ai/blog/liquid-foundation-models-v2

A hybrid made for edge devices, as llama.cpp's LFM2 graph: most layers are short gated
convolutions, the rest grouped-query attention.  Every layer is pre-norm (RMSNorm) with a SwiGLU
FFN after its operator; which layers attend is the per-layer ``head_count_kv`` (0: a convolution).

A convolution layer (``shortconv``): ``B, C, x = in_proj(xn)`` (three ``n_embd`` chunks), a
causal depthwise convolution of ``B * x`` over the last ``l_cache`` positions (each channel its own
kernel), gated by ``C``, then ``out_proj``.  Its state, the last inputs, lives in the cache beside
the attention layers' K/V (``cache/conv.py``).  An attention layer RMS-normalises each head of Q
and K before NeoX rope, as Qwen3.  The final norm is stored as ``token_embd_norm`` (llama.cpp's
name fix for LFM2).  The convolution runs in numpy on the host, on the GPU as a kernel (``models/gpu_recurrent.py``).

LFM2-MoE keeps the first ``leading_dense_block_count`` FFNs dense and gives the others a mixture
of experts (``moe.py``) whose router takes each expert's sigmoid, chooses the top experts by it
plus a per-expert bias (``exp_probs_b``: load balancing), and weights them by the sigmoids alone,
renormalised, as llama.cpp's graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES, Model, WeightLoader, make_rope
from .moe import MoE, load_moe, moe_add

TENSOR_NAMES.update({  # LFM2's names (llama.cpp's LLM_TENSOR_SHORTCONV_*, its output norm fix)
    "conv": "blk.{i}.shortconv.conv.weight",
    "conv_in": "blk.{i}.shortconv.in_proj.weight",
    "conv_out": "blk.{i}.shortconv.out_proj.weight",
    "output_norm_lfm2": "token_embd_norm.weight",
})  # fmt: skip


@dataclass
class Lfm2Layer:
    attn_norm: Any  # [n_embd]: the operator norm, before the convolution or the attention
    ffn_norm: Any  # [n_embd]
    w_gate: Weight | None  # [n_ff, n_embd] (None: a mixture of experts instead)
    w_up: Weight | None  # [n_ff, n_embd]
    w_down: Weight | None  # [n_embd, n_ff]
    moe: MoE | None = None
    conv: np.ndarray | None = None  # [n_embd, l_cache] float32: each channel's kernel, oldest position first
    conv_in: Weight | None = None  # [3 * n_embd, n_embd]: B, C, x
    conv_out: Weight | None = None  # [n_embd, n_embd]
    wq: Weight | None = None  # [n_head*head_dim, n_embd]
    wk: Weight | None = None  # [n_head_kv*head_dim, n_embd]
    wv: Weight | None = None
    wo: Weight | None = None  # [n_embd, n_head*head_dim]
    q_norm: Any = None  # [head_dim]
    k_norm: Any = None


class Lfm2Model(Model):
    archs = ("lfm2", "lfm2moe")
    takes_images = True  # its forward reads Model.input_embd (LFM2-VL's image rows: Engine.eval_embd)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        kv = g.arch_get("attention.head_count_kv")
        per_layer = list(kv) if hasattr(kv, "__len__") else [kv] * cfg.n_layer
        if len(per_layer) != cfg.n_layer:
            raise GGUFError(f"{g.path}: lfm2.attention.head_count_kv has {len(per_layer)} entries for {cfg.n_layer} layers")
        self.is_conv = [int(n) == 0 for n in per_layer]
        self.l_cache = int(g.arch_get("shortconv.l_cache", 3))
        self.n_dense = int(g.arch_get("leading_dense_block_count", cfg.n_layer) or 0) if cfg.n_expert else cfg.n_layer
        self.gating = {1: "softmax", 2: "sigmoid"}.get(int(g.arch_get("expert_gating_func", 1) or 1))
        if self.gating is None:
            raise UnsupportedModelError(f"{g.path}: expert_gating_func {g.arch_get('expert_gating_func')} is not supported (1 softmax, 2 sigmoid)")
        w = WeightLoader(g, backend)
        self.tok_embd = w.matrix("tok_embd")
        self.output = w.matrix("output", required=False) or self.tok_embd
        self.output_norm = w.vector("output_norm_lfm2")
        self.layers = [self._load_layer(w, i) for i in range(cfg.n_layer)]
        self.rope_cos, self.rope_sin = make_rope(cfg, n_ctx, cfg.rope_theta)

    def _load_layer(self, w: WeightLoader, i: int) -> Lfm2Layer:
        c = self.cfg
        if i < self.n_dense:
            L = Lfm2Layer(attn_norm=w.vector("attn_norm", i), ffn_norm=w.vector("ffn_norm", i),
                          w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i))  # fmt: skip
        else:
            L = Lfm2Layer(attn_norm=w.vector("attn_norm", i), ffn_norm=w.vector("ffn_norm", i), w_gate=None, w_up=None, w_down=None,
                          moe=load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, c.expert_weights_norm, self.gating))  # fmt: skip
        if self.is_conv[i]:
            k = w.host_vector("conv", i)
            L.conv = k.reshape(self.cfg.n_embd, self.l_cache)
            L.conv_in, L.conv_out = w.matrix("conv_in", i), w.matrix("conv_out", i)
        else:
            L.wq, L.wk, L.wv, L.wo = (w.matrix(r, i) for r in ("wq", "wk", "wv", "wo"))
            L.q_norm, L.k_norm = w.vector("q_norm", i), w.vector("k_norm", i)
        return L

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        attn = LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, 0, 1.0 / np.sqrt(c.head_dim))
        conv = LayerSpec(1, 1, 1, 1, conv=c.n_embd, conv_kernel=self.l_cache)
        return [conv if is_conv else attn for is_conv in self.is_conv]

    def _conv(self, L: Lfm2Layer, state, xn: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """A convolution layer's output ``[T, n_embd]`` for the normed input ``xn`` ``[T, n_embd]``."""
        if self.be.name == "gpu":  # (a kernel on the in-projection's rows, the ring on the device: models/gpu_recurrent.py)
            from .gpu_recurrent import lfm2_conv

            return lfm2_conv(self, L, state, xn, pos)
        n, T = self.cfg.n_embd, xn.shape[0]
        bcx = self.buf.get("conv_bcx", T, 3 * n)
        self.be.linear(L.conv_in, xn, bcx)
        b, c, x = bcx[:, :n], bcx[:, n : 2 * n], bcx[:, 2 * n :]
        win = state.window(b * x, pos)  # [d_conv + T, n]: the inputs before, then these
        y = np.zeros((T, n), np.float32)
        for j in range(self.l_cache):  # (a depthwise kernel of 3: three shifted multiply-adds)
            y += win[j : j + T] * L.conv[:, j]
        y *= c
        out = self.buf.get("conv_out", T, n)
        self.be.linear(L.conv_out, y, out)
        return out

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)
        be.get_rows(self.tok_embd, tokens, x)
        if self.input_embd is not None:  # an image's rows (LFM2-VL's), read causally as llama.cpp feeds them
            x[...] = be.vector(self.input_embd)  # (host rows: uploaded on the GPU, as is on the CPU)
        for il, L in enumerate(self.layers):
            if L.conv is not None:
                be.rms_norm(x, L.attn_norm, c.norm_eps, xn)
                be.add(x, self._conv(L, cache[il], xn, pos))
            else:
                be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
                be.norm_rope_qk(q3, k3, L.q_norm, L.k_norm, c.norm_eps, pos, self.rope_cos, self.rope_sin, c.rope_neox)
                cache[il].update_and_attend(q3, k3, v3, pos, att3)
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
