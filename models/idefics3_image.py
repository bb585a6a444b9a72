"""SmolVLM's (Idefics3's) pictures as llama.cpp's libmtmd cuts them: a grid of tiles and a global view.

libmtmd's ``mtmd_image_preprocessor_idefics3`` follows the Hugging Face Idefics3 processor in two steps: the
picture is scaled, keeping its aspect, so that its longest edge is ``clip.vision.preproc_image_size`` (up or down;
the other side truncated and made even, as the processor's ``_resize_output_size_rescale_to_max_len``), then
stretched so both sides are whole tiles of ``image_size`` (rounded up) and cut into tiles, row by row; the global
view is that stretched picture scaled to one tile.  A file without a longest edge gives the global view alone, the
picture scaled to one tile.  Every resize is clip.cpp's port of Pillow's Lanczos-3 (``resize_lanczos_pillow``:
separable, horizontal pass first, 22-bit fixed-point weights, each pass clipped to bytes), ported array-wise in
models/pillow_resize.py (measured against libmtmd on the tiny projector: every tile's rows as llama.cpp's, float
noise apart).

Every tile and the global view go through the SigLIP encoder on their own (models/siglip.py); runtime/vision.py
lays their rows out between SmolVLM's image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..loaders.mmproj import MmprojConfig
from .pillow_resize import LANCZOS, resample

F32 = np.float32


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """clip.cpp's ``img_tool::resize`` with Lanczos and no padding: uint8 RGB ``img`` [h, w, 3] stretched to
    [height, width, 3]; a picture already that size is copied as it is."""
    h, w = img.shape[:2]
    if w != width:
        img = resample(img, width, 1, LANCZOS)
    if h != height:
        img = resample(img, height, 0, LANCZOS)
    return img


def longest_edge_size(width: int, height: int, longest_edge: int) -> tuple[int, int]:
    """The picture's size with its longest side ``longest_edge``, keeping the aspect (the other side truncated,
    then made even), as Idefics3's processor (``_resize_output_size_rescale_to_max_len``, min_len 1)."""
    aspect = width / height
    if width >= height:
        w, h = longest_edge, int(longest_edge / aspect)
        h += h % 2
    else:
        w, h = int(longest_edge * aspect), longest_edge
        w += w % 2
    return max(w, 1), max(h, 1)


def grid(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(columns, rows) of tiles a width x height picture is cut into; (0, 0) without a longest edge."""
    if cfg.longest_edge <= 0:
        return 0, 0
    S = cfg.image_size
    w, h = longest_edge_size(width, height, cfg.longest_edge)
    return -(-w // S), -(-h // S)


@dataclass
class Tiles:
    """A picture cut as libmtmd cuts it for Idefics3: ``tiles`` row by row (``n_rows`` x ``n_cols``, none without a
    longest edge) and the ``overview``, each uint8 RGB [image_size, image_size, 3]."""

    n_cols: int
    n_rows: int
    tiles: list[np.ndarray]
    overview: np.ndarray


def cut(img: np.ndarray, cfg: MmprojConfig) -> Tiles:
    """uint8 RGB ``img`` [h, w, 3] -> its tiles and global view (``mtmd_image_preprocessor_idefics3``)."""
    S = cfg.image_size
    h, w = img.shape[:2]
    if cfg.longest_edge <= 0:
        return Tiles(0, 0, [], resize(img, S, S))
    n_cols, n_rows = grid(w, h, cfg)
    refined = resize(resize(img, *longest_edge_size(w, h, cfg.longest_edge)), n_cols * S, n_rows * S)
    tiles = [np.ascontiguousarray(refined[y : y + S, x : x + S]) for y in range(0, n_rows * S, S) for x in range(0, n_cols * S, S)]
    return Tiles(n_cols, n_rows, tiles, resize(refined, S, S))


def normalise(tile: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB [S, S, 3] -> pixels [3, S, S] float32: scaled to [0, 1], less image_mean, over image_std."""
    a = tile.astype(F32) / F32(255.0)
    mean, std = np.asarray(cfg.image_mean, F32), np.asarray(cfg.image_std, F32)
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1), F32)
