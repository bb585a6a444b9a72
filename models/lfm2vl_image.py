"""LFM2-VL's image side, as llama.cpp's libmtmd sizes and cuts a picture (``mtmd_image_preprocessor_lfm2``) and
clip.cpp encodes it (``clip_graph_siglip`` for PROJECTOR_TYPE_LFM2), from an mmproj file (loaders/mmproj.py).

The picture's size.  Its sides are rounded to whole blocks of ``patch_size * n_merge`` pixels and, where that is
past ``max_pixels`` or short of ``min_pixels`` (clip.cpp: 256 and 64 merged rows' worth, LFM2-VL's
processor_config), scaled down (floored) or up (ceiled) to fit, keeping about its aspect (Hugging Face's
``smart_resize``; float32 arithmetic as clip.cpp's).  That picture, stretched to the size with a bilinear resize
(no padding; Pillow's, as the oracle's clip.cpp runs it: :func:`resize_bilinear`), is the image.  A picture whose rounded sides hold more than twice ``max_pixels``
(rounded half to even, in double, as ``should_tile``) is also cut into 512-pixel tiles: a grid of 2 to 10 tiles
whose aspect is closest to the picture's (ties to the larger grid where the picture fills more than half of it),
the picture resized into the grid's pixels keeping its aspect and padded with black (clip.cpp's PAD_CEIL), and the
image above becomes the thumbnail after the tiles.

Each image (the single one, or each tile and the thumbnail) is then:

    pixels [3, H, W] -> patches of p x p, embedded by the patch kernel (F16, as ggml's conv_2d) + bias
    -> + the learned position embeddings, a square grid resized to the picture's W/p x H/p patches (SigLIP2
       NaFlex: ggml_interpolate, bilinear with antialias, i.e. PyTorch's ``antialias=True``)
    -> the SigLIP ViT blocks and post LayerNorm (models/siglip.py's, every patch seeing every patch)
    -> pixel unshuffle: each n_merge x n_merge block of patches side by side (clip.cpp's build_patch_merge_permute)
    -> LayerNorm (eps 1e-5, ``mm.input_norm``) -> ``mm.1`` (+ bias), GELU, ``mm.2`` (+ bias)
    -> [H/(p n_merge) * W/(p n_merge), n_text_embd], the blocks in raster order

ggml's CPU numerics are followed where they show, as models/siglip.py does.  runtime/vision_lfm2.py lays the
images out between LFM2-VL's image tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from . import pillow_resize
from .pillow_resize import Filter, resize_axes
from .siglip import SiglipEncoder, embed_patches, vit_block
from .vit_ops import merge_permute, ops_of

F32 = np.float32
TILE, MIN_TILES, MAX_TILES, TOLERANCE = 512, 2, 10, 2.0  # libmtmd's mtmd_image_preprocessor_lfm2 constants
PROJ_EPS = 1e-5  # the projector's LayerNorm (clip.cpp: nn.LayerNorm's default)

TENSOR_NAMES.update({  # LFM2-VL's projector (clip.cpp's TN_MM_INP_NORM, TN_MM_INP_NORM_B, TN_LLAVA_PROJ 1 and 2)
    "mm_in_norm": "mm.input_norm.weight", "mm_in_norm_b": "mm.input_norm.bias",
    "mm_1": "mm.1.weight", "mm_1_b": "mm.1.bias", "mm_2": "mm.2.weight", "mm_2_b": "mm.2.bias",
})  # fmt: skip


# ---------------------------------------------------------------- the picture's size, tiles and pixels


def target_size(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(width, height) of the picture's image (the single one, or the thumbnail): clip.cpp's
    ``calc_size_preserved_ratio`` with min and max pixels, float32 as clip.cpp's (std::round: half away from 0)."""
    f = cfg.patch_size * cfg.n_merge
    ff = F32(f)

    def rnd(x: Any) -> int:
        q = F32(x) / ff
        return int(np.floor(q + F32(0.5))) * f

    def flo(x: Any) -> int:
        return int(np.floor(F32(x) / ff)) * f

    def cei(x: Any) -> int:  # (clip.cpp takes the float32 product to double first)
        return int(math.ceil(float(F32(x)) / f)) * f

    w_bar, h_bar = max(f, rnd(width)), max(f, rnd(height))
    if h_bar * w_bar > cfg.max_pixels:
        beta = np.sqrt(F32(height) * F32(width) / F32(cfg.max_pixels))
        h_bar, w_bar = max(f, flo(F32(height) / beta)), max(f, flo(F32(width) / beta))
    elif h_bar * w_bar < cfg.min_pixels:
        beta = np.sqrt(F32(cfg.min_pixels) / (F32(height) * F32(width)))
        h_bar, w_bar = cei(F32(height) * beta), cei(F32(width) * beta)
    return w_bar, h_bar


def should_tile(width: int, height: int, cfg: MmprojConfig) -> bool:
    """libmtmd's ``should_tile``: the picture's sides rounded to blocks (half to even, as Hugging Face's Python)
    hold more than twice ``max_pixels``."""
    f = cfg.patch_size * cfg.n_merge
    h_bar = max(cfg.patch_size, round(height / f) * f)
    w_bar = max(cfg.patch_size, round(width / f) * f)
    return float(h_bar) * float(w_bar) > cfg.max_pixels * TOLERANCE


def target_ratios(min_tiles: int = MIN_TILES, max_tiles: int = MAX_TILES) -> list[tuple[int, int]]:
    """(columns, rows) grids of ``min_tiles`` to ``max_tiles`` tiles, by their tile count, as libmtmd lists them
    (``get_target_ratios``; a stable sort, as std::sort happens to keep these: each count's grids in the order they
    were found, columns outer).  LFM2-VL's and DeepSeek-OCR's (runtime/vision_deepseekocr.py) tiling share it."""
    out: list[tuple[int, int]] = []
    for n in range(min_tiles, max_tiles + 1):
        for w in range(1, n + 1):
            for h in range(1, n + 1):
                if min_tiles <= w * h <= max_tiles and (w, h) not in out:
                    out.append((w, h))
    return sorted(out, key=lambda r: r[0] * r[1])


def closest_grid(width: int, height: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(columns, rows) of the :func:`target_ratios` grid whose aspect is nearest the picture's, in float32 as libmtmd
    (``find_closest_aspect_ratio``): on a tie the later, larger grid where the picture has more than half its pixels."""
    aspect = F32(width) / F32(height)
    area = F32(width * height)
    best, best_diff = (1, 1), F32(np.finfo(np.float32).max)
    for w, h in target_ratios(min_tiles, max_tiles):
        diff = abs(aspect - F32(w) / F32(h))
        if diff < best_diff:
            best, best_diff = (w, h), diff
        elif diff == best_diff and area > F32(0.5) * F32(tile * tile * w * h):
            best = (w, h)
    return best


def grid(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(columns, rows) of 512-pixel tiles the picture is cut into; (0, 0) where it is not."""
    if not should_tile(width, height, cfg):
        return 0, 0
    return closest_grid(width, height, TILE, MIN_TILES, MAX_TILES)


def _triangle(x: float) -> float:
    return max(1.0 - abs(x), 0.0)


BILINEAR: Filter = (_triangle, 1.0)  # Pillow's bilinear filter, support 1


def resize_bilinear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """clip.cpp's resize for LFM2-VL (bilinear, no padding), as it runs in the oracle: Pillow's bilinear resampling
    ported (a triangle filter widened when downscaling, fixed-point weights), horizontal pass then vertical, each
    clipped to bytes; uint8 RGB [h, w, 3] -> [height, width, 3], a picture already that size kept.  (Measured on
    the tiny projector: rows as llama.cpp's, float noise apart; the newer corner-aligned bilinear of clip.cpp's
    source, and the vertical-first order, are 0.2 to 1.7 off.)"""
    return resize_axes(img, width, height, BILINEAR)


def resize_padded(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """clip.cpp's ``img_tool::resize`` with PAD_CEIL: scaled by the smaller of width/w and height/h (sides rounded
    up, float32), bilinear, centred on black [height, width, 3]."""
    return pillow_resize.resize_padded(img, width, height, BILINEAR)


@dataclass
class Cut:
    """A picture as libmtmd cuts it for LFM2-VL: ``tiles`` row by row (``n_rows`` x ``n_cols``; none for a picture
    that is not tiled) and ``image``, the single image or the thumbnail, each uint8 RGB [h, w, 3]."""

    n_cols: int
    n_rows: int
    tiles: list[np.ndarray]
    image: np.ndarray


def cut(img: np.ndarray, cfg: MmprojConfig) -> Cut:
    """uint8 RGB ``img`` [h, w, 3] -> its tiles and image (``mtmd_image_preprocessor_lfm2``)."""
    h, w = img.shape[:2]
    image = resize_bilinear(img, *target_size(w, h, cfg))
    cols, rows = grid(w, h, cfg)
    if not cols:
        return Cut(0, 0, [], image)
    refined = resize_padded(img, cols * TILE, rows * TILE)
    tiles = [np.ascontiguousarray(refined[y : y + TILE, x : x + TILE]) for y in range(0, rows * TILE, TILE) for x in range(0, cols * TILE, TILE)]
    return Cut(cols, rows, tiles, image)


def n_rows_of(width: int, height: int, cfg: MmprojConfig) -> int:
    """Embedding rows an image of width x height pixels becomes."""
    f = cfg.patch_size * cfg.n_merge
    return (width // f) * (height // f)


def normalise(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB [h, w, 3] -> pixels [3, h, w] float32: scaled to [0, 1], less image_mean, over image_std."""
    a = img.astype(F32) / F32(255.0)
    mean, std = np.asarray(cfg.image_mean, F32), np.asarray(cfg.image_std, F32)
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1), F32)


# ---------------------------------------------------------------- the encoder


def _aa_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of PyTorch's bilinear resize with antialias (ggml_interpolate's BILINEAR | ANTIALIAS):
    a triangle filter widened by the downscaling factor (1 when upscaling), centred on each output pixel's centre
    in input coordinates, normalised."""
    sf = n_out / n_in
    support = max(1.0 / sf, 1.0)
    w = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        center = (i + 0.5) / sf
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        for j in range(lo, hi):
            w[i, j] = max(1.0 - abs((j + 0.5 - center) / support), 0.0)
        s = w[i].sum()
        if s > 0:
            w[i] /= s
    return w


def resize_positions(pos: np.ndarray, side: int, nx: int, ny: int) -> np.ndarray:
    """A square grid of position embeddings [side*side, E] (raster order) resized to [ny*nx, E]."""
    if (nx, ny) == (side, side):
        return pos
    g = pos.reshape(side, side, -1).astype(np.float64)
    g = np.einsum("yi,ixe->yxe", _aa_weights(side, ny), g)
    g = np.einsum("xj,yje->yxe", _aa_weights(side, nx), g)
    return np.ascontiguousarray(g.reshape(ny * nx, -1), F32)


class Lfm2VLEncoder(SiglipEncoder):
    """LFM2-VL's vision encoder and projector from an mmproj file: :meth:`encode` pixels of any (block-aligned)
    size into embedding rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        super().__init__(g, cfg, backend)  # (the ViT: patch kernel, position grid, blocks, post LayerNorm)
        ld = WeightLoader(g, backend)
        self.in_norm, self.in_norm_b = ld.host_vector("mm_in_norm", required=False), ld.host_vector("mm_in_norm_b", required=False)
        self.mm1, self.mm1_b = ld.matrix("mm_1"), ld.host_vector("mm_1_b", required=False)
        self.mm2, self.mm2_b = ld.matrix("mm_2"), ld.host_vector("mm_2_b", required=False)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (H, W whole blocks of patch_size * n_merge) -> rows [H W / (p k)^2, n_text_embd]."""
        c = self.cfg
        p, k = c.patch_size, c.n_merge
        if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.shape[1] % (p * k) or pixels.shape[2] % (p * k):
            raise KvrunError(f"the LFM2-VL encoder takes pixels [3, H, W] in whole {p * k}-pixel blocks, got {list(pixels.shape)}")
        return _forward(ops_of(self), self, pixels)


def _forward(ops: Any, enc: Lfm2VLEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`Lfm2VLEncoder.encode` past its check on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels and the resized positions go up once, the rows come down once): the patches plus the position grid resized
    on the host to the picture's patches, the SigLIP blocks (a head at a time on the host: a 512-pixel tile of 16-pixel
    patches is 1024 patches, 4 MiB of scores) and post LayerNorm, the 2x2 unshuffle, the projector."""
    c, xp = enc.cfg, ops.xp
    ny, nx = pixels.shape[1] // c.patch_size, pixels.shape[2] // c.patch_size
    x = embed_patches(ops, enc, pixels) + ops.vector(resize_positions(enc.pos_embd, c.n_patches_side, nx, ny))
    for L in enc.layers:
        x = vit_block(ops, enc, L, x, "gelu")
    if enc.post_ln is not None:
        x = ops.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    x = xp.ascontiguousarray(merge_permute(x, nx, ny, c.n_merge))  # (the pixel unshuffle)
    if enc.in_norm is not None:
        x = ops.layer_norm(x, enc.in_norm, enc.in_norm_b, PROJ_EPS)
    elif enc.in_norm_b is not None:
        x = x + ops.const(enc.in_norm_b)
    h = ops.act(ops.linear(enc.mm1, x, enc.mm1_b), "gelu")
    return ops.to_host(xp.ascontiguousarray(ops.linear(enc.mm2, h, enc.mm2_b), F32))
