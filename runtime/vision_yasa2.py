"""Reka Edge's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "yasa2").

libmtmd 0.3.36 cuts no tiles for Reka Edge (its multi-tile llava-uhd layout is not implemented there): any picture is
one stretched square (models/yasa2_image.py) of 64 rows, one image chunk, between ``<image>`` and ``</image>``:

    <image> (the picture's 64 rows) </image>

the markers tokenized with the text around them (special tokens parsed), as Gemma 3's are (runtime/vision.py).  The
text model is a llama (llama.cpp's converter writes Reka Edge's decoder so): libmtmd gives the rows one position each,
in order, and reads them causally as any token, so :meth:`Yasa2Layout.rows` gives the picture's rows as one array,
fed as one image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import yasa2_image
from ..models.yasa2_image import POOLED, Yasa2Encoder
from .vision_markers import require_text_model

IMAGE_START, IMAGE_END = "<image>", "</image>"


class Yasa2Layout:
    """The ``<image>`` / ``</image>`` tokens of ``engine``'s vocabulary (a llama text model) and Reka Edge's layout."""

    def __init__(self, engine: Any, encoder: Yasa2Encoder) -> None:
        require_text_model(engine, "yasa2", "llama", "Reka Edge", (IMAGE_START, IMAGE_END))
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The image chunk's ids between the markers: -1 for each row (as the fixture records mtmd's chunks)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a picture's rows take, whatever its size: the 8 x 8 pooled cells (clip.cpp's count for yasa2)."""
        return POOLED * POOLED

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [64, n_embd]: stretched to the square as libmtmd does and encoded."""
        enc = self.encoder
        return enc.encode(yasa2_image.preprocess(image, enc.cfg))
