"""What the diffusion language models share: LLaDA (``llada``), LLaDA-MoE (``llada-moe``), Dream (``dream``) and RND1
(``rnd1``) fill the masked positions of a whole sequence over many denoising steps (llama.cpp's
``llama-diffusion-cli``; kvrun's ``kvrun diffusion``, runtime/diffusion.py), each step a forward pass over the whole
sequence whose attention is *non-causal*: every position sees every other, before or after it (llama.cpp builds
their graphs without a KV cache, ``causal_attn`` false).

So a step is one batch from position 0, its rows seeing each other both ways (``cache/bidirectional.py``; on the GPU
the plain fp16 cache's kernels, as a picture's rows: ``cache/gpu_picture.py``); a batch
that continues a sequence (a decode step) is refused in one line, and so is ``kvrun run``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerCache
from ..cache.bidirectional import attend_bidirectional
from ..loaders.config import ModelConfig
from ..loaders.errors import UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer
from .moe import MoE, check_expert_counts
from .qwen3moe import Qwen3MoeModel

#: the architectures llama.cpp's ``llm_arch_is_diffusion`` names, which ``kvrun diffusion`` runs
DIFFUSION_ARCHS = ("dream", "llada", "llada-moe", "rnd1")


def diffusion_only(arch: str) -> str:
    """The one-line error for text generation with a diffusion model (``kvrun run``, a decode step)."""
    return (f"{arch} is a diffusion language model (it denoises a whole sequence at once, as llama.cpp's "
            "llama-diffusion-cli): use `kvrun diffusion MODEL -p PROMPT`, not text generation")  # fmt: skip


class _BothWays:
    """A layer's cache whose attention lets a batch's rows see each other both ways: stored as usual, then the block's
    output recomputed from what the cache holds under that mask."""

    def __init__(self, layer: LayerCache) -> None:
        self.layer = layer

    def update_and_attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
        if type(self.layer).__name__.startswith("GPU"):  # (the GPU's: stored and attended both ways in kernels, as a picture's rows)
            from ..cache.gpu_picture import update_and_attend_picture

            update_and_attend_picture(self.layer, q, k, v, pos, out)
            return
        self.layer.update_and_attend(q, k, v, pos, out)
        attend_bidirectional(self.layer, q, pos, out)


class _NonCausal:
    """The sequence's caches, each layer's attending both ways."""

    def __init__(self, cache: KVCache) -> None:
        self.cache = cache

    def __getitem__(self, il: int) -> _BothWays:
        return _BothWays(self.cache[il])


class DiffusionForward:
    """A model class's forward pass over one batch from position 0, attending both ways (mixed in before the trunk)."""

    cfg: Any

    def __init__(self, g: Any, cfg: Any, backend: Any, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)  # type: ignore[call-arg]

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits: Any) -> None:
        if len(pos) and int(pos[0]) != 0:
            raise UnsupportedModelError(diffusion_only(self.cfg.arch))
        super().forward(tokens, pos, _NonCausal(cache), out_rows, logits)  # type: ignore[misc]


class DiffusionMoeModel(DiffusionForward, Qwen3MoeModel):
    """RND1's and LLaDA-MoE's: Qwen3-MoE's block (models/qwen3moe.py) run as above, every layer a mixture and Q and K
    normalised per head (``head_qk_norms``: the model's name); a subclass says what is done to the chosen experts'
    weights."""

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        w.matrix("ffn_gate_inp", i)  # (every layer a mixture: a one-line error naming the router where it is missing)
        L = super().load_layer(w, i)
        self.expert_weights(L.moe)
        return L

    def expert_weights(self, moe: MoE) -> None:
        """How llama.cpp's graph treats the chosen experts' weights, whatever the file says."""
        raise NotImplementedError
