"""InternVL's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "internvl").

A picture becomes its tiles and a thumbnail, or, no larger than a tile, the thumbnail alone (models/internvl_image.py),
each encoded on its own; libmtmd puts their rows, tiles first, in one image chunk between ``<img>`` and ``</img>``:

    <img> (tile 1's rows) ... (tile n's rows) (the thumbnail's rows) </img>

with no tokens between the tiles (the model knows the grid only from the count of rows).  ``<img>`` and ``</img>``
are tokenized with the text around them, as Gemma 3's markers are (runtime/vision.py).  InternVL's text models
(Qwen2, Qwen3) read image rows causally, as any token (``mtmd_decode_use_non_causal`` is false for internvl), so
:meth:`InternVLLayout.rows` gives the picture's rows as one array, fed as one image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import internvl_image
from ..models.internvl_image import InternVLEncoder
from .vision_markers import require_markers

IMAGE_START, IMAGE_END = "<img>", "</img>"


class InternVLLayout:
    """The ``<img>`` tokens of ``engine``'s vocabulary and the picture layout of an InternVL projector."""

    def __init__(self, engine: Any, encoder: InternVLEncoder) -> None:
        require_markers(engine, (IMAGE_START, IMAGE_END), "an InternVL")
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The block's token ids between the markers: -1 for each image row (as the fixture records mtmd's chunks)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture's rows take: its tiles' and its thumbnail's, from its size alone."""
        cols, rows = internvl_image.grid(w, h, self.encoder.cfg)
        return (cols * rows + 1) * self.encoder.cfg.n_tokens

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd]: each tile, then the thumbnail, encoded."""
        enc = self.encoder
        c = internvl_image.cut(image, enc.cfg)
        return np.ascontiguousarray(np.concatenate([enc.encode(internvl_image.normalise(x, enc.cfg)) for x in c.images]), np.float32)
