"""Janus-Pro's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "janus_pro").

A picture, resized to the projector's square (models/janus_image.py), becomes one image chunk of (image_size /
patch_size)^2 rows, with no tokens around it: libmtmd states no markers for janus_pro, so the text before and after
the media marker is tokenized as it stands (the prompt's own ``<image_placeholder>``-style text, where a chat template
writes one, is the user's).  The llama text model reads image rows causally, as any token
(``mtmd_decode_use_non_causal`` is false for janus_pro), so :meth:`JanusProLayout.rows` gives them as one array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import janus_image
from ..models.janus_image import JanusProEncoder


class JanusProLayout:
    """The picture layout of a janus_pro projector beside ``engine``'s model: rows alone, no marker tokens."""

    def __init__(self, engine: Any, encoder: JanusProEncoder) -> None:
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The image chunk's ids: -1 for each row (as the fixture records mtmd's chunks)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a picture's rows take, whatever its size: one a patch of the square."""
        return self.encoder.cfg.n_tokens

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd], resized as libmtmd does and encoded."""
        enc = self.encoder
        return enc.encode(janus_image.preprocess(image, enc.cfg))
