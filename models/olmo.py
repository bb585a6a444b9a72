"""OLMo v1 (AI2: OLMo-1B, OLMo-7B, OLMo-7B-Twin-2T, OLMo-1.7-7B): https://arxiv.org/abs/2402.00838

As llama.cpp's OLMO graph, the Llama block with LayerNorms for its RMSNorms, and those LayerNorms *non-parametric*:
no weight, no bias, anywhere (before attention, before the FFN, before the output head)::

    x = x + attn(LN(x));  x = x + W_down (silu(W_gate LN(x)) * W_up LN(x))

* where the file states ``attention.clamp_kqv`` (OLMo 1.7-7B's ``clip_qkv``), Q, K and V are clipped to
  ``[-clamp_kqv, clamp_kqv]`` right after their projections, before the rope;
* multi-head attention, rope over consecutive pairs (the converter permutes Q's and K's rows as Llama's);
* the output head tied to the token embeddings where the file has no ``output.weight`` (OLMo-1B's weight tying),
  separate otherwise (OLMo-7B).

The block (pre-LayerNorm, sequential) is Nemotron's as well, whose LayerNorms have weights and biases and whose FFN is
a squared ReLU (models/nemotron.py subclasses this one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import Model, WeightLoader, make_rope
from .llama import LlamaLayer


@dataclass
class OlmoLayer(LlamaLayer):
    attn_norm_b: Any = None  # [n_embd] or None (OLMo: none; attn_norm then all ones)
    ffn_norm_b: Any = None  # [n_embd] or None
    bo: Any = None  # [n_embd] or None: the attention output projection's bias (Nemotron's, optional)
    b_up: Any = None  # [n_ff] or None (Nemotron's, optional)
    b_down: Any = None  # [n_embd] or None


class OlmoModel(Model):
    archs = ("olmo",)
    clamps_kqv: bool = True  # reads attention.clamp_kqv (llama.cpp reads it for OLMo, not for Nemotron)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        w = WeightLoader(g, backend)
        #: Q, K and V clipped to +-clamp_kqv after their projections (0: not clipped)
        self.clamp_kqv = float(g.arch_get("attention.clamp_kqv", 0.0) or 0.0) if self.clamps_kqv else 0.0
        self.ones = backend.vector(np.ones(cfg.n_embd, np.float32))  # a non-parametric LayerNorm's weight
        self.tok_embd = w.matrix("tok_embd")  # [n_vocab, n_embd]
        self.output = self.load_output(w)
        self.output_norm, self.output_norm_b = self.load_output_norm(w)
        self.layers = [self.load_layer(w, i) for i in range(cfg.n_layer)]
        self.rope_cos, self.rope_sin = make_rope(cfg, n_ctx, cfg.rope_theta)  # rope_dim wide: Nemotron's partial rotary

    def load_output(self, w: WeightLoader) -> Weight:
        """The output head: OLMo's own where the file has one, else the token embeddings (OLMo-1B ties them)."""
        return w.matrix("output", required=False) or self.tok_embd

    def load_output_norm(self, w: WeightLoader) -> tuple[Any, Any]:
        """The output LayerNorm's weight and bias: OLMo's has neither (a weight of ones, no bias)."""
        return self.ones, None

    def load_layer(self, w: WeightLoader, i: int) -> OlmoLayer:
        return OlmoLayer(
            attn_norm=self.ones, wq=w.matrix("wq", i), wk=w.matrix("wk", i), wv=w.matrix("wv", i), wo=w.matrix("wo", i),
            bq=None, bk=None, bv=None, q_norm=None, k_norm=None, ffn_norm=self.ones,
            w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
        )  # fmt: skip

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, 0, 1.0 / np.sqrt(c.head_dim), 0.0)] * c.n_layer

    def final_norm(self, x: Any, out: Any) -> None:
        self.be.layer_norm(x, self.output_norm, self.output_norm_b, self.cfg.norm_eps, out)

    def ffn_add(self, L: OlmoLayer, xn: Any, x: Any, gate: Any, up: Any) -> None:
        """``x +=`` layer L's FFN of the normed ``xn``: OLMo's SwiGLU (Nemotron: a squared ReLU, ungated)."""
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
            if self.clamp_kqv > 0:  # (an array method: numpy's and CuPy's alike, in place)
                for t in (q, k, v):
                    t.clip(-self.clamp_kqv, self.clamp_kqv, out=t)
            be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)
            if L.bo is not None:
                be.add_bias(x, L.bo)
            be.layer_norm(x, L.ffn_norm, L.ffn_norm_b, c.norm_eps, xn)
            self.ffn_add(L, xn, x, gate, up)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
