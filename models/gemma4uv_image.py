"""Gemma 4 12B's "unified" image side (projector type "gemma4uv"), as llama.cpp's clip.cpp builds it
(``clip_graph_gemma4uv``, tools/mtmd/models/gemma4uv.cpp) from an mmproj file (loaders/mmproj.py).

Gemma 4 12B has no vision transformer: the converter's Gemma4UnifiedVisionEmbedder turns each patch straight into an
embedding row, the 3x3 token merging of Gemma 4's other models folded into a bigger patch (clip.cpp multiplies
``patch_size`` by the pooling size, 3 unless ``clip.vision.projector.scale_factor`` says, and sets n_merge 1: one row
per 48 x 48 pixels for the 16-pixel patches).  The picture is sized as gemma4v's (models/gemma4v_image.py
:func:`~kvrun.models.gemma4v_image.preprocess`: its aspect kept within 70 to 1120 rows' worth of pixels, Pillow's
bicubic filter, black padding; libmtmd's dyn-size preprocessor for both types), normalised by the file's
image_mean/std and not rescaled after (no ``2 x - 1``, unlike gemma4v's graph).  Its rows are then:

    pixels [3, H, W] -> patches of p x p, each flattened channel-major (im2col's C, H, W order: the converter
    permutes the weights' columns to it) -> LayerNorm ``v.patch_norm.1`` (over the 3 p p pixels)
    -> ``v.patch_embd`` (a matrix, with its bias) -> LayerNorm ``v.patch_norm.2``
    -> + the x table's row of the patch's column + the y table's row of its row (``v.position_embd`` [2, n_pos, E])
    -> LayerNorm ``v.patch_norm.3`` (the converter's pos_norm)
    -> RMSNorm without a weight (the embedder's pre-projection norm, the file's epsilon) -> ``mm.input_projection``
    -> [rows, n_text_embd], the patches in raster order

The three LayerNorms are PyTorch's defaults, epsilon 1e-5 whatever the file says (clip_graph_gemma4uv hard-codes it).
ggml's CPU numerics are followed: the norms' statistics in float64 (ggml_float), an F16 matrix multiplying an F16 copy
of its input.  The forward is written once against models/vit_ops.py's ops, so it runs on the GPU as well.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig, open_mmproj
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import WeightLoader
from .gemma4v_image import n_rows, preprocess, rms_norm
from .vit_ops import HostViT, ops_of

F32 = np.float32
LN_EPS = 1e-5  # (clip_graph_gemma4uv: "default eps for pytorch LayerNorm")

__all__ = ["Gemma4UVEncoder", "n_rows", "preprocess"]


class _HostOps(HostViT):
    """models/vit_ops.py's host ops with the unweighted RMSNorm the embedder ends in (gemma4v's :func:`rms_norm`)."""

    @staticmethod
    def rms_norm(x: np.ndarray, w: np.ndarray | None, eps: float, b: np.ndarray | None = None) -> np.ndarray:
        return rms_norm(x, w, eps)


class Gemma4UVEncoder:
    """Gemma 4 12B's encoder-free image embedder from an mmproj file: :meth:`encode` pixels into embedding rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        self.cfg, self.be, self.path = cfg, backend, g.path
        ld = WeightLoader(g, backend)
        E, p = cfg.n_embd, cfg.patch_size

        def tensor(name: str) -> Any:
            t = g.tensors.get(name)
            if t is None:
                raise KvrunError(f"{g.path}: tensor {name!r} is missing; the projector file is incomplete")
            return t

        def vec(name: str, n: int) -> np.ndarray:
            t = tensor(name)
            if t.n_elements != n:
                raise KvrunError(f"{g.path}: {name} has {t.n_elements} values, expected {n}")
            return dequantize(t.data, t.qtype, t.shape).reshape(-1).astype(F32)

        def mat(name: str, cols: int) -> Any:
            t = tensor(name)
            if t.shape[-1] != cols:  # (ggml's ne[0]: the input width)
                raise KvrunError(f"{g.path}: {name} takes rows {t.shape[-1]} wide, expected {cols}")
            return ld._upload(t, t.rows(), t.n_elements // t.shape[-1])  # (the loader's checks and upload)

        self.norm1 = (vec("v.patch_norm.1.weight", 3 * p * p), vec("v.patch_norm.1.bias", 3 * p * p))
        self.patch_w, self.patch_b = mat("v.patch_embd.weight", 3 * p * p), vec("v.patch_embd.bias", E)
        self.norm2 = (vec("v.patch_norm.2.weight", E), vec("v.patch_norm.2.bias", E))
        pos = tensor("v.position_embd.weight")
        if pos.n_elements % (2 * E):
            raise KvrunError(f"{g.path}: v.position_embd.weight has shape {pos.shape}, expected (2, n_pos, {E})")
        self.pos = dequantize(pos.data, pos.qtype, pos.shape).reshape(2, -1, E).astype(F32)  # x table, y table
        self.norm3 = (vec("v.patch_norm.3.weight", E), vec("v.patch_norm.3.bias", E))
        self.proj = mat("mm.input_projection.weight", E)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: Backend) -> Gemma4UVEncoder:
        g, cfg = open_mmproj(path)
        return cls(g, cfg, backend)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (:func:`preprocess`) -> the picture's rows [n_rows, n_text_embd]."""
        p = self.cfg.patch_size
        _, h, w = pixels.shape
        if h % p or w % p:
            raise KvrunError(f"the image embedder takes pixels in whole {p}-pixel patches, got {w} x {h}")
        nx, ny = w // p, h // p
        if max(nx, ny) > self.pos.shape[1]:
            raise KvrunError(f"{self.path}: a picture {nx} x {ny} patches outgrows the {self.pos.shape[1]} learned positions")
        return _forward(ops_of(self, host=_HostOps), self, pixels)


def _forward(ops: Any, enc: Gemma4UVEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`Gemma4UVEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    patches go up once and the rows come down once): clip_graph_gemma4uv's embedder and projection."""
    c = enc.cfg
    p = c.patch_size
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    T = nx * ny
    x = pixels.astype(F32).reshape(3, ny, p, nx, p).transpose(1, 3, 0, 2, 4).reshape(T, 3 * p * p)  # (im2col: C, H, W)
    x = ops.layer_norm(ops.vector(np.ascontiguousarray(x)), *enc.norm1, LN_EPS)
    x = ops.layer_norm(ops.linear(enc.patch_w, x, enc.patch_b), *enc.norm2, LN_EPS)
    idx = np.arange(T)
    x = x + ops.vector(enc.pos[0][idx % nx])  # (the x table's rows, then the y table's: two ggml_adds)
    x = x + ops.vector(enc.pos[1][idx // nx])
    x = ops.layer_norm(x, *enc.norm3, LN_EPS)
    return ops.to_host(ops.xp.ascontiguousarray(ops.linear(enc.proj, ops.rms_norm(x, None, c.eps)), F32))
