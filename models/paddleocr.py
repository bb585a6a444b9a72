"""PaddleOCR-VL (Baidu) language model (``paddleocr``), text only, as llama.cpp's PADDLEOCR graph.

ERNIE 4.5 0.3B's block (``ernie4_5.py``: the Llama block, biases on Q, K and V where the file has them, the output
head tied or separate) with Qwen2-VL's multimodal rope (M-RoPE, ``rope.dimension_sections``, required): each head's
pairs taken in neox layout (halves), not ERNIE's consecutive pairs, in sections that turn with a token's time,
height, width and extra positions; a text token's are ``(p, p, p, 0)`` (``mrope_text.mrope_tables``).  The published
sections ([16, 24, 24] for heads of 128) cover every pair in the first three, so text turns as plain neox rope.

Images (PaddleOCR-VL's mmproj, models/paddleocr_image.py) go in as rows turned by their own sections' positions,
(t, t + y, t + x, 0), and the text after a picture goes on from t + max(nx, ny), as llama.cpp's libmtmd feeds them
(models/mrope_images.py, through models/mrope_text.py's :class:`~kvrun.models.mrope_text.MropeText`).
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .ernie4_5 import Ernie45Model
from .mrope_text import MropeText, rope_sections


class PaddleOCRModel(MropeText, Ernie45Model):
    archs = ("paddleocr",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        rope_sections(g)  # (required: a one-line error before any weight is read)
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.init_mrope(g)  # (text turns by the multimodal tables; image rows by their own sections' positions)
