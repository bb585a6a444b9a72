"""Muse Glimmer's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "muse-glimmer").

A picture, stretched to whole merged blocks of about its own aspect (models/muse_glimmer_image.py), becomes one image
chunk between the markers ``<|image_start|>`` and ``<|image_end|>`` (mtmd.cpp's img_beg / img_end), tokenized with
the text around them as Gemma 3's are (runtime/vision.py):

    <|image_start|> (the picture's rows, blocks in raster order) <|image_end|>

The text model (models/muse_glimmer.py) takes the rows as llama.cpp does: causally, one position each, and RMS-normed
at its input as its token embeddings are, so :meth:`MuseGlimmerLayout.rows` gives them as one array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import muse_glimmer_image
from ..models.muse_glimmer_image import MuseGlimmerEncoder
from .vision_markers import require_markers

IMAGE_START, IMAGE_END = "<|image_start|>", "<|image_end|>"


class MuseGlimmerLayout:
    """The picture markers of ``engine``'s vocabulary and the picture layout of a Muse Glimmer projector."""

    def __init__(self, engine: Any, encoder: MuseGlimmerEncoder) -> None:
        require_markers(engine, (IMAGE_START, IMAGE_END), "a Muse Glimmer")
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The image chunk's ids: -1 for each row (as the fixture records mtmd's chunks)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture's rows take, from its size alone."""
        return muse_glimmer_image.n_rows(w, h, self.encoder.cfg)

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd], stretched as libmtmd does and encoded."""
        return self.encoder.encode(muse_glimmer_image.preprocess(image, self.encoder.cfg))
