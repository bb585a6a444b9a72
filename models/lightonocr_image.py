"""LightOnOCR's image side, as llama.cpp's clip.cpp builds it (projector type "lightonocr": ``clip_graph_pixtral``, the
graph of Pixtral / Mistral Small 3.1, models/pixtral_image.py) from an mmproj file (loaders/mmproj.py), and the
picture's size as libmtmd's longest-edge preprocessor chooses it.

The encoder is Pixtral's: patches embedded by the kernel, RMSNorm ``v.pre_ln``, RMSNorm blocks with a 2-D rope and
SwiGLU, Mistral Small 3.1's patch merger (``mm.input_norm``, each 2x2 block's patches channel-major,
``mm.patch_merger``) and the adapter ``mm.1``/``mm.2`` (GELU between); LightOnOCR's file has no [IMG_BREAK] row, so a
picture's rows are its blocks in raster order, nothing between rows.  What LightOnOCR does its own way is the
picture's size (clip.cpp's ``calc_size_preserved_ratio`` with a longest edge, ``mtmd_image_preprocessor_longest_edge``):

    scale = min(L / w, L / h)          (float32; L: clip.vision.preproc_image_size, else image_size; up or down)
    sides = ceil(w * scale / B) * B, ceil(h * scale / B) * B     (B: patch_size x spatial_merge_size)

then resized keeping the aspect and padded with black, with clip.cpp's port of Pillow's bicubic filter (as Pixtral's,
models/qwen2vl_image.py's :func:`~kvrun.models.qwen2vl_image.resize`).  runtime/vision_lightonocr.py puts the rows
between ``<|im_start|>`` and ``<|im_end|>`` for the qwen3 text model.
"""

from __future__ import annotations

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..ops.backend import Backend
from .pixtral_image import PixtralEncoder, block
from .qwen2vl_image import resize

F32 = np.float32


def target_size(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(width, height) a picture is resized to: scaled (float32, as clip.cpp) so its longest side is the longest edge,
    each side then rounded up to whole blocks."""
    f, edge = block(cfg), cfg.longest_edge
    scale = min(F32(edge) / F32(width), F32(edge) / F32(height))
    return tuple(int(np.ceil(F32(F32(side) * scale) / F32(f))) * f for side in (width, height))  # type: ignore[return-value]


def grid(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(nx, ny): the blocks (output rows) a width x height picture becomes, a side."""
    w, h = target_size(width, height, cfg)
    return w // block(cfg), h // block(cfg)


def preprocess(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> normalised pixels [3, H, W] float32 at :func:`target_size`."""
    w, h = target_size(img.shape[1], img.shape[0], cfg)
    a = resize(img, w, h).astype(F32) / F32(255.0)
    mean, std = np.asarray(cfg.image_mean, F32), np.asarray(cfg.image_std, F32)
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1), F32)


class LightOnOCREncoder(PixtralEncoder):
    """Pixtral's encoder, merger and adapter as a lightonocr file holds them (no [IMG_BREAK] row: clip.cpp loads none)."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        super().__init__(g, cfg, backend)
        self.img_break = None  # (clip.cpp reads no v.token_embd.img_break for lightonocr, whatever the file holds)
        if cfg.longest_edge <= 0:
            raise KvrunError(f"{g.path}: the lightonocr projector states no image size to take a picture's longest edge from")
