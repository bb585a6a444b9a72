"""MiniMax-M3's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "minimax_m3").

mtmd.cpp lays a minimax_m3 picture out as one image chunk between ``]<]start of image[>[`` and ``]<]end of image[>[``
(tokenized with the text around them, as the other markers are: runtime/vision.py), its rows the picture's 2x2 blocks
in raster order (models/minimax_m3_image.py).  MiniMax-M3's text model is llama.cpp's ``minimax-m3``
(models/minimax_m3.py), whose rope is not M-RoPE: ``mtmd_decode_use_mrope`` and ``mtmd_decode_use_non_causal`` are
false, so the rows go in causally at consecutive positions, as any token, one array of them: Youtu-VL's layout
(runtime/vision_youtuvl.py), whose methods this is but for its markers, text model and picture size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import minimax_m3_image
from ..models.minimax_m3_image import MiniMaxM3Encoder
from .vision_markers import require_text_model
from .vision_youtuvl import YoutuVLLayout

IMAGE_START, IMAGE_END = "]<]start of image[>[", "]<]end of image[>["


class MiniMaxM3Layout(YoutuVLLayout):
    """The picture markers of ``engine``'s vocabulary and the picture layout of a MiniMax-M3 projector."""

    def __init__(self, engine: Any, encoder: MiniMaxM3Encoder) -> None:  # (not YoutuVLLayout's: another text model)
        require_text_model(engine, "minimax_m3", "minimax-m3", "MiniMax-M3", (IMAGE_START, IMAGE_END))
        self.engine, self.encoder = engine, encoder

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture's rows take, from its size alone: its merged rows."""
        nx, ny = minimax_m3_image.grid(w, h, self.encoder.cfg)
        return nx * ny

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd], resized as libmtmd does and encoded."""
        return self.encoder.encode(minimax_m3_image.preprocess(image, self.encoder.cfg))
