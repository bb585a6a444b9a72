"""Nanbeige (Nanbeige4.2-3B and its looped variants), as llama.cpp's ``nanbeige`` graph: the Llama block (``llama.py``:
RMSNorm, grouped-query attention with rope over consecutive pairs, Llama 3's ``rope_freqs`` where the file has them,
SwiGLU FFN; the output head tied to the token embeddings where the file has no ``output.weight``), and what sets it
apart:

* the layers run ``num_loops`` times over (1 unless stated): the file's ``block_count`` physical layers, their weights
  shared by every loop, each loop's layers a KV cache of their own (llama.cpp's logical layers ``i + j * block_count``);
* between one loop and the next (not after the last) the residual stream is RMS-normed by ``output_norm`` (its weights
  and the file's epsilon), unless the file's ``skip_loop_final_norm`` says not to;
* attention scores by ``1/sqrt(head_dim)``, whatever ``attention.scale`` a file states (llama.cpp reads none for it).

On ``--device gpu`` it runs on Llama's kernels: a loop is the same layers' calls again.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel


def num_loops(g: GGUFFile) -> int:
    """How many times the layers run (llama.cpp's ``num_loops``, 1 unless stated; it asserts at least 1)."""
    n = int(g.arch_get("num_loops", 1))
    if n < 1:
        raise GGUFError(f"{g.path}: nanbeige.num_loops is {n}; llama.cpp requires at least 1")
    return n


class NanbeigeModel(LlamaModel):
    archs = ("nanbeige",)

    @classmethod
    def cache_widths(cls, cfg: ModelConfig, g: GGUFFile, bits: int = 16) -> tuple[int, ...]:
        """Every loop's layers cache their own K/V: the physical layers' widths, once a loop."""
        return cfg.kv_values_by_layer() * num_loops(g)

    @classmethod
    def layer_passes(cls, cfg: ModelConfig, g: GGUFFile) -> str | None:
        """`kvrun info`'s layers line: the file's layers and the loops a token runs them in, a KV cache a pass (None:
        one loop, the plain count)."""
        n = num_loops(g)
        return None if n == 1 else f"{cfg.n_layer}, run {n} times ({cfg.n_layer * n} passes)"

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if g.arch_get("attention.layer_norm_rms_epsilon") is None:  # (llama.cpp's get_key without a default)
            raise GGUFError(f"{g.path}: metadata nanbeige.attention.layer_norm_rms_epsilon is missing; the file is not a complete model")
        self.n_loops = num_loops(g)
        self.skip_loop_final_norm = bool(g.arch_get("skip_loop_final_norm", False))
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        c = self.cfg
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        return LlamaLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=bq, bk=bk, bv=bv,
            q_norm=None, k_norm=None, ffn_norm=w.vector("ffn_norm", i),
            w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
        )  # fmt: skip

    def layer_specs(self) -> list[LayerSpec]:
        # (scores by 1/sqrt(head_dim): llama.cpp's nanbeige reads no attention.scale)
        spec = dataclasses.replace(super().layer_specs()[0], scale=1.0 / np.sqrt(self.cfg.head_dim))
        return [spec] * (self.cfg.n_layer * self.n_loops)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be = self.cfg, self.be
        T = len(tokens)
        x, xn, q, k, v, att, gate, up, q3, k3, v3, att3 = self.step_buffers(T)

        be.get_rows(self.tok_embd, tokens, x)
        for loop in range(self.n_loops):
            if loop > 0 and not self.skip_loop_final_norm:  # (the stream between loops normed by output_norm)
                be.rms_norm(x, self.output_norm, c.norm_eps, x)
            for i, L in enumerate(self.layers):
                il = loop * c.n_layer + i  # (llama.cpp's logical layer: its own KV cache)
                be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
                self.trace("attn_norm", il, xn)
                if L.bq is not None:
                    be.add_bias(q, L.bq)
                    be.add_bias(k, L.bk)
                    be.add_bias(v, L.bv)
                self.qk_norm_rope(L, q, k, q3, k3, pos, self.rope_cos, self.rope_sin)
                cache[il].update_and_attend(q3, k3, v3, pos, att3)
                self.trace("kqv_out", il, att)
                be.linear_add(L.wo, att, x)
                be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
                be.linear_glu(L.w_down, gate, up, x, self.ffn_act, accumulate=True)
                self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
