"""Qwen (1): Qwen-1.8B/7B/14B/72B and their -Chat models (Alibaba, 2023), as llama.cpp's QWEN graph.

The Llama block (RMSNorm -> attention -> residual -> RMSNorm -> SwiGLU FFN -> residual, a separate output head), with

* Q, K and V from one fused ``attn_qkv`` (Qwen's ``c_attn``: Q's rows, then K's, then V's) *with a bias*, and no
  bias on the output projection; multi-head attention (every Qwen 1 has as many K/V heads as query heads);
* rope over halves (NeoX's layout; the converter leaves ``c_attn``'s rows as they are);
* an FFN half as wide as ``feed_forward_length`` says: Qwen's config states ``intermediate_size`` as the width of
  its two gate/up projections together, and llama.cpp loads ``ffn_gate``/``ffn_up`` ``n_ff / 2`` rows each, so
  kvrun's config for the model holds the halved width.

(Qwen 1.5 and later are ``qwen2``: models/qwen2.py.)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .llama import LlamaLayer, LlamaModel


class QwenModel(LlamaModel):
    archs = ("qwen",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if cfg.n_ff % 2:
            raise GGUFError(f"{g.path}: qwen.feed_forward_length {cfg.n_ff} is odd; Qwen states twice its FFN's width")
        if TENSOR_NAMES["output"] not in g.tensors:  # (never tied: llama.cpp requires the model's own head)
            raise GGUFError(f"{g.path}: tensor {TENSOR_NAMES['output']!r} is missing; the file is incomplete or not a supported model")
        super().__init__(g, dataclasses.replace(cfg, n_ff=cfg.n_ff // 2), backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        c = self.cfg
        sizes = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v)
        wq, wk, wv = w.matrix_rows("wqkv", i, sizes)
        b = w.host_vector("bqkv", i)  # (required: every Qwen 1 has it)
        if b.shape[0] != sum(sizes):
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_qkv.bias has {b.shape[0]} values, expected {sum(sizes)}; the file is not a supported model")
        bq, bk, bv = (w.be.vector(x) for x in np.split(b, np.cumsum(sizes)[:2]))
        return LlamaLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=bq, bk=bk, bv=bv,
            q_norm=None, k_norm=None, ffn_norm=w.vector("ffn_norm", i),
            w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
        )  # fmt: skip
