"""Step3-VL's image side (Step3-VL-10B; the projector of Step-3.7-Flash too), as llama.cpp's libmtmd cuts a picture
(``mtmd_image_preprocessor_step3vl``) and clip.cpp encodes it (``clip_graph_step3vl`` for PROJECTOR_TYPE_STEP3VL), from
an mmproj file (loaders/mmproj.py).

The picture (StepFun's processing_step3.py, as libmtmd ports it).  One under 32 pixels on a side and more than 4:1 is
first put in the top-left corner of a black square; one longer than the longest edge (``clip.vision.preproc_image_size``,
else 3024) is scaled down to it (bilinear, sides floored).  Its overview is that picture stretched to ``image_size``
(728 for Step3-VL) by libmtmd's own float bilinear resize (:func:`resize_to_f32`: pixel centres, the edge pixels
repeated, on normalised values).  Crops: a picture no longer than ``image_size`` has them only when more than 1.5:1,
a window of its shorter side; a longer one has windows of 504 pixels (libmtmd's fixed crop size; the shorter side,
when less, past 4:1).  Each side is first rounded to whole windows (up where past 0.2 of one, never below one's; a side
shorter than a window is kept), the picture resized to that (Pillow's bilinear) and cut into windows row by row, the
last of a row or column moved back to end at the edge; a window past the picture is padded with black.  Each crop is
stretched to 504 x 504 (:func:`resize_to_f32`).

Each crop and the overview is then (PE-lang's ViT and Step3-VL's projector):

    pixels [3, h, w] -> patches of 14 (an F16 stride-p convolution, no bias) -> + the learned positions (a grid of
       ``image_size``/p a side, resized to the picture's grid by ggml_interpolate where it differs: :func:`positions`)
    -> LayerNorm ``v.pre_ln`` -> n_layer pre-norm ViT blocks: LayerNorm, attention with biases and a 2-D rope (the
       head's first half turned by the patch's column, the second by its row, base 10000), times LayerScale ``ls1``,
       residual; LayerNorm, GELU-quick MLP, times ``ls2``, residual (no post-norm)
    -> ``mm.0``, ``mm.1``: 3x3 convolutions of stride 2 with padding 1 and biases, width doubling each (no activation)
    -> ``mm.model.fc`` -> [(n/4)^2, n_text_embd]: 81 rows a crop (36 patches a side), 4 for the tiny overview

ggml's CPU numerics are followed where they show, as models/siglip.py does.  runtime/vision_step3vl.py lays the rows out.
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
from .common import TENSOR_NAMES, WeightLoader
from .lfm2vl_image import resize_bilinear
from .llama4_image import ln_rope_blocks, rope_2d
from .siglip import MmprojEncoder, _f16, patch_kernel, vit_layer
from .vit_ops import ops_of

F32 = np.float32
CROP = 504  # libmtmd's default_image_crop_size: every crop is encoded at 504 x 504, whatever the file's image_size
SMALL_ASPECT, WIDE_ASPECT, ROUNDING = F32(1.5), F32(4.0), F32(0.2)  # libmtmd's limits (processing_step3.py's)

TENSOR_NAMES.update({  # Step3-VL's (clip.cpp's TN_* names): LayerScale, the pre-norm's bias, the projector
    "v_ls1": "v.blk.{i}.ls1.weight", "v_ls2": "v.blk.{i}.ls2.weight",
    "s3_pre_ln": "v.pre_ln.weight", "s3_pre_ln_b": "v.pre_ln.bias",
    "s3_mm0_b": "mm.0.bias", "s3_mm1_b": "mm.1.bias", "s3_fc": "mm.model.fc.weight",
})  # fmt: skip

__all__ = ["Step3VLEncoder", "Cut", "cut", "plan", "resize_to_f32"]


# ---------------------------------------------------------------- the picture's crops


def resize_to_f32(img: np.ndarray, width: int, height: int, cfg: MmprojConfig) -> np.ndarray:
    """libmtmd's ``img_u8_resize_bilinear_to_f32``: uint8 RGB [h, w, 3] -> normalised pixels [3, height, width], each
    output pixel interpolated (float32, as libmtmd's arithmetic) between the four nearest pixel centres' normalised
    values, edges clamped; a picture already that size only normalised."""
    mean, std = np.asarray(cfg.image_mean, F32), np.asarray(cfg.image_std, F32)
    v = (img.astype(F32) / F32(255.0) - mean) / std  # [h, w, 3]
    h, w = img.shape[:2]
    if (w, h) != (width, height):

        def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            s = F32(n_in) / F32(n_out)
            src = (np.arange(n_out, dtype=F32) + F32(0.5)) * s - F32(0.5)
            fl = np.floor(src)
            i0 = np.clip(fl.astype(np.int64), 0, n_in - 1)
            i1 = np.clip(fl.astype(np.int64) + 1, 0, n_in - 1)
            return i0, i1, (src - fl).astype(F32)

        x0, x1, lx = axis(w, width)
        y0, y1, ly = axis(h, height)
        lx, ly = lx[None, :, None], ly[:, None, None]
        top = v[y0][:, x0] + (v[y0][:, x1] - v[y0][:, x0]) * lx
        bot = v[y1][:, x0] + (v[y1][:, x1] - v[y1][:, x0]) * lx
        v = top + (bot - top) * ly
    return np.ascontiguousarray(v.transpose(2, 0, 1), F32)


def prepare(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """libmtmd's ``prepare_image``: a thin picture (a side under 32, past 4:1) put top-left on a black square, then one
    longer than the longest edge scaled down to it (Pillow's bilinear, sides floored, at least 1)."""
    h, w = img.shape[:2]
    aspect = F32(w) / F32(h) if h > 0 else F32(1.0)
    if min(w, h) < 32 and (aspect > WIDE_ASPECT or aspect < F32(1.0) / WIDE_ASPECT):
        sq = np.zeros((max(w, h), max(w, h), 3), np.uint8)
        sq[:h, :w] = img
        img, (h, w) = sq, sq.shape[:2]
    edge = cfg.longest_edge
    if max(w, h) > edge:
        scale = F32(edge) / F32(max(w, h))
        img = resize_bilinear(img, max(1, int(math.floor(F32(w) * scale))), max(1, int(math.floor(F32(h) * scale))))
    return img


def window(w: int, h: int, cfg: MmprojConfig) -> int:
    """libmtmd's ``determine_window_size`` for a prepared w x h picture: its crops' side, 0 for none."""
    longer, shorter = max(w, h), min(w, h)
    aspect = F32(longer) / F32(shorter)
    if longer <= cfg.image_size:
        return shorter if aspect > SMALL_ASPECT else 0
    return min(shorter, CROP) if aspect > WIDE_ASPECT else CROP


def crop_extent(length: int, win: int) -> int:
    """libmtmd's ``calc_crop_extent``: ``length`` rounded to whole windows (up past 0.2 of one), kept if under one."""
    ratio = F32(length) / F32(win)
    if ratio < 1:
        return length
    fl = math.floor(ratio)
    return win * (fl + 1 if ratio - F32(fl) > ROUNDING else fl)


def starts(length: int, win: int) -> list[int]:
    """libmtmd's ``calc_grid``: the windows' offsets along a side, the last moved back to end at the edge."""
    n = 1 if length <= win else math.ceil(F32(length - win) / F32(win) + F32(1.0))
    out = [win * i for i in range(n)]
    if n > 1 and out[-1] + win > length:
        out[-1] = length - win
    return out


@dataclass
class Plan:
    """Where a picture's crops come from: the prepared picture's size, the window (0: no crops), the size it is resized
    to before cutting, and the windows' column and row offsets."""

    size: tuple[int, int]
    win: int
    refined: tuple[int, int]
    xs: list[int]
    ys: list[int]

    @property
    def n_cols(self) -> int:
        return len(self.xs) if self.win else 0

    @property
    def n_rows(self) -> int:
        return len(self.ys) if self.win else 0


def plan(width: int, height: int, cfg: MmprojConfig) -> Plan:
    """The crops of a width x height picture, from its size alone (:func:`prepare`'s size first)."""
    w, h = width, height
    aspect = F32(w) / F32(h) if h > 0 else F32(1.0)
    if min(w, h) < 32 and (aspect > WIDE_ASPECT or aspect < F32(1.0) / WIDE_ASPECT):
        w = h = max(w, h)
    if max(w, h) > cfg.longest_edge:
        scale = F32(cfg.longest_edge) / F32(max(w, h))
        w, h = max(1, int(math.floor(F32(w) * scale))), max(1, int(math.floor(F32(h) * scale)))
    win = window(w, h, cfg)
    if not win:
        return Plan((w, h), 0, (0, 0), [], [])
    rw, rh = crop_extent(w, win), crop_extent(h, win)
    return Plan((w, h), win, (rw, rh), starts(rw, win), starts(rh, win))


@dataclass
class Cut:
    """A picture as libmtmd cuts it for Step3-VL: ``crops`` row by row (``n_rows`` x ``n_cols``; none for a small
    picture), each normalised pixels [3, 504, 504], and ``overview``, normalised pixels [3, S, S]."""

    n_cols: int
    n_rows: int
    crops: list[np.ndarray]
    overview: np.ndarray


def cut(img: np.ndarray, cfg: MmprojConfig) -> Cut:
    """uint8 RGB ``img`` [h, w, 3] -> its crops and overview, as the encoder's pixels."""
    img = prepare(np.ascontiguousarray(img, np.uint8), cfg)
    h, w = img.shape[:2]
    S = cfg.image_size
    ov = resize_to_f32(img, S, S, cfg)
    pl = plan(w, h, cfg)
    if not pl.win:
        return Cut(0, 0, [], ov)
    if pl.refined != (w, h):
        img = resize_bilinear(img, *pl.refined)
    rw, rh = pl.refined
    crops = []
    for y in pl.ys:
        for x in pl.xs:
            c = np.zeros((pl.win, pl.win, 3), np.uint8)  # (the part past the picture black)
            part = img[y : min(y + pl.win, rh), x : min(x + pl.win, rw)]
            c[: part.shape[0], : part.shape[1]] = part
            crops.append(resize_to_f32(c, CROP, CROP, cfg))
    return Cut(pl.n_cols, pl.n_rows, crops, ov)


# ---------------------------------------------------------------- the encoder


def positions(pos: np.ndarray, side: int, nx: int, ny: int) -> np.ndarray:
    """The learned positions [side*side, E] (raster order) for a grid of nx x ny patches: as they are where the sizes
    agree, else resized as ggml_interpolate's bilinear mode (align-corners off, no antialias: pixel centres, edges
    clamped) does."""
    if (nx, ny) == (side, side):
        return pos

    def weights(n_out: int) -> np.ndarray:
        sf = F32(n_out) / F32(side)
        m = np.zeros((n_out, side), np.float64)
        for i in range(n_out):
            c = (F32(i) + F32(0.5)) / sf - F32(0.5)
            f = math.floor(c)
            d = float(c - F32(f))
            m[i, min(max(f, 0), side - 1)] += 1.0 - d
            m[i, min(max(f + 1, 0), side - 1)] += d
        return m

    g = pos.reshape(side, side, -1).astype(np.float64)
    g = np.einsum("yi,ixe->yxe", weights(ny), g)
    g = np.einsum("xj,yje->yxe", weights(nx), g)
    return np.ascontiguousarray(g.reshape(ny * nx, -1), F32)


class Step3VLEncoder(MmprojEncoder):
    """Step3-VL's ViT and convolutional projector from an mmproj file: :meth:`encode` a crop's or the overview's pixels."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        self.cfg, self.be, self.path = cfg, backend, g.path
        ld = WeightLoader(g, backend)
        E, n = cfg.n_embd, cfg.n_patches_side
        self.patch_w = patch_kernel(g, cfg)
        self.patch_b = ld.host_vector("v_patch_b", required=False)
        pos = g.tensor("v.position_embd.weight")
        if pos.n_elements != n * n * E:
            raise KvrunError(f"{g.path}: v.position_embd.weight has shape {pos.shape}, expected {(n * n, E)}")
        self.pos_embd = dequantize(pos.data, pos.qtype, pos.shape).reshape(n * n, E).astype(F32)
        self.pre_ln, self.pre_ln_b = ld.host_vector("s3_pre_ln", required=False), ld.host_vector("s3_pre_ln_b", required=False)
        self.layers = []
        for i in range(cfg.n_layer):
            L = vit_layer(ld, i)
            L["ls1"], L["ls2"] = ld.host_vector("v_ls1", i, required=False), ld.host_vector("v_ls2", i, required=False)
            self.layers.append(L)
        self.convs = [self._conv(g, f"mm.{k}.weight", E << k, E << (k + 1)) for k in (0, 1)]
        self.conv_b = [ld.host_vector("s3_mm0_b", required=False), ld.host_vector("s3_mm1_b", required=False)]
        self.fc = ld.matrix("s3_fc")

    @staticmethod
    def _conv(g: GGUFFile, name: str, c_in: int, c_out: int) -> np.ndarray:
        """A 3x3 kernel as a matrix [c_out, c_in*9] (channel, row, column), rounded to F16: ggml_conv_2d's im2col is
        F16 whatever the kernel's type (measured on the tiny projector: 5e-3 off libmtmd's rows in float32, 1.7e-3 so)."""
        t = g.tensors.get(name)
        if t is None:
            raise KvrunError(f"{g.path}: tensor {name!r} is missing; the Step3-VL projector file is incomplete")
        if t.n_elements != c_out * c_in * 9:
            raise KvrunError(f"{g.path}: {name} has shape {t.shape}, expected {(c_out, c_in, 3, 3)}")
        return _f16(dequantize(t.data, t.qtype, t.shape).reshape(c_out, c_in * 9))

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, h, w] (a 504-pixel crop or the overview; sides whole patches, a multiple of 4 of
        them) -> its rows [(h/4p)(w/4p), n_text_embd], raster order."""
        c = self.cfg
        p = c.patch_size
        if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.shape[1] % (4 * p) or pixels.shape[2] % (4 * p):
            raise KvrunError(f"the Step3-VL encoder takes pixels [3, h, w] of whole {p}-pixel patches, 4 of them a side's "
                             f"multiple, got {list(pixels.shape)}")  # fmt: skip
        return _forward(ops_of(self, 1024), self, pixels)

    def n_rows(self, width: int, height: int) -> int:
        """Rows a picture of width x height pixels (a crop, or the overview) becomes."""
        f = 4 * self.cfg.patch_size
        return (height // f) * (width // f)


def _downsample(ops: Any, enc: Step3VLEncoder, x: Any, k: int) -> Any:
    """``mm.<k>`` over the grid ``x`` [ny, nx, C]: ggml_conv_2d, a 3x3 kernel of stride 2 with padding 1 (im2col,
    and kernel in F16), plus the bias -> [ceil(ny/2), ceil(nx/2), C']."""
    xp = ops.xp
    ny, nx, C = x.shape
    oy, ox = (ny + 1) // 2, (nx + 1) // 2
    p = xp.zeros((ny + 2, nx + 2, C), F32)
    p[1:-1, 1:-1] = x
    cols = xp.stack([p[ky : ky + 2 * oy : 2, kx : kx + 2 * ox : 2] for ky in range(3) for kx in range(3)], -1)  # [oy, ox, C, 9]
    return ops.product_f16(cols.reshape(oy * ox, C * 9), enc.convs[k], enc.conv_b[k]).reshape(oy, ox, -1)


def _forward(ops: Any, enc: Step3VLEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`Step3VLEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once, the rows come down once)."""
    c, xp = enc.cfg, ops.xp
    p = c.patch_size
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    x = ops.embed_patches(pixels) + ops.vector(positions(enc.pos_embd, c.n_patches_side, nx, ny))
    if enc.pre_ln is not None:
        x = ops.layer_norm(x, enc.pre_ln, enc.pre_ln_b, c.eps)
    idx = np.arange(x.shape[0])
    cos, sin = rope_2d(idx // nx, idx % nx, c.n_embd // c.n_head)  # (pos_w the column, pos_h the row)
    x = ln_rope_blocks(enc, x, cos, sin, ops=ops)  # (LayerScale ls1 / ls2; no post-norm)
    y = _downsample(ops, enc, _downsample(ops, enc, x.reshape(ny, nx, -1), 0), 1)
    return ops.to_host(xp.ascontiguousarray(ops.linear(enc.fc, y.reshape(-1, y.shape[-1])), F32))
