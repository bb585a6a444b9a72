"""MiMo-V2.5's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "mimovl").

mtmd.cpp lays a mimovl picture out as Qwen2-VL's (one image chunk between ``<|vision_start|>`` and
``<|vision_end|>``, the picture resized within the file's pixel limits, its 2x2 blocks in raster order: models/
mimovl_image.py), but MiMo-V2.5's text model is llama.cpp's ``mimo2`` (models/mimo2.py), whose rope is not M-RoPE:
``mtmd_decode_use_mrope`` and ``mtmd_decode_use_non_causal`` are false, so the rows go in causally at consecutive
positions, as any token, one array of them, as Youtu-VL's do (runtime/vision_youtuvl.py, whose layout this is).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import mimovl_image
from ..models.mimovl_image import MimoVLEncoder
from .vision_markers import require_text_model
from .vision_youtuvl import VISION_END, VISION_START, YoutuVLLayout


class MimoVLLayout(YoutuVLLayout):
    """The vision markers of ``engine``'s vocabulary and the picture layout of a MiMo-V2.5 projector."""

    def __init__(self, engine: Any, encoder: MimoVLEncoder) -> None:  # (not YoutuVLLayout's: another text model)
        require_text_model(engine, "mimovl", "mimo2", "MiMo-V2.5", (VISION_START, VISION_END))
        self.engine, self.encoder = engine, encoder

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture's rows take, from its size alone: its merged rows."""
        nx, ny = mimovl_image.grid(w, h, self.encoder.cfg)
        return nx * ny

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd], resized as libmtmd does and encoded."""
        return self.encoder.encode(mimovl_image.preprocess(image, self.encoder.cfg))
