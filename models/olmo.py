"""OLMo v1 (AI2: OLMo-1B, OLMo-7B, OLMo-7B-Twin-2T, OLMo-1.7-7B): https://arxiv.org/abs/2402.00838

As llama.cpp's OLMO graph, the Llama block with LayerNorms for its RMSNorms, and those LayerNorms *non-parametric*:
no weight, no bias, anywhere (before attention, before the FFN, before the output head)::

    x = x + attn(LN(x));  x = x + W_down (silu(W_gate LN(x)) * W_up LN(x))

* where the file states ``attention.clamp_kqv`` (OLMo 1.7-7B's ``clip_qkv``), Q, K and V are clipped to
  ``[-clamp_kqv, clamp_kqv]`` right after their projections, before the rope;
* multi-head attention, rope over consecutive pairs (the converter permutes Q's and K's rows as Llama's);
* the output head tied to the token embeddings where the file has no ``output.weight`` (OLMo-1B's weight tying),
  separate otherwise (OLMo-7B).

The block (pre-LayerNorm, sequential) is StableLM's forward (models/stablelm.py: LayerNormBlockModel) and
Nemotron's, whose LayerNorms have weights and biases and whose FFN is
a squared ReLU (models/nemotron.py subclasses this one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import WeightLoader, make_rope
from .llama import LlamaLayer
from .stablelm import LayerNormBlockModel


@dataclass
class OlmoLayer(LlamaLayer):
    attn_norm_b: Any = None  # [n_embd] or None (OLMo: none; attn_norm then all ones)
    ffn_norm_b: Any = None  # [n_embd] or None
    bo: Any = None  # [n_embd] or None: the attention output projection's bias (Nemotron's, optional)
    b_up: Any = None  # [n_ff] or None (Nemotron's, optional)
    b_down: Any = None  # [n_embd] or None


class OlmoModel(LayerNormBlockModel):
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
