"""Tencent HunyuanOCR / Hunyuan-VL language model (``hunyuan_vl``), text only, as llama.cpp's HUNYUAN_VL graph.

Hunyuan dense's block (``hunyuan_dense.py``: per-head RMSNorm of Q and K *after* the rope, NTK-alpha on the rope
base where the file states ``rope.scaling.alpha``), whose rope is Hunyuan's XD-RoPE: where the file states
``rope.dimension_sections`` llama.cpp turns each head's pairs as its multimodal rope (M-RoPE, neox layout) in four
sections; a text token's positions are ``(p, p, p, 0)``, so the pairs of the fourth section do not turn at all for
text (``qwen2vl.mrope_tables``).  Without sections it is plain neox rope, as Hunyuan dense.

Images (the mmproj's rows) need per-section positions, which kvrun does not feed this model: refused (``takes_images``).
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .hunyuan_dense import HunyuanDenseModel
from .qwen2vl import mrope_tables, rope_sections


class HunyuanVLModel(HunyuanDenseModel):
    archs = ("hunyuan_vl",)
    takes_images = False

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        if g.arch_get("rope.dimension_sections") is not None:  # (optional, as llama.cpp reads it: none, plain neox)
            self.rope_cos, self.rope_sin = mrope_tables(self.rope_cos, self.rope_sin, rope_sections(g))
