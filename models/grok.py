"""xAI Grok-1 (314B, 8 experts 2 a token) and Grok-2 (270B), as llama.cpp's ``grok`` graph: the Llama block with
sandwich norms, a mixture of GELU experts and muP-style multipliers::

    x = embd * embedding_scale
    x = x + rms_norm(W_o attn(rms_norm(x) * attn_norm)) * attn_output_norm
    h = rms_norm(x) * ffn_norm
    x = x + rms_norm(f(h)) * layer_output_norm,   f = MoE(h)  (Grok-1)  |  (MoE(h) + FFN(h)) / sqrt(2)  (Grok-2)
    logits = final_softcap(W_out rms_norm(x) * logit_scale)

What sets it apart:

* the attention scores are ``30 tanh(q.k * attention.output_scale / 30)`` (``attn_logit_softcapping``), softmaxed
  with no other scale: Grok's ``attn_output_multiplier`` (1/sqrt(128)) stands for 1/sqrt(head_dim);
* RMSNorms after the attention (``attn_output_norm``) and after the FFN (``layer_output_norm``; older converters'
  ``post_ffw_norm``) as well as before them;
* the experts are GELU-gated (``gelu(gate) * up``, tanh GELU looked up in ggml's float16 table), softmax-routed, their weights renormalised;
  Grok-2 runs a dense GELU FFN beside them (``ffn_gate``/``ffn_up``/``ffn_down``) and averages the two as
  ``(moe + dense) * sqrt(2) / 2``;
* embeddings times ``embedding_scale``, logits times ``logit_scale`` then soft-capped by
  ``final_logit_softcapping`` (Grok-2's; off unless stated).  Where a file states none of these (Grok-1 GGUFs from
  older converters) llama.cpp fixes Grok-1's: embeddings times 78.38 (sqrt 6144), scores times 0.0884 capped at 30,
  logits times 0.577 (1/sqrt 3), YaRN's beta_fast 8 (and so does kvrun);
* NeoX rope over whole heads; ``router_logit_softcapping`` is read by llama.cpp but not applied (nor here).

On ``--device gpu`` the float16-table GELU is a kernel (moe2.cu), the experts routed in moe.cu's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES, WeightLoader
from .llama import LlamaModel
from .moe import MoE, check_expert_counts, gelu_glu, load_moe, moe_add

TENSOR_NAMES.setdefault("attn_out_norm", "blk.{i}.attn_output_norm.weight")  # (llama.cpp's LLM_TENSOR_ATTN_OUT_NORM)
TENSOR_NAMES.setdefault("layer_out_norm", "blk.{i}.layer_output_norm.weight")  # (LLM_TENSOR_LAYER_OUT_NORM)

#: llama.cpp's Grok-1 values, where the file states none (its "defaults for old GGUFs")
GROK1_DEFAULTS = {"embedding_scale": 78.38367176906169, "logit_scale": 0.5773502691896257,
                  "attention.output_scale": 0.08838834764831845, "attn_logit_softcapping": 30.0,
                  "final_logit_softcapping": 0.0, "rope.scaling.yarn_beta_fast": 8.0}  # fmt: skip


@dataclass
class GrokLayer:
    attn_norm: Any  # [n_embd]
    wq: Weight  # [n_head*head_dim, n_embd] (cut from a fused attn_qkv where the file has one)
    wk: Weight  # [n_head_kv*head_dim, n_embd]
    wv: Weight  # [n_head_kv*head_dim, n_embd]
    bq: Any  # [n_head*head_dim] or None (create_tensor_qkv's optional biases)
    bk: Any
    bv: Any
    wo: Weight  # [n_embd, n_head*head_dim]
    attn_out_norm: Any  # [n_embd]: after the attention, before its residual add
    ffn_norm: Any  # [n_embd]
    moe: MoE  # GELU experts
    ffn_post_norm: Any  # [n_embd]: after the FFN, before its residual add
    w_gate: Weight | None = None  # Grok-2's dense GELU FFN beside the experts (None: Grok-1)
    w_up: Weight | None = None
    w_down: Weight | None = None


class GrokModel(LlamaModel):
    archs = ("grok",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)

        def hp(key: str) -> float:
            v = g.arch_get(key)
            return float(GROK1_DEFAULTS[key] if v is None else v)

        #: scores times this before their soft cap (Grok's attn_output_multiplier); embeddings and logits multiplied
        self.attn_out_scale, self.attn_softcap = hp("attention.output_scale"), hp("attn_logit_softcapping")
        self.embd_scale, self.logit_scale = hp("embedding_scale"), hp("logit_scale")
        for key in ("rope.scaling.yarn_ext_factor", "rope.scaling.yarn_attn_factor"):  # (Grok-2's converter states both, 1.0)
            if float(g.arch_get(key, 1.0)) != 1.0:
                raise UnsupportedModelError(f"{g.path}: grok.{key} {g.arch_get(key)}: YaRN other than its defaults is not supported")
        if self.attn_softcap <= 0:  # (llama.cpp divides the scores by it)
            raise GGUFError(f"{g.path}: grok.attn_logit_softcapping {self.attn_softcap} is not a soft cap llama.cpp runs")
        cfg = dataclasses.replace(cfg, final_logit_softcap=hp("final_logit_softcapping"), yarn_beta_fast=hp("rope.scaling.yarn_beta_fast"),
                                  n_ff_exp=int(g.arch_get("expert_feed_forward_length", 0) or 0) or cfg.n_ff)  # fmt: skip
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> GrokLayer:  # type: ignore[override]
        c = self.cfg
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        post = "layer_out_norm" if w.has("layer_out_norm", i) else "ffn_post_norm"  # (older converters' name)
        if not w.has(post, i):
            raise GGUFError(f"{w.g.path}: tensor 'blk.{i}.layer_output_norm.weight' is missing (nor has it the older "
                            f"'blk.{i}.post_ffw_norm.weight'); the file is incomplete or not a supported model")  # fmt: skip
        dense = w.has("w_up", i)  # (Grok-2: gate, up and down all three)
        return GrokLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv, wo=w.matrix("wo", i),
            attn_out_norm=w.vector("attn_out_norm", i), ffn_norm=w.vector("ffn_norm", i),
            moe=load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, True, act="gelu"),  # (always renormalised)
            ffn_post_norm=w.vector(post, i),
            w_gate=w.matrix("w_gate", i) if dense else None, w_up=w.matrix("w_up", i) if dense else None,
            w_down=w.matrix("w_down", i) if dense else None,
        )  # fmt: skip

    def logit_multiplier(self) -> float:
        return self.logit_scale

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, 0, self.attn_out_scale, self.attn_softcap)] * c.n_layer

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, _, _, q3, k3, v3, att3 = self.step_buffers(T)
        o = buf.get("o", T, c.n_embd)  # a block's output, normed into the residual stream
        be.get_rows(self.tok_embd, tokens, x)
        be.scale(x, self.embd_scale)
        for il, L in enumerate(self.layers):
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            self.trace("attn_norm", il, xn)
            if L.bq is not None:
                be.add_bias(q, L.bq)
                be.add_bias(k, L.bk)
                be.add_bias(v, L.bv)
            be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear(L.wo, att, o)
            be.rms_norm_add(o, L.attn_out_norm, c.norm_eps, x)
            be.rms_norm(x, L.ffn_norm, c.norm_eps, xn)
            moe_add(be, L.moe, xn, o, buf, accumulate=False)
            if L.w_up is not None:  # (Grok-2) the dense FFN beside the experts, the two averaged
                n_ff = L.w_up.shape[0]
                gate, up = buf.get("dense_gate", T, n_ff), buf.get("dense_up", T, n_ff)
                be.linear_many((L.w_gate, L.w_up), xn, (gate, up))
                gelu_glu(be, gate, up)  # (ggml's float16-table GELU, as the experts')
                be.linear_add(L.w_down, gate, o)
                be.scale(o, math.sqrt(2) / 2)
            be.rms_norm_add(o, L.ffn_post_norm, c.norm_eps, x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)

