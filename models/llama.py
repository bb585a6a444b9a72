"""Llama family: Llama 2/3, Mistral, SmolLM2, TinyLlama (and Qwen2 via its QKV bias, Qwen3 via
its QK-norm, OLMoE via its QK-norm over all heads at once).

Pre-norm decoder: RMSNorm -> attention (GQA, RoPE) -> residual -> RMSNorm ->
SwiGLU FFN -> residual; tied or separate output head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import Model, WeightLoader, make_rope
from .moe import MoE, load_moe, moe_add


@dataclass
class LlamaLayer:
    attn_norm: Any  # [n_embd]
    wq: Weight  # [n_head*head_dim, n_embd]
    wk: Weight  # [n_head_kv*head_dim, n_embd]
    wv: Weight  # [n_head_kv*head_dim_v, n_embd]
    wo: Weight  # [n_embd, n_head*head_dim_v]
    bq: Any  # [n_head*head_dim] or None (Qwen2 has QKV bias)
    bk: Any
    bv: Any
    q_norm: Any  # [head_dim] or None (Qwen3 RMS-normalises each head of Q and K before RoPE)
    k_norm: Any  # or [n_head*head_dim] and [n_head_kv*head_dim] (OLMo 2, OLMoE: one norm over all heads)
    ffn_norm: Any  # [n_embd]
    w_gate: Weight  # [n_ff, n_embd]
    w_up: Weight  # [n_ff, n_embd]
    w_down: Weight  # [n_embd, n_ff]
    rope: bool = True  # False: this layer's attention has no positional encoding (SmolLM3's NoPE layers)
    moe: MoE | None = None  # a mixture-of-experts FFN (Mixtral, Qwen3-MoE, Qwen2-MoE, DeepSeek-MoE) in place of w_gate/w_up/w_down
    qk_norm_full: bool = False  # q_norm/k_norm span all heads' width, not one head's
    bo: Any = None  # [n_embd] or None: attn_output's bias (openPangu-Embedded's; models/pangu_embedded.py)


class LlamaModel(Model):
    archs = ("llama", "mistral")
    ffn_act: str = "silu"  # the gated FFN's activation (Gemma's: "gelu", tanh-approximated)
    #: the shared expert every MoE layer has (moe.load_moe's ``shared``: Qwen2-MoE's "gated", DeepSeek-MoE's "plain");
    #: None: where the file has one
    shared_expert: str | None = None
    #: the pre-FFN norm's tensor (Seed-OSS's converter names it post_attention_norm)
    ffn_norm_role: str = "ffn_norm"
    #: the model's name where every layer must have Q and K norms one head wide (llama.cpp's loader and graph for it);
    #: None: any or none
    head_qk_norms: str | None = None

    @property
    def takes_images(self) -> bool:
        """The forward below reads Model.input_embd (SmolVLM's image rows); a subclass with a forward of its own does not."""
        return type(self).forward is LlamaModel.forward

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        w = WeightLoader(g, backend)
        self.tok_embd = w.matrix("tok_embd")  # [n_vocab, n_embd]
        self.output = w.matrix("output", required=False) or self.tok_embd  # tied when absent
        self.output_norm = w.vector("output_norm")
        self.layers = [self.load_layer(w, i) for i in range(cfg.n_layer)]
        self.rope_cos, self.rope_sin = make_rope(cfg, n_ctx, cfg.rope_theta, self.rope_factors(w, n_ctx))

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        c = self.cfg
        moe = None
        if c.n_expert > 0 and w.has("ffn_gate_inp", i):
            moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, c.expert_weights_norm, shared=self.shared_expert)
        dense = moe is None
        q_norm, k_norm, qk_norm_full = self.load_qk_norm(w, i, required=self.head_qk_norms is not None)
        if qk_norm_full and self.head_qk_norms is not None:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm span all heads; "
                            f"{self.head_qk_norms}'s are one head ({c.head_dim}) wide")  # fmt: skip
        return LlamaLayer(
            attn_norm=w.vector("attn_norm", i),
            wq=w.matrix("wq", i),
            wk=w.matrix("wk", i),
            wv=w.matrix("wv", i),
            wo=w.matrix("wo", i),
            bq=w.vector("bq", i, required=False),
            bk=w.vector("bk", i, required=False),
            bv=w.vector("bv", i, required=False),
            q_norm=q_norm,
            k_norm=k_norm,
            ffn_norm=w.vector(self.ffn_norm_role, i),
            w_gate=w.matrix("w_gate", i) if dense else None,
            w_up=w.matrix("w_up", i) if dense else None,
            w_down=w.matrix("w_down", i) if dense else None,
            moe=moe,
            qk_norm_full=qk_norm_full,
        )

    def load_qk_norm(self, w: WeightLoader, i: int, required: bool) -> tuple[Any, Any, bool]:
        """Layer i's QK-norm weights (None, None where it has none) and whether they span all heads.

        The file says which norm it is by the weights' width: one head's (Qwen3: ``[head_dim]``, every
        head normalised alone), or all heads' (OLMo 2, OLMoE: ``[n_head*head_dim]`` and
        ``[n_head_kv*head_dim]``, the whole projection normalised at once)."""
        c = self.cfg
        q_norm = w.vector("q_norm", i, required=required)
        if q_norm is None:
            return None, None, False
        k_norm = w.vector("k_norm", i)  # (one for Q, one for K)
        full = q_norm.shape[0] != c.head_dim
        widths = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim) if full else (c.head_dim, c.head_dim)
        if (q_norm.shape[0], k_norm.shape[0]) != widths:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm have {q_norm.shape[0]}/{k_norm.shape[0]} weights, "
                            f"expected {c.head_dim}/{c.head_dim} or {c.n_head * c.head_dim}/{c.n_head_kv * c.head_dim}; "
                            "the file is not a supported model")  # fmt: skip
        return q_norm, k_norm, full

    def add_output(self, x: Any, o: Any, product: Callable[[Any, bool], None]) -> None:
        """``x += `` a block's output, which ``product(out, accumulate)`` computes into ``out``: straight
        into the residual stream, or (``o`` given) into ``o``, scaled by Granite's residual_scale first."""
        if o is None:
            product(x, True)
        else:
            product(o, False)
            self.be.scale(o, self.cfg.residual_scale)
            self.be.add(x, o)

    def qk_norm_rope(self, L: LlamaLayer, q: Any, k: Any, q3: Any, k3: Any, pos: Any, cos: Any, sin: Any) -> None:
        """A layer's QK-norm, if it has one, then RoPE (unless it is a NoPE layer) of a step's queries and keys,
        in place: ``q``/``k`` ``[T, n_head(_kv)*head_dim]``, ``q3``/``k3`` the same memory by head."""
        c, be = self.cfg, self.be
        if L.qk_norm_full:  # over the whole projection, before it is cut into heads
            be.rms_norm(q, L.q_norm, c.norm_eps, q)
            be.rms_norm(k, L.k_norm, c.norm_eps, k)
            be.rope_qk(q3, k3, pos, cos, sin, c.rope_neox)
        elif L.q_norm is not None:
            be.norm_rope_qk(q3, k3, L.q_norm, L.k_norm, c.norm_eps, pos, cos, sin, c.rope_neox)
        elif L.rope:
            be.rope_qk(q3, k3, pos, cos, sin, c.rope_neox)

    def layer_input(self, L: LlamaLayer, x: Any) -> None:
        """A layer's input ``x`` (the residual stream before its attention norm), for what reads it later in the layer
        (SmallThinker's router); nothing here."""

    def embedding_scale(self) -> float:
        """What the token embeddings are multiplied by (Granite states it in the file; Gemma fixes it)."""
        return self.cfg.embedding_scale

    def rope_factors(self, w: WeightLoader, n_ctx: int) -> np.ndarray | None:
        """Per-frequency rope factors: Llama 3.1+'s long-context scaling (one tensor for all layers)."""
        return w.host_vector("rope_freqs", required=False)

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = c.attention_scale or 1.0 / np.sqrt(c.head_dim)  # Granite states its own
        spec = LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, 0, scale, c.attn_logit_softcap)
        return [spec] * c.n_layer

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)

        o = buf.get("o", T, c.n_embd) if c.residual_scale != 1.0 else None  # (Granite) a block's output
        if self.layer_tap is not None:  # (EAGLE-3's draft reads some layers' outputs: whose rows, at which positions)
            self.layer_tap.begin(pos, cache)
        if self.input_embd is not None:  # an image's rows (SmolVLM's, Engine.eval_embd), attended causally as llama.cpp
            x[...] = be.vector(self.input_embd)  # (host rows: uploaded on the GPU, as is on the CPU)
        else:
            be.get_rows(self.tok_embd, tokens, x)
        if self.embedding_scale() != 1.0:
            be.scale(x, self.embedding_scale())
        for il, L in enumerate(self.layers):
            self.layer_input(L, x)
            be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
            self.trace("attn_norm", il, xn)
            if L.bq is not None:
                be.add_bias(q, L.bq)
                be.add_bias(k, L.bk)
                be.add_bias(v, L.bv)
            self.qk_norm_rope(L, q, k, q3, k3, pos, self.rope_cos, self.rope_sin)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            self.add_output(x, o, lambda out, acc: (be.linear_add if acc else be.linear)(L.wo, att, out))
            if L.bo is not None:  # (straight into the residual stream: no file with it states a residual_scale)
                be.add_bias(x, L.bo)
            if L.moe is not None:
                be.rms_norm(x, L.ffn_norm, c.norm_eps, xn)
                self.add_output(x, o, lambda out, acc: moe_add(be, L.moe, xn, out, buf, accumulate=acc))
            else:
                be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
                self.add_output(x, o, lambda out, acc: be.linear_glu(L.w_down, gate, up, out, self.ffn_act, accumulate=acc))
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
