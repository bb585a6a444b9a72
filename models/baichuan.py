"""Baichuan and Baichuan 2 (Baichuan Inc.: 7B and 13B, base and -Chat), as llama.cpp's BAICHUAN graph.

The Llama block (RMSNorm -> attention -> residual -> RMSNorm -> SwiGLU FFN -> residual, a separate output head, multi-head
attention); Baichuan's fused ``W_pack`` is cut into ``attn_q``/``attn_k``/``attn_v`` by the converter.  What sets it
apart is how positions enter, which differs by size and which llama.cpp (so kvrun) tells by the depth alone:

* 7B (32 layers): rope over consecutive pairs (the converter permutes Q's and K's rows as Llama's);
* 13B (40 layers): no rope; ALiBi's linear distance penalty on the scores, llama.cpp's fixed maximum bias 8 (Baichuan's
  own slopes), given to the attention as BLOOM's (models/bloom.py): on the CPU as one more key channel (the extra
  channel holds a key's position, the query's holds ``slope_h / scale``), on the GPU as the slopes the attention
  kernels add;
* any other depth: neither, as llama.cpp (no published Baichuan has one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .bloom import BloomModel, alibi_layer_specs
from .common import TENSOR_NAMES, WeightLoader
from .jina_bert import alibi_slopes
from .llama import LlamaLayer, LlamaModel

#: the depths by which llama.cpp tells Baichuan 7B (rope) from 13B (ALiBi), and 13B's fixed maximum ALiBi bias
BAICHUAN_7B_LAYERS, BAICHUAN_13B_LAYERS, BAICHUAN_MAX_ALIBI_BIAS = 32, 40, 8.0


class _AlibiLayer:
    """Layer ``il`` of the view's current cache seen through ALiBi: ``update_and_attend`` gets Q and K with their
    extra channel (BloomModel.attend), so the Llama forward runs unchanged."""

    __slots__ = ("view", "il")

    def __init__(self, view: "_AlibiCache", il: int) -> None:
        self.view, self.il = view, il

    def update_and_attend(self, q3: Any, k3: Any, v3: Any, pos: Any, att3: Any) -> None:
        BloomModel.attend(self.view.model, self.view.cache[self.il], q3, k3, v3, pos, att3)


class _AlibiCache:
    """A KV cache whose layers are seen through ALiBi (:class:`_AlibiLayer`): built once at load with its layers,
    pointed at a forward's cache by :meth:`see` (a forward made no object of its own; forwards of one model never
    overlap: they share its scratch buffers)."""

    def __init__(self, model: Any, n_layer: int) -> None:
        self.model, self.cache = model, None
        self.layers = [_AlibiLayer(self, il) for il in range(n_layer)]

    def see(self, cache: KVCache) -> "_AlibiCache":
        self.cache = cache
        return self

    def __getitem__(self, il: int) -> _AlibiLayer:
        return self.layers[il]


class BaichuanModel(LlamaModel):
    archs = ("baichuan",)

    @classmethod
    def rope_absence(cls, cfg: ModelConfig, g: GGUFFile) -> str | None:  # (told by depth, as the module says)
        if cfg.n_layer == BAICHUAN_7B_LAYERS:
            return None
        if cfg.n_layer == BAICHUAN_13B_LAYERS:
            return "ALiBi"
        return f"neither rope nor ALiBi at {cfg.n_layer} layers (llama.cpp's Baichuan: 7B's 32, 13B's 40)"

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        self.rotates = cfg.n_layer == BAICHUAN_7B_LAYERS
        self.alibi_q = self._alibi_view = None  # (no ALiBi: 7B and unknown depths)
        if cfg.n_layer == BAICHUAN_13B_LAYERS:
            self.init_alibi(cfg, backend, BAICHUAN_MAX_ALIBI_BIAS)
        if TENSOR_NAMES["output"] not in g.tensors:  # (never tied: llama.cpp requires the model's own head)
            raise GGUFError(f"{g.path}: tensor {TENSOR_NAMES['output']!r} is missing; the file is incomplete or not a supported model")
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def init_alibi(self, cfg: ModelConfig, backend: Backend, max_bias: float) -> None:
        """ALiBi with llama.cpp's fixed maximum bias: the slopes (the GPU kernels'), and on the CPU the query's extra
        channel and the cache view that appends it (built here, once)."""
        #: per query head, ALiBi's slope
        self.alibi_slopes = alibi_slopes(cfg.n_head, max_bias)
        #: per query head, the extra query channel that times a key's position gives ALiBi's bias (the CPU's)
        self.alibi_q = (self.alibi_slopes * np.float32(np.sqrt(cfg.head_dim))).astype(np.float32)
        self._alibi_view = _AlibiCache(self, cfg.n_layer) if backend.name == "cpu" else None

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        L = super().load_layer(w, i)
        L.rope = self.rotates  # (13B, and depths llama.cpp does not know, rotate nothing)
        return L

    def layer_specs(self) -> list[LayerSpec]:
        if self.alibi_q is None:
            return super().layer_specs()
        c = self.cfg  # (on the CPU the keys one channel wider: their positions; the scale stays the real head's)
        return alibi_layer_specs(self, self.alibi_slopes, c.head_dim_v, 1.0 / np.sqrt(c.head_dim))

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        plain = self.alibi_q is None or self._alibi_view is None  # (no ALiBi; or the GPU caches', added in their kernels)
        super().forward(tokens, pos, cache if plain else self._alibi_view.see(cache), out_rows, logits)
