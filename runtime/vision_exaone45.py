"""EXAONE 4.5's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "exaone4_5").

A picture, kept at about its own size within the projector's pixel limits (models/exaone45_image.py), becomes one
image chunk of its merged blocks' rows in raster order, between ``<vision>`` and ``</vision>``:

    <vision> (the picture's rows) </vision>

the markers tokenized with the text around them (special tokens parsed), as Gemma 3's are (runtime/vision.py).  The
text model is EXAONE 4.0's ``exaone4`` (llama.cpp's converter writes EXAONE 4.5's language side so): its rope is
NORM, not M-RoPE, so libmtmd gives the rows one position each, in order, and reads them causally as any token;
:meth:`Exaone45Layout.rows` gives the picture's rows as one array, fed as one image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import exaone45_image
from ..models.exaone45_image import Exaone45Encoder
from .vision_markers import require_text_model

VISION_START, VISION_END = "<vision>", "</vision>"


class Exaone45Layout:
    """The ``<vision>`` / ``</vision>`` tokens of ``engine``'s vocabulary and the picture layout of EXAONE 4.5."""

    def __init__(self, engine: Any, encoder: Exaone45Encoder) -> None:
        require_text_model(engine, "exaone4_5", "exaone4", "EXAONE 4.5", (VISION_START, VISION_END))
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The image chunk's ids between the markers: -1 for each row (as the fixture records mtmd's chunks)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture's rows take, from its size alone: its merged blocks."""
        nx, ny = exaone45_image.grid(w, h, self.encoder.cfg)
        return nx * ny

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd], resized as libmtmd does and encoded."""
        enc = self.encoder
        return enc.encode(exaone45_image.preprocess(image, enc.cfg))
