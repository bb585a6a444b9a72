"""What the diffusion language models share: LLaDA (``llada``), LLaDA-MoE (``llada-moe``), Dream (``dream``) and RND1
(``rnd1``) fill the masked positions of a whole sequence over many denoising steps (llama.cpp's
``llama-diffusion-cli``; kvrun's ``kvrun diffusion``, runtime/diffusion.py), each step a forward pass over the whole
sequence whose attention is *non-causal*: every position sees every other, before or after it (llama.cpp builds
their graphs without a KV cache, ``causal_attn`` false).

So a step is one batch from position 0, its rows seeing each other both ways (``cache/bidirectional.py``, as
models/rnd1.py); a batch that continues a sequence (a decode step) is refused in one line, and so is ``kvrun run``.
"""

from __future__ import annotations

from typing import Any

from ..cache.base import KVCache
from ..loaders.errors import UnsupportedModelError
from .rnd1 import _NonCausal

#: the architectures llama.cpp's ``llm_arch_is_diffusion`` names, which ``kvrun diffusion`` runs
DIFFUSION_ARCHS = ("dream", "llada", "llada-moe", "rnd1")


def diffusion_only(arch: str) -> str:
    """The one-line error for text generation with a diffusion model (``kvrun run``, a decode step)."""
    return (f"{arch} is a diffusion language model (it denoises a whole sequence at once, as llama.cpp's "
            "llama-diffusion-cli): use `kvrun diffusion MODEL -p PROMPT`, not text generation")  # fmt: skip


class DiffusionForward:
    """A model class's forward pass over one batch from position 0, attending both ways (mixed in before the trunk)."""

    cfg: Any

    def __init__(self, g: Any, cfg: Any, backend: Any, n_ctx: int, n_batch: int) -> None:
        if backend.name != "cpu":  # (the attention both ways is numpy over the plain cache: cache/bidirectional.py)
            raise UnsupportedModelError(f"{g.path}: {g.architecture} (a diffusion language model) runs on the CPU only for now; use --device cpu")
        super().__init__(g, cfg, backend, n_ctx, n_batch)  # type: ignore[call-arg]

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits: Any) -> None:
        if len(pos) and int(pos[0]) != 0:
            raise UnsupportedModelError(diffusion_only(self.cfg.arch))
        super().forward(tokens, pos, _NonCausal(cache), out_rows, logits)  # type: ignore[misc]
