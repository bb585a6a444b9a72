"""NVIDIA's Llama-3.1-Nemotron-51B-Instruct, Llama-3.3-Nemotron-Super-49B and Llama-3.1-Nemotron-Ultra-253B (Deci's
neural-architecture-searched Llamas, ``DeciLMForCausalLM``), as llama.cpp's ``deci`` graph: the Llama block (RMSNorm ->
GQA attention with rope, Llama 3's rope factors -> residual -> RMSNorm -> SwiGLU FFN -> residual) with every layer's
block searched apart, so the file states ``head_count``, ``head_count_kv`` and ``feed_forward_length`` per layer (as
OpenELM's, ``openelm.py``, whose per-layer buffers this reuses), and some layers are not attention at all:

* ``head_count`` 0: an attention-free layer, the FFN alone on the stream: ``x = x + ffn(rms_norm(x))``;
* ``head_count`` > 0, ``head_count_kv`` 0: a "linear attention" replacement, one ``[n_embd, n_embd]`` matrix on the
  normed input: ``x = x + W_o rms_norm(x)``, then the FFN as usual;
* ``feed_forward_length`` 0 (Ultra's FFN-free layers): llama.cpp leaves the layer out whole, its attention too (its graph
  ``continue``s before the layer's output becomes the next layer's input), and kvrun does as the oracle does.

Only attention layers keep K/V (``layer_specs``: the others keep none and have no cache slot).
"""

from __future__ import annotations

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel
from .openelm import OpenELMModel, per_layer


class DeciModel(OpenELMModel):
    archs = ("deci",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        # (read before the layers load: each layer's weights are cut by its own counts)
        self.n_heads = per_layer(g, "attention.head_count", cfg.n_layer)
        self.n_heads_kv = per_layer(g, "attention.head_count_kv", cfg.n_layer)
        self.n_ffs = per_layer(g, "feed_forward_length", cfg.n_layer)
        if any(kv and (h == 0 or h % kv) for h, kv in zip(self.n_heads, self.n_heads_kv)):
            raise GGUFError(f"{g.path}: deci's per-layer head counts {self.n_heads} / {self.n_heads_kv} do not group; "
                            "the file is not a supported model")  # fmt: skip
        if cfg.n_expert > 0:
            raise UnsupportedModelError(f"{g.path}: deci with experts is not supported (no checkpoint has them)")
        # each attention layer's cache among layer_specs' (None: a layer that keeps no K/V)
        kept = np.cumsum([kv > 0 for kv in self.n_heads_kv]) - 1
        self.slots = [int(n) if kv > 0 else None for kv, n in zip(self.n_heads_kv, kept)]
        LlamaModel.__init__(self, g, cfg, backend, n_ctx, n_batch)  # (not OpenELM's: its own checks, its tied head)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        c, n = self.cfg, self.cfg.n_embd
        for name in ("ffn_gate.bias", "ffn_up.bias", "ffn_down.bias"):  # (llama.cpp's optional FFN biases; no checkpoint has them)
            if f"blk.{i}.{name}" in w.g.tensors:
                raise UnsupportedModelError(f"{w.g.path}: blk.{i}.{name}: an FFN bias kvrun does not add yet")
        nh, nkv, nff = self.n_heads[i], self.n_heads_kv[i], self.n_ffs[i]
        L = LlamaLayer(attn_norm=None, wq=None, wk=None, wv=None, wo=None, bq=None, bk=None, bv=None, q_norm=None, k_norm=None,
                       ffn_norm=None, w_gate=None, w_up=None, w_down=None)  # fmt: skip
        if nh > 0:  # (attention, or its linear replacement: wo alone, [n_embd, n_embd])
            L.attn_norm, L.wo = w.vector("attn_norm", i), w.matrix("wo", i)
            want = (n, nh * c.head_dim) if nkv else (n, n)
            if tuple(L.wo.shape) != want:
                raise GGUFError(f"{w.g.path}: blk.{i}.attn_output.weight has shape {tuple(L.wo.shape)}, expected {want}; "
                                "the file is not a supported model")  # fmt: skip
        if nkv > 0:
            L.wq, L.wk, L.wv = w.matrix("wq", i), w.matrix("wk", i), w.matrix("wv", i)
            L.bq, L.bk, L.bv = (w.vector(r, i, required=False) for r in ("bq", "bk", "bv"))
            L.bo = w.vector("bo", i, required=False)
        if nff > 0:
            L.ffn_norm, L.w_gate, L.w_up, L.w_down = (w.vector("ffn_norm", i), *(w.matrix(r, i) for r in ("w_gate", "w_up", "w_down")))
            if (L.w_gate.n_rows, L.w_up.n_rows, L.w_down.n_cols) != (nff,) * 3:
                raise GGUFError(f"{w.g.path}: blk.{i}'s FFN is {L.w_up.n_rows} wide, deci.feed_forward_length says {nff}; "
                                "the file is not a supported model")  # fmt: skip
        return L

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = c.attention_scale or 1.0 / np.sqrt(c.head_dim)
        return [LayerSpec(h, kv, c.head_dim, c.head_dim_v, 0, scale) for h, kv in zip(self.n_heads, self.n_heads_kv) if kv > 0]

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be = self.cfg, self.be
        T = len(tokens)
        x, xn = self.buf.get("x", T, c.n_embd), self.buf.get("xn", T, c.n_embd)
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            if self.n_ffs[il] == 0:  # (llama.cpp drops the whole layer: see the module docstring)
                continue
            q, k, v, att, gate, up, q3, k3, v3, att3 = self.layer_buffers(il, T)
            if self.n_heads_kv[il] > 0:
                be.norm_linear_many(x, L.attn_norm, c.norm_eps, xn, (L.wq, L.wk, L.wv), (q, k, v))
                if L.bq is not None:
                    be.add_bias(q, L.bq)
                    be.add_bias(k, L.bk)
                    be.add_bias(v, L.bv)
                be.rope_qk(q3, k3, pos, self.rope_cos, self.rope_sin, c.rope_neox)
                cache[self.slots[il]].update_and_attend(q3, k3, v3, pos, att3)
                be.linear_add(L.wo, att, x)
                if L.bo is not None:
                    be.add_bias(x, L.bo)
            elif self.n_heads[il] > 0:  # (the linear replacement)
                be.rms_norm(x, L.attn_norm, c.norm_eps, xn)
                be.linear_add(L.wo, xn, x)
            self.trace("attn_out", il, x)
            be.norm_linear_many(x, L.ffn_norm, c.norm_eps, xn, (L.w_gate, L.w_up), (gate, up))
            be.linear_glu(L.w_down, gate, up, x, "silu", accumulate=True)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
