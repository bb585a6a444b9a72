"""Nemotron Nano VL's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "nemotron_v2_vl").

libmtmd 0.3.36 cuts no tiles for Nemotron Nano VL and puts no tokens around its picture: the picture is one square
(models/nemotronvl_image.py), its rows stand where the media marker was, one image chunk, the text on either side
tokenized as it is.  The text model (``nemotron_h``: Mamba-2, attention and MLP layers) reads image rows causally,
as any token (``mtmd_decode_use_non_causal`` is false for it), so :meth:`NemotronVLLayout.rows` gives the picture's
rows as one array, fed as one image.  The file names no tokens to check a vocabulary by: any text model of the
projector's width goes with it (the width is checked in runtime/vision.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import nemotronvl_image
from ..models.nemotronvl_image import NemotronVLEncoder


class NemotronVLLayout:
    """The picture layout of a Nemotron Nano VL projector beside ``engine``'s model."""

    def __init__(self, engine: Any, encoder: NemotronVLEncoder) -> None:
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The image chunk's ids: -1 for each row (as the fixture records mtmd's chunks)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture's rows take: one square's, whatever its size."""
        return self.encoder.cfg.n_tokens

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd]: its square encoded."""
        enc = self.encoder
        return np.ascontiguousarray(enc.encode(nemotronvl_image.preprocess(image, enc.cfg)), np.float32)
