"""Pixtral's and Mistral Small 3.1+'s image side, as llama.cpp's clip.cpp builds it (``clip_graph_pixtral`` for projector
type "pixtral") from an mmproj file (loaders/mmproj.py), and the picture's size as libmtmd's dynamic-size
preprocessor chooses it.

A picture keeps (about) its own size and aspect: its sides are rounded to whole merged blocks (patch_size x
spatial_merge_size pixels, 28 for Mistral Small 3.1's 14-pixel patches merged 2x2; one patch for Pixtral 12B, which
merges none) and scaled, if need be, so that its pixels lie within 8 and 1024 merged rows' worth (clip.cpp's
``set_limit_image_tokens(8, 1024)``), then resized keeping its aspect and padded with black, with clip.cpp's port of
Pillow's bicubic filter (models/qwen2vl_image.py's :func:`~kvrun.models.qwen2vl_image.resize`: the same
``calc_size_preserved_ratio`` and ``img_tool::resize``).  Its rows are then:

    pixels [3, H, W] -> patches of p x p in raster order, embedded by the patch kernel (F16, as ggml's conv_2d; no
       bias, no learned positions) -> RMSNorm ``v.pre_ln``
    -> n_layer pre-norm blocks: RMSNorm, attention without biases and with a 2-D rope over the patch's (row, column)
       (:func:`rope_2d`), residual; RMSNorm, SwiGLU (SiLU(gate) * up, down), residual
    -> (Mistral Small 3.1's patch merger) RMSNorm ``mm.input_norm``, each 2x2 block's patches side by side, channel
       by channel (torch's unfold: [c, ky, kx]), ``mm.patch_merger`` -> blocks in raster order
    -> the adapter: ``mm.1`` (+ bias), GELU, ``mm.2`` (+ bias) -> [ny * nx, n_text_embd]
    -> the [IMG_BREAK] row ``v.token_embd.img_break`` after every row of blocks but the last

so a picture of nx x ny blocks gives ``nx * ny + ny - 1`` rows: the [IMG_BREAK]s are part of the image's embeddings
(clip.cpp concatenates them in its graph), not tokens.  ggml's CPU numerics are followed where they show, as
models/siglip.py does.  runtime/vision_pixtral.py lays the rows out before ``[IMG_END]``.
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
from .common import TENSOR_NAMES
from .qwen2vl_image import resize, smart_size
from .siglip import MmprojEncoder, vit_layer
from .vit_ops import ops_of

F32 = np.float32
ROPE_BASE = 10000.0  # clip.cpp's rope_theta for pixtral
QUERY_CHUNK = 2048  # queries scored at once (a 1024-row picture merged 2x2 has 4096 patches)

TENSOR_NAMES.update({  # Pixtral's (clip.cpp's TN_LN_PRE, TN_FFN_GATE, TN_MM_INP_NORM, TN_MM_PATCH_MERGER, TN_LLAVA_PROJ, TN_TOK_IMG_BREAK)
    "v_pre_ln": "v.pre_ln.weight", "v_gate": "v.blk.{i}.ffn_gate.weight",
    "px_inp_norm": "mm.input_norm.weight", "px_merger": "mm.patch_merger.weight",
    "px_mm1": "mm.1.weight", "px_mm1_b": "mm.1.bias", "px_mm2": "mm.2.weight", "px_mm2_b": "mm.2.bias",
})  # fmt: skip


# ---------------------------------------------------------------- the picture's size and pixels


def block(cfg: MmprojConfig) -> int:
    """Pixels a side of one output row's block: patch_size x spatial_merge_size (the merge 1 without a merger)."""
    return cfg.patch_size * max(cfg.n_merge, 1)


def target_size(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(width, height) a picture is resized to: clip.cpp's ``calc_size_preserved_ratio`` (Hugging Face's
    ``smart_resize``): sides rounded to whole blocks, then scaled down (floored) past ``max_pixels`` or up (ceiled)
    short of ``min_pixels``; float32 arithmetic as clip.cpp's."""
    return smart_size(width, height, block(cfg), cfg)


def grid(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(nx, ny): the blocks (output rows) a width x height picture becomes, a side."""
    w, h = target_size(width, height, cfg)
    return w // block(cfg), h // block(cfg)


def n_rows(width: int, height: int, cfg: MmprojConfig) -> int:
    """Rows a width x height picture's image chunk has: its blocks and an [IMG_BREAK] after each row but the last."""
    nx, ny = grid(width, height, cfg)
    return nx * ny + ny - 1


def preprocess(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> normalised pixels [3, H, W] float32 at :func:`target_size`."""
    w, h = target_size(img.shape[1], img.shape[0], cfg)
    a = resize(img, w, h).astype(F32) / F32(255.0)
    mean, std = np.asarray(cfg.image_mean, F32), np.asarray(cfg.image_std, F32)
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1), F32)


# ---------------------------------------------------------------- the encoder


def rope_2d(ys: np.ndarray, xs: np.ndarray, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [T, head_dim/2] of clip.cpp's ``build_rope_2d`` with interleaved frequencies: the head's first half
    (ggml's normal rope over adjacent pairs) turned by the row, pair j at ``base^(-4j/head_dim)``, the second half by
    the column at ``base^(-(4j+2)/head_dim)`` (its freq_scale ``base^(-2/head_dim)``): Pixtral's even and odd
    frequencies, split between the two axes."""
    q = head_dim // 4
    j = np.arange(q, dtype=np.float64)
    even = ROPE_BASE ** (-4.0 * j / head_dim)
    odd = ROPE_BASE ** (-(4.0 * j + 2.0) / head_dim)
    ang = np.concatenate([ys[:, None] * even[None, :], xs[:, None] * odd[None, :]], axis=1)
    return np.cos(ang).astype(F32), np.sin(ang).astype(F32)


def silu(x: np.ndarray) -> np.ndarray:  # (models/cogvlm_image.py's)
    return x / (F32(1.0) + np.exp(-x))


class PixtralEncoder(MmprojEncoder):
    """Pixtral's vision encoder, patch merger and adapter from an mmproj file: :meth:`encode` pixels into rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        if cfg.ffn_op != "silu":  # (Pixtral's files state clip.use_silu; another activation is not Pixtral's ViT)
            raise UnsupportedModelError(f"{g.path}: a pixtral projector's ViT MLP is SwiGLU (clip.use_silu), this file states {cfg.ffn_op}")
        ld = self._begin(g, cfg, backend)
        self.pre_ln = ld.host_vector("v_pre_ln", required=False)
        self.layers = []
        for i in range(cfg.n_layer):
            L = vit_layer(ld, i)
            L["gate"] = ld.matrix("v_gate", i, required=False)
            self.layers.append(L)
        self.post_ln = ld.host_vector("v_post_ln", required=False)
        self.merger = ld.matrix("px_merger", required=False)
        if self.merger is not None:
            if cfg.n_merge < 2:
                raise KvrunError(f"{g.path}: mm.patch_merger.weight is present but clip.vision.spatial_merge_size is not; the projector file is incomplete")
            self.inp_norm = ld.host_vector("px_inp_norm")
        elif cfg.n_merge > 1:
            raise KvrunError(f"{g.path}: clip.vision.spatial_merge_size is {cfg.n_merge} but mm.patch_merger.weight is missing")
        self.mm1, self.mm1_b = ld.matrix("px_mm1"), ld.host_vector("px_mm1_b", required=False)
        self.mm2, self.mm2_b = ld.matrix("px_mm2"), ld.host_vector("px_mm2_b", required=False)
        brk = g.tensors.get("v.token_embd.img_break")
        self.img_break = None if brk is None else dequantize(brk.data, brk.qtype, brk.shape).reshape(-1).astype(F32)
        if self.img_break is not None and self.img_break.shape[0] != cfg.n_text_embd:
            raise KvrunError(f"{g.path}: v.token_embd.img_break has {self.img_break.shape[0]} values, not the projector's width {cfg.n_text_embd}")

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (:func:`preprocess`; sides whole blocks) -> the image chunk's rows
        [nx * ny + ny - 1, n_text_embd]: blocks in raster order, [IMG_BREAK] between rows of blocks."""
        f = block(self.cfg)
        if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.shape[1] % f or pixels.shape[2] % f:
            raise KvrunError(f"the Pixtral encoder takes pixels [3, H, W] with sides multiples of {f}, got {list(pixels.shape)}")
        return _forward(ops_of(self, QUERY_CHUNK), self, pixels)


def _forward(ops: Any, enc: PixtralEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`PixtralEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once).  The 2-D rope is clip.cpp's ``build_rope_2d``: each half of a head
    turned over adjacent pairs by its own quarter of :func:`rope_2d`'s table (``ops.rope_pairs``)."""
    c, xp = enc.cfg, ops.xp
    p, m = c.patch_size, max(c.n_merge, 1)
    npy, npx = pixels.shape[1] // p, pixels.shape[2] // p
    T, H = npy * npx, c.n_head
    D = c.n_embd // H
    x = ops.embed_patches(pixels)  # (ggml's conv_2d: F16 patches and kernel)
    if enc.pre_ln is not None:
        x = ops.rms_norm(x, enc.pre_ln, c.eps)
    idx = np.arange(T)
    cos, sin = (ops.vector(t) for t in rope_2d(idx // npx, idx % npx, D))
    scale = F32(1.0 / math.sqrt(D))
    for L in enc.layers:
        h = ops.rms_norm(x, L["ln1"], c.eps)
        q, k, v = (ops.linear(L[r], h, L[r + "_b"]).reshape(T, H, D) for r in ("q", "k", "v"))
        q, k = ops.rope_pairs(q, k, cos, sin)
        x = x + ops.linear(L["o"], ops.attend(q, k, v, scale), L["o_b"])
        h = ops.rms_norm(x, L["ln2"], c.eps)
        up = ops.linear(L["up"], h, L["up_b"])
        act = ops.act(ops.linear(L["gate"], h), "silu") * up if L["gate"] is not None else ops.act(up, "silu")
        x = x + ops.linear(L["down"], act, L["down_b"])
    if enc.post_ln is not None:
        x = ops.rms_norm(x, enc.post_ln, c.eps)
    if enc.merger is not None:  # Mistral Small 3.1: each m x m block's patches, channel-major (torch's unfold)
        x = ops.rms_norm(x, enc.inp_norm, c.eps)
        x = xp.ascontiguousarray(xp.transpose(x.reshape(npy // m, m, npx // m, m, c.n_embd), (0, 2, 4, 1, 3)).reshape(T // (m * m), -1))
        x = ops.linear(enc.merger, x)
    rows = ops.linear(enc.mm2, ops.act(ops.linear(enc.mm1, x, enc.mm1_b), "gelu"), enc.mm2_b)
    if enc.img_break is not None:  # (an [IMG_BREAK] row after each row of blocks but the last)
        nx, ny = npx // m, npy // m
        brk = xp.broadcast_to(ops.const(enc.img_break).reshape(1, 1, -1), (ny, 1, rows.shape[1]))
        rows = xp.concatenate([rows.reshape(ny, nx, -1), brk], axis=1).reshape(ny * (nx + 1), -1)[:-1]
    return ops.to_host(xp.ascontiguousarray(rows, F32))
