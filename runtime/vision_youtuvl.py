"""Youtu-VL's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "youtuvl").

A picture, kept at its own size in whole 2x2 blocks of patches (models/youtuvl_image.py), becomes one image chunk
between ``<|vision_start|>`` and ``<|vision_end|>``, tokenized with the text around them as Gemma 3's markers are
(runtime/vision.py):

    <|vision_start|> (the picture's rows, blocks in raster order) <|vision_end|>

Youtu-VL's text model is Youtu-LLM, llama.cpp's deepseek2 (models/deepseek2.py), which libmtmd feeds image rows causally
at consecutive positions, as any token (``mtmd_decode_use_mrope`` and ``mtmd_decode_use_non_causal`` are false for
youtuvl, unlike Qwen2-VL's markers' M-RoPE), so :meth:`YoutuVLLayout.rows` gives them as one array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import youtuvl_image
from ..models.youtuvl_image import YoutuVLEncoder
from .vision_markers import require_text_model

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"


class YoutuVLLayout:
    """The vision markers of ``engine``'s vocabulary and the picture layout of a Youtu-VL projector."""

    def __init__(self, engine: Any, encoder: YoutuVLEncoder) -> None:
        require_text_model(engine, "youtuvl", "deepseek2", "Youtu-VL", (VISION_START, VISION_END))
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The image chunk's ids: -1 for each row (as the fixture records mtmd's chunks)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture's rows take, from its size alone."""
        return youtuvl_image.n_rows(w, h, self.encoder.cfg)

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd], resized as libmtmd does and encoded."""
        return self.encoder.encode(youtuvl_image.preprocess(image, self.encoder.cfg))
