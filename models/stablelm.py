"""StableLM (Stability AI): StableLM-3B-4E1T, StableLM 2 1.6B / 12B, StableLM Zephyr.

As llama.cpp's STABLELM graph, the Llama block with LayerNorms (with biases) for its RMSNorms:
LN -> attention (GQA) -> residual -> LN -> SwiGLU FFN -> residual, and

* partial rotary, NeoX layout: only the first ``rope.dimension_count`` dimensions of each head turn
  (a quarter of them in every StableLM), the rest pass through (the rope tables are that narrow);
* biases on Q, K and V where the file has them (StableLM 2 1.6B), none on the output projection;
* StableLM 2 12B: Q and K LayerNormed per head before RoPE, each head with its own weights
  (``attn_q_norm`` ``[n_head, head_dim]``, ``attn_k_norm`` ``[n_head_kv, head_dim]``, no bias),
  and a *parallel* block: no ``ffn_norm``, the FFN reads the attention's normed input (the attention
  output still goes into the residual stream first, as llama.cpp adds them);
* the output LayerNorm has a bias, the output head none.
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
from .common import Model, WeightLoader, make_rope


@dataclass
class StableLMLayer:
    attn_norm: Any  # [n_embd]
    attn_norm_b: Any  # [n_embd]
    wq: Weight  # [n_head*head_dim, n_embd]
    wk: Weight  # [n_head_kv*head_dim, n_embd]
    wv: Weight  # [n_head_kv*head_dim, n_embd]
    bq: Any  # [n_head*head_dim] or None
    bk: Any
    bv: Any
    q_norm: Any  # [n_head, head_dim] or None (StableLM 2 12B)
    k_norm: Any  # [n_head_kv, head_dim] or None
    wo: Weight  # [n_embd, n_head*head_dim]
    ffn_norm: Any  # [n_embd] or None: a parallel block (StableLM 2 12B)
    ffn_norm_b: Any  # [n_embd] or None
    w_gate: Weight  # [n_ff, n_embd]
    w_up: Weight  # [n_ff, n_embd]
    w_down: Weight  # [n_embd, n_ff]
    bo: Any = None  # [n_embd] or None: the output projection's bias (none in StableLM; OLMo/Nemotron's layers)


class LayerNormBlockModel(Model):
    """The Llama block with LayerNorms for its RMSNorms: StableLM's forward, shared by OLMo and Nemotron.

    A subclass loads ``tok_embd``, ``output``, ``output_norm``/``output_norm_b``, ``rope_cos``/``rope_sin`` and
    ``layers`` (each with StableLMLayer's fields; ``None`` where it lacks a bias or norm), and may override
    :meth:`ffn_add`.  ``clamp_kqv`` > 0 clips Q, K and V after their projections (OLMo 1.7).
    """

    clamp_kqv: float = 0.0

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, 0, 1.0 / np.sqrt(c.head_dim), 0.0)] * c.n_layer

    def final_norm(self, x: Any, out: Any) -> None:
        self.be.layer_norm(x, self.output_norm, self.output_norm_b, self.cfg.norm_eps, out)

    def ffn_add(self, L: Any, xn: Any, x: Any, gate: Any, up: Any) -> None:
        """``x +=`` layer L's FFN of the normed ``xn``: a SwiGLU (Nemotron overrides it with a squared ReLU)."""
        self.be.linear_many((L.w_gate, L.w_up), xn, (gate, up))
        self.be.linear_glu(L.w_down, gate, up, x, "silu", accumulate=True)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be = self.cfg, self.be
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)

        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            be.layer_norm(x, L.attn_norm, L.attn_norm_b, c.norm_eps, xn)
            self.trace("attn_norm", il, xn)
            be.linear_many((L.wq, L.wk, L.wv), xn, (q, k, v))
            if L.bq is not None:
                be.add_bias(q, L.bq)
                be.add_bias(k, L.bk)
                be.add_bias(v, L.bv)
            if self.clamp_kqv > 0:  # (a backend op: a device's clamp is a kernel a captured step holds)
                for t in (q, k, v):
                    be.clamp(t, self.clamp_kqv)
            if L.q_norm is not None:
                be.layer_norm_heads(q3, L.q_norm, c.norm_eps)
                be.layer_norm_heads(k3, L.k_norm, c.norm_eps)
            be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)
            if L.bo is not None:
                be.add_bias(x, L.bo)
            if L.ffn_norm is not None:
                be.layer_norm(x, L.ffn_norm, L.ffn_norm_b, c.norm_eps, xn)
            # (else a parallel block: xn still holds the attention's normed input, which the FFN reads)
            self.ffn_add(L, xn, x, gate, up)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)


class StableLMModel(LayerNormBlockModel):
    archs = ("stablelm",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        w = WeightLoader(g, backend)
        self.tok_embd = w.matrix("tok_embd")  # [n_vocab, n_embd]
        self.output_norm, self.output_norm_b = w.vector("output_norm"), w.vector("output_norm_b")
        self.output = w.matrix("output")  # (never tied)
        self.layers = [self.load_layer(w, i) for i in range(cfg.n_layer)]
        self.rope_cos, self.rope_sin = make_rope(cfg, n_ctx, cfg.rope_theta)  # rope_dim wide: partial rotary

    def load_layer(self, w: WeightLoader, i: int) -> StableLMLayer:
        c = self.cfg
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim))
        q_norm = w.host_vector("q_norm", i, required=False)
        k_norm = None
        if q_norm is not None:
            k_norm = w.host_vector("k_norm", i)
            if (q_norm.size, k_norm.size) != (c.n_head * c.head_dim, c.n_head_kv * c.head_dim):
                raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm have {q_norm.size}/{k_norm.size} weights, "
                                f"expected {c.n_head * c.head_dim}/{c.n_head_kv * c.head_dim} (one set per head); "
                                "the file is not a supported model")  # fmt: skip
            q_norm = w.be.vector(q_norm.reshape(c.n_head, c.head_dim))
            k_norm = w.be.vector(k_norm.reshape(c.n_head_kv, c.head_dim))
        ffn_norm = w.vector("ffn_norm", i, required=False)
        return StableLMLayer(
            attn_norm=w.vector("attn_norm", i), attn_norm_b=w.vector("attn_norm_b", i),
            wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv, q_norm=q_norm, k_norm=k_norm, wo=w.matrix("wo", i),
            ffn_norm=ffn_norm, ffn_norm_b=None if ffn_norm is None else w.vector("ffn_norm_b", i, required=False),
            w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
        )  # fmt: skip
