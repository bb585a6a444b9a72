"""Kimi-VL's image side (Kimi-VL-A3B's MoonViT), as llama.cpp's clip.cpp preprocesses and encodes a picture
(``clip_graph_kimivl`` for PROJECTOR_TYPE_KIMIVL) from an mmproj file (loaders/mmproj.py).

The picture keeps (about) its own size and aspect: its sides rounded to whole merged blocks (patch_size x 2 pixels)
and scaled, if need be, into 8 to 1024 merged rows' worth of pixels (clip.cpp's ``calc_size_preserved_ratio``, as
Pixtral's: models/pixtral_image.py's :func:`~kvrun.models.pixtral_image.target_size`), then resized into that size
keeping its aspect and centred on black, as the oracle's libmtmd runs Pixtral's (bicubic; newer clip.cpp sources
resize Kimi-VL's bilinear onto grey (122, 116, 104)).  Its rows:

    pixels [3, H, W] -> patches of p x p embedded by the patch kernel (F16, as ggml's conv_2d) + bias
    -> + the learned position grid resized to the picture's patches (ggml_interpolate, bilinear with antialias:
       models/lfm2vl_image.py's :func:`~kvrun.models.lfm2vl_image.resize_positions`)
    -> n_layer pre-norm ViT blocks: LayerNorm, attention with biases and a 2-D rope (the head's first half turned by
       the patch's column, the second by its row, from 0; models/llama4_image.py's :func:`~kvrun.models.llama4_image.rope_2d`),
       residual; LayerNorm, GELU MLP, residual -> LayerNorm ``v.post_ln``
    -> each 2x2 block of patches side by side (clip.cpp's ``build_patch_merge_permute``), each patch's part
       LayerNormed on its own (``mm.input_norm``, eps 1e-5) -> ``mm.1`` (+ bias), GELU, ``mm.2`` (+ bias)
    -> [(H/2p) (W/2p), n_text_embd], blocks in raster order

ggml's CPU numerics are followed where they show, as models/siglip.py does.  runtime/vision_kimivl.py lays the rows out.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig, open_mmproj
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from . import pixtral_image
from .lfm2vl_image import resize_positions
from .llama4_image import ln_rope_blocks, rope_2d
from .pixtral_image import target_size
from .siglip import SiglipEncoder
from .vit_ops import merge_permute, ops_of

F32 = np.float32
PROJ_EPS = 1e-5  # the projector's LayerNorm (clip.cpp: nn.LayerNorm's default)

TENSOR_NAMES.update({  # Kimi-VL's projector (clip.cpp's TN_MM_INP_NORM and TN_LLAVA_PROJ 1 and 2)
    "kv_in_norm": "mm.input_norm.weight", "kv_in_norm_b": "mm.input_norm.bias",
    "kv_mm1": "mm.1.weight", "kv_mm1_b": "mm.1.bias", "kv_mm2": "mm.2.weight", "kv_mm2_b": "mm.2.bias",
})  # fmt: skip


def preprocess(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> normalised pixels [3, H, W] float32 at :func:`target_size`: as the oracle runs
    it, Pixtral's (libmtmd's dynamic-size preprocessor: bicubic, centred on black), not the bilinear on Kimi's grey of
    newer clip.cpp sources (measured on the tiny projector: rows 1 to 15 off)."""
    return pixtral_image.preprocess(img, cfg)


def n_rows(width: int, height: int, cfg: MmprojConfig) -> int:
    """Rows a width x height picture becomes: its merged blocks."""
    W, H = target_size(width, height, cfg)
    f = cfg.patch_size * cfg.n_merge
    return (W // f) * (H // f)


class KimiVLEncoder(SiglipEncoder):
    """Kimi-VL's MoonViT and projector from an mmproj file: :meth:`encode` pixels of any block-aligned size."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        if cfg.n_merge != 2:
            raise KvrunError(f"{g.path}: clip.vision.projector.scale_factor is {cfg.n_merge}; Kimi-VL's projector merges 2x2")
        super().__init__(g, cfg, backend)  # (the ViT: patch kernel and bias, position grid, blocks, post LayerNorm)
        ld = WeightLoader(g, backend)
        self.in_norm, self.in_norm_b = ld.host_vector("kv_in_norm"), ld.host_vector("kv_in_norm_b", required=False)
        self.mm1, self.mm1_b = ld.matrix("kv_mm1"), ld.host_vector("kv_mm1_b", required=False)
        self.mm2, self.mm2_b = ld.matrix("kv_mm2"), ld.host_vector("kv_mm2_b", required=False)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: Backend) -> KimiVLEncoder:
        g, cfg = open_mmproj(path)
        return cls(g, cfg, backend)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (:func:`preprocess`; sides whole blocks) -> rows [blocks, n_text_embd]."""
        c = self.cfg
        p, m = c.patch_size, c.n_merge
        if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.shape[1] % (p * m) or pixels.shape[2] % (p * m):
            raise KvrunError(f"the Kimi-VL encoder takes pixels [3, H, W] with sides multiples of {p * m}, got {list(pixels.shape)}")
        return _forward(ops_of(self), self, pixels)


def _forward(ops: Any, enc: KimiVLEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`KimiVLEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once): the patches (F16) and their bias, the position grid resized to
    the picture, the blocks of :func:`~kvrun.models.llama4_image.ln_rope_blocks` (the rope by column and row from 0),
    the post LayerNorm, the 2x2 merge, each patch's part LayerNormed on its own (``mm.input_norm``), ``mm.1``, GELU,
    ``mm.2``."""
    c, xp = enc.cfg, ops.xp
    p, m = c.patch_size, c.n_merge
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    T, H = nx * ny, c.n_head
    D = c.n_embd // H
    x = ops.embed_patches(pixels)  # (ggml's conv_2d: F16 patches and kernel)
    x = x + ops.vector(resize_positions(enc.pos_embd, c.n_patches_side, nx, ny))
    idx = np.arange(T)
    cos, sin = rope_2d(idx // nx, idx % nx, D)
    x = merge_permute(ln_rope_blocks(enc, x, cos, sin, ops=ops), nx, ny, m)  # [blocks, m*m*E]
    x = ops.layer_norm(x.reshape(-1, c.n_embd), enc.in_norm, enc.in_norm_b, PROJ_EPS).reshape(x.shape[0], -1)
    x = ops.linear(enc.mm2, ops.act(ops.linear(enc.mm1, x, enc.mm1_b), "gelu"), enc.mm2_b)
    return ops.to_host(xp.ascontiguousarray(x, F32))
