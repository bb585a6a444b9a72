"""Llama 4's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "llama4",
``MTMD_SLICE_TMPL_LLAMA4``).

A picture becomes its tiles, row by row, and an overview (models/llama4_image.py), each encoded on its own into one
image chunk.  As the oracle's libmtmd (llama.cpp 0.3.36) lays them out, their rows follow one another between
``<|image_start|>`` and ``<|image_end|>`` with no token between them, the overview last:

    <|image_start|> (tile 1) ... (tile n) (overview) <|image_end|>

(a picture no larger than a tile: the overview alone).  Newer llama.cpp sources put ``<|tile_x_separator|>`` between a
row's tiles, ``<|tile_y_separator|>`` after each row and ``<|image|>`` before the overview (Meta's format,
``MTMD_SLICE_TMPL_LLAMA4``); the oracle's build has no such template, and kvrun follows the oracle.  The markers are
tokenized with the text around them, as Gemma 3's are (runtime/vision.py).  llama.cpp feeds Llama 4's text model image
rows causally, as any token (``mtmd_decode_use_non_causal`` is true for Gemma 3 only), at consecutive positions, so
:meth:`Llama4Layout.rows` gives the block between the markers as one array of rows, fed as one image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import llama4_image
from ..models.llama4_image import Llama4VisionEncoder
from .vision_idefics3 import Pieces
from .vision_markers import require_markers

IMAGE_START, IMAGE_END = "<|image_start|>", "<|image_end|>"


class Llama4Layout:
    """The image tokens of ``engine``'s vocabulary and the picture layout of a Llama 4 projector."""

    def __init__(self, engine: Any, encoder: Llama4VisionEncoder) -> None:
        self.engine, self.encoder = engine, encoder
        require_markers(engine, (IMAGE_START, IMAGE_END), "a Llama 4")

    def pieces(self, image: np.ndarray) -> Pieces:
        """uint8 RGB ``image`` [h, w, 3] -> its block: the tiles (uint8 RGB [S, S, 3]) row by row, then the overview."""
        c = llama4_image.cut(image, self.encoder.cfg)
        return [*c.tiles, c.overview]

    def n_positions(self, width: int, height: int) -> int:
        """Positions a width x height picture's block takes between the markers, from its size alone."""
        cols, rows = llama4_image.grid(width, height, self.encoder.cfg)
        return (cols * rows + 1) * self.encoder.cfg.n_tokens

    def ids(self, image: np.ndarray) -> list[int]:
        """The block's token ids, -1 for each image row (as the fixture records mtmd's chunks)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's block as embedding rows [n_positions, n_embd]: each tile and the overview encoded."""
        enc = self.encoder
        return np.ascontiguousarray(np.concatenate([enc.encode(llama4_image.normalise(p, enc.cfg)) for p in self.pieces(image)]), np.float32)
