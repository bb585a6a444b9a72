"""Qwen2-VL's and Qwen2.5-VL's pictures in the prompt, as llama.cpp's libmtmd lays them out and feeds them.

At a picture's ``<__media__>`` the prompt holds ``<|vision_start|>``, the picture's rows (models/qwen2vl_image.py:
``ny`` x ``nx`` of them, the picture's own size rounded to 28-pixel blocks) and ``<|vision_end|>``, tokenized with
the text around them as Gemma 3's markers are (runtime/vision.py).  The rows are fed causally, as any token
(``mtmd_decode_use_non_causal`` is false for these projectors), one cache slot each; what differs is their rope
positions: the cache records the picture's grid before its rows go in (models/mrope_images.py), so that the text
model turns row (y, x) by (t, t + y, t + x) and the text after the picture goes on from t + max(nx, ny), as
``mtmd_helper_eval_chunks`` positions them.  A picture takes nx * ny slots of the context (llama.cpp's KV cells).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..models import qwen2vl_image
from ..models.mrope_images import add_image
from .vision_markers import PictureRows, require_arch, require_markers

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"


class GridRows(PictureRows):
    """A picture's rows [ny * nx, n_embd] that know their grid (``grid``: (nx, ny)), for the cache to record."""

    grid: tuple[int, int] = (0, 0)

    def __array_finalize__(self, obj: Any) -> None:
        self.grid = getattr(obj, "grid", (0, 0))


class Qwen2VLLayout:
    """A Qwen2-VL projector beside ``engine``'s ``qwen2vl`` text model: pictures to rows, rows into a cache."""

    def __init__(self, engine: Any, encoder: qwen2vl_image.Qwen2VLEncoder) -> None:
        require_arch(engine, ("qwen2vl",), f"a {encoder.cfg.projector_type} projector goes with a Qwen2-VL / Qwen2.5-VL text "
                     "model (qwen2vl)")  # fmt: skip
        require_markers(engine, (VISION_START, VISION_END), "a Qwen2-VL")
        self.engine, self.encoder = engine, encoder

    def grid(self, image: np.ndarray) -> tuple[int, int]:
        """(nx, ny): the rows a side uint8 RGB ``image`` [h, w, 3] becomes."""
        return qwen2vl_image.grid(image.shape[1], image.shape[0], self.encoder.cfg)

    def n_positions(self, image: np.ndarray) -> int:
        """Cache slots the picture takes: its rows, nx * ny."""
        nx, ny = self.grid(image)
        return nx * ny

    def rows(self, image: np.ndarray) -> GridRows:
        """The picture resized, normalised and encoded: rows [ny * nx, n_embd] with their grid."""
        rows = self.encoder.encode(qwen2vl_image.preprocess(image, self.encoder.cfg)).view(GridRows)
        rows.grid = self.grid(image)
        return rows

    def feed(self, cache: Any, rows: np.ndarray) -> None:
        """Feed a picture's rows after what ``cache`` holds, its grid recorded first so that they turn by their
        (t, h, w) positions."""
        nx, ny = getattr(rows, "grid", (0, 0))
        if nx * ny != len(rows):
            raise KvrunError(f"{len(rows)} image rows without their grid; a Qwen2-VL picture's rows come from Vision.image_rows")
        add_image(cache, nx, ny)
        self.engine.eval_embd(cache, np.asarray(rows))
