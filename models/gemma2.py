"""Gemma 2: https://arxiv.org/abs/2408.00118

The Gemma 3 block (``gemma3.py``) without QK-norm, with soft-capping instead: attention logits
``50 tanh(s / 50)`` and final logits ``30 tanh(l / 30)`` (both caps read from the file, applied
by the attention kernels and ``Model.output_head``); sliding-window and global layers alternate
(even layers local, window 4096), one rope base for both.  Queries are scaled by
``1/sqrt(head_dim)``, except in the 27B model (46 layers), whose ``query_pre_attn_scalar`` is
``n_embd / n_head``: the file does not say it, llama.cpp decides by the model's size too.
"""

from __future__ import annotations

import math

from .gemma3 import Gemma3Model


class Gemma2Model(Gemma3Model):
    archs = ("gemma2",)
    qk_norm = False

    def attention_scale(self) -> float:
        c = self.cfg
        return 1.0 / math.sqrt(c.n_embd / c.n_head if c.n_layer == 46 else c.head_dim)
