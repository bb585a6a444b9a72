"""Step3-VL's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "step3vl",
``MTMD_SLICE_TMPL_STEP3VL``).

A picture becomes its crops, row by row, and an overview (models/step3vl_image.py), each encoded on its own.  At the
picture's ``<__media__>``, with no markers of its own around it, the crops come first and the overview last:

    for each row:  <patch_start> (crop) <patch_end> ... , <patch_newline> between rows (none after the last)
    <im_start> (overview) <im_end>

(a picture with no crops: the overview's part alone).  Each marker is the first token whose text is exactly it
(libmtmd's ``lookup_token``).  Step3-VL's text model (Qwen3) reads image rows with causal attention, as any token
(``mtmd_decode_use_non_causal`` is false for step3vl), so the markers may go in as their embedding rows:
:meth:`Step3VLLayout.rows` gives the picture's whole block as one array of rows, fed as one image (runtime/vision.py),
as SmolVLM's block is (runtime/vision_idefics3.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import step3vl_image
from ..models.step3vl_image import CROP, Step3VLEncoder
from .vision_idefics3 import Idefics3Layout, Pieces
from .vision_markers import lookup_markers, require_arch

MARKERS = ("<im_start>", "<im_end>", "<patch_start>", "<patch_end>", "<patch_newline>")
#: the text model the projector goes with: Step3-VL-10B's Qwen3 (llama.cpp pairs it with Step-3.7-Flash's step35 too,
#: whose forward in kvrun, models/step35.py, reads no image rows yet)
ARCHS = ("qwen3",)


class Step3VLLayout(Idefics3Layout):
    """The markers of ``engine``'s vocabulary and the picture layout of a Step3-VL projector."""

    def __init__(self, engine: Any, encoder: Step3VLEncoder) -> None:
        require_arch(engine, ARCHS, "a step3vl projector goes with a Step3-VL text model (qwen3)")
        self.engine, self.encoder = engine, encoder
        self.im, self.im_end, self.patch, self.patch_end, self.nl = lookup_markers(engine, MARKERS, "a Step3-VL")

    def _block(self, n_cols: int, n_rows: int, parts: list[Any]) -> list[Any]:
        """The block's pieces, token id lists and ``parts`` (the crops row by row, then the overview) in order."""
        out: list[Any] = []
        for r in range(n_rows):
            for c in range(n_cols):
                out += [[self.patch], parts[r * n_cols + c], [self.patch_end]]
            if r != n_rows - 1:
                out.append([self.nl])
        return out + [[self.im], parts[-1], [self.im_end]]

    def pieces(self, image: np.ndarray) -> Pieces:
        """uint8 RGB ``image`` [h, w, 3] -> its block: token ids and parts (normalised pixels), in libmtmd's order."""
        c = step3vl_image.cut(image, self.encoder.cfg)
        return self._block(c.n_cols, c.n_rows, [*c.crops, c.overview])

    def n_positions(self, width: int, height: int) -> int:
        """Positions a width x height picture's block takes, from its size alone."""
        pl = step3vl_image.plan(width, height, self.encoder.cfg)
        n_crops = pl.n_cols * pl.n_rows
        S = self.encoder.cfg.image_size
        crops = n_crops * (self.encoder.n_rows(CROP, CROP) + 2) + max(pl.n_rows - 1, 0)
        return crops + self.encoder.n_rows(S, S) + 2

    def n_rows(self, part: np.ndarray) -> int:
        return self.encoder.n_rows(part.shape[2], part.shape[1])

    def normalise(self, part: np.ndarray) -> np.ndarray:
        return part  # (step3vl_image.cut gives the encoder's pixels: libmtmd resizes and normalises in one step)
