"""Cohere Command R7B (``cohere2``): https://huggingface.co/CohereForAI/c4ai-command-r7b-12-2024

As llama.cpp's COHERE2 graph, a *parallel* block: one LayerNorm (without a bias) per layer, whose
output both attention and the SwiGLU FFN read, both adding into the residual stream::

    h = LN(x);  x = x + attn(h) + ffn(h)

* of every ``sliding_window_pattern`` layers (4 unless the file says) all but the last attend
  within the window the file states; only those rotate Q and K (consecutive pairs, as Llama's),
  the global layers attend without positional encoding;
* Q, K and V fused or apart, biases where the file has them, none on the output projection;
* the output LayerNorm has no bias either; the output head is the token embeddings (always: llama.cpp
  reads no other), and the logits are *multiplied* by the file's ``logit_scale`` (Granite divides
  by its own).
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
class Cohere2Layer:
    attn_norm: Any  # [n_embd]
    wq: Weight  # [n_head*head_dim, n_embd]
    wk: Weight  # [n_head_kv*head_dim, n_embd]
    wv: Weight  # [n_head_kv*head_dim, n_embd]
    bq: Any  # [n_head*head_dim] or None
    bk: Any
    bv: Any
    wo: Weight  # [n_embd, n_head*head_dim]
    w_gate: Weight  # [n_ff, n_embd]
    w_up: Weight  # [n_ff, n_embd]
    w_down: Weight  # [n_embd, n_ff]


class Cohere2Model(Model):
    archs = ("cohere2",)
    windowed: bool = True  # (Command R, models/command_r.py: no window, every layer rotates)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        if self.windowed and not cfg.sliding_window:  # (without it no layer would know a position)
            raise GGUFError(f"{g.path}: metadata cohere2.attention.sliding_window is missing; the file is not a complete model")
        w = WeightLoader(g, backend)
        self.tok_embd = self.output = w.matrix("tok_embd")  # [n_vocab, n_embd]
        self.output_norm = w.vector("output_norm")
        self.layers = [self.load_layer(w, i) for i in range(cfg.n_layer)]
        self.rope_cos, self.rope_sin = make_rope(cfg, n_ctx, cfg.rope_theta)

    def load_layer(self, w: WeightLoader, i: int) -> Cohere2Layer:
        c = self.cfg
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim))
        return Cohere2Layer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv, wo=w.matrix("wo", i),
            w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
        )  # fmt: skip

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = 1.0 / np.sqrt(c.head_dim)
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim, c.sliding_window if c.is_swa(il) else 0, scale, 0.0)
                for il in range(c.n_layer)]  # fmt: skip

    def final_norm(self, x: Any, out: Any) -> None:
        self.be.layer_norm(x, self.output_norm, None, self.cfg.norm_eps, out)

    def block_norm(self, x: Any, w: Any, out: Any) -> None:
        """A layer's one norm of the stream ``x`` into ``out``: LayerNorm without a bias (PLaMo: RMSNorm, models/plamo.py)."""
        self.be.layer_norm(x, w, None, self.cfg.norm_eps, out)

    def logit_multiplier(self) -> float:
        return self.cfg.logit_scale

    def qk_rope(self, il: int, L: Cohere2Layer, q3: Any, k3: Any, pos: Any) -> None:
        """Layer il's positions into its queries and keys ``[T, n_head(_kv), head_dim]``, in place."""
        if self.cfg.is_swa(il):  # the window layers rotate; the global ones attend without positions
            self.be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, self.cfg.rope_neox)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        be = self.be
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)

        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            self.block_norm(x, L.attn_norm, xn)  # read by attention and the FFN both
            self.trace("attn_norm", il, xn)
            be.linear_many((L.wq, L.wk, L.wv), xn, (q, k, v))
            if L.bq is not None:
                be.add_bias(q, L.bq)
                be.add_bias(k, L.bk)
                be.add_bias(v, L.bv)
            self.qk_rope(il, L, q3, k3, pos)
            cache[il].update_and_attend(q3, k3, v3, pos, att3)
            self.trace("kqv_out", il, att)
            be.linear_add(L.wo, att, x)  # the residual stream takes attention's output...
            be.linear_many((L.w_gate, L.w_up), xn, (gate, up))  # ... and the FFN's, of the same normed input
            be.linear_glu(L.w_down, gate, up, x, "silu", accumulate=True)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
