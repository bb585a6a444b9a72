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

from ..loaders.errors import KvrunError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .bert import gelu, layer_norm
from .common import TENSOR_NAMES, WeightLoader
from . import internvl_image
from .internvl_image import normalise, resize, resize_padded
from .qwen2vl_image import activation
from .siglip import F16, MmprojEncoder, _f16, attend_heads, rope_halves, vit_layer

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


def pixel_shuffle(x: np.ndarray, n: int, s: int) -> np.ndarray:
    """clip.cpp's llama4 pixel shuffle of the patches ``x`` [n*n, E] (raster order, n a side) by ``s``: ggml's
    reshape [E s, n/s, n], permute (0, 2, 1, 3), reshape [E s s, n/s, n/s], written as numpy's reversed shapes."""
    E = x.shape[1]
    y = x.reshape(n, n // s, E * s).transpose(1, 0, 2)  # [n/s (x'), n (y), E s]
    return np.ascontiguousarray(y.reshape((n // s) * (n // s), E * s * s), F32)


def ln_rope_blocks(enc: Any, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """The ViT ``enc``'s blocks over ``x`` [T, n_embd] with the 2-D rope's ``cos``/``sin`` (:func:`rope_2d`), then its
    post-norm where it has one: LayerNorms, biased projections, both-ways attention (``chunk`` query rows at a time),
    the file's MLP activation, each branch times its LayerScale where the layer has ``ls1``/``ls2`` (Kimi-VL's MoonViT
    and Step3-VL's PE-lang ViT alike)."""
    c = enc.cfg
    T, H = x.shape[0], c.n_head
    D = c.n_embd // H
    scale = F32(1.0 / math.sqrt(D))
    for L in enc.layers:
        h = layer_norm(x, L["ln1"], L["ln1_b"], c.eps)
        q = rope_halves(enc._linear(L["q"], h, L["q_b"]).reshape(T, H, D), cos, sin)
        k = rope_halves(enc._linear(L["k"], h, L["k_b"]).reshape(T, H, D), cos, sin)
        v = enc._linear(L["v"], h, L["v_b"]).reshape(T, H, D)
        a = attend_heads(q, k, v, scale, chunk)
        o = enc._linear(L["o"], a.reshape(T, H * D), L["o_b"])
        x = x + (o * L["ls1"] if L.get("ls1") is not None else o)
        h = layer_norm(x, L["ln2"], L["ln2_b"], c.eps)
        f = enc._linear(L["down"], activation(enc._linear(L["up"], h, L["up_b"]), c.ffn_op), L["down_b"])
        x = x + (f * L["ls2"] if L.get("ls2") is not None else f)
    if getattr(enc, "post_ln", None) is not None:
        x = layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    return x


class Llama4VisionEncoder(MmprojEncoder):
    """Llama 4's ViT, pixel shuffle, adapter MLP and projector from an mmproj file: :meth:`encode` a tile's pixels."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        if backend.name not in ("cpu", "gpu"):  # (on the GPU: models/vit_device.py llama4_rows)
            raise UnsupportedModelError(f"{g.path}: the vision encoder runs on the CPU; drop --device gpu to pass images")
        self.cfg, self.be, self.path = cfg, backend, g.path
        ld = WeightLoader(g, backend)
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
        c = self.cfg
        S, p, n, s = c.image_size, c.patch_size, c.n_patches_side, c.n_merge
        if pixels.shape != (3, S, S):
            raise KvrunError(f"the Llama 4 vision encoder takes pixels [3, {S}, {S}], got {list(pixels.shape)}")
        if self.be.name == "gpu":  # (the activations on the device, the rows down once: models/vit_device.py)
            from .vit_device import llama4_rows

            return llama4_rows(self, pixels)
        x = np.ascontiguousarray(pixels.reshape(3, n, p, n, p).transpose(1, 3, 0, 2, 4).reshape(n * n, 3 * p * p), F32)
        x = _f16(x) @ _f16(self.patch_w).T if self.patch_f16 else x @ self.patch_w.T
        x = np.concatenate([x, self.cls[None]]) + self.pos_embd  # (clip.cpp concatenates the CLS token last)
        if self.pre_ln is not None:
            x = layer_norm(x, self.pre_ln, self.pre_ln_b, c.eps)
        D = c.n_embd // c.n_head
        idx = np.arange(n * n)
        ys, xs = np.append(idx // n + 1, 0), np.append(idx % n + 1, 0)  # (the CLS token at position 0)
        cos, sin = rope_2d(ys, xs, D)
        x = ln_rope_blocks(self, x, cos, sin)
        x = pixel_shuffle(x[: n * n], n, s)
        x = gelu(self._linear(self.mlp2, gelu(self._linear(self.mlp1, x))))
        return np.ascontiguousarray(self._linear(self.proj, x), F32)
