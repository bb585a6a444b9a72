"""LLaVA's and MobileVLM's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector types "mlp", "ldp",
"ldpv2").

libmtmd puts no tokens around a LLaVA picture: its rows stand where the media marker was, one image chunk, the text
on either side tokenized as it is.  LLaVA 1.5's picture is one square (models/llava_image.py); LLaVA 1.6's (a file
with image_grid_pinpoints) is its tiles and then its overview, each a square's rows, one after another with nothing
between (libmtmd 0.3.36 builds no ``image_newline`` rows).  The text models (llama, mistral, ...) read image rows
causally, as any token (``mtmd_decode_use_non_causal`` is false for these), so :meth:`LlavaLayout.rows` gives the
picture's chunk as one array of rows, fed as one image.  Any text model of the projector's width goes with it (the
width is checked in runtime/vision.py): LLaVA's files name no tokens to check a vocabulary by.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import llava_image
from ..models.llava_image import LlavaEncoder


class LlavaLayout:
    """The picture layout of a LLaVA or MobileVLM projector beside ``engine``'s model."""

    def __init__(self, engine: Any, encoder: LlavaEncoder) -> None:
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The image chunk's ids: -1 for each row (as the fixture records mtmd's chunks)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture's rows take, from its size alone: a square's, times 1 + LLaVA 1.6's tiles."""
        enc = self.encoder
        cols, rows = llava_image.grid(w, h, enc.cfg.image_size, enc.cands)
        return (1 + cols * rows) * enc.n_rows()

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd]: each square (LLaVA 1.6's tiles, then its overview) encoded."""
        enc = self.encoder
        return np.ascontiguousarray(np.concatenate([enc.encode(x) for x in llava_image.prepare(image, enc)]), np.float32)
