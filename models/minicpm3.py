"""OpenBMB MiniCPM3 (MiniCPM3-4B), as llama.cpp's ``minicpm3`` graph: DeepSeek-V2's multi-head latent attention
(``models/deepseek2.py``: a query LoRA, ``attn_kv_a_mqa``'s latent and shared rope key, ``attn_kv_b``) in a dense
SwiGLU model with MiniCPM's muP multipliers (``models/minicpm.py``), which llama.cpp fixes in code and the converter
does not state: embeddings times 12, each block's output times ``1.4 / sqrt(n_layer)``, logits times ``256 / n_embd``
(``loaders/config.py``'s defaults; the Deepseek2 forward applies them).  What else sets it apart from deepseek2:

* rope over halves (llama.cpp's NeoX type), over the rope part of each head only;
* no experts: every layer's FFN dense;
* V's heads ``n_embd / n_head`` wide (llama.cpp's default; the converter states only key_length, qk_nope + qk_rope);
* LongRoPE: ``rope_factors_long`` for a context beyond the training one (no original context is stated),
  ``rope_factors_short`` within it, whatever ``rope.scaling.type`` says (the converter states none), and no YaRN
  magnitude (llama.cpp's attn_factor stays 1).
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader, make_rope
from .deepseek2 import Deepseek2Layer, Deepseek2Model
from .phi3 import Phi3Model


class MiniCPM3Model(Deepseek2Model):
    archs = ("minicpm3",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        factors = Phi3Model.rope_factors(self, WeightLoader(g, backend), n_ctx)  # (Phi-3's choice of long or short)
        self.rope_cos, self.rope_sin = make_rope(cfg, n_ctx, cfg.rope_theta, factors)

    def load_layer(self, w: WeightLoader, i: int) -> Deepseek2Layer:
        self.n_dense_lead = self.cfg.n_layer  # (no experts: every layer Deepseek2's leading dense kind)
        return super().load_layer(w, i)
