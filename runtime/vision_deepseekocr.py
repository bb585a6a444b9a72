"""DeepSeek-OCR's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "deepseekocr").

libmtmd's DeepSeek-OCR preprocessor (``mtmd_image_preprocessor_deepseekocr``) makes a picture a global view and, where
it is larger than a 640-pixel tile either way, a grid of tiles:

* the global view: the picture fitted into a 1024-pixel square keeping its aspect (Pillow's bicubic, sides and
  offsets rounded to nearest: PAD_NEAREST), on a grey ground (:data:`PAD_COLOR`);
* the tiles: the grid of 2 to 9 tiles whose aspect is closest to the picture's (on a tie the later, larger one where
  the picture has more than half its pixels; :func:`grid`), the picture stretched onto it (bicubic, no padding) and
  cut into 640-pixel tiles, each row of tiles one image.

The encoder (models/deepseekocr_image.py) turns each view into a grid of rows; libmtmd puts them in one image chunk,
the rows of tiles first, then the global view, no text token before it and ``"\\n"`` after it
(``img_end``, tokenized on its own):

    (tile row 1: each grid row across its tiles, then v.image_newline) ... (the global view: each of its 16 grid
    rows then v.image_newline; v.view_seperator) "\\n"

The ``"\\n"`` is this layout's own (libmtmd tokenizes it apart from the text after it, which a real tokenizer could
otherwise merge with it): :meth:`DeepseekOCRLayout.rows` gives the picture's rows and that token's embedding, fed
causally as one block (``mtmd_decode_use_non_causal`` is false for DeepSeek-OCR), and its text model must be
DeepSeek-OCR's (``deepseek2-ocr``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..models.deepseekocr_image import IMAGE_SIZE, MAX_TILES, MIN_TILES, TILE, DeepseekOCREncoder
from ..models import lfm2vl_image
from ..models.pillow_resize import BICUBIC, resize_axes
from .vision_markers import require_arch

#: the text libmtmd puts after a picture
IMAGE_END = "\n"
#: the global view's ground (clip.cpp's image_pad_color for deepseekocr)
PAD_COLOR = (127, 127, 127)


def target_ratios() -> list[tuple[int, int]]:
    """(columns, rows) of every grid of MIN_TILES to MAX_TILES tiles, fewest tiles first, in the order libmtmd lists
    them (``get_target_ratios``: by count, then as generated, columns outer)."""
    # (std::sort is not stable: the order within one count shows only where two of its grids are exactly as near the
    # picture's aspect, in float32, which the grids' distinct aspects all but rule out)
    return lfm2vl_image.target_ratios(MIN_TILES, MAX_TILES)


def grid(width: int, height: int) -> tuple[int, int]:
    """(columns, rows) of tiles a width x height picture is cut into; (0, 0) for one no larger than a tile."""
    if width <= TILE and height <= TILE:
        return 0, 0
    return lfm2vl_image.closest_grid(width, height, TILE, MIN_TILES, MAX_TILES)


def chunk_rows(cols: int, rows: int) -> int:
    """The image chunk's rows for a grid of cols x rows tiles (0 x 0: none): each row of tiles' grid rows across them
    with a newline row each, then the global view's 16 rows of 16 with theirs and the separator row."""
    n_tile, n_view = TILE // 64, IMAGE_SIZE // 64
    return rows * n_tile * (cols * n_tile + 1) + n_view * (n_view + 1) + 1


def global_view(img: np.ndarray) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] fitted into [1024, 1024, 3] as libmtmd's PAD_NEAREST resize: scaled by the smaller
    of 1024/w and 1024/h (float32; sides and centring offsets rounded to nearest), on :data:`PAD_COLOR`."""
    h, w = img.shape[:2]
    f = np.float32
    S = IMAGE_SIZE
    if (w, h) == (S, S):
        return img
    scale = min(f(S) / f(w), f(S) / f(h))
    nw, nh = min(int(round(float(f(w) * scale))), S), min(int(round(float(f(h) * scale))), S)
    out = np.empty((S, S, 3), np.uint8)
    out[:] = PAD_COLOR
    ox, oy = int(round((S - nw) / 2.0)), int(round((S - nh) / 2.0))
    out[oy : oy + nh, ox : ox + nw] = resize_axes(img, nw, nh, BICUBIC)
    return out


def tile_rows(img: np.ndarray) -> list[list[np.ndarray]]:
    """The picture's tiles, uint8 RGB [640, 640, 3], row by row (none for a picture no larger than a tile)."""
    cols, rows = grid(img.shape[1], img.shape[0])
    if not cols:
        return []
    refined = resize_axes(img, cols * TILE, rows * TILE, BICUBIC)
    return [[np.ascontiguousarray(refined[y * TILE : (y + 1) * TILE, x * TILE : (x + 1) * TILE]) for x in range(cols)] for y in range(rows)]


def normalise(img: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 RGB [S, S, 3] -> pixels [3, S, S] float32: scaled to [0, 1], less ``mean``, over ``std``."""
    f = np.float32
    a = img.astype(f) / f(255.0)
    return np.ascontiguousarray(((a - np.asarray(mean, f)) / np.asarray(std, f)).transpose(2, 0, 1), f)


class DeepseekOCRLayout:
    """The picture layout of a deepseekocr projector beside ``engine``'s DeepSeek-OCR text model."""

    def __init__(self, engine: Any, encoder: DeepseekOCREncoder) -> None:
        require_arch(engine, ("deepseek2-ocr",), "a deepseekocr projector goes with a DeepSeek-OCR text model (deepseek2-ocr)")
        self.engine, self.encoder = engine, encoder
        self.end = engine.tokenizer.encode(IMAGE_END, add_bos=False, parse_special=True)
        if not self.end:
            raise KvrunError(f"{engine.path}: the vocabulary cannot write {IMAGE_END!r}; not a DeepSeek-OCR model")

    def n_image_rows(self, w: int, h: int) -> int:
        """The image chunk's rows for a w x h picture: each tile row's and the global view's, newlines included."""
        return chunk_rows(*grid(w, h))

    def ids(self, image: np.ndarray) -> list[int]:
        """The picture's ids: -1 for each row of its image chunk, then the ids of ``"\\n"`` (as the fixture records
        mtmd's chunks)."""
        return [-1] * self.n_image_rows(image.shape[1], image.shape[0]) + self.end

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture takes: its image chunk's rows and the ``"\\n"`` after them."""
        return self.n_image_rows(w, h) + len(self.end)

    def image_chunk(self, image: np.ndarray) -> np.ndarray:
        """The rows of the picture's image chunk [n_image_rows, n_embd]: each row of tiles, then the global view."""
        enc = self.encoder
        mean, std = enc.cfg.image_mean, enc.cfg.image_std
        out = [enc.view_rows([enc.encode(normalise(t, mean, std)) for t in row], overview=False) for row in tile_rows(image)]
        out.append(enc.view_rows([enc.encode(normalise(global_view(image), mean, std))], overview=True))
        return np.concatenate(out)

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's block [n_positions, n_embd]: :meth:`image_chunk`, then the text model's ``token_embd`` rows of
        ``"\\n"``."""
        eng = self.engine
        nl = np.empty((len(self.end), eng.cfg.n_embd), np.float32)
        eng.backend.get_rows(eng.model.tok_embd, np.asarray(self.end, np.int32), nl)
        return np.ascontiguousarray(np.concatenate([self.image_chunk(image), nl]), np.float32)

