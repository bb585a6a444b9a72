"""SmolVLM's (Idefics3's) image layout in the prompt, as llama.cpp's libmtmd lays it out (``MTMD_SLICE_TMPL_IDEFICS3``).

A picture is cut into a grid of tiles and a global view (models/idefics3_image.py), each encoded on its own
(models/siglip.py: SigLIP, pixel shuffle, ``mm.model.fc``).  In the prompt, at the picture's ``<__media__>``:

    for each row R, for each column C:  <fake_token_around_image><row_R_col_C>  (the tile's rows)
        and "\\n" after every row but the last
    "\\n\\n" <fake_token_around_image> <global-img>  (the global view's rows)  <fake_token_around_image>

Each ``<fake_token_around_image><row_R_col_C>`` is tokenized as text (special tokens parsed, libmtmd's
``add_text(..., true)``); ``\\n\\n``, ``\\n``, ``<fake_token_around_image>`` and ``<global-img>`` are the first
tokens whose text is exactly that (libmtmd's ``lookup_token``).  A file without a longest edge has no tiles: the
global view's part alone.  SmolVLM's text model (llama) reads image rows with causal attention, as any token
(``mtmd_decode_use_non_causal`` is false for idefics3), so the separator tokens may go in as their embedding rows:
:meth:`Idefics3Layout.rows` gives the picture's whole block, separators and tiles, as one array of rows, which the
prompt feeds as one image (runtime/vision.py).  Feeding a token's embedding row is feeding the token (llama.cpp
reads both through the same rows of ``token_embd``).
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np

from ..models import idefics3_image
from ..models.siglip import SiglipEncoder
from .vision_markers import lookup_markers

#: a picture's block: text token ids, and tiles (uint8 RGB [S, S, 3]) that become rows, in order
Pieces = list[Union[list[int], np.ndarray]]
SLICE_START = "<fake_token_around_image><row_{}_col_{}>"
FAKE, GLOBAL = "<fake_token_around_image>", "<global-img>"


class Idefics3Layout:
    """The image tokens of ``engine``'s vocabulary and the picture layout of an idefics3 projector."""

    def __init__(self, engine: Any, encoder: SiglipEncoder) -> None:
        self.engine, self.encoder = engine, encoder
        self.nn, self.nl, self.fake, self.glob = lookup_markers(engine, ("\n\n", "\n", FAKE, GLOBAL), "a SmolVLM (Idefics3)")

    def pieces(self, image: np.ndarray) -> Pieces:
        """uint8 RGB ``image`` [h, w, 3] -> its block: token ids and tiles, in libmtmd's order."""
        t = idefics3_image.cut(image, self.encoder.cfg)
        tok = self.engine.tokenizer
        out: Pieces = []
        for r in range(t.n_rows):
            for c in range(t.n_cols):
                out.append(tok.encode(SLICE_START.format(r + 1, c + 1), add_bos=False, parse_special=True))
                out.append(t.tiles[r * t.n_cols + c])
            if r != t.n_rows - 1:
                out.append([self.nl])
        out += [[self.nn, self.fake, self.glob], t.overview, [self.fake]]
        return out

    def n_rows(self, part: np.ndarray) -> int:
        """The rows an image part of a block (uint8 RGB) is encoded into."""
        return self.encoder.cfg.n_tokens

    def normalise(self, part: np.ndarray) -> np.ndarray:
        """An image part of a block as the encoder's pixels."""
        return idefics3_image.normalise(part, self.encoder.cfg)

    def ids(self, image: np.ndarray) -> list[int]:
        """The block's token ids, -1 for each image row (as the fixture records mtmd_tokenize's chunks)."""
        return [i for p in self.pieces(image) for i in (p if isinstance(p, list) else [-1] * self.n_rows(p))]

    def n_positions(self, width: int, height: int) -> int:
        """Positions a width x height picture's block takes: tiles and global view, and their tokens."""
        cols, rows = idefics3_image.grid(width, height, self.encoder.cfg)
        tok, n_tile = self.engine.tokenizer, self.encoder.cfg.n_tokens
        n = sum(len(tok.encode(SLICE_START.format(r + 1, c + 1), add_bos=False, parse_special=True)) + n_tile
                for r in range(rows) for c in range(cols))  # fmt: skip
        return n + max(rows - 1, 0) + 3 + n_tile + 1  # the row ends; "\n\n", <fake>, <global-img>, the view, <fake>

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's block as embedding rows [n_positions, n_embd]: each image part (tiles and the global view)
        encoded, each separator token its row of the text model's ``token_embd``."""
        eng, enc = self.engine, self.encoder
        out = []
        for p in self.pieces(image):
            if isinstance(p, list):
                buf = np.empty((len(p), eng.cfg.n_embd), np.float32)
                eng.backend.get_rows(eng.model.tok_embd, np.asarray(p, np.int32), buf)
                out.append(buf)
            else:
                out.append(enc.encode(self.normalise(p)))
        return np.ascontiguousarray(np.concatenate(out), np.float32)
