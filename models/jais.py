"""Jais (Inception / MBZUAI / Cerebras: jais-13b, jais-30b and their -chat models, Arabic-English), as llama.cpp's JAIS
graph: GPT-2's pre-LayerNorm block (models/gpt2.py) with BLOOM's ALiBi (models/bloom.py) and a SwiGLU FFN:

    x = tok_embd[t];  x = x + attn(LN(x));  x = x + W_down (silu(W_gate h + b_gate) * (W_up h + b_up)) + b_down

* ALiBi with the file's own maximum bias (``attention.max_alibi_bias``: the converter recovers it from the checkpoint's
  precomputed slopes), no positions in the input, no LayerNorm on the embeddings; Jais-13B's 40 heads are not a power
  of two, so the slopes past the 32nd interleave as ggml's soft_max computes them (jina_bert.alibi_slopes);
* muP's attention: scores scaled by ``1 / head_dim``, not ``1 / sqrt(head_dim)``; muP's embedding and output
  multipliers are folded into ``token_embd`` and ``output`` by the converter, so nothing else scales at run time;
* Q, K and V from one fused ``attn_qkv`` with its bias; LayerNorms and every projection biased, the FFN's gate too;
* its own output head (``output.weight``: llama.cpp requires it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .bloom import BloomModel, alibi_layer_specs, file_max_alibi_bias
from .common import TENSOR_NAMES, WeightLoader
from .gpt2 import GPT2Layer

TENSOR_NAMES.setdefault("b_gate", "blk.{i}.ffn_gate.bias")


@dataclass
class JaisLayer(GPT2Layer):
    w_gate: Weight | None = None  # [n_ff, n_embd]: SwiGLU's gate
    b_gate: Any = None  # [n_ff]


class JaisModel(BloomModel):
    archs = ("jais",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if TENSOR_NAMES["output"] not in g.tensors:  # (never tied: llama.cpp requires the model's own head; before any upload)
            raise GGUFError(f"{g.path}: tensor {TENSOR_NAMES['output']!r} is missing; the file is incomplete or not a supported model")
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        # muP scales the scores by 1/head_dim: the query's ALiBi channel is slope_h / scale
        self.alibi_q = (self.alibi_slopes * np.float32(cfg.head_dim)).astype(np.float32)

    def max_alibi_bias(self, g: GGUFFile) -> float:
        return file_max_alibi_bias(g, "Jais")

    def load_tok_norm(self, w: WeightLoader) -> tuple[Any, Any]:
        return None, None  # (the embeddings go straight into the first layer)

    def load_layer(self, w: WeightLoader, i: int) -> JaisLayer:
        return JaisLayer(**vars(super().load_layer(w, i)), w_gate=w.matrix("w_gate", i), b_gate=w.vector("b_gate", i))

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg  # (on the CPU the keys one channel wider: their positions; muP's scale 1/head_dim)
        return alibi_layer_specs(self, self.alibi_slopes, c.head_dim, 1.0 / c.head_dim)

    def ffn(self, L: JaisLayer, xn: Any, gate: Any, up: Any, x: Any) -> None:
        """``x +=`` SwiGLU of the normed rows, every projection biased."""
        be = self.be
        be.linear_many((L.w_gate, L.w_up), xn, (gate, up))
        be.add_bias(gate, L.b_gate)
        be.add_bias(up, L.b_up)
        be.linear_glu(L.w_down, gate, up, x, "silu", accumulate=True)
        be.add_bias(x, L.b_down)
