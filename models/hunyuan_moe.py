"""Tencent Hunyuan MoE (Hunyuan-A13B-Instruct, 80B with 13B active), as llama.cpp's HUNYUAN_MOE graph: the attention of
its dense sibling (``hunyuan_dense.py``: Q and K RMS-normalised per head *after* the neox rope) with every FFN a
mixture of experts (``moe.py``) beside a shared expert:

* a softmax router, the top ``expert_used_count`` experts, their weights always renormalised (llama.cpp fixes
  norm_topk_prob in its graph), no selection bias, no scale; the experts as wide as ``feed_forward_length`` (llama.cpp
  sizes them so; the checkpoint states one width for both);
* a plain SwiGLU shared expert every token runs, ``expert_shared_feed_forward_length`` wide where stated, else
  ``feed_forward_length``, its output added to the experts'.

The converter bakes A13B's NTK-alpha rope scaling into ``rope.freq_base``; llama.cpp reads no alpha for it, nor does
kvrun.  The output head is the token embeddings where the file has no ``output.weight``.

It runs on the CPU and the GPU (the GPU routes in kernels: models/moe.py).
"""

from __future__ import annotations

import dataclasses

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .hunyuan_dense import HunyuanDenseModel
from .llama import LlamaLayer
from .moe import check_expert_counts


class HunyuanMoeModel(HunyuanDenseModel):
    archs = ("hunyuan-moe",)
    shared_expert = "plain"  # (every layer has one, neither gated nor scaled)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        if g.arch_get("expert_feed_forward_length") is None:  # (llama.cpp's loader requires it, though it sizes by n_ff)
            raise GGUFError(f"{g.path}: metadata hunyuan-moe.expert_feed_forward_length is missing; the file is not a complete model")
        self.n_ff_shexp = int(g.arch_get("expert_shared_feed_forward_length", 0) or 0) or cfg.n_ff
        # (llama.cpp sizes the experts by feed_forward_length, whatever expert_feed_forward_length says)
        super().__init__(g, dataclasses.replace(cfg, n_ff_exp=cfg.n_ff), backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        w.matrix("ffn_gate_inp", i)  # (every layer a mixture: a one-line error naming the router where it is missing)
        L = super().load_layer(w, i)
        if L.moe.shared.gate.shape[0] != self.n_ff_shexp:
            raise GGUFError(f"{w.g.path}: blk.{i}.ffn_gate_shexp.weight has {L.moe.shared.gate.shape[0]} rows, expected "
                            f"{self.n_ff_shexp}; the file is not a supported model")  # fmt: skip
        L.moe.norm_weights = True  # (llama.cpp's graph renormalises whatever the file says)
        return L
