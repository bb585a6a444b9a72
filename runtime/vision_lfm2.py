"""LFM2-VL's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "lfm2", ``MTMD_SLICE_TMPL_LFM2``).

A picture becomes one image, or 512-pixel tiles and a thumbnail (models/lfm2vl_image.py), each encoded on its own.
At the picture's ``<__media__>`` the prompt holds:

    single image:  <|image_start|>  (the image's rows)  <|image_end|>
    tiled:         <|image_start|>  for each row R, for each column C: <|img_row_R_col_C|> (the tile's rows)
                   <|img_thumbnail|> (the thumbnail's rows)  <|image_end|>

``<|image_start|>`` and ``<|image_end|>`` are tokenized with the text around them, as Gemma 3's markers are
(runtime/vision.py); ``<|img_row_R_col_C|>`` as text, special tokens parsed (libmtmd's ``add_text(..., true)``),
``<|img_thumbnail|>`` the token whose text it is (``lookup_token``).  LFM2's text model reads image rows causally,
as any token (``mtmd_decode_use_non_causal`` is false for lfm2), so :meth:`Lfm2Layout.rows` gives the whole block
between the markers, tile tokens and tiles alike, as one array of rows, the tokens as their rows of
``token_embd`` (feeding a token's embedding row is feeding the token).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import lfm2vl_image
from ..models.lfm2vl_image import Lfm2VLEncoder
from .vision_idefics3 import Idefics3Layout, Pieces
from .vision_markers import require_arch, require_markers

IMAGE_START, IMAGE_END, THUMBNAIL = "<|image_start|>", "<|image_end|>", "<|img_thumbnail|>"
TILE_START = "<|img_row_{}_col_{}|>"


class Lfm2Layout(Idefics3Layout):
    """The image tokens of ``engine``'s vocabulary and the picture layout of an LFM2-VL projector (Idefics3Layout's
    ids and rows, over its own pieces)."""

    def __init__(self, engine: Any, encoder: Lfm2VLEncoder) -> None:
        require_arch(engine, ("lfm2", "lfm2moe"), "an lfm2 projector goes with an LFM2-VL text model (lfm2)")
        require_markers(engine, (IMAGE_START, IMAGE_END, THUMBNAIL), "an LFM2-VL")
        self.thumb = engine.tokenizer.encode(THUMBNAIL, add_bos=False, parse_special=True)[0]
        self.engine, self.encoder = engine, encoder

    def pieces(self, image: np.ndarray) -> Pieces:
        """uint8 RGB ``image`` [h, w, 3] -> its block between the markers: token ids and images, in libmtmd's order."""
        c = lfm2vl_image.cut(image, self.encoder.cfg)
        if not c.tiles:
            return [c.image]
        tok = self.engine.tokenizer
        out: Pieces = []
        for r in range(c.n_rows):
            for col in range(c.n_cols):
                out.append(tok.encode(TILE_START.format(r + 1, col + 1), add_bos=False, parse_special=True))
                out.append(c.tiles[r * c.n_cols + col])
        return out + [[self.thumb], c.image]

    def n_rows(self, part: np.ndarray) -> int:
        return lfm2vl_image.n_rows_of(part.shape[1], part.shape[0], self.encoder.cfg)

    def normalise(self, part: np.ndarray) -> np.ndarray:
        return lfm2vl_image.normalise(part, self.encoder.cfg)

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture's block takes (without its markers), from its size alone."""
        cfg, tok = self.encoder.cfg, self.engine.tokenizer
        n = lfm2vl_image.n_rows_of(*lfm2vl_image.target_size(w, h, cfg), cfg)
        cols, rows = lfm2vl_image.grid(w, h, cfg)
        if cols:
            per_tile = lfm2vl_image.n_rows_of(lfm2vl_image.TILE, lfm2vl_image.TILE, cfg)
            n += 1 + sum(len(tok.encode(TILE_START.format(r + 1, c + 1), add_bos=False, parse_special=True)) + per_tile
                         for r in range(rows) for c in range(cols))  # fmt: skip
        return n
