"""DeepSeek-OCR 2's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "deepseekocr2").

libmtmd runs DeepSeek-OCR's preprocessor (``mtmd_image_preprocessor_deepseekocr``, runtime/vision_deepseekocr.py)
with DeepSeek-OCR 2's numbers: the global view the picture fitted into a 1024-pixel square on grey, as DeepSeek-OCR's;
where the picture is larger than a 768-pixel tile either way, the grid of ``clip.vision.preproc_min_tiles`` to
``preproc_max_tiles`` (2 to 6) tiles nearest its aspect, the picture stretched onto it and cut into 768-pixel tiles,
each tile an image of its own (DeepSeek-OCR fuses a row of tiles into one).

The encoder (models/deepseekocr2_image.py) turns each view into its query rows (144 a tile, 256 the global view);
libmtmd puts them in one image chunk, the tiles first (row by row), then the global view and ``v.view_seperator``, no
newline rows, no text token before it and ``"\\n"`` after it (``img_end``, tokenized on its own):

    (tile 1: 144 rows) ... (tile k: 144 rows) (the global view: 256 rows) v.view_seperator "\\n"

fed causally as one block, beside DeepSeek-OCR's text model (``deepseek2-ocr``), as DeepSeek-OCR's
(:class:`~kvrun.runtime.vision_deepseekocr.DeepseekOCRLayout`, whose ``"\\n"`` and rows this layout keeps).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..models import lfm2vl_image
from ..models.deepseekocr2_image import IMAGE_SIZE, MAX_TILES, MIN_TILES, TILE, DeepseekOCR2Encoder
from ..models.pillow_resize import BICUBIC, resize_axes
from .vision_deepseekocr import IMAGE_END, DeepseekOCRLayout, global_view, normalise
from .vision_markers import require_arch


def grid(width: int, height: int, min_tiles: int = MIN_TILES, max_tiles: int = MAX_TILES) -> tuple[int, int]:
    """(columns, rows) of 768-pixel tiles a width x height picture is cut into; (0, 0) for one no larger than a tile."""
    if width <= TILE and height <= TILE:
        return 0, 0
    return lfm2vl_image.closest_grid(width, height, TILE, min_tiles, max_tiles)


def tiles(img: np.ndarray, min_tiles: int = MIN_TILES, max_tiles: int = MAX_TILES) -> list[np.ndarray]:
    """The picture's tiles, uint8 RGB [768, 768, 3], row by row (none for a picture no larger than a tile): the
    picture stretched onto the grid (Pillow's bicubic, as libmtmd's) and cut."""
    cols, rows = grid(img.shape[1], img.shape[0], min_tiles, max_tiles)
    if not cols:
        return []
    refined = resize_axes(img, cols * TILE, rows * TILE, BICUBIC)
    return [np.ascontiguousarray(refined[y * TILE : (y + 1) * TILE, x * TILE : (x + 1) * TILE]) for y in range(rows) for x in range(cols)]


def chunk_rows(cols: int, rows: int) -> int:
    """The image chunk's rows for a grid of cols x rows tiles (0 x 0: none): 144 a tile, the global view's 256 and
    the separator."""
    return cols * rows * (TILE // 64) ** 2 + (IMAGE_SIZE // 64) ** 2 + 1


class DeepseekOCR2Layout(DeepseekOCRLayout):
    """The picture layout of a deepseekocr2 projector beside ``engine``'s DeepSeek-OCR text model."""

    def __init__(self, engine: Any, encoder: DeepseekOCR2Encoder) -> None:
        require_arch(engine, ("deepseek2-ocr",), "a deepseekocr2 projector goes with a DeepSeek-OCR text model (deepseek2-ocr)")
        self.engine, self.encoder = engine, encoder
        self.min_tiles, self.max_tiles = encoder.min_tiles, encoder.max_tiles
        self.end = engine.tokenizer.encode(IMAGE_END, add_bos=False, parse_special=True)
        if not self.end:
            raise KvrunError(f"{engine.path}: the vocabulary cannot write {IMAGE_END!r}; not a DeepSeek-OCR model")

    def n_image_rows(self, w: int, h: int) -> int:
        """The image chunk's rows for a w x h picture: each tile's, the global view's and the separator."""
        return chunk_rows(*grid(w, h, self.min_tiles, self.max_tiles))

    def image_chunk(self, image: np.ndarray) -> np.ndarray:
        """The rows of the picture's image chunk [n_image_rows, n_embd]: each tile's, then the global view's."""
        enc = self.encoder
        mean, std = enc.cfg.image_mean, enc.cfg.image_std
        grids = [enc.encode(normalise(t, mean, std)) for t in tiles(image, self.min_tiles, self.max_tiles)]
        return enc.view_rows(grids + [enc.encode(normalise(global_view(image), mean, std))], overview=True)
