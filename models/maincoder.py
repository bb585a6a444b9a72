"""Maincoder (Maincode: Maincoder-1B, a code model), as llama.cpp's MAINCODER graph.

The Llama block (RMSNorm -> GQA attention -> residual -> RMSNorm -> SwiGLU FFN -> residual) with Q and K
RMS-normalised per head (``attn_q_norm``/``attn_k_norm``, ``[head_dim]``, both required) *after* the rope, as
Hunyuan's (models/hunyuan_dense.py), not before it as Qwen3's; rope over consecutive pairs; no NTK-alpha.  (llama.cpp's
graph names an attention-output bias, but 0.3.36's loader loads none and refuses a file that has one: kvrun reads none.)
"""

from __future__ import annotations

from .hunyuan_dense import HunyuanDenseModel


class MaincoderModel(HunyuanDenseModel):
    archs = ("maincoder",)
