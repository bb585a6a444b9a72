"""Gemma 3n's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "gemma3nv").

A picture is resized to the encoder's square (768 for Gemma 3n) and becomes 256 rows (models/gemma3nv_image.py:
MobileNetV5's 16 x 16 fused map, projected into the text width).  At the picture's ``<__media__>`` the prompt holds

    <start_of_image>  (the 256 rows, in raster order)  <end_of_image>

the markers tokenized with the text around them, as Gemma 3's (runtime/vision.py).  Unlike Gemma 3's, the rows are
read causally: libmtmd asks for non-causal decoding only for the gemma3 (and gemma4v) projectors
(``mtmd_decode_use_non_causal``).  The Gemma 3n text model (models/gemma3n.py) takes them unscaled, their per-layer
inputs those of token 0 (llama.cpp's multimodal path of the gemma3n graph), n_batch rows a forward.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .vision_markers import require_text_model
from ..loaders.gguf_file import GGUFFile
from ..models import gemma3nv_image
from ..models.gemma3nv_image import Gemma3nVisionEncoder

IMAGE_START, IMAGE_END = "<start_of_image>", "<end_of_image>"


def skips_audio(g: GGUFFile) -> bool:
    """Whether the opened file ``g`` is a Gemma 3n projector file (its vision side "gemma3nv"), whose audio side
    (gemma3na) libmtmd 0.3.36 leaves unloaded: the published mmproj holds both, and is read as a picture projector
    alone."""
    return (g.get("clip.vision.projector_type") or g.get("clip.projector_type")) == "gemma3nv"


class Gemma3nVLayout:
    """The image markers of ``engine``'s vocabulary and the picture layout of a gemma3nv projector: a picture's rows
    between the markers (the slot runtime/vision.py gives SmolVLM's blocks: ``rows`` and ``n_positions``)."""

    def __init__(self, engine: Any, encoder: Gemma3nVisionEncoder) -> None:
        require_text_model(engine, "gemma3nv", "gemma3n", "Gemma 3n", (IMAGE_START, IMAGE_END))
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The picture's place between the markers as the fixture records mtmd_tokenize's chunks: -1 a row."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a picture takes (without its markers): 256 whatever its size."""
        return gemma3nv_image.n_rows(self.encoder.cfg)

    def rows(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB ``image`` [h, w, 3] -> its rows [256, n_embd]."""
        return self.encoder.encode(gemma3nv_image.preprocess(image, self.encoder.cfg))
