"""InternVL's image side (InternVL 2.5 / 3), as llama.cpp's libmtmd cuts a picture (``mtmd_image_preprocessor_internvl``)
and clip.cpp encodes it (``clip_graph_internvl`` for PROJECTOR_TYPE_INTERNVL), from an mmproj file (loaders/mmproj.py).

The picture.  One no larger than a tile (``image_size``, 448 for InternVL) on both sides is stretched to one tile.
A larger one is cut into tiles: of the grids of ``min_tiles`` to ``max_tiles`` tiles (1 to 12 unless the file says,
``clip.vision.preproc_min_tiles``/``max_tiles``), the one that shows the most of the picture's pixels once the
picture is fitted into it keeping its aspect, and of those the one wasting the least (llava's
``select_best_resolution``, as libmtmd's llava-uhd slicer picks among these candidates); the picture is resized
into that grid keeping its aspect and centred on black (clip.cpp's PAD_CEIL), cut into tiles row by row, and a
thumbnail, the picture stretched to one tile, follows them.  Every resize is bicubic, Pillow's as the oracle's
clip.cpp runs it (:func:`resize`).

Each tile and the thumbnail is then:

    pixels [3, S, S] -> patches of p x p, embedded by the patch kernel (F16, as ggml's conv_2d) + bias
    -> the CLS token appended after the patches -> + learned position embeddings (the CLS token's row last)
    -> n_layer pre-norm ViT blocks: LayerNorm (RMSNorm in the 6B ViT), attention with biases (Q and K normed in the
       6B ViT where the file has the norms), times LayerScale ``ls1``, residual; LayerNorm, GELU MLP, times ``ls2``,
       residual
    -> the CLS token dropped -> pixel shuffle of n_merge x n_merge patches (0.5: 2x2) into one row
    -> LayerNorm (eps 1e-5, ``mm.model.mlp.0``) -> ``mlp.1`` (+ bias), GELU, ``mlp.3`` (+ bias)
    -> [(S/(p n_merge))^2, n_text_embd] (256 rows a tile for InternVL's 448-pixel tiles of 14-pixel patches)

ggml's CPU numerics are followed where they show, as models/siglip.py does.  runtime/vision_internvl.py lays the rows
out between ``<img>`` and ``</img>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import TENSOR_NAMES
from . import pillow_resize
from .pillow_resize import BICUBIC, resize_axes
from .siglip import SiglipEncoder
from .vit_ops import merge_permute, ops_of

F32 = np.float32
PROJ_EPS = 1e-5  # the projector's LayerNorm (PyTorch's default; clip.cpp says so)

TENSOR_NAMES.update({  # InternVL's LayerScale, 6B QK norms and projector (clip.cpp's TN_LS_1/2, TN_ATTN_Q/K_NORM, TN_MVLM_PROJ_MLP)
    "v_ls1": "v.blk.{i}.ls1.weight", "v_ls2": "v.blk.{i}.ls2.weight",
    "v_q_norm": "v.blk.{i}.attn_q_norm.weight", "v_k_norm": "v.blk.{i}.attn_k_norm.weight",
    "ivl_mlp0": "mm.model.mlp.0.weight", "ivl_mlp0_b": "mm.model.mlp.0.bias",
    "ivl_mlp1": "mm.model.mlp.1.weight", "ivl_mlp1_b": "mm.model.mlp.1.bias",
    "ivl_mlp3": "mm.model.mlp.3.weight", "ivl_mlp3_b": "mm.model.mlp.3.bias",
})  # fmt: skip


# ---------------------------------------------------------------- the picture's tiles


def candidates(cfg: MmprojConfig) -> list[tuple[int, int]]:
    """(width, height) in pixels of every grid of ``min_tiles`` to ``max_tiles`` tiles, columns outer."""
    S, lo, hi = cfg.image_size, cfg.min_tiles, cfg.max_tiles
    return [(a * S, b * S) for a in range(1, hi + 1) for b in range(1, hi + 1) if lo <= a * b <= hi]


def best_resolution(width: int, height: int, cands: list[tuple[int, int]]) -> tuple[int, int]:
    """llava's ``select_best_resolution`` among ``cands`` (width, height): the candidate showing the most of the
    picture's pixels once it is fitted in keeping its aspect (float32 scale, sides truncated), then the least wasted
    area (InternVL's and Llama 4's tiles)."""
    best, best_eff, best_waste = (0, 0), 0, None
    for cw, ch in cands:
        scale = min(F32(cw) / F32(width), F32(ch) / F32(height))
        tw, th = int(F32(width) * scale), int(F32(height) * scale)
        eff = min(tw * th, width * height)
        waste = cw * ch - eff
        if eff > best_eff or (eff == best_eff and best_waste is not None and waste < best_waste):
            best, best_eff, best_waste = (cw, ch), eff, waste
    return best


def grid(width: int, height: int, cfg: MmprojConfig, cands: list[tuple[int, int]] | None = None) -> tuple[int, int]:
    """(columns, rows) of tiles a width x height picture is cut into, the best of ``cands`` (InternVL's
    :func:`candidates` unless given); (0, 0) for one no larger than a tile."""
    S = cfg.image_size
    if width <= S and height <= S:
        return 0, 0
    w, h = best_resolution(width, height, candidates(cfg) if cands is None else cands)
    return w // S, h // S


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """clip.cpp's bicubic resize without padding (the thumbnail), as it runs in the oracle: Pillow's bicubic ported
    (models/pillow_resize.py), horizontal pass then vertical, each clipped to bytes; uint8 RGB [h, w, 3] ->
    [height, width, 3].  (Measured on the tiny projector: rows as llama.cpp's, float noise apart; clip.cpp's older
    ViT.cpp bicubic is 1 to 5 off.)"""
    return resize_axes(img, width, height, BICUBIC)


def resize_padded(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """clip.cpp's bicubic resize with PAD_CEIL (the tiles' picture): scaled by the smaller of width/w and height/h
    (sides rounded up, float32), centred on black [height, width, 3]."""
    return pillow_resize.resize_padded(img, width, height, BICUBIC)


@dataclass
class Cut:
    """A picture as libmtmd cuts it for InternVL: ``tiles`` row by row (``n_rows`` x ``n_cols``, none for a picture no
    larger than a tile) and ``thumbnail`` (the picture stretched to one tile), each uint8 RGB [S, S, 3]."""

    n_cols: int
    n_rows: int
    tiles: list[np.ndarray]
    thumbnail: np.ndarray

    @property
    def images(self) -> list[np.ndarray]:
        """What is encoded, in order: the tiles, then the thumbnail."""
        return [*self.tiles, self.thumbnail]


def cut(img: np.ndarray, cfg: MmprojConfig) -> Cut:
    """uint8 RGB ``img`` [h, w, 3] -> its tiles and thumbnail (``mtmd_image_preprocessor_internvl``)."""
    S = cfg.image_size
    h, w = img.shape[:2]
    thumb = resize(img, S, S)
    cols, rows = grid(w, h, cfg)
    if not cols:
        return Cut(0, 0, [], thumb)
    refined = resize_padded(img, cols * S, rows * S)
    tiles = [np.ascontiguousarray(refined[y : y + S, x : x + S]) for y in range(0, rows * S, S) for x in range(0, cols * S, S)]
    return Cut(cols, rows, tiles, thumb)


def normalise(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB [S, S, 3] -> pixels [3, S, S] float32: scaled to [0, 1], less image_mean, over image_std."""
    a = img.astype(F32) / F32(255.0)
    mean, std = np.asarray(cfg.image_mean, F32), np.asarray(cfg.image_std, F32)
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1), F32)


# ---------------------------------------------------------------- the encoder


class InternVLEncoder(SiglipEncoder):
    """InternVL's InternViT and projector from an mmproj file: :meth:`encode` a tile's pixels into embedding rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:  # (SiglipEncoder's loader has no CLS row)
        ld = self._begin(g, cfg, backend)
        E = cfg.n_embd
        cls = g.tensors.get("v.class_embd")
        if cls is None:
            raise KvrunError(f"{g.path}: tensor 'v.class_embd' is missing; the InternVL projector file is incomplete")
        self.cls = dequantize(cls.data, cls.qtype, cls.shape).reshape(E).astype(F32)
        pos = g.tensor("v.position_embd.weight")
        n_pos = cfg.n_patches_side**2 + 1
        if pos.n_elements != n_pos * E:
            raise KvrunError(f"{g.path}: v.position_embd.weight has shape {pos.shape}, expected {(n_pos, E)} (the patches and the CLS token)")
        self.pos_embd = dequantize(pos.data, pos.qtype, pos.shape).reshape(n_pos, E).astype(F32)
        # the 6B ViT (InternVL 2.5/3 26B and up) normalises with RMSNorm, as clip.cpp recognises it by its shape
        self.rms = cfg.n_embd == 3200 and cfg.n_layer == 45
        self.layers = []
        for i in range(cfg.n_layer):
            L: dict[str, Any] = {}
            for r in ("ln1", "ln2"):
                L[r], L[r + "_b"] = ld.host_vector(f"v_{r}", i), ld.host_vector(f"v_{r}_b", i, required=False)
            for r in ("q", "k", "v", "o", "up", "down"):
                L[r], L[r + "_b"] = ld.matrix(f"v_{r}", i), ld.host_vector(f"v_{r}_b", i, required=False)
            for r in ("ls1", "ls2", "q_norm", "k_norm"):
                L[r] = ld.host_vector(f"v_{r}", i, required=False)
            self.layers.append(L)
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        self.mlp0, self.mlp0_b = ld.host_vector("ivl_mlp0"), ld.host_vector("ivl_mlp0_b", required=False)
        self.mlp1, self.mlp1_b = ld.matrix("ivl_mlp1"), ld.host_vector("ivl_mlp1_b", required=False)
        self.mlp3, self.mlp3_b = ld.matrix("ivl_mlp3"), ld.host_vector("ivl_mlp3_b", required=False)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, S, S] (one tile) -> its rows [(S/(p n_merge))^2, n_text_embd]."""
        S = self.cfg.image_size
        if pixels.shape != (3, S, S):
            raise KvrunError(f"the InternVL encoder takes pixels [3, {S}, {S}], got {list(pixels.shape)}")
        return _forward(ops_of(self), self, pixels)


def _forward(ops: Any, enc: InternVLEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`InternVLEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once): the patches, the CLS row last and the position embeddings, the
    InternViT blocks (LayerNorm, or the 6B ViT's RMSNorm and QK norms over the whole width; the layer scales), the
    post norm, the CLS row dropped, the 2x2 merge, the projector's LayerNorm and GELU MLP."""
    c, xp = enc.cfg, ops.xp
    n = c.n_patches_side

    def norm(x: Any, w: np.ndarray, b: np.ndarray | None) -> Any:
        return ops.rms_norm(x, w, c.eps, b) if enc.rms else ops.layer_norm(x, w, b, c.eps)

    def scaled(y: Any, s: np.ndarray | None) -> Any:
        return y if s is None else y * ops.const(s)

    x = xp.concatenate([ops.embed_patches(pixels), ops.const(enc.cls).reshape(1, -1)])  # (clip.cpp's CLS row last)
    x = x + ops.const(enc.pos_embd)
    T, H = x.shape[0], c.n_head
    D = c.n_embd // H
    scale = F32(1.0 / math.sqrt(D))
    for L in enc.layers:
        h = norm(x, L["ln1"], L["ln1_b"])
        q, k = ops.linear(L["q"], h, L["q_b"]), ops.linear(L["k"], h, L["k_b"])
        if L["q_norm"] is not None:  # (the 6B ViT's QK norms, over the whole width, as clip.cpp's build_vit)
            q, k = norm(q, L["q_norm"], None), norm(k, L["k_norm"], None)
        v = ops.linear(L["v"], h, L["v_b"])
        a = ops.attend(q.reshape(T, H, D), k.reshape(T, H, D), v.reshape(T, H, D), scale)
        x = x + scaled(ops.linear(L["o"], a, L["o_b"]), L["ls1"])
        h = norm(x, L["ln2"], L["ln2_b"])
        x = x + scaled(ops.linear(L["down"], ops.act(ops.linear(L["up"], h, L["up_b"]), "gelu"), L["down_b"]), L["ls2"])
    if enc.post_ln is not None:
        x = norm(x, enc.post_ln, enc.post_ln_b)
    x = ops.layer_norm(merge_permute(x[: n * n], n, n, c.n_merge), enc.mlp0, enc.mlp0_b, PROJ_EPS)  # (the CLS row dropped)
    h = ops.act(ops.linear(enc.mlp1, x, enc.mlp1_b), "gelu")
    return ops.to_host(xp.ascontiguousarray(ops.linear(enc.mlp3, h, enc.mlp3_b), F32))
