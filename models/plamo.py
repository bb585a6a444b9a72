"""PLaMo (Preferred Networks: PLaMo-13B and its -instruct models, v1), as llama.cpp's PLAMO graph: Llama's parts in
GPT-J's *parallel* block (Command R's, models/command_r.py):

    h = RMSNorm(x);  x = x + attn(h) + W_down (silu(W_gate h) * W_up h)

* one RMSNorm per layer, read by attention and the SwiGLU FFN both (no ``ffn_norm``);
* rope over halves (llama.cpp's NeoX type) of the whole head; grouped-query attention (the converter states 5 K/V heads
  for PLaMo-13B's 40 and reorders the query and output rows to llama.cpp's grouping);
* no biases; the output RMSNorm and the model's own output head (``output.weight``: llama.cpp requires it).
"""

from __future__ import annotations

from typing import Any

from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .command_r import CommandRModel
from .common import Model, WeightLoader


class PlamoModel(CommandRModel):
    archs = ("plamo",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.output = WeightLoader(g, backend).matrix("output")  # (never tied)

    def block_norm(self, x: Any, w: Any, out: Any) -> None:
        self.be.rms_norm(x, w, self.cfg.norm_eps, out)

    final_norm = Model.final_norm  # (RMSNorm)
    logit_multiplier = Model.logit_multiplier  # (no logit scale stated: 1)
