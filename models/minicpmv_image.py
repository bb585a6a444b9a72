"""MiniCPM-V's image side (2.5, 2.6, 4.0, 4.5: projector type "resampler", ``clip.minicpmv_version`` 2 to 5), as
llama.cpp's libmtmd slices a picture (``mtmd_image_preprocessor_llava_uhd`` without pinpoints, the llava-uhd slicer
MiniCPM-V's processor has) and clip.cpp encodes each part (``clip_graph_minicpmv``), from an mmproj file
(loaders/mmproj.py).

The picture.  One no larger than a slice (``image_size``, 448 for MiniCPM-V) on both sides is stretched to one
square slice, the overview alone.  A larger one becomes an overview, the picture scaled to about one slice's area
keeping its aspect (sides whole patches: ``get_best_resize``), and a grid of slices: of the grids of n - 1, n and
n + 1 slices (n the picture's area in slices, rounded up, at most 9; one slice never), the one whose log aspect is
nearest the picture's, the first on a tie (columns ascending); the picture is fitted, keeping its aspect and centred on
black (clip.cpp's PAD_CEIL), into that grid of slices each scaled to about one slice's area (``get_refine_size``), and
cut row by row.  Every resize is Pillow's bicubic (models/pillow_resize.py), as the oracle's clip.cpp runs it; sizes
follow clip.cpp's float32 arithmetic.  (Measured on the tiny projector: the overview stretched, the slices' picture
padded, as libmtmd gives them; a stretched slices' picture is up to 5 off in the rows.)

Each part, overview and slices alike, at its own size (w x h pixels, whole patches):

    pixels [3, h, w] -> patches of p x p, embedded by the patch kernel (F16, as ggml's conv_2d) + bias
    -> + learned positions: patch (i, j) of the h/p x w/p grid takes row floor(70 i / (h/p)) * 70 + floor(70 j / (w/p))
       of the 70 x 70 table (SigLIP-NaViT's bucketing, clip.cpp's)
    -> n_layer pre-norm ViT blocks (SigLIP's: LayerNorm, attention with biases, GELU MLP) -> ``v.post_ln``
    -> the perceiver resampler: ``query`` [n_query, d] LayerNormed (``ln_q``) attends, in heads of 128, to the
       patches projected by ``kv`` and LayerNormed (``ln_kv``) as values, and as keys with a 2-D sin-cos position added
       ([sin x w, cos x w, sin y w, cos y w], w = 10000^(-i / (d/4)), x and y the patch's column and row);
       ``attn.out`` -> LayerNorm ``ln_post`` -> ``proj``
    -> [n_query, d] (64 rows a part for MiniCPM-V; d the text model's width)

ggml's CPU numerics are followed where they show, as models/siglip.py does.  runtime/vision_minicpmv.py lays the
parts out with ``<image>``, ``<slice>`` and their ends.
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
from .internvl_image import resize_padded
from .pillow_resize import BICUBIC, resample
from .siglip import SiglipEncoder, vit_layer
from .vit_ops import ops_of

F32 = np.float32
POS_SIDE = 70  # clip.cpp's bucket grid over the learned positions (SigLIP-so400m's 980 / 14 a side)
HEAD_DIM = 128  # clip.cpp's resampler heads (d / 128 of them)
MAX_SLICES = 9  # clip.cpp's max_slice_nums
OMEGA_BASE = 10000.0

TENSOR_NAMES.update({  # the resampler (clip.cpp's TN_MINICPMV_*)
    "rs_kv": "resampler.kv.weight", "rs_proj": "resampler.proj.weight",
    "rs_q": "resampler.attn.q.weight", "rs_q_b": "resampler.attn.q.bias",
    "rs_k": "resampler.attn.k.weight", "rs_k_b": "resampler.attn.k.bias",
    "rs_v": "resampler.attn.v.weight", "rs_v_b": "resampler.attn.v.bias",
    "rs_o": "resampler.attn.out.weight", "rs_o_b": "resampler.attn.out.bias",
    "rs_ln_q": "resampler.ln_q.weight", "rs_ln_q_b": "resampler.ln_q.bias",
    "rs_ln_kv": "resampler.ln_kv.weight", "rs_ln_kv_b": "resampler.ln_kv.bias",
    "rs_ln_post": "resampler.ln_post.weight", "rs_ln_post_b": "resampler.ln_post.bias",
})  # fmt: skip


# ---------------------------------------------------------------- the picture's slices


def _round(x: Any) -> int:
    """std::round: halves away from zero (numpy's rounds them to even)."""
    return int(math.floor(float(x) + 0.5)) if x >= 0 else -int(math.floor(-float(x) + 0.5))


def ensure_divide(length: int, patch: int) -> int:
    """``length`` rounded to whole ``patch``es (float32, as clip.cpp), at least one."""
    return max(_round(F32(length) / F32(patch)) * patch, patch)


def best_resize(width: int, height: int, scale_resolution: int, patch: int, allow_upscale: bool) -> tuple[int, int]:
    """clip.cpp's ``get_best_resize``: a picture larger than scale_resolution^2 (or any, ``allow_upscale``) scaled to about
    that area keeping its aspect, then its sides rounded to whole patches."""
    if width * height > scale_resolution * scale_resolution or allow_upscale:
        r = F32(width) / F32(height)
        height = int(F32(scale_resolution) / np.sqrt(r, dtype=F32))
        width = int(F32(height) * r)
    return ensure_divide(width, patch), ensure_divide(height, patch)


def best_grid(width: int, height: int, slice_size: int) -> tuple[int, int]:
    """(columns, rows) of the slices of a picture larger than a slice (``get_best_grid``)."""
    log_ratio = np.log(F32(width) / F32(height), dtype=F32)
    ratio = F32(width) * F32(height) / F32(slice_size * slice_size)
    multiple = int(min(math.ceil(ratio), MAX_SLICES))
    cands = [(m, n // m) for n in (multiple - 1, multiple, multiple + 1) if n != 1 and n <= MAX_SLICES for m in range(1, n + 1) if n % m == 0]
    best, err = (1, 1), F32(np.inf)
    for gx, gy in cands:
        e = abs(log_ratio - np.log(F32(gx) / F32(gy), dtype=F32))
        if e < err:
            best, err = (gx, gy), e
    return best


@dataclass
class Plan:
    """How a picture is cut: the overview's size, and the grid of slices (0 x 0: none) and the size they are cut from."""

    overview: tuple[int, int]
    n_cols: int
    n_rows: int
    refined: tuple[int, int]


def plan(width: int, height: int, cfg: MmprojConfig) -> Plan:
    """clip.cpp's slice instructions for a width x height picture (MiniCPM-V: no pinpoints)."""
    S, p = cfg.image_size, cfg.patch_size * max(cfg.n_merge, 1)
    if width <= S and height <= S:
        return Plan((S, S), 0, 0, (0, 0))
    overview = best_resize(width, height, S, p, False)
    gx, gy = best_grid(width, height, S)
    rw, rh = ensure_divide(width, gx) // gx, ensure_divide(height, gy) // gy
    bw, bh = best_resize(rw, rh, S, p, True)
    return Plan(overview, gx, gy, (bw * gx, bh * gy))


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pillow's bicubic, horizontal pass then vertical (clip.cpp's ``resize_bicubic_pillow``); uint8 [h, w, 3]."""
    if img.shape[1] != width:
        img = resample(img, width, 1, BICUBIC)
    if img.shape[0] != height:
        img = resample(img, height, 0, BICUBIC)
    return img


@dataclass
class Cut:
    """A picture as libmtmd slices it for MiniCPM-V: the ``overview`` and ``slices`` row by row (``n_rows`` x
    ``n_cols``; none for a picture no larger than a slice), each uint8 RGB [h, w, 3] of whole patches."""

    overview: np.ndarray
    n_cols: int
    n_rows: int
    slices: list[np.ndarray]


def cut(img: np.ndarray, cfg: MmprojConfig) -> Cut:
    """uint8 RGB ``img`` [h, w, 3] -> its overview and slices."""
    h, w = img.shape[:2]
    pl = plan(w, h, cfg)
    ov = resize(img, *pl.overview)
    if not pl.n_cols:
        return Cut(ov, 0, 0, [])
    refined = resize_padded(img, *pl.refined)
    sw, sh = pl.refined[0] // pl.n_cols, pl.refined[1] // pl.n_rows
    slices = [np.ascontiguousarray(refined[y * sh : (y + 1) * sh, x * sw : (x + 1) * sw]) for y in range(pl.n_rows) for x in range(pl.n_cols)]
    return Cut(ov, pl.n_cols, pl.n_rows, slices)


def normalise(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB [h, w, 3] -> pixels [3, h, w] float32: scaled to [0, 1], less image_mean, over image_std."""
    a = img.astype(F32) / F32(255.0)
    mean, std = np.asarray(cfg.image_mean, F32), np.asarray(cfg.image_std, F32)
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1), F32)


# ---------------------------------------------------------------- the encoder


def bucket_positions(ny: int, nx: int) -> np.ndarray:
    """The learned-position row of each patch of an ny x nx grid, raster order (clip.cpp's bucket_coords)."""
    bh = np.floor(POS_SIDE * np.arange(ny) / ny).astype(np.int64)
    bw = np.floor(POS_SIDE * np.arange(nx) / nx).astype(np.int64)
    return (bh[:, None] * POS_SIDE + bw[None, :]).reshape(-1)


def sincos_2d(ny: int, nx: int, d: int) -> np.ndarray:
    """The resampler keys' positions [ny * nx, d]: [sin(x w), cos(x w), sin(y w), cos(y w)], w_i = 10000^(-i/(d/4))."""
    q = d // 4
    omega = (1.0 / np.power(F32(OMEGA_BASE), np.arange(q, dtype=F32) / F32(q))).astype(F32)
    ys, xs = np.divmod(np.arange(ny * nx), nx)
    tx, ty = xs.astype(F32)[:, None] * omega, ys.astype(F32)[:, None] * omega
    return np.concatenate([np.sin(tx), np.cos(tx), np.sin(ty), np.cos(ty)], axis=1).astype(F32)


class MiniCPMVEncoder(SiglipEncoder):
    """MiniCPM-V's SigLIP encoder and perceiver resampler from an mmproj file: :meth:`encode` a part's pixels."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:  # (SiglipEncoder's loader wants (S/p)^2 positions)
        ld = self._begin(g, cfg, backend)
        E, d = cfg.n_embd, cfg.n_text_embd
        pos = g.tensor("v.position_embd.weight")
        n_pos = POS_SIDE * POS_SIDE
        if pos.n_elements != n_pos * E:
            raise KvrunError(f"{g.path}: v.position_embd.weight has shape {pos.shape}, expected {(n_pos, E)} (clip.cpp's 70 x 70 buckets)")
        self.pos_embd = dequantize(pos.data, pos.qtype, pos.shape).reshape(n_pos, E).astype(F32)
        self.layers = [vit_layer(ld, i) for i in range(cfg.n_layer)]
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        if d % HEAD_DIM or d % 4:
            raise KvrunError(f"{g.path}: the resampler is {d} wide; clip.cpp's runs heads of {HEAD_DIM}")
        qt = g.tensors.get("resampler.query")
        if qt is None:
            raise KvrunError(f"{g.path}: tensor 'resampler.query' is missing; the MiniCPM-V projector file is incomplete")
        self.query = dequantize(qt.data, qt.qtype, qt.shape).reshape(-1, d).astype(F32)
        if self.query.shape[0] != cfg.n_query:
            raise KvrunError(f"{g.path}: resampler.query has {self.query.shape[0]} rows, clip.minicpmv_query_num says {cfg.n_query}")
        self.rs = {r: ld.matrix(f"rs_{r}") for r in ("kv", "proj", "q", "k", "v", "o")}
        self.rs.update({f"{r}_b": ld.host_vector(f"rs_{r}_b", required=False) for r in ("q", "k", "v", "o")})
        for r in ("ln_q", "ln_kv", "ln_post"):
            self.rs[r], self.rs[r + "_b"] = ld.host_vector(f"rs_{r}"), ld.host_vector(f"rs_{r}_b", required=False)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, h, w] (one part, sides whole patches) -> its rows [n_query, n_text_embd]."""
        p = self.cfg.patch_size
        _, h, w = pixels.shape
        if pixels.shape[0] != 3 or h % p or w % p or not h or not w:
            raise KvrunError(f"the MiniCPM-V encoder takes pixels [3, h, w] of whole {p}-pixel patches, got {list(pixels.shape)}")
        return _forward(ops_of(self), self, pixels)


def _forward(ops: Any, enc: MiniCPMVEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`MiniCPMVEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once): the patches and the bucketed position rows, SigLIP's blocks, the
    post LayerNorm, then the perceiver resampler: its LayerNormed queries attend, in heads of 128, to the patches'
    ``kv`` projection LayerNormed (the values) plus the 2-D sin-cos positions (the keys), then ``attn.out``,
    ``ln_post``, ``proj`` -> [n_query, n_text_embd]."""
    c, p = enc.cfg, enc.cfg.patch_size
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    x = ops.embed_patches(pixels) + ops.vector(enc.pos_embd[bucket_positions(ny, nx)])
    for L in enc.layers:
        x = ops.vit_block(L, x, "gelu")
    if enc.post_ln is not None:
        x = ops.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    rs, eps, d = enc.rs, c.eps, c.n_text_embd
    q = ops.layer_norm(ops.const(enc.query), rs["ln_q"], rs["ln_q_b"], eps)
    v = ops.layer_norm(ops.linear(rs["kv"], x), rs["ln_kv"], rs["ln_kv_b"], eps)
    k = v + ops.vector(sincos_2d(ny, nx, d))
    H, T, nq = d // HEAD_DIM, x.shape[0], q.shape[0]
    Q = ops.linear(rs["q"], q, rs["q_b"]).reshape(nq, H, HEAD_DIM)
    K = ops.linear(rs["k"], k, rs["k_b"]).reshape(T, H, HEAD_DIM)
    V = ops.linear(rs["v"], v, rs["v_b"]).reshape(T, H, HEAD_DIM)
    a = ops.attend(Q, K, V, F32(1.0 / math.sqrt(HEAD_DIM)))
    o = ops.layer_norm(ops.linear(rs["o"], a, rs["o_b"]), rs["ln_post"], rs["ln_post_b"], eps)
    return ops.to_host(ops.xp.ascontiguousarray(ops.linear(rs["proj"], o), F32))
