"""Ling 3 VL's pictures in the prompt (llama.cpp's projector type "ling3vl"), as libmtmd lays them out and feeds them:
Qwen2-VL's way (runtime/vision_qwen2vl.py), which this extends.

mtmd.cpp lays a ling3vl picture out as Qwen2-VL's and Qwen3-VL's: at its ``<__media__>`` the prompt holds
``<|vision_start|>``, the picture's rows (models/ling3vl_image.py: ``ny`` x ``nx`` of them, the picture rounded to
blocks of 2x2 patches) and ``<|vision_end|>``.  The text model is Ling 3's ``bailingmoe3``, whose rope llama.cpp makes
M-RoPE where the file states rope sections (Ling 3 VL's converter writes them), so libmtmd gives row (y, x) of a
picture fed at position t the positions (t, t + y, t + x, 0) and the text after it goes on from t + max(nx, ny)
(models/mrope_images.py).  The rows are fed causally, one cache slot each, as any token.
"""

from __future__ import annotations

from typing import Any

from ..loaders.errors import KvrunError
from ..models.ling3vl_image import Ling3VLEncoder
from .vision_markers import require_arch, require_markers
from .vision_qwen2vl import VISION_END, VISION_START, Qwen2VLLayout

__all__ = ["Ling3VLLayout", "VISION_START", "VISION_END"]


class Ling3VLLayout(Qwen2VLLayout):
    """A Ling 3 VL projector beside ``engine``'s ``bailingmoe3`` text model (with rope sections): Qwen2-VL's layout."""

    def __init__(self, engine: Any, encoder: Ling3VLEncoder) -> None:
        require_arch(engine, ("bailingmoe3",), "a ling3vl projector goes with a Ling 3 VL text model (bailingmoe3 with rope "
                     "sections)", takes_images=True)  # fmt: skip
        if engine.gguf.arch_get("rope.dimension_sections") is None:  # (llama.cpp's rope is then NORM, its rows consecutive)
            raise KvrunError(f"{engine.path}: a ling3vl projector goes with a Ling 3 VL text model (bailingmoe3 with rope sections); "
                             "this bailingmoe3 file states none (a text-only Ling 3)")  # fmt: skip
        require_markers(engine, (VISION_START, VISION_END), "a Ling 3 VL")
        self.engine, self.encoder = engine, encoder
