"""Qwen2-VL's and Qwen2.5-VL's image side, as llama.cpp's clip.cpp builds it (``clip_graph_qwen2vl`` for projector
types "qwen2vl_merger" and "qwen2.5vl_merger") from an mmproj file (loaders/mmproj.py), and the picture's size as
libmtmd's dynamic-size preprocessor chooses it.

A picture keeps (about) its aspect: its sides are rounded to whole 2x2 blocks of patches (28 pixels for patches of
14) and scaled, if need be, so that its pixels lie within ``min_pixels`` and ``max_pixels`` (clip.cpp: 8 to 4096
merged rows' worth; Hugging Face's ``smart_resize``), then resized keeping its aspect and padded with black, with
clip.cpp's port of Pillow's bicubic filter (:func:`resize`).  Its rows are then:

    pixels [3, H, W] -> patches of p x p, each embedded by the conv3d's two temporal kernels, which see the same
       still picture: kernel 0 + kernel 1 (no bias, no position embeddings)
    -> patches in 2x2 blocks (the blocks in raster order, each block's patches in raster order: clip.cpp's
       "second conv dimension" permute)
    -> n_layer pre-norm ViT blocks: norm (Qwen2-VL: LayerNorm with bias; Qwen2.5-VL: RMSNorm), attention with biases
       and a 2-D rope (a head's first quarter of pairs turned by the patch's row, the second by its column,
       neox-paired over the head: ggml's ``rope_multi`` in vision mode, base 10000), residual; norm, MLP
       (Qwen2-VL: up, GELU, down; Qwen2.5-VL: SiLU(gate) * up, down; biases all), residual.  Qwen2.5-VL's layers
       attend within windows of 112 x 112 pixels (4 x 4 blocks for patches of 14), all but every
       ``n_wa_pattern``-th layer, which sees the whole picture
    -> post norm (the merger's ln_q)
    -> each 2x2 block's 4 patches side by side (a row 4 x n_embd wide) -> mm.0 (+ bias), GELU, mm.2 (+ bias)
    -> [ny * nx, n_text_embd], the blocks in raster order

ggml's CPU numerics are followed where they show, as models/siglip.py does: F16 weights multiply an F16 copy of
their input, the patch kernels run in F16 whatever their stored type (ggml's conv_2d: an F16 im2col; measured, a
stored F32 kernel: 1e-3 off llama.cpp's rows this way, 1.4e-2 in float32), GELU and GELU-quick are ggml's F16
tables.  Windowed attention runs in the picture's own order, each window's patches among themselves; clip.cpp
permutes the rows window by window and masks the scores across windows, which is the same sums.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import WeightLoader
from .pillow_resize import BICUBIC, resize_padded
from . import siglip as S
from .siglip import MmprojEncoder, _f16, vit_layer
from .vit_ops import ops_of

activation = S.activation  # (the ViT MLP's activation: the other encoders import it from here)

ROPE_BASE = 10000.0  # clip.cpp's vision rope base for Qwen2-VL
WINDOW = 112  # clip.cpp's attention window for Qwen2.5-VL, pixels a side
MERGE = 2  # patches a side merged into one row
QUERY_CHUNK = 2048  # queries scored at once (a 4096-row picture has 16384 patches: 128 MiB of scores a slice)


# ---------------------------------------------------------------- the picture's size and pixels


def target_size(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(width, height) a picture is resized to: clip.cpp's ``calc_size_preserved_ratio`` with min and max pixels
    (Hugging Face's ``smart_resize``): sides rounded to whole blocks, then scaled down (floored) past ``max_pixels``
    or up (ceiled) short of ``min_pixels``; float32 arithmetic as clip.cpp's."""
    return smart_size(width, height, cfg.patch_size * MERGE, cfg)


def smart_size(width: int, height: int, f: int, cfg: MmprojConfig) -> tuple[int, int]:
    """:func:`target_size` for blocks of ``f`` pixels a side (Pixtral's too, models/pixtral_image.py)."""
    f32 = np.float32

    def by(x: Any, how: Any) -> int:
        return int(how(f32(x) / f32(f))) * f

    def half_up(v: Any) -> Any:  # (clip.cpp's std::round: halves away from zero, where np.round takes them to even)
        return np.floor(v + f32(0.5))

    h_bar, w_bar = max(f, by(height, half_up)), max(f, by(width, half_up))
    if h_bar * w_bar > cfg.max_pixels:
        beta = np.sqrt(f32(height * width) / f32(cfg.max_pixels))
        h_bar, w_bar = max(f, by(f32(height) / beta, np.floor)), max(f, by(f32(width) / beta, np.floor))
    elif h_bar * w_bar < cfg.min_pixels:
        beta = np.sqrt(f32(cfg.min_pixels) / f32(height * width))
        h_bar, w_bar = by(f32(height) * beta, np.ceil), by(f32(width) * beta, np.ceil)
    return w_bar, h_bar


def grid(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(nx, ny): the merged rows a width x height picture becomes, a side."""
    w, h = target_size(width, height, cfg)
    f = cfg.patch_size * MERGE
    return w // f, h // f


def resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """clip.cpp's ``img_tool::resize`` for these projectors (bicubic, Pillow's port, padded): uint8 RGB [h, w, 3] scaled
    by the smaller of width/w and height/h (sides rounded up, float32 as clip.cpp's), horizontal pass then vertical,
    each clipped to bytes, centred on a black [height, width, 3]; a picture already that size is kept.  (Measured
    on the tiny projector: rows as llama.cpp's, float noise apart; Pillow's own one-call resize turns a tall picture
    vertically first, which is not clip.cpp's order.)"""
    return resize_padded(img, width, height, BICUBIC)


def preprocess(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> normalised pixels [3, H, W] float32 at :func:`target_size`."""
    w, h = target_size(img.shape[1], img.shape[0], cfg)
    a = resize(img, w, h).astype(np.float32) / np.float32(255.0)
    mean, std = np.asarray(cfg.image_mean, np.float32), np.asarray(cfg.image_std, np.float32)
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1), np.float32)


# ---------------------------------------------------------------- the encoder


def block_order(npx: int, npy: int) -> tuple[np.ndarray, np.ndarray]:
    """The patches' (row, column) in clip.cpp's order: 2x2 blocks in raster order, each block's 4 in raster order."""
    ys, xs = [], []
    for by in range(0, npy, MERGE):
        for bx in range(0, npx, MERGE):
            for dy in range(MERGE):
                for dx in range(MERGE):
                    ys.append(by + dy)
                    xs.append(bx + dx)
    return np.asarray(ys), np.asarray(xs)


def vision_rope(ys: np.ndarray, xs: np.ndarray, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [T, head_dim/2] of ggml's vision rope (``rope_multi``, GGML_ROPE_TYPE_VISION, sections of head_dim/4):
    pair i < head_dim/4 turns by the row at ``base^(-4i/head_dim)``, the next quarter by the column, each quarter's
    frequencies starting over; pairs (i, i + head_dim/2)."""
    q = head_dim // 4
    inv = np.power(np.float32(ROPE_BASE), -np.arange(q, dtype=np.float32) * np.float32(4.0 / head_dim), dtype=np.float32)
    ang = np.concatenate([ys[:, None] * inv[None, :], xs[:, None] * inv[None, :]], axis=1).astype(np.float32)
    return np.cos(ang), np.sin(ang)


def windows(npx: int, npy: int, patch: int, window: int = WINDOW) -> np.ndarray:
    """Each patch's attention window (clip.cpp's, for Qwen2.5-VL; Youtu-VL's of the file's ``window`` pixels a side),
    patches in :func:`block_order`."""
    g = max(1, window // patch // MERGE)  # (blocks a window side)
    nbx = npx // MERGE
    ys, xs = block_order(npx, npy)
    by, bx = ys // MERGE, xs // MERGE
    return (by // g) * (-(-nbx // g)) + bx // g


def patch_kernels(g: GGUFFile, E: int, p: int) -> list[np.ndarray]:
    """The two patch kernels ``v.patch_embd.weight`` and ``v.patch_embd.weight.1`` (clip.cpp's two frames of the
    temporal patch) as [E, 3 p p] float32 rounded to F16 (ggml_conv_2d's kernel); a missing or misshapen one a
    KvrunError.  (Qwen2-VL's layout, kept by the encoders built on it.)"""
    kernels = []
    for name in ("v.patch_embd.weight", "v.patch_embd.weight.1"):
        t = g.tensors.get(name)
        if t is None:
            raise KvrunError(f"{g.path}: tensor {name!r} is missing; the projector file is incomplete")
        if t.n_elements != E * 3 * p * p:
            raise KvrunError(f"{g.path}: {name} has shape {t.shape}, expected {(E, 3, p, p)}")
        kernels.append(_f16(dequantize(t.data, t.qtype, t.shape).reshape(E, 3 * p * p).astype(np.float32)))
    return kernels


class Qwen2VLEncoder(MmprojEncoder):
    """Qwen2-VL's or Qwen2.5-VL's vision encoder and merger from an mmproj file: :meth:`encode` pixels into rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend, patches=False)  # (two patch kernels, below)
        self.rms = cfg.projector_type == "qwen2.5vl_merger"  # (2.5: RMSNorm; 2: LayerNorm)
        E, p = cfg.n_embd, cfg.patch_size
        self.kernels = patch_kernels(g, E, p)
        if "v.patch_embd.bias" in g.tensors:  # (clip.cpp asserts there is none)
            raise UnsupportedModelError(f"{g.path}: v.patch_embd.bias is present; llama.cpp's Qwen2-VL graph has no patch bias")
        self.layers = []
        for i in range(cfg.n_layer):
            L = vit_layer(ld, i)
            gate = f"v.blk.{i}.ffn_gate.weight"
            L["gate"], L["gate_b"] = None, None
            if gate in g.tensors:
                L["gate"], L["gate_b"] = self._named_matrix(ld, gate), self._vector(g, f"v.blk.{i}.ffn_gate.bias")
            self.layers.append(L)
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        self.mm0, self.mm0_b = self._named_matrix(ld, "mm.0.weight"), self._vector(g, "mm.0.bias")
        self.mm2, self.mm2_b = self._named_matrix(ld, "mm.2.weight"), self._vector(g, "mm.2.bias")

    @staticmethod
    def _named_matrix(ld: WeightLoader, name: str) -> Any:
        from .common import TENSOR_NAMES

        role = "qwen2vl:" + name  # (a role per tensor name, as models/siglip.py registers the encoder's)
        TENSOR_NAMES.setdefault(role, name)
        return ld.matrix(role)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (:func:`preprocess`; sides whole 2x2 blocks of patches) -> the rows
        [ny * nx, n_text_embd], blocks in raster order."""
        check_pixels(self.cfg, pixels)
        return _forward(ops_of(self, QUERY_CHUNK), self, pixels)


def check_pixels(cfg: MmprojConfig, pixels: np.ndarray) -> None:
    """A one-line error unless ``pixels`` is [3, H, W] with sides whole 2x2 blocks of patches."""
    p = cfg.patch_size
    if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.shape[1] % (2 * p) or pixels.shape[2] % (2 * p):
        raise KvrunError(f"the vision encoder takes pixels [3, H, W] with sides multiples of {2 * p}, got {list(pixels.shape)}")


def patch_rows(ops: Any, enc: Any, pixels: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """``pixels`` [3, H, W] -> the patches' embeddings [n_patches, E] in :func:`block_order` (the two temporal
    convolutions added; F16 patches and kernels, as ggml's conv_2d) on ``ops``' device, and each patch's row and
    column."""
    p = enc.cfg.patch_size
    _, H, W = pixels.shape
    npy, npx = H // p, W // p
    ys, xs = block_order(npx, npy)
    x = pixels.reshape(3, npy, p, npx, p).transpose(1, 3, 0, 2, 4)[ys, xs].reshape(len(ys), 3 * p * p)
    return ops.patch_rows(_f16(np.ascontiguousarray(x, np.float32)), enc.kernels), ys, xs


def norm(ops: Any, enc: Any, x: Any, w: np.ndarray, b: np.ndarray | None) -> Any:
    """Qwen2.5-VL's (and GLM-4V's) RMSNorm plus its bias where there is one, or Qwen2-VL's LayerNorm."""
    return ops.rms_norm(x, w, enc.cfg.eps, b) if enc.rms else ops.layer_norm(x, w, b, enc.cfg.eps)


def _forward(ops: Any, enc: Qwen2VLEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`Qwen2VLEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once): the patches, the blocks with the 2-D rope (Qwen2.5-VL's windowed
    layers attending within their windows), the 2x2 merger."""
    c, xp = enc.cfg, ops.xp
    p = c.patch_size
    npy, npx = pixels.shape[1] // p, pixels.shape[2] // p
    x, ys, xs = patch_rows(ops, enc, pixels)
    T, H = x.shape[0], c.n_head
    D = c.n_embd // H
    cos, sin = (ops.vector(t) for t in vision_rope(ys, xs, D))
    win = windows(npx, npy, p) if c.n_wa_pattern > 0 else None
    groups = None if win is None else ops.window_groups(win, T)
    everything = ops.window_groups(None, T)
    scale = np.float32(1.0 / math.sqrt(D))
    for il, L in enumerate(enc.layers):
        full = win is None or (il + 1) % c.n_wa_pattern == 0
        h = norm(ops, enc, x, L["ln1"], L["ln1_b"])
        q, k = ops.rope_neox(*(ops.linear(L[r], h, L[r + "_b"]).reshape(T, H, D) for r in ("q", "k")), cos, sin)
        v = ops.linear(L["v"], h, L["v_b"]).reshape(T, H, D)
        a = ops.attend_windows(q, k, v, everything if full else groups, scale)  # (a window's patches attend to its own)
        x = x + ops.linear(L["o"], a, L["o_b"])
        h = norm(ops, enc, x, L["ln2"], L["ln2_b"])
        up = ops.linear(L["up"], h, L["up_b"])
        if L["gate"] is not None:  # Qwen2.5-VL: SiLU(gate) * up (ggml's swiglu), else the activation alone
            act = ops.act(ops.linear(L["gate"], h, L["gate_b"]), c.ffn_op) * up
        else:
            act = ops.act(up, c.ffn_op)
        x = x + ops.linear(L["down"], act, L["down_b"])
    if enc.post_ln is not None:
        x = norm(ops, enc, x, enc.post_ln, enc.post_ln_b)
    x = x.reshape(T // 4, 4 * c.n_embd)  # (each block's 4 patches side by side)
    return ops.to_host(xp.ascontiguousarray(ops.linear(enc.mm2, ops.act(ops.linear(enc.mm0, x, enc.mm0_b), "gelu"), enc.mm2_b), np.float32))
