"""MiniCPM-V's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "resampler";
``MTMD_SLICE_TMPL_MINICPMV_2_6`` for versions 3 and up, ``..._2_5`` for version 2).

A picture becomes an overview and, larger than a slice, a grid of slices (models/minicpmv_image.py), each encoded on
its own into ``n_query`` rows.  At the picture's ``<__media__>``, with no markers of its own around it:

    2.6 and up:  <image> (overview) </image>  then for each row:  <slice> (slice) </slice> ... , "\\n" between rows
    2.5:         <image> (overview) </image> <slice>  then for each row:  <image> (slice) </image> ... , "\\n"
                 between rows, then </slice>

Each marker is the first token whose text is exactly it (libmtmd's ``lookup_token``).  MiniCPM-V's text models
(Llama 3, Qwen2, Qwen3) read image rows with causal attention, as any token, so the markers may go in as their
embedding rows: :meth:`MiniCPMVLayout.rows` gives the picture's whole block as one array of rows, fed as one image
(runtime/vision.py), as SmolVLM's block is (runtime/vision_idefics3.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import minicpmv_image
from ..models.minicpmv_image import MiniCPMVEncoder
from .vision_idefics3 import Idefics3Layout, Pieces
from .vision_markers import lookup_markers

MARKERS = ("<image>", "</image>", "<slice>", "</slice>", "\n")


class MiniCPMVLayout(Idefics3Layout):
    """The markers of ``engine``'s vocabulary and the picture layout of a MiniCPM-V projector."""

    def __init__(self, engine: Any, encoder: MiniCPMVEncoder) -> None:
        self.engine, self.encoder = engine, encoder
        self.img, self.img_end, self.sl, self.sl_end, self.nl = lookup_markers(engine, MARKERS, "a MiniCPM-V")
        self.v25 = encoder.cfg.minicpmv_version == 2

    def _block(self, n_cols: int, n_rows: int, parts: list[Any]) -> list[Any]:
        """The block's pieces, token id lists and ``parts`` (overview first, then the slices row by row) in order."""
        out: list[Any] = [[self.img], parts[0], [self.img_end]]
        if not n_cols:
            return out
        s_start, s_end = ([self.img], [self.img_end]) if self.v25 else ([self.sl], [self.sl_end])
        if self.v25:
            out.append([self.sl])
        for r in range(n_rows):
            for c in range(n_cols):
                out += [s_start, parts[1 + r * n_cols + c], s_end]
            if r != n_rows - 1:
                out.append([self.nl])
        if self.v25:
            out.append([self.sl_end])
        return out

    def pieces(self, image: np.ndarray) -> Pieces:
        """uint8 RGB ``image`` [h, w, 3] -> its block: token ids and parts (uint8 pictures), in libmtmd's order."""
        c = minicpmv_image.cut(image, self.encoder.cfg)
        return self._block(c.n_cols, c.n_rows, [c.overview, *c.slices])

    def n_positions(self, width: int, height: int) -> int:
        """Positions a width x height picture's block takes, from its size alone."""
        pl = minicpmv_image.plan(width, height, self.encoder.cfg)
        parts = [None] * (1 + pl.n_cols * pl.n_rows)
        return sum(self.encoder.cfg.n_query if p is None else len(p) for p in self._block(pl.n_cols, pl.n_rows, parts))

    def n_rows(self, part: np.ndarray) -> int:
        return self.encoder.cfg.n_query

    def normalise(self, part: np.ndarray) -> np.ndarray:
        return minicpmv_image.normalise(part, self.encoder.cfg)
