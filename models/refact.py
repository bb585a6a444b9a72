"""Refact (Small Magic AI: Refact-1.6B-fim, its base), as llama.cpp's REFACT graph: the Llama block (RMSNorm ->
attention -> residual -> RMSNorm -> SwiGLU FFN -> residual, models/llama.py) without rope:

* ALiBi's linear distance penalty on the scores, llama.cpp's fixed maximum bias 8 (not read from the file), given to the
  attention as BLOOM's and Baichuan 13B's (models/bloom.py, models/baichuan.py): on the CPU as one more key channel
  (the extra channel holds a key's position, the query's ``slope_h / scale``), on the GPU as the slopes the
  attention kernels add;
* multi-query attention (Refact-1.6B: one K/V head for its 32 query heads) through the ordinary cache;
* Q, K and V apart, no biases; the output head the file's ``output.weight``, the token embeddings where it has none
  (llama.cpp loads it as Llama's).
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .baichuan import BaichuanModel
from .llama import LlamaModel

#: llama.cpp's hparams.f_max_alibi_bias for REFACT (fixed in code: "TODO: become GGUF KV parameter")
REFACT_MAX_ALIBI_BIAS = 8.0


class RefactModel(BaichuanModel):
    archs = ("refact",)

    @classmethod
    def rope_absence(cls, cfg: ModelConfig, g: GGUFFile) -> str | None:  # (ALiBi at any depth: not Baichuan's by depth)
        return "ALiBi"

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        self.rotates = False  # (no rope at all: BaichuanModel.load_layer)
        self.init_alibi(cfg, backend, REFACT_MAX_ALIBI_BIAS)
        LlamaModel.__init__(self, g, cfg, backend, n_ctx, n_batch)  # (Baichuan's own tells 7B from 13B by depth)
