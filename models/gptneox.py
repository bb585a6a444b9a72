"""GPT-NeoX (EleutherAI: GPT-NeoX-20B, Pythia 70M-12B; Together's RedPajama-INCITE; StableLM-Alpha): GPT-2's
block (models/gpt2.py) with partial rope and, where the file says, a parallel residual, as llama.cpp's
GPTNEOX graph:

* ``gptneox.use_parallel_residual`` (required, as llama.cpp reads it): true (Pythia, NeoX-20B,
  RedPajama), both branches read the layer's input, each through its own LayerNorm:
  ``x + attn(LN1(x)) + ffn(LN2(x))``; false, GPT-2's sequential block;
* partial rope over halves (NeoX layout): only the first ``rope.dimension_count`` dimensions of each
  head turn (the converter's ``rotary_pct * head_dim``: Pythia's a quarter), the rest pass through;
* Q, K and V from one fused ``attn_qkv`` with its bias (the converter reorders HF's per-head
  interleaving into Q, K, V blocks), LayerNorms and projections with biases, an ungated GELU FFN;
* an output head of its own (``embed_out``), never tied, without a bias.
"""

from __future__ import annotations

from typing import Any

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import WeightLoader
from .gpt2 import GPT2Model


class GPTNeoXModel(GPT2Model):
    archs = ("gptneox",)
    learned_positions = False

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        parallel = g.arch_get("use_parallel_residual")
        if parallel is None:
            raise GGUFError(f"{g.path}: metadata gptneox.use_parallel_residual is missing; the file is not a complete model")
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.parallel_residual = bool(parallel)

    def load_output(self, w: WeightLoader) -> tuple[Weight, Any]:
        return w.matrix("output"), None  # (required, as llama.cpp's loader: never tied)
