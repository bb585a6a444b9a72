"""Baichuan and Baichuan 2 (Baichuan Inc.: 7B and 13B, base and -Chat), as llama.cpp's BAICHUAN graph.

The Llama block (RMSNorm -> attention -> residual -> RMSNorm -> SwiGLU FFN -> residual, a separate output head, multi-head
attention); Baichuan's fused ``W_pack`` is cut into ``attn_q``/``attn_k``/``attn_v`` by the converter.  What sets it
apart is how positions enter, which differs by size and which llama.cpp (so kvrun) tells by the depth alone:

* 7B (32 layers): rope over consecutive pairs (the converter permutes Q's and K's rows as Llama's);
* 13B (40 layers): no rope; ALiBi's linear distance penalty on the scores, llama.cpp's fixed maximum bias 8 (Baichuan's
  own slopes), given to the attention as one more key channel as BLOOM's (models/bloom.py: the extra channel holds a
  key's position, the query's holds ``slope_h / scale``), which runs on the CPU only for now;
* any other depth: neither, as llama.cpp (no published Baichuan has one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .bloom import BloomModel
from .common import TENSOR_NAMES, WeightLoader
from .jina_bert import alibi_slopes
from .llama import LlamaLayer, LlamaModel

#: the depths by which llama.cpp tells Baichuan 7B (rope) from 13B (ALiBi), and 13B's fixed maximum ALiBi bias
BAICHUAN_7B_LAYERS, BAICHUAN_13B_LAYERS, BAICHUAN_MAX_ALIBI_BIAS = 32, 40, 8.0


class _AlibiLayer:
    """One layer's cache seen through ALiBi: ``update_and_attend`` gets Q and K with their extra channel
    (BloomModel.attend), so the Llama forward runs unchanged."""

    __slots__ = ("layer_cache", "model")

    def __init__(self, layer_cache: Any, model: Any) -> None:
        self.layer_cache, self.model = layer_cache, model

    def update_and_attend(self, q3: Any, k3: Any, v3: Any, pos: Any, att3: Any) -> None:
        BloomModel.attend(self.model, self.layer_cache, q3, k3, v3, pos, att3)


class _AlibiCache:
    """A KV cache whose layers are seen through ALiBi (:class:`_AlibiLayer`)."""

    def __init__(self, cache: KVCache, model: Any) -> None:
        self.cache, self.model = cache, model

    def __getitem__(self, il: int) -> _AlibiLayer:
        return _AlibiLayer(self.cache[il], self.model)


class BaichuanModel(LlamaModel):
    archs = ("baichuan",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        self.rotates = cfg.n_layer == BAICHUAN_7B_LAYERS
        #: per query head, the extra query channel that times a key's position gives ALiBi's bias (None: no ALiBi)
        self.alibi_q = None
        if cfg.n_layer == BAICHUAN_13B_LAYERS:
            if backend.name != "cpu":  # (before any upload)
                raise UnsupportedModelError(f"{g.path}: Baichuan 13B's ALiBi attention runs on the CPU only for now; drop --device gpu")
            self.alibi_q = (alibi_slopes(cfg.n_head, BAICHUAN_MAX_ALIBI_BIAS) * np.float32(np.sqrt(cfg.head_dim))).astype(np.float32)
        if TENSOR_NAMES["output"] not in g.tensors:  # (never tied: llama.cpp requires the model's own head)
            raise GGUFError(f"{g.path}: tensor {TENSOR_NAMES['output']!r} is missing; the file is incomplete or not a supported model")
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        L = super().load_layer(w, i)
        L.rope = self.rotates  # (13B, and depths llama.cpp does not know, rotate nothing)
        return L

    def layer_specs(self) -> list[LayerSpec]:
        if self.alibi_q is None:
            return super().layer_specs()
        c = self.cfg  # (the keys one channel wider: their positions; the scale stays the real head's)
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim + 1, c.head_dim_v, 0, 1.0 / np.sqrt(c.head_dim), 0.0,
                          position_channel=True)] * c.n_layer  # fmt: skip

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        super().forward(tokens, pos, cache if self.alibi_q is None else _AlibiCache(cache, self), out_rows, logits)
