"""Dream (Dream-v0-Instruct/Base 7B): a diffusion language model in a Qwen2 trunk, as llama.cpp's DREAM graph.

The block is Qwen2's (biases on Q, K and V, neox rope, SwiGLU) attending both ways over one batch
(models/diffusion_lm.py).  Dream was trained to predict each position's token from the logits of the position
before it, which its converter states as ``diffusion.shift_logits`` true: the denoising loop's business
(runtime/diffusion.py), not the forward's.
"""

from __future__ import annotations

from .diffusion_lm import DiffusionForward
from .qwen2 import Qwen2Model


class DreamModel(DiffusionForward, Qwen2Model):
    archs = ("dream",)
