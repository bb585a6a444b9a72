"""Youtu-VL's image side (Youtu-VL-4B), as llama.cpp's libmtmd sizes a picture (``mtmd_image_preprocessor_youtuvl``) and
clip.cpp encodes it (``clip_graph_youtuvl`` for PROJECTOR_TYPE_YOUTUVL), from an mmproj file (loaders/mmproj.py).

The picture keeps its own size, each side rounded up to whole 2x2 blocks of patches (32 pixels for Youtu-VL's 16-pixel
patches), scaled down by steps of 0.02 only past the patch limit (clip.cpp's: 62500 merged rows' worth, so about
8000 x 8000 pixels), and stretched to that size with clip.cpp's port of Pillow's bilinear filter (no padding).  Its
rows are then (SigLIP2's ViT and Youtu-VL's merger):

    pixels [3, H, W] -> patches of p x p in 2x2 blocks (the blocks in raster order, each block's 4 in raster order),
       each flattened (row, column, channel) and multiplied by ``v.patch_embd`` (a matrix: the converter's conv3d made
       linear), + its bias; no learned positions
    -> LayerNorm ``v.pre_ln`` where the file has one -> n_layer pre-norm ViT blocks: LayerNorm, attention with biases
       and Qwen2-VL's 2-D vision rope (models/qwen2vl_image.py: a head's first quarter of pairs by the patch's row, the
       second by its column, neox-paired), residual; LayerNorm, the file's MLP activation, residual.  The layers
       named in ``clip.vision.wa_layer_indexes`` see the whole picture; the others attend within windows of
       ``clip.vision.window_size`` pixels a side (Qwen2.5-VL's windows: whole 2x2 blocks, the last of a row or column
       cut short)
    -> LayerNorm ``v.post_ln`` -> the merger: RMSNorm ``mm.input_norm`` (eps 1e-6) -> each block's 4 patches side by
       side -> ``mm.0`` (+ bias), GELU, ``mm.2`` (+ bias) -> [ny * nx, n_text_embd], the blocks in raster order

ggml's CPU numerics are followed where they show, as models/siglip.py does.  runtime/vision_youtuvl.py lays the rows out.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .lfm2vl_image import normalise, resize_bilinear
from .qwen2vl_image import QUERY_CHUNK, block_order, vision_rope, windows  # (Qwen2.5-VL's windows, of the file's size)
from .siglip import MmprojEncoder, vit_layer
from .vit_ops import ops_of

F32 = np.float32
MERGE = 2  # patches a side merged into one row (clip.cpp's graph merges 2x2 whatever spatial_merge_size says)
MERGER_EPS = 1e-6  # the merger's RMSNorm (clip.cpp's, whatever the file's LayerNorm epsilon)

TENSOR_NAMES.update({  # Youtu-VL's (clip.cpp's TN_* names)
    "yt_patch": "v.patch_embd.weight", "yt_patch_b": "v.patch_embd.bias",
    "yt_pre_ln": "v.pre_ln.weight", "yt_pre_ln_b": "v.pre_ln.bias",
    "yt_input_norm": "mm.input_norm.weight",
    "yt_mm0": "mm.0.weight", "yt_mm0_b": "mm.0.bias", "yt_mm2": "mm.2.weight", "yt_mm2_b": "mm.2.bias",
})  # fmt: skip

__all__ = ["YoutuVLEncoder", "target_size", "preprocess", "n_rows"]


# ---------------------------------------------------------------- the picture's size and pixels


def target_size(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(width, height) libmtmd resizes a picture to: each side rounded up to whole blocks (at least one), the scale
    lowered from 1 by steps of 0.02 (float32, as libmtmd's) while the patches pass the limit (``max_pixels`` over a
    patch's pixels)."""
    p = cfg.patch_size
    align = p * MERGE
    max_patches = cfg.max_pixels // (p * p) if cfg.max_pixels > 0 else 256

    def side(scale: np.float32, n: int) -> int:
        return max(align, int(math.ceil(F32(F32(n) * scale) / F32(align))) * align)

    scale = F32(1.0)
    w, h = width, height
    while scale > 0:
        w, h = side(scale, width), side(scale, height)
        if (h // p) * (w // p) <= max_patches:
            break
        scale = F32(scale - F32(0.02))
    return w, h


def preprocess(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> normalised pixels [3, H, W] at :func:`target_size` (stretched, Pillow's bilinear)."""
    w, h = target_size(img.shape[1], img.shape[0], cfg)
    return normalise(resize_bilinear(np.ascontiguousarray(img, np.uint8), w, h), cfg)


def n_rows(width: int, height: int, cfg: MmprojConfig) -> int:
    """Rows a width x height picture becomes: its blocks."""
    w, h = target_size(width, height, cfg)
    f = cfg.patch_size * MERGE
    return (w // f) * (h // f)


# ---------------------------------------------------------------- the encoder


class YoutuVLEncoder(MmprojEncoder):
    """Youtu-VL's SigLIP2 and merger from an mmproj file: :meth:`encode` a picture's pixels into rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        self.cfg, self.be, self.path = cfg, backend, g.path
        ld = WeightLoader(g, backend)
        E, p = cfg.n_embd, cfg.patch_size
        self.patch = ld.matrix("yt_patch")
        if (self.patch.n_rows, self.patch.n_cols) != (E, 3 * p * p):
            raise KvrunError(f"{g.path}: v.patch_embd.weight is {self.patch.n_rows} x {self.patch.n_cols}, expected {E} x {3 * p * p} "
                             "(Youtu-VL's patch embedding as a matrix)")  # fmt: skip
        self.patch_b = ld.host_vector("yt_patch_b", required=False)
        # (clip.cpp requires both: the window's side in pixels, the layers that see the whole picture)
        window, whole = g.get("clip.vision.window_size"), g.get("clip.vision.wa_layer_indexes")
        if window is None or whole is None:
            key = "window_size" if window is None else "wa_layer_indexes"
            raise KvrunError(f"{g.path}: clip.vision.{key} is missing; the Youtu-VL projector file is incomplete")
        self.window, self.whole = int(window), {int(i) for i in whole}
        self.pre_ln, self.pre_ln_b = ld.host_vector("yt_pre_ln", required=False), ld.host_vector("yt_pre_ln_b", required=False)
        self.layers = [vit_layer(ld, i) for i in range(cfg.n_layer)]
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        self.input_norm = ld.host_vector("yt_input_norm")
        self.mm0, self.mm0_b = ld.matrix("yt_mm0"), ld.host_vector("yt_mm0_b")
        self.mm2, self.mm2_b = ld.matrix("yt_mm2"), ld.host_vector("yt_mm2_b")

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (:func:`preprocess`; sides whole 2x2 blocks of patches) -> the rows
        [ny * nx, n_text_embd], blocks in raster order."""
        c = self.cfg
        p = c.patch_size
        if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.shape[1] % (MERGE * p) or pixels.shape[2] % (MERGE * p):
            raise KvrunError(f"the Youtu-VL encoder takes pixels [3, H, W] with sides multiples of {MERGE * p}, "
                             f"got {list(pixels.shape)}")  # fmt: skip
        return _forward(ops_of(self, QUERY_CHUNK), self, pixels)


def _forward(ops: Any, enc: YoutuVLEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`YoutuVLEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    patch rows go up once, the rows come down once)."""
    c, xp = enc.cfg, ops.xp
    p = c.patch_size
    npy, npx = pixels.shape[1] // p, pixels.shape[2] // p
    ys, xs = block_order(npx, npy)
    patches = pixels.reshape(3, npy, p, npx, p).transpose(1, 3, 2, 4, 0)[ys, xs]  # [T, row, column, channel]
    x = ops.linear(enc.patch, ops.vector(np.ascontiguousarray(patches.reshape(len(ys), p * p * 3), F32)), enc.patch_b)
    if enc.pre_ln is not None:
        x = ops.layer_norm(x, enc.pre_ln, enc.pre_ln_b, c.eps)
    T, H = x.shape[0], c.n_head
    D = c.n_embd // H
    cos, sin = (ops.vector(t) for t in vision_rope(ys, xs, D))
    groups = ops.window_groups(windows(npx, npy, p, enc.window), T)
    everything = ops.window_groups(None, T)
    scale = F32(1.0 / math.sqrt(D))
    for il, L in enumerate(enc.layers):
        h = ops.layer_norm(x, L["ln1"], L["ln1_b"], c.eps)
        q, k, v = (ops.linear(L[r], h, L[r + "_b"]).reshape(T, H, D) for r in ("q", "k", "v"))
        q, k = ops.rope_neox(q, k, cos, sin)
        whole = not enc.whole or il in enc.whole  # (no windows at all in a file that names no whole layers)
        a = ops.attend_windows(q, k, v, everything if whole else groups, scale)  # (a window's patches attend to its own)
        x = x + ops.linear(L["o"], a, L["o_b"])
        h = ops.layer_norm(x, L["ln2"], L["ln2_b"], c.eps)
        x = x + ops.linear(L["down"], ops.act(ops.linear(L["up"], h, L["up_b"]), c.ffn_op), L["down_b"])
    if enc.post_ln is not None:
        x = ops.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    x = ops.rms_norm(x, enc.input_norm, MERGER_EPS).reshape(T // 4, 4 * c.n_embd)  # (each block's 4 patches side by side)
    y = ops.linear(enc.mm2, ops.act(ops.linear(enc.mm0, x, enc.mm0_b), "gelu"), enc.mm2_b)
    return ops.to_host(xp.ascontiguousarray(y, F32))
