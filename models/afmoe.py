"""Arcee's AFMoE (Trinity Nano 6B-A1B, Trinity Mini 26B-A3B: mixtures of experts made for small machines), as
llama.cpp's ``afmoe`` graph.  The Llama block (``llama.py``) with what sets it apart:

* embeddings times ``sqrt(n_embd)`` (muP; llama.cpp fixes it in code);
* sandwich norms: RMSNorm before and after both the attention and the FFN (``post_attention_norm``,
  ``post_ffw_norm``, as Gemma 2's), the normed output added to the residual;
* gated attention: ``attn_gate`` (as wide as the heads) of the attention's input, ``sigmoid`` of it times the
  attention's output, element by element, before ``attn_output`` (Qwen3.5's gate);
* Q and K RMS-normalised per head; neox rope in three layers of four, the fourth (``(il + 1) % 4 == 0``) without
  (NoPE); where the file states a ``sliding_window`` those three attend within it and the fourth globally (llama.cpp's
  pattern of 4), the window layers rotating at ``rope.freq_base_swa`` where stated;
* the first ``leading_dense_block_count`` layers a dense SwiGLU FFN; the others a mixture of experts (``moe.py``):
  router probabilities by sigmoid (``expert_gating_func``; sigmoid unless stated), chosen with ``exp_probs_b``, the
  chosen weights renormalised where ``expert_weights_norm`` says and times ``expert_weights_scale``; beside them
  ``expert_shared_count`` shared experts as one plain SwiGLU FFN.

On ``--device gpu`` the attention gate is a kernel (``sigmoid_mul``) and the experts route in moe.cu's.
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
from .common import WeightLoader, make_rope
from .llama import LlamaLayer, LlamaModel
from .moe import gating_func, load_moe, moe_add, weights_scale


#: llama.cpp's expert_gating_func values the graph runs (0, unstated: sigmoid, as llama.cpp defaults it for afmoe)
GATING = {0: "sigmoid", 1: "softmax", 2: "sigmoid"}
#: every this many layers, the last attends globally without rope (llama.cpp's fixed pattern)
GLOBAL_EVERY = 4


@dataclass
class AfmoeLayer(LlamaLayer):
    attn_gate: Weight | None = None  # [n_head*head_dim, n_embd]: sigmoid(attn_gate x) times the attention's output
    attn_post_norm: Any = None  # [n_embd]
    ffn_post_norm: Any = None  # [n_embd]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class AfmoeModel(LlamaModel):
    archs = ("afmoe",)
    #: the metadata llama.cpp requires (Muse Glimmer's dense block: none of them)
    required_keys: tuple[str, ...] = ("leading_dense_block_count", "expert_feed_forward_length", "expert_shared_count")
    post_norm_eps = 0.0  # the post-norms' epsilon (0: the file's; Muse Glimmer's fixed 1e-8)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in self.required_keys:  # (llama.cpp requires them)
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata {g.architecture}.{key} is missing; the file is not a complete model")
        self.gating = gating_func(g, GATING)
        self.n_dense_lead = int(g.arch_get("leading_dense_block_count", cfg.n_layer))  # (unstated: every layer dense)
        self.n_shared = int(g.arch_get("expert_shared_count", 0))
        self.weights_scale = weights_scale(g)
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.emb_scale = float(np.sqrt(np.float32(cfg.n_embd)))  # (llama.cpp's sqrtf)
        self.rope_local = (self.rope_cos, self.rope_sin)  # the window layers' (their own base where the file states one)
        if cfg.sliding_window and cfg.rope_theta_swa:
            self.rope_local = make_rope(dataclasses.replace(cfg, rope_scaling_type="none"), n_ctx, cfg.rope_theta_swa)

    def load_layer(self, w: WeightLoader, i: int) -> AfmoeLayer:
        c = self.cfg
        q_norm, k_norm, full = self.load_qk_norm(w, i, required=True)
        if full:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm span all heads; afmoe's are one head ({c.head_dim}) wide")
        gate = w.matrix("attn_gate", i)
        if tuple(gate.shape) != (c.n_head * c.head_dim, c.n_embd):
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_gate.weight has shape {tuple(gate.shape)}, expected "
                            f"{(c.n_head * c.head_dim, c.n_embd)}; the file is not a supported model")  # fmt: skip
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        L = AfmoeLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=bq, bk=bk, bv=bv,
            q_norm=q_norm, k_norm=k_norm, ffn_norm=w.vector("ffn_norm", i), w_gate=None, w_up=None, w_down=None,
            rope=(i + 1) % GLOBAL_EVERY != 0, attn_gate=gate,
            attn_post_norm=w.vector("attn_post_norm", i), ffn_post_norm=w.vector("ffn_post_norm", i),
        )  # fmt: skip
        if i < self.n_dense_lead:
            L.w_gate, L.w_up, L.w_down = (w.matrix(r, i) for r in ("w_gate", "w_up", "w_down"))
            return L
        w.host_vector("exp_probs_b", i)  # (llama.cpp requires it: a one-line error naming it where it is missing)
        L.moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, c.expert_weights_norm, gating=self.gating,
                         shared="plain" if self.n_shared > 0 else None)  # fmt: skip
        L.moe.weights_scale = self.weights_scale
        return L

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = 1.0 / np.sqrt(c.head_dim)
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, c.sliding_window if c.is_swa(il) else 0, scale)
                for il in range(c.n_layer)]  # fmt: skip

    def embed(self, tokens: np.ndarray, x: Any, xn: Any) -> None:
        """The residual stream's first rows ``x`` for ``tokens`` (``xn``: scratch): the embeddings times sqrt(n_embd)."""
        self.be.get_rows(self.tok_embd, tokens, x)
        self.be.scale(x, self.emb_scale)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)
        o, ag = buf.get("o", T, c.n_embd), buf.get("attn_gate", T, c.n_head * c.head_dim)  # a block's output; the gate
        self.embed(tokens, x, xn)
        post_eps = self.post_norm_eps or c.norm_eps
        for il, L in enumerate(self.layers):
            be.rms_norm(x, L.attn_norm, c.norm_eps, xn)
            be.linear_many((L.wq, L.wk, L.wv, L.attn_gate), xn, (q, k, v, ag))
            if L.rope:
                cos, sin = self.rope_local if c.is_swa(il) else (self.rope_cos, self.rope_sin)
                self.qk_norm_rope(L, q, k, q3, k3, pos, cos, sin)
            else:  # (NoPE: the per-head norms alone)
                be.rms_norm_heads(q3, L.q_norm, c.norm_eps)
                be.rms_norm_heads(k3, L.k_norm, c.norm_eps)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            if be.name == "cpu":
                att *= _sigmoid(ag)
            else:  # (a kernel: a captured decode step brings nothing to the host)
                be.sigmoid_mul(att, ag)
            be.linear(L.wo, att, o)
            be.rms_norm_add(o, L.attn_post_norm, post_eps, x)
            be.rms_norm(x, L.ffn_norm, c.norm_eps, xn)
            if L.moe is not None:
                moe_add(be, L.moe, xn, o, buf, accumulate=False)
            else:
                be.linear_many((L.w_gate, L.w_up), xn, (gate, up))
                be.linear_glu(L.w_down, gate, up, o, "silu")
            be.rms_norm_add(o, L.ffn_post_norm, post_eps, x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
