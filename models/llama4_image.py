"""Llama 4's image side (Scout, Maverick), as llama.cpp's libmtmd cuts a picture (``mtmd_image_preprocessor_llava_uhd``
with pinpoints) and clip.cpp encodes it (``clip_graph_llama4`` for PROJECTOR_TYPE_LLAMA4), from an mmproj file
(loaders/mmproj.py).

The picture.  One no larger than a tile (``image_size``, 336 for Llama 4) on both sides is stretched to one tile and
has no tiles.  A larger one is cut into tiles: of the grids of up to 3 x 3 tiles but one (clip.cpp's
``set_llava_uhd_res_candidates(model, 3)``), the one showing the most of the picture's pixels once it is fitted in
keeping its aspect, then the least wasted (llava's ``select_best_resolution``); the picture is resized into that
grid keeping its aspect and centred on black, cut into tiles row by row, and an overview, the picture stretched to
one tile, follows them.  The resizes are InternVL's (models/internvl_image.py: the same llava-uhd slicer).

Each tile and the overview is then:

    pixels [3, S, S] -> patches of p x p (torch's unfold: [c, ky, kx]) times ``v.patch_embd`` (a plain matmul: F16
       rounding only with an F16 kernel; no bias)
    -> the CLS token ``v.class_embd`` appended after the patches -> + learned positions (the CLS token's row last)
    -> LayerNorm ``v.pre_ln`` -> n_layer pre-norm ViT blocks: LayerNorm, attention with biases and a 2-D rope
       (:func:`rope_2d`: the head's first half turned by the patch's column + 1, the second by its row + 1, the CLS
       token at 0), residual; LayerNorm, GELU MLP, residual -> LayerNorm ``v.post_ln``
    -> the CLS token dropped -> clip.cpp's pixel shuffle (:func:`pixel_shuffle`, Llama4VisionPixelShuffleMLP's
       order: rows come out column-major) of n_merge x n_merge patches into one row
    -> ``mm.model.mlp.1``, GELU, ``mm.model.mlp.2``, GELU (no biases) -> ``mm.model.fc``
    -> [(S/(p n_merge))^2, n_text_embd] (144 rows a tile for Llama 4's 336-pixel tiles of 14-pixel patches)

ggml's CPU numerics are followed where they show, as models/siglip.py does.  runtime/vision_llama4.py lays the rows out.
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
from . import internvl_image
from .internvl_image import normalise, resize, resize_padded
from .siglip import F16, MmprojEncoder, vit_layer
from .vit_ops import ops_of

F32 = np.float32
ROPE_BASE = 10000.0  # clip.cpp's rope_theta for llama4
MAX_TILES_SIDE = 3  # set_llava_uhd_res_candidates(model, 3)

__all__ = ["Llama4VisionEncoder", "cut", "grid", "normalise"]  # (normalise: InternVL's, the same mean and std arithmetic)

TENSOR_NAMES.update({  # Llama 4's adapter MLP and projector (clip.cpp's TN_MVLM_PROJ_MLP 1 and 2, TN_MM_PROJECTOR)
    "v_pre_ln": "v.pre_ln.weight", "l4_pre_ln_b": "v.pre_ln.bias",  # (v_pre_ln as Pixtral's)
    "l4_mlp1": "mm.model.mlp.1.weight", "l4_mlp2": "mm.model.mlp.2.weight", "l4_proj": "mm.model.fc.weight",
})  # fmt: skip


# ---------------------------------------------------------------- the picture's tiles


def candidates(cfg: MmprojConfig) -> list[tuple[int, int]]:
    """(width, height) in pixels of every grid of 1..3 x 1..3 tiles but the single tile, columns outer."""
    S = cfg.image_size
    return [(a * S, b * S) for a in range(1, MAX_TILES_SIDE + 1) for b in range(1, MAX_TILES_SIDE + 1) if (a, b) != (1, 1)]


def grid(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(columns, rows) of tiles a width x height picture is cut into (InternVL's choice among Llama 4's
    :func:`candidates`); (0, 0) for one no larger than a tile."""
    return internvl_image.grid(width, height, cfg, candidates(cfg))


@dataclass
class Cut:
    """A picture as libmtmd cuts it for Llama 4: ``tiles`` row by row (``n_rows`` x ``n_cols``; none for a picture no
    larger than a tile) and ``overview`` (the picture stretched to one tile), each uint8 RGB [S, S, 3]."""

    n_cols: int
    n_rows: int
    tiles: list[np.ndarray]
    overview: np.ndarray


def cut(img: np.ndarray, cfg: MmprojConfig) -> Cut:
    """uint8 RGB ``img`` [h, w, 3] -> its tiles and overview."""
    S = cfg.image_size
    h, w = img.shape[:2]
    ov = resize(img, S, S)
    cols, rows = grid(w, h, cfg)
    if not cols:
        return Cut(0, 0, [], ov)
    refined = resize_padded(img, cols * S, rows * S)
    tiles = [np.ascontiguousarray(refined[y : y + S, x : x + S]) for y in range(0, rows * S, S) for x in range(0, cols * S, S)]
    return Cut(cols, rows, tiles, ov)


# ---------------------------------------------------------------- the encoder


def rope_2d(ys: np.ndarray, xs: np.ndarray, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [T, head_dim/2] of clip.cpp's ``build_rope_2d(pos_w, pos_h, interleave_freq=false)``: the head's first
    half (ggml's normal rope over adjacent pairs, n_dims head_dim/2) turned by ``xs``, the second half by ``ys``, pair
    j of each at ``base^(-4j/head_dim)``."""
    j = np.arange(head_dim // 4, dtype=np.float64)
    f = ROPE_BASE ** (-4.0 * j / head_dim)
    ang = np.concatenate([xs[:, None] * f[None, :], ys[:, None] * f[None, :]], axis=1)
    return np.cos(ang).astype(F32), np.sin(ang).astype(F32)


def pixel_shuffle(x: Any, n: int, s: int) -> Any:
    """clip.cpp's llama4 pixel shuffle of the patches ``x`` [n*n, E] (raster order, n a side; either device's rows) by
    ``s``: ggml's reshape [E s, n/s, n], permute (0, 2, 1, 3), reshape [E s s, n/s, n/s], written as numpy's reversed
    shapes."""
    E = x.shape[1]
    y = x.reshape(n, n // s, E * s).transpose(1, 0, 2)  # [n/s (x'), n (y), E s]
    return y.reshape((n // s) * (n // s), E * s * s)


def ln_rope_blocks(enc: Any, x: Any, cos: np.ndarray, sin: np.ndarray, chunk: int | None = None, neox: bool = False,
                   ops: Any = None) -> Any:  # fmt: skip
    """The ViT ``enc``'s blocks over ``x`` [T, n_embd] with the 2-D rope's host tables ``cos``/``sin`` [T, D/2]
    (:func:`rope_2d`'s: each half of a head over adjacent pairs; ``neox``, Qwen2-VL's vision rope's: pairs (i, i +
    D/2)), then its post-norm where it has one: LayerNorms, biased projections, both-ways attention (``chunk`` query
    rows at a time), the file's MLP activation, each branch times its LayerScale where the layer has ``ls1``/``ls2``
    (Kimi-VL's MoonViT, PaddleOCR-VL's NaViT and Step3-VL's PE-lang ViT alike), on ``ops`` (models/vit_ops.py; by
    default the encoder's own)."""
    ops = ops_of(enc, chunk) if ops is None else ops
    c = enc.cfg
    T, H = x.shape[0], c.n_head
    D = c.n_embd // H
    scale = F32(1.0 / math.sqrt(D))
    cos, sin = ops.vector(cos), ops.vector(sin)
    rope = ops.rope_neox if neox else ops.rope_pairs

    def scaled(y: Any, s: np.ndarray | None) -> Any:
        return y if s is None else y * ops.const(s)

    for L in enc.layers:
        h = ops.layer_norm(x, L["ln1"], L["ln1_b"], c.eps)
        q, k, v = (ops.linear(L[r], h, L[r + "_b"]).reshape(T, H, D) for r in ("q", "k", "v"))
        q, k = rope(q, k, cos, sin)
        x = x + scaled(ops.linear(L["o"], ops.attend(q, k, v, scale), L["o_b"]), L.get("ls1"))
        h = ops.layer_norm(x, L["ln2"], L["ln2_b"], c.eps)
        x = x + scaled(ops.linear(L["down"], ops.act(ops.linear(L["up"], h, L["up_b"]), c.ffn_op), L["down_b"]), L.get("ls2"))
    if getattr(enc, "post_ln", None) is not None:
        x = ops.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    return x


class Llama4VisionEncoder(MmprojEncoder):
    """Llama 4's ViT, pixel shuffle, adapter MLP and projector from an mmproj file: :meth:`encode` a tile's pixels."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend, patches=False)  # (its patch kernel unrounded, below)
        E, p, n = cfg.n_embd, cfg.patch_size, cfg.n_patches_side
        if n % cfg.n_merge:
            raise KvrunError(f"{g.path}: {n} patches a side do not shuffle by {cfg.n_merge}")
        pt = g.tensor("v.patch_embd.weight")
        if pt.n_elements != E * 3 * p * p:
            raise KvrunError(f"{g.path}: v.patch_embd.weight has shape {pt.shape}, expected {(E, 3 * p * p)}")
        self.patch_f16 = pt.qtype == F16
        self.patch_w = dequantize(pt.data, pt.qtype, pt.shape).reshape(E, 3 * p * p).astype(F32)

        def vector(name: str, count: int) -> np.ndarray:
            t = g.tensors.get(name)
            if t is None:
                raise KvrunError(f"{g.path}: tensor {name!r} is missing; the Llama 4 projector file is incomplete")
            if t.n_elements != count:
                raise KvrunError(f"{g.path}: {name} has shape {t.shape}, expected {count} values")
            return dequantize(t.data, t.qtype, t.shape).reshape(-1).astype(F32)

        self.cls = vector("v.class_embd", E)
        self.pos_embd = vector("v.position_embd.weight", (n * n + 1) * E).reshape(n * n + 1, E)
        self.pre_ln, self.pre_ln_b = ld.host_vector("v_pre_ln", required=False), ld.host_vector("l4_pre_ln_b", required=False)
        self.layers = [vit_layer(ld, i) for i in range(cfg.n_layer)]
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        self.mlp1, self.mlp2, self.proj = ld.matrix("l4_mlp1"), ld.matrix("l4_mlp2"), ld.matrix("l4_proj")

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, S, S] (one tile or the overview) -> its rows [(S/(p n_merge))^2, n_text_embd]."""
        S = self.cfg.image_size
        if pixels.shape != (3, S, S):
            raise KvrunError(f"the Llama 4 vision encoder takes pixels [3, {S}, {S}], got {list(pixels.shape)}")
        return _forward(ops_of(self), self, pixels)


def _forward(ops: Any, enc: Llama4VisionEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`Llama4VisionEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    patches go up once and the rows come down once), a tile (or the overview) a call: the patch product (F16 only for
    an F16 kernel, no bias), the CLS row last and the positions, ``v.pre_ln``, the LayerNorm blocks with clip.cpp's
    ``build_rope_2d`` (the patch's column + 1 and row + 1, the CLS row at 0), the post LayerNorm, the CLS row
    dropped, the pixel shuffle, the GELU adapter and ``mm.model.fc``."""
    c, xp = enc.cfg, ops.xp
    p, n, s = c.patch_size, c.n_patches_side, c.n_merge
    x = np.ascontiguousarray(pixels.reshape(3, n, p, n, p).transpose(1, 3, 0, 2, 4).reshape(n * n, 3 * p * p), F32)
    x = ops.matmul(x, enc.patch_w, enc.patch_f16)
    x = xp.concatenate([x, ops.const(enc.cls).reshape(1, -1)]) + ops.const(enc.pos_embd)  # (clip.cpp concatenates the CLS token last)
    if enc.pre_ln is not None:
        x = ops.layer_norm(x, enc.pre_ln, enc.pre_ln_b, c.eps)
    D = c.n_embd // c.n_head
    idx = np.arange(n * n)
    ys, xs = np.append(idx // n + 1, 0), np.append(idx % n + 1, 0)  # (the CLS token at position 0)
    cos, sin = rope_2d(ys, xs, D)
    x = ln_rope_blocks(enc, x, cos, sin, ops=ops)
    x = xp.ascontiguousarray(pixel_shuffle(x[: n * n], n, s), F32)
    x = ops.act(ops.linear(enc.mlp2, ops.act(ops.linear(enc.mlp1, x), "gelu")), "gelu")
    return ops.to_host(xp.ascontiguousarray(ops.linear(enc.proj, x), F32))
