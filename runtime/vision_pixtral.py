"""Pixtral's and Mistral Small 3.1+'s pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type
"pixtral").

A picture, kept at its own size within the pixel limits (models/pixtral_image.py), becomes one image chunk: its
rows of blocks with the projector's [IMG_BREAK] row (``v.token_embd.img_break``) between them, all embeddings (clip.cpp
builds them into the image's rows), then the text token ``[IMG_END]``:

    (row 1's blocks) [IMG_BREAK] (row 2's blocks) [IMG_BREAK] ... (the last row's blocks) [IMG_END]

libmtmd puts nothing before the image (no ``[IMG]``: ``img_beg`` is empty for pixtral) and tokenizes ``[IMG_END]``
with the text after it (special tokens parsed), as Gemma 3's end marker (runtime/vision.py).  Mistral's text
models read image rows causally, as any token (``mtmd_decode_use_non_causal`` is false for pixtral), so
:meth:`PixtralLayout.rows` gives the picture's chunk as one array of rows, fed as one image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import pixtral_image
from ..models.pixtral_image import PixtralEncoder
from .vision_markers import require_markers

IMAGE_START, IMAGE_END = "", "[IMG_END]"


class PixtralLayout:
    """The ``[IMG_END]`` token of ``engine``'s vocabulary and the picture layout of a pixtral projector."""

    def __init__(self, engine: Any, encoder: PixtralEncoder) -> None:
        require_markers(engine, (IMAGE_END,), "a Pixtral / Mistral Small 3.1")
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The image chunk's ids: -1 for each row, [IMG_BREAK] rows included (as the fixture records mtmd's chunks)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture's rows take, from its size alone: its blocks and the [IMG_BREAK]s between rows."""
        nx, ny = pixtral_image.grid(w, h, self.encoder.cfg)
        return nx * ny + (ny - 1 if self.encoder.img_break is not None else 0)

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd], resized as libmtmd does and encoded."""
        enc = self.encoder
        return enc.encode(pixtral_image.preprocess(image, enc.cfg))
