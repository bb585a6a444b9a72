"""Kimi-K2.5's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "kimik25").

A picture, kept at its own size within the file's pixel limits (models/kimik25_image.py), becomes one image chunk
between the oracle's (llama.cpp 0.3.36) markers ``<|media_begin|>`` and ``<|media_end|>``, tokenized with the text
around them as Gemma 3's are (runtime/vision.py):

    <|media_begin|> (the picture's rows, blocks in raster order) <|media_end|>

Kimi-K2.5's text model is DeepSeek-V3's (models/deepseek2.py), which llama.cpp feeds image rows causally, as any token,
so :meth:`KimiK25Layout.rows` gives them as one array.  libmtmd marks the pictures of a vocabulary that has
``<|begin_of_image|>`` (GLM-5.2-V, whose files reuse this projector type) with ``<|begin_of_image|>`` /
``<|end_of_image|>`` instead; kvrun lays out Kimi-K2.5's alone and refuses such a text model in one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..models import kimik25_image
from ..models.kimik25_image import KimiK25Encoder
from .vision_markers import require_arch, require_markers

IMAGE_START, IMAGE_END = "<|media_begin|>", "<|media_end|>"
GLM5V_START = "<|begin_of_image|>"  # (libmtmd's choice of GLM-5.2-V's markers: this token in the vocabulary)


class KimiK25Layout:
    """The media markers of ``engine``'s vocabulary and the picture layout of a Kimi-K2.5 projector."""

    def __init__(self, engine: Any, encoder: KimiK25Encoder) -> None:
        require_arch(engine, ("deepseek2",), "a kimik25 projector goes with a Kimi-K2.5 text model (deepseek2)")
        if len(engine.tokenizer.encode(GLM5V_START, add_bos=False, parse_special=True)) == 1:
            raise KvrunError(f"{engine.path}: the vocabulary has {GLM5V_START} (GLM-5.2-V's markers); kvrun lays out Kimi-K2.5's pictures only")
        require_markers(engine, (IMAGE_START, IMAGE_END), "a Kimi-K2.5")
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The image chunk's ids: -1 for each row (as the fixture records mtmd's chunks)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture's rows take, from its size alone."""
        return kimik25_image.n_rows(w, h, self.encoder.cfg)

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd], resized as libmtmd does and encoded."""
        return self.encoder.encode(kimik25_image.preprocess(image, self.encoder.cfg))
