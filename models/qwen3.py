"""Qwen3 (dense): the Llama block with each head of Q and K RMS-normalised before RoPE (QK-norm),
NeoX-style RoPE, no QKV bias, and heads wider than ``n_embd / n_head`` (``key_length``).

All of it is data: the norm weights are optional tensors the Llama loader reads, the rope layout
comes from the architecture defaults in ``loaders/config.py``, the head width from the file.  The
class exists so the registry names it, and to read Qwen3-Reranker's classification head
(``models/rank.py``) where the file's pooling type is rank.
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .llama import LlamaModel
from .rank import RankHead


class Qwen3Model(LlamaModel):
    archs = ("qwen3",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.rank_head = RankHead.load(g, cfg.arch)  # Qwen3-Reranker's yes/no rows (pooling type rank: models/rank.py), else None
