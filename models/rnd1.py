"""RND1 (Radical Numerics' RND1-Base, 30B with 3B active): a *diffusion* language model in a Qwen3-MoE trunk, as
llama.cpp's RND1 graph.

The block is Qwen3-MoE's (``qwen3moe.py``: Q and K RMS-normalised per head before the neox rope, a softmax router,
the chosen experts' weights always renormalised) with one difference: attention is *non-causal*, every position
seeing every other of the sequence, before or after it (llama.cpp builds it without a KV cache and its loader sets
``causal_attn`` false).  The model does not write text left to right: it fills masked positions of a whole sequence
over many denoising steps (llama.cpp's ``llama-diffusion-cli``; kvrun's ``kvrun diffusion``, runtime/diffusion.py).

So the model runs one forward pass over one batch from position 0 (a step of the denoiser: the logits of every
position of the sequence), the batch's rows seeing each other both ways (``cache/bidirectional.py``); a batch that
continues a sequence (a decode step, a prompt longer than the batch) is refused in one line, and so ``kvrun run``
is.  It runs on the CPU only (the routing is host work, as every mixture of experts here).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerCache
from ..cache.bidirectional import attend_bidirectional
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer
from .moe import check_expert_counts, cpu_only
from .qwen3moe import Qwen3MoeModel


class _BothWays:
    """A layer's cache whose attention lets a batch's rows see each other both ways: stored as usual, then the block's
    output recomputed from what the cache holds under that mask."""

    def __init__(self, layer: LayerCache) -> None:
        self.layer = layer

    def update_and_attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
        self.layer.update_and_attend(q, k, v, pos, out)
        attend_bidirectional(self.layer, q, pos, out)


class _NonCausal:
    """The sequence's caches, each layer's attending both ways."""

    def __init__(self, cache: KVCache) -> None:
        self.cache = cache

    def __getitem__(self, il: int) -> _BothWays:
        return _BothWays(self.cache[il])


class Rnd1Model(Qwen3MoeModel):
    archs = ("rnd1",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        cpu_only(g, backend)
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        w.matrix("ffn_gate_inp", i)  # (every layer a mixture: a one-line error naming the router where it is missing)
        for role in ("q_norm", "k_norm"):  # (llama.cpp requires both: a one-line error naming the missing one)
            w.host_vector(role, i)
        L = super().load_layer(w, i)
        if L.qk_norm_full:  # (llama.cpp's are one head wide)
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm span all heads; "
                            f"RND1's are one head ({self.cfg.head_dim}) wide")  # fmt: skip
        L.moe.norm_weights = True  # (llama.cpp's graph renormalises whatever the file says)
        return L

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits: Any) -> None:
        if len(pos) and int(pos[0]) != 0:
            raise UnsupportedModelError(
                f"{self.cfg.arch} is a diffusion language model (it denoises a whole sequence at once, as llama.cpp's "
                "llama-diffusion-cli): kvrun runs its forward pass over one batch from position 0 only, not text generation"
            )
        super().forward(tokens, pos, _NonCausal(cache), out_rows, logits)
