"""MiniMax-M3's image side (projector type "minimax_m3"), as llama.cpp's libmtmd builds it (``clip_graph_minimax_m3``,
tools/mtmd/models/minimax-m3.cpp) from an mmproj file (loaders/mmproj.py).

Qwen2-VL's ViT (models/qwen2vl_image.py) in most of its steps, imported from there: the picture's size (libmtmd's
dynamic-size preprocessor: sides whole 2x2 blocks of patches, within clip.cpp's fixed 8 to 576 merged rows' worth of
pixels), the two temporal patch kernels added (no bias, no position embeddings), the patches in 2x2 blocks (blocks in
raster order), LayerNorm blocks with biases and ``v.post_ln``.  What sets it apart, each held to clip.cpp:

* the picture is resized to that size directly (bicubic, ``PAD_NONE``: stretched, not padded to keep its aspect);
* the 2-D rope: a head of ``d`` dimensions in four parts, ``a = 2 ((2 (d/2) / 3) / 2)`` wide the first three: the
  first (time, always 0) unturned, the second turned by the patch's row, the third by its column, the rest unturned;
  each turned part neox-paired within itself (pairs (i, i + a/2)) at ``10000^(-2i/a)`` (ggml_rope_ext with
  ggml_rope_set_offset);
* the ViT's MLP: up, GELU (erf, not tanh), down;
* the projector: each patch through ``mm.1``, GELU (erf), ``mm.2``; each 2x2 block's 4 rows side by side through the
  merger ``mm.merger.fc1``, GELU (erf), ``mm.merger.fc2`` (biases all) -> [ny * nx, n_text_embd], blocks in raster order.

The forward is written once against models/vit_ops.py's ops: on the CPU in numpy, beside a text model on ``--device gpu``
on the device (models/vit_device.py; each rope part the backend's neox rope kernel), the rows brought down once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..ops.backend import Backend
from .pillow_resize import BICUBIC, resize_axes
from .qwen2vl_image import QUERY_CHUNK, MERGE, Qwen2VLEncoder, check_pixels, norm, patch_kernels, patch_rows, target_size
from .siglip import MmprojEncoder, vit_layer
from .vit_ops import ops_of

ROPE_BASE = 10000.0  # (clip.cpp's hparams.rope_theta for minimax_m3: vision_config.rope_theta, fixed)
#: the projector's products, in order: the per-patch MLP's, then the 2x2 merger's (each with its bias)
PRODUCTS = ("mm.1", "mm.2", "mm.merger.fc1", "mm.merger.fc2")


def grid(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(nx, ny): the merged rows a width x height picture becomes, a side."""
    w, h = target_size(width, height, cfg)
    f = cfg.patch_size * MERGE
    return w // f, h // f


def preprocess(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> normalised pixels [3, H, W] float32 at Qwen2-VL's target size, resized to it
    directly (clip.cpp's PAD_NONE: Pillow's bicubic, horizontal pass then vertical)."""
    w, h = target_size(img.shape[1], img.shape[0], cfg)
    a = resize_axes(img, w, h, BICUBIC).astype(np.float32) / np.float32(255.0)
    mean, std = np.asarray(cfg.image_mean, np.float32), np.asarray(cfg.image_std, np.float32)
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1), np.float32)


def rope_width(head_dim: int) -> int:
    """The width of each of the head's three rope parts (clip_graph_minimax_m3's ``axd``)."""
    return 2 * ((2 * (head_dim // 2) // 3) // 2)


def rope_tables(ys: np.ndarray, xs: np.ndarray, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [T, a] of the turned parts (a = :func:`rope_width`): the first a/2 angles by the row, the next a/2 by the
    column, each part's frequencies ``base^(-2i/a)``."""
    a = rope_width(head_dim)
    inv = np.power(np.float32(ROPE_BASE), -np.arange(a // 2, dtype=np.float32) * np.float32(2.0 / a), dtype=np.float32)
    ang = np.concatenate([ys[:, None] * inv[None, :], xs[:, None] * inv[None, :]], axis=1).astype(np.float32)
    return np.cos(ang), np.sin(ang)


def rope_parts(ops: Any, cos: np.ndarray, sin: np.ndarray) -> list[tuple[Any, Any]]:
    """:func:`rope_tables`' cos, sin split into the row part's and the column part's [T, a/2] tables, on ``ops``' device."""
    half = cos.shape[1] // 2
    return [tuple(ops.vector(np.ascontiguousarray(t[:, p * half : (p + 1) * half])) for t in (cos, sin)) for p in (0, 1)]


def rope(ops: Any, q: Any, k: Any, parts: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    """``q``, ``k`` [T, H, D] with their row part (dimensions a..2a) and column part (2a..3a) neox-turned, pairs
    (i, i + a/2), by :func:`rope_parts`' tables (``ops.rope_neox`` over each part); the rest as they are."""
    a = 2 * parts[0][0].shape[1]  # (each part's width; half of it pairs of angles)
    qs, ks = [q[..., :a]], [k[..., :a]]  # (the time part: unturned)
    for (c, s), lo in zip(parts, (a, 2 * a)):  # (the row's part, then the column's)
        tq, tk = ops.rope_neox(q[..., lo : lo + a], k[..., lo : lo + a], c, s)
        qs.append(tq)
        ks.append(tk)
    qs.append(q[..., 3 * a :])
    ks.append(k[..., 3 * a :])
    return ops.xp.concatenate(qs, axis=-1), ops.xp.concatenate(ks, axis=-1)


class MiniMaxM3Encoder(MmprojEncoder):
    """MiniMax-M3's vision encoder and projector from an mmproj file: :meth:`encode` pixels into rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend, patches=False)  # (two patch kernels, below)
        self.kernels = patch_kernels(g, cfg.n_embd, cfg.patch_size)
        if "v.patch_embd.bias" in g.tensors:  # (clip.cpp asserts there is none)
            raise UnsupportedModelError(f"{g.path}: v.patch_embd.bias is present; llama.cpp's minimax_m3 graph has no patch bias")
        if int(g.get("clip.vision.spatial_merge_size", MERGE) or MERGE) != MERGE:
            raise UnsupportedModelError(f"{g.path}: clip.vision.spatial_merge_size is not {MERGE}; kvrun merges MiniMax-M3's patches 2x2")
        head_dim = cfg.n_embd // cfg.n_head
        if 3 * rope_width(head_dim) > head_dim or rope_width(head_dim) < 2:
            raise KvrunError(f"{g.path}: heads {head_dim} wide leave no room for clip.cpp's minimax_m3 rope")
        self.rms = False  # (LayerNorms: qwen2vl_image.norm)
        self.layers = [vit_layer(ld, i) for i in range(cfg.n_layer)]
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        self.products = []
        for name in PRODUCTS:
            for part in ("weight", "bias"):
                if f"{name}.{part}" not in g.tensors:  # (clip.cpp requires them all)
                    raise KvrunError(f"{g.path}: tensor '{name}.{part}' is missing; the minimax_m3 projector file is incomplete")
            self.products.append((Qwen2VLEncoder._named_matrix(ld, f"{name}.weight"), self._vector(g, f"{name}.bias")))

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (:func:`preprocess`; sides whole 2x2 blocks of patches) -> the rows
        [ny * nx, n_text_embd], blocks in raster order."""
        check_pixels(self.cfg, pixels)
        return _forward(ops_of(self, QUERY_CHUNK), self, pixels)


def _forward(ops: Any, enc: MiniMaxM3Encoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`MiniMaxM3Encoder.encode` past its checks: the patches (Qwen2-VL's), the blocks with the partial 2-D rope,
    the per-patch MLP, the 2x2 merger."""
    c = enc.cfg
    x, ys, xs = patch_rows(ops, enc, pixels)
    T, H = x.shape[0], c.n_head
    D = c.n_embd // H
    parts = rope_parts(ops, *rope_tables(ys, xs, D))
    everything = ops.window_groups(None, T)
    scale = np.float32(1.0 / math.sqrt(D))
    for L in enc.layers:
        h = norm(ops, enc, x, L["ln1"], L["ln1_b"])
        q, k = rope(ops, *(ops.linear(L[r], h, L[r + "_b"]).reshape(T, H, D) for r in ("q", "k")), parts)
        v = ops.linear(L["v"], h, L["v_b"]).reshape(T, H, D)
        x = x + ops.linear(L["o"], ops.attend_windows(q, k, v, everything, scale), L["o_b"])
        h = norm(ops, enc, x, L["ln2"], L["ln2_b"])
        x = x + ops.linear(L["down"], ops.act(ops.linear(L["up"], h, L["up_b"]), "gelu_erf"), L["down_b"])
    if enc.post_ln is not None:
        x = norm(ops, enc, x, enc.post_ln, enc.post_ln_b)
    (w1, b1), (w2, b2), (f1, c1), (f2, c2) = enc.products
    x = ops.linear(w2, ops.act(ops.linear(w1, x, b1), "gelu_erf"), b2)
    x = x.reshape(T // 4, -1)  # (each block's 4 patches side by side)
    return ops.to_host(ops.xp.ascontiguousarray(ops.linear(f2, ops.act(ops.linear(f1, x, c1), "gelu_erf"), c2), np.float32))
