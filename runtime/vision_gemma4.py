"""Gemma 4's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "gemma4v").

A picture keeps (about) its aspect and becomes 70 to 1120 rows (models/gemma4v_image.py: one row per 48 x 48
pixels for Gemma 4's 16-pixel patches pooled 3x3).  At the picture's ``<__media__>`` the prompt holds

    <|image>  (the picture's rows, in raster order)  <image|>

the two markers tokenized with the text around them, as Gemma 3's ``<start_of_image>``/``<end_of_image>`` are
(runtime/vision.py).  libmtmd decodes the rows with causal attention off (``mtmd_decode_use_non_causal`` is true for
gemma4v), so the text model (models/gemma4.py) lets an image's rows see each other both ways, n_batch rows a
forward, as cache/bidirectional.py does for Gemma 3; the rows go in unscaled, their per-layer inputs those of
token 0 (llama.cpp's multimodal path of ``build_inp_per_layer``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .vision_markers import require_text_model
from ..models import gemma4v_image
from ..models.gemma4v_image import Gemma4VEncoder

IMAGE_START, IMAGE_END = "<|image>", "<image|>"


class Gemma4VLayout:
    """The image markers of ``engine``'s vocabulary and the picture layout of a gemma4v projector: a picture's rows
    between the markers (the slot runtime/vision.py gives SmolVLM's blocks: ``rows`` and ``n_positions``)."""

    def __init__(self, engine: Any, encoder: Gemma4VEncoder) -> None:
        require_text_model(engine, "gemma4v", "gemma4", "Gemma 4", (IMAGE_START, IMAGE_END))
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The picture's place between the markers as the fixture records mtmd_tokenize's chunks: -1 a row."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture takes (without its markers), from its size alone."""
        return gemma4v_image.n_rows(w, h, self.encoder.cfg)

    def rows(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB ``image`` [h, w, 3] -> its rows [n_positions, n_embd]."""
        return self.encoder.encode(gemma4v_image.preprocess(image, self.encoder.cfg))
