"""PaddleOCR-VL's pictures in the prompt (llama.cpp's projector type "paddleocr"), as libmtmd lays them out and feeds
them: Qwen2-VL's way (runtime/vision_qwen2vl.py), which this extends.

At a picture's ``<__media__>`` the prompt holds ``<|IMAGE_START|>``, the picture's rows (models/paddleocr_image.py:
``ny`` x ``nx`` of them, the picture rounded to blocks of 2x2 patches within the file's pixel limits) and
``<|IMAGE_END|>``.  The text model's rope is multimodal (llama.cpp's MROPE type for ``paddleocr``), so libmtmd gives
the rows M-RoPE positions: row (y, x) of a picture fed at position t turns by (t, t + y, t + x, 0) and the text
after it goes on from t + max(nx, ny) (models/mrope_images.py, read by models/paddleocr.py).  The rows are fed
causally, one cache slot each, as any token (``mtmd_decode_use_non_causal`` is false for this projector).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import paddleocr_image
from .vision_markers import require_arch, require_markers
from .vision_qwen2vl import GridRows, Qwen2VLLayout

IMAGE_START, IMAGE_END = "<|IMAGE_START|>", "<|IMAGE_END|>"


class PaddleOCRLayout(Qwen2VLLayout):
    """A PaddleOCR-VL projector beside ``engine``'s ``paddleocr`` text model: Qwen2-VL's layout between PaddleOCR's
    image markers, the picture sized and encoded as models/paddleocr_image.py does."""

    def __init__(self, engine: Any, encoder: paddleocr_image.PaddleOCREncoder) -> None:
        require_arch(engine, ("paddleocr",), "a paddleocr projector goes with a PaddleOCR-VL text model (paddleocr)",
                     takes_images=True)  # fmt: skip
        require_markers(engine, (IMAGE_START, IMAGE_END), "a PaddleOCR-VL")
        self.engine, self.encoder = engine, encoder

    def grid(self, image: np.ndarray) -> tuple[int, int]:
        """(nx, ny): the rows a side uint8 RGB ``image`` [h, w, 3] becomes."""
        return paddleocr_image.grid(image.shape[1], image.shape[0], self.encoder.cfg)

    def rows(self, image: np.ndarray) -> GridRows:
        """The picture resized, normalised and encoded: rows [ny * nx, n_embd] with their grid."""
        rows = self.encoder.encode(paddleocr_image.preprocess(image, self.encoder.cfg)).view(GridRows)
        rows.grid = self.grid(image)
        return rows
