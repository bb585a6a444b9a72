"""LightOnOCR's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "lightonocr").

A picture, scaled to the projector's longest edge (models/lightonocr_image.py), becomes one image chunk of its blocks'
rows in raster order, between ``<|im_start|>`` and ``<|im_end|>``:

    <|im_start|> (the picture's rows) <|im_end|>

the markers tokenized with the text around them (special tokens parsed), as Gemma 3's are (runtime/vision.py).  The
qwen3 text model reads image rows causally, as any token (``mtmd_decode_use_non_causal`` is false for lightonocr), so
:meth:`LightOnOCRLayout.rows` gives the picture's rows as one array, fed as one image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import lightonocr_image
from ..models.lightonocr_image import LightOnOCREncoder
from .vision_markers import require_markers

IMAGE_START, IMAGE_END = "<|im_start|>", "<|im_end|>"


class LightOnOCRLayout:
    """The ``<|im_start|>`` / ``<|im_end|>`` tokens of ``engine``'s vocabulary and the picture layout of LightOnOCR."""

    def __init__(self, engine: Any, encoder: LightOnOCREncoder) -> None:
        require_markers(engine, (IMAGE_START, IMAGE_END), "a LightOnOCR")
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The image chunk's ids between the markers: -1 for each row (as the fixture records mtmd's chunks)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture's rows take, from its size alone: its blocks."""
        nx, ny = lightonocr_image.grid(w, h, self.encoder.cfg)
        return nx * ny

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd], resized as libmtmd does and encoded."""
        enc = self.encoder
        return enc.encode(lightonocr_image.preprocess(image, enc.cfg))
