"""Kimi-K2.5's image side (MoonViT3d and its patch merger), as llama.cpp's clip.cpp preprocesses and encodes a picture
(``clip_graph_kimik25`` for PROJECTOR_TYPE_KIMIK25; GLM-5.2-V's files use it too) from an mmproj file
(loaders/mmproj.py).

Kimi-VL's graph (models/kimivl_image.py) with three differences, all reproduced here:

* the learned positions are a 3-D grid [H, W, C] (ggml's ne [C, W, H]; not a square), resized to the picture's
  patches with ggml_interpolate's BICUBIC (a = -0.75, half-pixel centres, edges clamped: models/glm4v_image.py's
  weights), not Kimi-VL's bilinear with antialias; a picture of the grid's own size takes it as is;
* the projector's LayerNorm takes the file's epsilon (``clip.vision.attention.layer_norm_epsilon``, the converter's
  ``projector_ln_eps``), not a fixed 1e-5;
* a picture keeps (about) its own size within the file's pixel limits (``clip.vision.image_min_pixels`` /
  ``image_max_pixels``; clip.cpp's set_limit_image_tokens(2, 4096) merged rows' worth where the file states none):
  libmtmd's dyn-size preprocessor, Pixtral's (bicubic, centred on black: models/pixtral_image.py).

Q, K and V come from one fused ``attn_qkv`` (as the converter writes them; separate ``attn_q``/``attn_k``/``attn_v``
taken too, as clip.cpp's build_vit does), the converter having already permuted Q's and K's rows from Kimi's
interleaved rope into the split halves ``build_rope_2d`` turns (each head's first half by the patch's column, the
second by its row: models/llama4_image.py's :func:`~kvrun.models.llama4_image.rope_2d`).  Its rows:

    pixels [3, H, W] -> patches of p x p embedded by the patch kernel (F16, as ggml's conv_2d) + bias
    -> + the position grid resized to the picture's patches (:func:`resize_positions`)
    -> n_layer pre-norm ViT blocks (LayerNorm, attention with biases and the 2-D rope, GELU MLP) -> ``v.post_ln``
    -> each 2x2 block of patches side by side (clip.cpp's ``build_patch_merge_permute``), each patch's part
       LayerNormed on its own (``mm.input_norm``, the file's epsilon) -> ``mm.1`` (+ bias), GELU, ``mm.2`` (+ bias)
    -> [(H/2p) (W/2p), n_text_embd], blocks in raster order

runtime/vision_kimik25.py lays the rows out.
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
from .common import TENSOR_NAMES
from .glm4v_image import _cubic_weights
from .kimivl_image import n_rows, preprocess  # (its import names the projector tensors kv_in_norm, kv_mm1, kv_mm2 too)
from .llama4_image import ln_rope_blocks, rope_2d
from .siglip import MmprojEncoder, vit_layer
from .vit_ops import merge_permute, ops_of

__all__ = ["KimiK25Encoder", "n_rows", "preprocess", "resize_positions"]

F32 = np.float32

TENSOR_NAMES.update({  # (Kimi-K2.5's fused attention product, clip.cpp's TN_ATTN_QKV; its projector's names are Kimi-VL's)
    "k25_qkv": "v.blk.{i}.attn_qkv.weight", "k25_qkv_b": "v.blk.{i}.attn_qkv.bias",
})  # fmt: skip


def resize_positions(grid: np.ndarray, nx: int, ny: int) -> np.ndarray:
    """The position grid [H, W, E] resized to nx x ny patches [ny*nx, E] (raster order), as clip_graph_kimik25's
    ``resize_position_embeddings_3d``: ggml_interpolate's BICUBIC on both axes, none where the sizes already match."""
    gh, gw, E = grid.shape
    if (gh, gw) == (ny, nx):
        return np.ascontiguousarray(grid.reshape(ny * nx, E), F32)
    g = np.einsum("yi,ixe->yxe", _cubic_weights(gh, ny), grid.astype(np.float64))
    g = np.einsum("xj,yje->yxe", _cubic_weights(gw, nx), g)
    return np.ascontiguousarray(g.reshape(ny * nx, E), F32)


class KimiK25Encoder(MmprojEncoder):
    """Kimi-K2.5's MoonViT3d and patch merger from an mmproj file: :meth:`encode` pixels of any block-aligned size."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        if cfg.n_merge != 2:
            raise KvrunError(f"{g.path}: clip.vision.projector.scale_factor is {cfg.n_merge}; Kimi-K2.5's patch merger merges 2x2")
        ld = self._begin(g, cfg, backend)  # (the patch kernel in F16 and its bias)
        E = cfg.n_embd
        pos = g.tensor("v.position_embd.weight")
        if len(pos.shape) != 3 or pos.shape[-1] != E:
            raise KvrunError(f"{g.path}: v.position_embd.weight has shape {pos.shape}, expected a grid (height, width, {E})")
        self.pos_grid = dequantize(pos.data, pos.qtype, pos.shape).reshape(pos.shape).astype(F32)  # [H, W, E]
        self.layers = []
        for i in range(cfg.n_layer):
            if f"v.blk.{i}.attn_qkv.weight" not in g.tensors:  # (Q, K and V apart: clip.cpp's build_vit takes them too)
                self.layers.append(vit_layer(ld, i))
                continue
            L: dict[str, Any] = {}
            for r in ("ln1", "ln2"):
                L[r], L[r + "_b"] = ld.host_vector(f"v_{r}", i), ld.host_vector(f"v_{r}_b", i, required=False)
            L["q"], L["k"], L["v"] = ld.matrix_rows("k25_qkv", i, (E, E, E))
            b = ld.host_vector("k25_qkv_b", i, required=False)
            L["q_b"], L["k_b"], L["v_b"] = (None,) * 3 if b is None else (b[:E], b[E : 2 * E], b[2 * E :])
            for r in ("o", "up", "down"):
                L[r], L[r + "_b"] = ld.matrix(f"v_{r}", i), ld.host_vector(f"v_{r}_b", i, required=False)
            self.layers.append(L)
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        self.in_norm, self.in_norm_b = ld.host_vector("kv_in_norm"), ld.host_vector("kv_in_norm_b")
        self.mm1, self.mm1_b = ld.matrix("kv_mm1"), ld.host_vector("kv_mm1_b")
        self.mm2, self.mm2_b = ld.matrix("kv_mm2"), ld.host_vector("kv_mm2_b")
        if self.mm1.shape[1] != 4 * E:
            raise KvrunError(f"{g.path}: mm.1.weight takes {self.mm1.shape[1]} inputs, not 4 merged patches of {E}")

    @classmethod
    def load(cls, path: str | os.PathLike, backend: Backend) -> KimiK25Encoder:
        g, cfg = open_mmproj(path)
        return cls(g, cfg, backend)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (:func:`preprocess`; sides whole blocks) -> rows [blocks, n_text_embd]."""
        c = self.cfg
        f = c.patch_size * c.n_merge
        if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.shape[1] % f or pixels.shape[2] % f:
            raise KvrunError(f"the Kimi-K2.5 encoder takes pixels [3, H, W] with sides multiples of {f}, got {list(pixels.shape)}")
        return _forward(ops_of(self), self, pixels)


def _forward(ops: Any, enc: KimiK25Encoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`KimiK25Encoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once), the steps of the module's docstring."""
    c, xp = enc.cfg, ops.xp
    p, m = c.patch_size, c.n_merge
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    D = c.n_embd // c.n_head
    x = ops.embed_patches(pixels)  # (ggml's conv_2d: F16 patches and kernel)
    x = x + ops.vector(resize_positions(enc.pos_grid, nx, ny))
    idx = np.arange(nx * ny)
    cos, sin = rope_2d(idx // nx, idx % nx, D)
    x = merge_permute(ln_rope_blocks(enc, x, cos, sin, ops=ops), nx, ny, m)  # [blocks, m*m*E]
    x = ops.layer_norm(x.reshape(-1, c.n_embd), enc.in_norm, enc.in_norm_b, c.eps).reshape(x.shape[0], -1)
    x = ops.linear(enc.mm2, ops.act(ops.linear(enc.mm1, x, enc.mm1_b), "gelu"), enc.mm2_b)
    return ops.to_host(xp.ascontiguousarray(x, F32))
