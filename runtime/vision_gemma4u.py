"""Gemma 4 12B's "unified" pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "gemma4uv").

mtmd.cpp treats gemma4uv as gemma4v (runtime/vision_gemma4.py): the picture keeps (about) its aspect and becomes 70
to 1120 rows (models/gemma4uv_image.py: one row per 48 x 48 pixels), and at its ``<__media__>`` the prompt holds

    <|image>  (the picture's rows, in raster order)  <image|>

the markers tokenized with the text around them.  libmtmd decodes the rows with causal attention off
(``mtmd_decode_use_non_causal`` is true for gemma4uv whatever the text model's width), which is how Gemma 4's text
model reads rows fed as embeddings (models/gemma4.py).

The same file carries the audio side ("gemma4ua": models/gemma4ua_audio.py), whose rows are read causally; the file
opens as runtime/omni.py's :class:`~.omni.Omni`, which sends the rows of a picture (runtime/vision_markers.py's :class:`PictureRows`, a view
that says so) to the picture side and any other rows to the audio side.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import gemma4uv_image
from ..models.gemma4uv_image import Gemma4UVEncoder
from .vision_markers import require_text_model

IMAGE_START, IMAGE_END = "<|image>", "<image|>"


class Gemma4UVLayout:
    """The image markers of ``engine``'s vocabulary and the picture layout of a gemma4uv projector: a picture's rows
    between the markers (the slot runtime/vision.py gives SmolVLM's blocks: ``rows`` and ``n_positions``)."""

    def __init__(self, engine: Any, encoder: Gemma4UVEncoder) -> None:
        require_text_model(engine, "gemma4uv", "gemma4", "Gemma 4", (IMAGE_START, IMAGE_END))
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The picture's place between the markers as the fixture records mtmd_tokenize's chunks: -1 a row."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture takes (without its markers), from its size alone."""
        return gemma4uv_image.n_rows(w, h, self.encoder.cfg)

    def rows(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB ``image`` [h, w, 3] -> its rows [n_positions, n_embd]."""
        return self.encoder.encode(gemma4uv_image.preprocess(image, self.encoder.cfg))
