"""RND1 (Radical Numerics' RND1-Base, 30B with 3B active): a *diffusion* language model in a Qwen3-MoE trunk, as
llama.cpp's RND1 graph.

The block is Qwen3-MoE's (``qwen3moe.py``: Q and K RMS-normalised per head before the neox rope, a softmax router,
the chosen experts' weights always renormalised) with one difference: attention is *non-causal*, every position
seeing every other of the sequence, before or after it (llama.cpp builds it without a KV cache and its loader sets
``causal_attn`` false).  The model does not write text left to right: it fills masked positions of a whole sequence
over many denoising steps (llama.cpp's ``llama-diffusion-cli``; kvrun's ``kvrun diffusion``, runtime/diffusion.py).

So the model runs one forward pass over one batch from position 0 (a step of the denoiser: the logits of every
position of the sequence), the batch's rows seeing each other both ways (models/diffusion_lm.py); a batch that
continues a sequence (a decode step, a prompt longer than the batch) is refused in one line, and so ``kvrun run``
is.  It runs on the GPU too (models/diffusion_lm.py; its experts in moe.cu's kernels).
"""

from __future__ import annotations

from .diffusion_lm import DiffusionMoeModel
from .moe import MoE


class Rnd1Model(DiffusionMoeModel):
    archs = ("rnd1",)
    head_qk_norms = "RND1"

    def expert_weights(self, moe: MoE) -> None:
        moe.norm_weights = True  # (llama.cpp's graph renormalises whatever the file says)
