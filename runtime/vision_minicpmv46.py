"""MiniCPM-V 4.6's pictures in the prompt (projector type "minicpmv4_6"), as llama.cpp's libmtmd lays them out: MiniCPM-V
2.6's template (runtime/vision_minicpmv.py: ``<image>`` overview ``</image>`` then ``<slice>`` slice ``</slice>`` ...,
"\\n" between rows of slices), each part's rows as many as its patches merged (models/minicpmv46_image.py), not a
resampler's fixed count.
"""

from __future__ import annotations

import numpy as np

from ..models import minicpmv46_image
from .vision_idefics3 import Pieces
from .vision_minicpmv import MiniCPMVLayout


class MiniCPMV46Layout(MiniCPMVLayout):
    """The markers of ``engine``'s vocabulary and the picture layout of a MiniCPM-V 4.6 projector."""

    def _part_rows(self, width: int, height: int) -> int:
        c = self.encoder.cfg
        f = c.patch_size * c.n_merge
        return (width // f) * (height // f)

    def pieces(self, image: np.ndarray) -> Pieces:
        """uint8 RGB ``image`` [h, w, 3] -> its block: token ids and parts (uint8 pictures), in libmtmd's order."""
        c = minicpmv46_image.cut46(image, self.encoder.cfg)
        return self._block(c.n_cols, c.n_rows, [c.overview, *c.slices])

    def n_positions(self, width: int, height: int) -> int:
        """Positions a width x height picture's block takes, from its size alone."""
        pl = minicpmv46_image.plan46(width, height, self.encoder.cfg)
        n_slices = pl.n_cols * pl.n_rows
        rows = self._part_rows(*pl.overview)
        if n_slices:
            rows += n_slices * self._part_rows(pl.refined[0] // pl.n_cols, pl.refined[1] // pl.n_rows)
        parts = [None] * (1 + n_slices)
        return rows + sum(len(p) for p in self._block(pl.n_cols, pl.n_rows, parts) if p is not None)

    def n_rows(self, part: np.ndarray) -> int:
        return self._part_rows(part.shape[1], part.shape[0])
