"""Kimi-VL's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "kimivl").

A picture, kept at its own size within 8 to 1024 merged rows (models/kimivl_image.py), becomes one image chunk between
the oracle's (llama.cpp 0.3.36) markers ``<|media_start|>`` and ``<|media_end|>``, tokenized with the text around them
as Gemma 3's are (runtime/vision.py):

    <|media_start|> (the picture's rows, blocks in raster order) <|media_end|>

Kimi-VL's text model is DeepSeek-V3's (models/deepseek2.py), which llama.cpp feeds image rows causally, as any token
(``mtmd_decode_use_non_causal`` is true for Gemma 3 only), so :meth:`KimiVLLayout.rows` gives them as one array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import kimivl_image
from ..models.kimivl_image import KimiVLEncoder
from .vision_markers import require_markers

IMAGE_START, IMAGE_END = "<|media_start|>", "<|media_end|>"


class KimiVLLayout:
    """The media markers of ``engine``'s vocabulary and the picture layout of a Kimi-VL projector."""

    def __init__(self, engine: Any, encoder: KimiVLEncoder) -> None:
        require_markers(engine, (IMAGE_START, IMAGE_END), "a Kimi-VL")
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The image chunk's ids: -1 for each row (as the fixture records mtmd's chunks)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture's rows take, from its size alone."""
        return kimivl_image.n_rows(w, h, self.encoder.cfg)

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd], resized as libmtmd does and encoded."""
        return self.encoder.encode(kimivl_image.preprocess(image, self.encoder.cfg))
