"""dots.ocr's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "dots_ocr").

A picture, kept at about its own size within the projector's pixel limits (models/dotsocr_image.py), becomes one image
chunk of its merged blocks' rows in raster order, between ``<|img|>`` and ``<|endofimg|>``:

    <|img|> (the picture's rows) <|endofimg|>

the markers tokenized with the text around them (special tokens parsed), as Gemma 3's are (runtime/vision.py).  The
text model is a qwen2 (llama.cpp's converter writes dots.ocr's language side so): its rope is NEOX, not M-RoPE, so libmtmd
gives the rows one position each, in order, and reads them causally as any token; :meth:`DotsOCRLayout.rows` gives the
picture's rows as one array, fed as one image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import dotsocr_image
from ..models.dotsocr_image import DotsOCREncoder
from .vision_markers import require_markers

IMAGE_START, IMAGE_END = "<|img|>", "<|endofimg|>"


class DotsOCRLayout:
    """The ``<|img|>`` / ``<|endofimg|>`` tokens of ``engine``'s vocabulary and the picture layout of dots.ocr."""

    def __init__(self, engine: Any, encoder: DotsOCREncoder) -> None:
        require_markers(engine, (IMAGE_START, IMAGE_END), "a dots.ocr")
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The image chunk's ids between the markers: -1 for each row (as the fixture records mtmd's chunks)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture's rows take, from its size alone: its merged blocks."""
        nx, ny = dotsocr_image.grid(w, h, self.encoder.cfg)
        return nx * ny

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd], resized as libmtmd does and encoded."""
        enc = self.encoder
        return enc.encode(dotsocr_image.preprocess(image, enc.cfg))
