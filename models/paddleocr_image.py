"""PaddleOCR-VL's image side (its SigLIP/NaViT encoder and the ``mlp_AR`` projector), as llama.cpp 0.3.36's clip.cpp
builds it (``clip_graph_paddleocr`` for PROJECTOR_TYPE_PADDLEOCR) from an mmproj file (loaders/mmproj.py).

The picture keeps (about) its own size and aspect, as libmtmd's dynamic-size preprocessor sizes it: its sides rounded
to whole 2x2 blocks of patches and scaled, if need be, into the file's ``image_min_pixels`` .. ``image_max_pixels``
(Hugging Face's ``smart_resize``: models/qwen2vl_image.py's :func:`~kvrun.models.qwen2vl_image.smart_size`), then
resized into that size keeping its aspect, Pillow's bicubic, centred on black.  Its rows:

    pixels [3, H, W] -> patches of p x p embedded by the patch kernel (F16, as ggml's conv_2d) + bias, raster order
    -> + the learned position grid (a square, 27 x 27 in the published file) resized to the picture's patches
       (ggml_interpolate, bilinear with antialias: models/lfm2vl_image.py's resize_positions)
    -> n_layer pre-norm ViT blocks: LayerNorm, attention with biases and a 2-D rope (each head's first half turned
       by the patch's column, the second by its row, base 10000: clip.cpp's ``build_rope_2d``), residual;
       LayerNorm, GELU MLP, residual -> LayerNorm ``v.post_ln``
    -> LayerNorm ``mm.input_norm`` (eps 1e-5, fixed in clip.cpp) on each patch
    -> every 4 consecutive patches in raster order side by side, one row 4 x n_embd wide (clip.cpp's "stack and
       padding": a view of the patches, not 2x2 blocks as Hugging Face's merger takes them; the oracle decides)
    -> ``mm.1`` (+ bias), GELU, ``mm.2`` (+ bias) -> [(H/2p) (W/2p), n_text_embd]

ggml's CPU numerics are followed where they show, as models/siglip.py does.  runtime/vision_paddleocr.py lays the rows
out; they go in with Qwen2-VL's M-RoPE positions over the (W/2p) x (H/2p) grid.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import TENSOR_NAMES
from .lfm2vl_image import resize_positions
from .llama4_image import ln_rope_blocks
from .qwen2vl_image import QUERY_CHUNK, resize, smart_size, vision_rope
from .siglip import MmprojEncoder, _f16, vit_layer
from .vit_ops import merge_permute as unshuffle  # (the 2x2 merge on either device; the name tests patch)
from .vit_ops import ops_of

F32 = np.float32
TENSOR_NAMES.update({"po_mm1": "mm.1.weight", "po_mm2": "mm.2.weight"})  # (PaddleOCR-VL's projector: clip.cpp's TN_LLAVA_PROJ 1, 2)
PROJ_EPS = 1e-5  # clip.cpp's epsilon of the projector's LayerNorm (hard-coded, whatever the file's)


def target_size(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(width, height) a picture is resized to: sides whole blocks of 2x2 patches, within the file's pixel limits."""
    return smart_size(width, height, cfg.patch_size * cfg.n_merge, cfg)


def grid(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(nx, ny): the rows a width x height picture becomes, a side (its M-RoPE grid, as libmtmd counts it)."""
    w, h = target_size(width, height, cfg)
    f = cfg.patch_size * cfg.n_merge
    return w // f, h // f


def preprocess(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> normalised pixels [3, H, W] float32 at :func:`target_size` (bicubic, padded)."""
    w, h = target_size(img.shape[1], img.shape[0], cfg)
    a = resize(img, w, h).astype(F32) / F32(255.0)
    mean, std = np.asarray(cfg.image_mean, F32), np.asarray(cfg.image_std, F32)
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1), F32)


class PaddleOCREncoder(MmprojEncoder):
    """PaddleOCR-VL's vision encoder and projector from an mmproj file: :meth:`encode` pixels of any block-aligned size."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend, patches=False)  # (a missing patch kernel named in its own words, below)
        E, p = cfg.n_embd, cfg.patch_size
        need = self._need(g)
        pt = need("v.patch_embd.weight")
        if pt.n_elements != E * 3 * p * p:
            raise KvrunError(f"{g.path}: v.patch_embd.weight has shape {pt.shape}, expected {(E, 3, p, p)}")
        self.patch_w = _f16(dequantize(pt.data, pt.qtype, pt.shape).reshape(E, 3 * p * p).astype(F32))
        self.patch_b = ld.host_vector("v_patch_b", required=False)
        pos = need("v.position_embd.weight")
        side = math.isqrt(pos.n_elements // E)
        if side * side * E != pos.n_elements:
            raise KvrunError(f"{g.path}: v.position_embd.weight holds {pos.n_elements // E} positions, not a square grid")
        self.pos_embd = dequantize(pos.data, pos.qtype, pos.shape).reshape(side * side, E).astype(F32)
        self.pos_side = side
        self.layers = [vit_layer(ld, i) for i in range(cfg.n_layer)]
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        for name in ("mm.input_norm.weight", "mm.1.weight", "mm.2.weight"):
            need(name)
        self.in_norm, self.in_norm_b = self._vector(g, "mm.input_norm.weight"), self._vector(g, "mm.input_norm.bias")
        self.mm1, self.mm1_b = ld.matrix("po_mm1"), self._vector(g, "mm.1.bias")
        self.mm2, self.mm2_b = ld.matrix("po_mm2"), self._vector(g, "mm.2.bias")
        k = cfg.n_merge * cfg.n_merge
        if self.mm1.shape[1] != E * k:
            raise KvrunError(f"{g.path}: mm.1.weight takes {self.mm1.shape[1]} inputs, not {k} stacked patches of {E}")

    @staticmethod
    def _need(g: GGUFFile):
        def need(name: str):
            t = g.tensors.get(name)
            if t is None:
                raise KvrunError(f"{g.path}: tensor {name!r} is missing; the PaddleOCR-VL projector file is incomplete")
            return t

        return need

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (:func:`preprocess`; sides whole blocks) -> rows [blocks, n_text_embd]."""
        c = self.cfg
        p, m = c.patch_size, c.n_merge
        if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.shape[1] % (p * m) or pixels.shape[2] % (p * m):
            raise KvrunError(f"the PaddleOCR-VL encoder takes pixels [3, H, W] with sides multiples of {p * m}, got {list(pixels.shape)}")
        return _forward(ops_of(self, QUERY_CHUNK), self, pixels)


def _forward(ops: Any, enc: PaddleOCREncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`PaddleOCREncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once): the patches (F16) and their bias, the position grid resized to the
    picture, the ViT's blocks (:func:`~kvrun.models.llama4_image.ln_rope_blocks`: Qwen2-VL's vision rope by row and
    column, neox pairs; patches in raster order) and ``v.post_ln``, ``mm.input_norm`` on each patch, each 2x2 block's
    patches side by side (:func:`unshuffle`), ``mm.1``, GELU, ``mm.2``."""
    c, xp = enc.cfg, ops.xp
    p, m = c.patch_size, c.n_merge
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    T = nx * ny
    x = ops.embed_patches(pixels)  # (ggml's conv_2d: F16 patches and kernel)
    x = x + ops.vector(resize_positions(enc.pos_embd, enc.pos_side, nx, ny))
    idx = np.arange(T)
    x = ln_rope_blocks(enc, x, *vision_rope(idx // nx, idx % nx, c.n_embd // c.n_head), neox=True, ops=ops)
    x = unshuffle(ops.layer_norm(x, enc.in_norm, enc.in_norm_b, PROJ_EPS), nx, ny, m)
    x = ops.linear(enc.mm2, ops.act(ops.linear(enc.mm1, x, enc.mm1_b), "gelu"), enc.mm2_b)
    return ops.to_host(xp.ascontiguousarray(x, F32))
