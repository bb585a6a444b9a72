"""Gemma 4's image side (projector type "gemma4v"), as llama.cpp's clip.cpp builds it (``clip_graph_gemma4v``,
tools/mtmd/models/gemma4v.cpp, on clip.cpp's ``build_vit``) from an mmproj file (loaders/mmproj.py), and the
picture's size as libmtmd's dynamic-size preprocessor chooses it.

A picture keeps (about) its aspect: clip.cpp's ``calc_size_preserved_ratio`` rounds its sides to whole pooled
blocks (patch_size x n_merge pixels, 48 for Gemma 4) and scales it, if need be, into libmtmd's 70 to 1120 rows'
worth of pixels (``set_limit_image_tokens(70, 1120)`` in the oracle's clip.cpp; stored sources show 40..280 and
252..280 in other versions); it is then resized keeping its aspect with clip.cpp's port of Pillow's bicubic
filter and padded with black where rounding left a margin (``img_tool::resize``, PAD_CEIL: models/qwen2vl_image.py's
:func:`resize`; measured on the tiny projector: a resized picture's rows 4e-4 off libmtmd's this way, as close as
a picture already of a whole size, and 0.5 to 1 off with the bilinear filter clip.cpp's source names), normalised by
the file's image_mean/std (Gemma 4's: 0 and 1).  Its rows are then:

    pixels [3, H, W] -> 2 x - 1 -> patches of p x p, one matrix (the stride-p convolution, no bias)
    -> + the x table's row of the patch's column + the y table's row of its row (``v.position_embd`` [2, n_pos, E])
    -> n_layer blocks: RMSNorm ln1; Q, K, V; per-head RMSNorms of Q and K (weighted) and of V (unweighted); a 2-D
       rope, base 100, neox-paired within each half of a head: the first half turned by the patch's column, the
       second by its row; attention unscaled (kq_scale 1), every patch seeing every patch; attn_post_norm;
       residual; RMSNorm ln2, act(gate) * up (GELU: ``clip.use_gelu``), down, ffn_post_norm; residual (times
       ``out_scale`` where the file has it)
    -> average pooling of n_merge x n_merge patches (Gemma4VisionPooler), times sqrt(E)
    -> (x - v.std_bias) * v.std_scale where the file has them
    -> RMSNorm without a weight -> mm.input_projection -> [rows, n_text_embd], the pooled blocks in raster order

Every product of the graph (Q, K, V, output, the FFN's three, the projection) is a Gemma4ClippableLinear: where the
file has ``<weight>.input_min``/``input_max``/``output_min``/``output_max`` scalars, its input and output are clamped
to them (clip.cpp's ``clamp_info_map``).

ggml's CPU numerics are followed where they show, as models/siglip.py does: F16 weights multiply an F16 copy of their
input, the patch kernel runs in F16 (ggml's conv_2d), GELU is ggml's F16 table; attention is float32
softmax(QK^T)V, llama.cpp's path without flash attention.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig, open_mmproj
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import WeightLoader
from .lfm2vl_image import normalise, target_size
from .qwen2vl_image import resize
from .siglip import patch_kernel
from .vit_ops import HostViT, ops_of

F32 = np.float32
ROPE_BASE = 100.0  # clip.cpp's hparams.rope_theta for gemma4v
QUERY_CHUNK = 2048  # queries scored at once (1120 rows are 10080 patches: 400 MiB of scores a head whole)
CLAMP_KEYS = ("input_min", "input_max", "output_min", "output_max")


def target(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(width, height) a picture is resized to: whole pooled blocks, within the file's min and max pixels."""
    return target_size(width, height, cfg)


def n_rows(width: int, height: int, cfg: MmprojConfig) -> int:
    """Embedding rows (positions in the context) a width x height picture becomes."""
    w, h = target(width, height, cfg)
    f = cfg.patch_size * cfg.n_merge
    return (w // f) * (h // f)


def preprocess(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> normalised pixels [3, H, W] float32 at :func:`target` (libmtmd's
    ``mtmd_image_preprocessor_dyn_size``)."""
    w, h = target(img.shape[1], img.shape[0], cfg)
    return normalise(resize(img, w, h), cfg)


def rms_norm(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
    """RMSNorm over the last axis (the mean square in float64, as ggml's), times ``w`` where given."""
    ms = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    y = (x * (1.0 / np.sqrt(ms + eps)).astype(F32)).astype(F32)
    return y * w if w is not None else y


def rope_tables(px: np.ndarray, py: np.ndarray, D: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [T, 1, 2, D/4] of clip_graph_gemma4v's ``add_pos`` for heads D wide: the first half of a head turned by
    the patch's column ``px``, the second by its row ``py`` (ggml_rope_ext, neox, n_dims D/2, base 100)."""
    half, quarter = D // 2, D // 4
    inv = np.power(F32(ROPE_BASE), -np.arange(quarter, dtype=F32) * F32(2.0 / half), dtype=F32)
    ang = np.stack([(p.astype(F32)[:, None] * inv[None, :]).astype(F32) for p in (px, py)], axis=1)
    return np.cos(ang)[:, None], np.sin(ang)[:, None]


def rope_turn(xp: Any, x: Any, cos: Any, sin: Any) -> Any:
    """``x`` [T, H, D] (either device's) turned by :func:`rope_tables`' ``cos``/``sin``: each half's pairs (i, i + D/4)."""
    T, H, D = x.shape
    t = x.reshape(T, H, 2, 2, D // 4)
    a, b = t[:, :, :, 0], t[:, :, :, 1]
    return xp.stack([a * cos - b * sin, a * sin + b * cos], axis=3).reshape(T, H, D)


def rope_halves(x: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """clip_graph_gemma4v's ``add_pos`` on ``x`` [T, H, D]: each head's first D/2 channels neox-roped by the patch's
    column ``px``, the last D/2 by its row ``py`` (ggml_rope_ext, n_dims D/2, base 100)."""
    return rope_turn(np, x, *rope_tables(px, py, x.shape[-1]))


class _HostOps(HostViT):
    """models/vit_ops.py's host ops with Gemma 4's own CPU arithmetic: its :func:`rms_norm` (the weight optional) and
    its unscaled attention, normalised after the product with the values, a slice of queries at a time."""

    @staticmethod
    def rms_norm(x: np.ndarray, w: np.ndarray | None, eps: float, b: np.ndarray | None = None) -> np.ndarray:
        return rms_norm(x, w, eps)

    def attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: Any) -> np.ndarray:
        T, H, D = q.shape  # (scale 1: kq_scale 1, Q and K are normed)
        a = np.empty((T, H, D), F32)
        for hd in range(H):
            kt, vh = k[:, hd].T, v[:, hd]
            for s in range(0, T, QUERY_CHUNK):
                sc = q[s : s + QUERY_CHUNK, hd] @ kt
                sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
                a[s : s + QUERY_CHUNK, hd] = (sc @ vh) / sc.sum(axis=-1, keepdims=True)
        return a.reshape(T, H * D)


class Gemma4VEncoder:
    """Gemma 4's vision encoder and projector from an mmproj file: :meth:`encode` pixels into embedding rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        self.cfg, self.be, self.path = cfg, backend, g.path
        ld = WeightLoader(g, backend)
        E = cfg.n_embd
        if E % cfg.n_head or (E // cfg.n_head) % 4:
            raise KvrunError(f"{g.path}: heads {E // cfg.n_head} wide; Gemma 4's 2-D rope turns quarters of a head")
        self.patch_w = patch_kernel(g, cfg)
        pos = g.tensor("v.position_embd.weight")
        if pos.n_elements % (2 * E):
            raise KvrunError(f"{g.path}: v.position_embd.weight has shape {pos.shape}, expected (2, n_pos, {E})")
        self.pos = dequantize(pos.data, pos.qtype, pos.shape).reshape(2, -1, E).astype(F32)  # x table, y table
        self.clamps: dict[int, tuple[float, float, float, float]] = {}

        def vec(name: str, required: bool = True) -> np.ndarray | None:
            t = g.tensors.get(name)
            if t is None:
                if required:
                    raise KvrunError(f"{g.path}: tensor {name!r} is missing; the projector file is incomplete")
                return None
            return dequantize(t.data, t.qtype, t.shape).reshape(-1).astype(F32)

        def mat(name: str, required: bool = True) -> Any:
            t = g.tensors.get(name)
            if t is None:
                if required:
                    raise KvrunError(f"{g.path}: tensor {name!r} is missing; the projector file is incomplete")
                return None
            bounds = [vec(name.replace(".weight", "." + k), False) for k in CLAMP_KEYS]
            w = ld._upload(t, t.rows(), t.n_elements // t.shape[-1])  # (the loader's checks and upload, by tensor name)
            if any(b is not None for b in bounds):
                inf = float(np.finfo(np.float32).max)
                dflt = (-inf, inf, -inf, inf)
                self.clamps[id(w)] = tuple(float(b[0]) if b is not None else d for b, d in zip(bounds, dflt))  # type: ignore[assignment]
            return w

        self.layers = []
        for i in range(cfg.n_layer):
            b = f"v.blk.{i}."
            self.layers.append({
                "ln1": vec(b + "ln1.weight"), "ln2": vec(b + "ln2.weight"),
                "q": mat(b + "attn_q.weight"), "k": mat(b + "attn_k.weight"), "v": mat(b + "attn_v.weight"),
                "o": mat(b + "attn_out.weight"),
                "q_norm": vec(b + "attn_q_norm.weight", False), "k_norm": vec(b + "attn_k_norm.weight", False),
                "attn_post": vec(b + "attn_post_norm.weight", False), "ffn_post": vec(b + "ffn_post_norm.weight", False),
                "gate": mat(b + "ffn_gate.weight", False), "up": mat(b + "ffn_up.weight"), "down": mat(b + "ffn_down.weight"),
                "out_scale": vec(b + "out_scale.weight", False),
            })  # fmt: skip
        self.post_ln = vec("v.post_ln.weight", False)
        self.std_bias, self.std_scale = vec("v.std_bias", False), vec("v.std_scale", False)
        self.proj = mat("mm.input_projection.weight")

    @classmethod
    def load(cls, path: str | os.PathLike, backend: Backend) -> Gemma4VEncoder:
        g, cfg = open_mmproj(path)
        return cls(g, cfg, backend)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (:func:`preprocess`) -> the picture's rows [n_rows, n_text_embd]."""
        p, k = self.cfg.patch_size, self.cfg.n_merge
        _, h, w = pixels.shape
        if h % (p * k) or w % (p * k):
            raise KvrunError(f"the vision encoder takes pixels in whole {p * k}-pixel blocks, got {w} x {h}")
        nx, ny = w // p, h // p
        if max(nx, ny) > self.pos.shape[1]:
            raise KvrunError(f"{self.path}: a picture {nx} x {ny} patches outgrows the {self.pos.shape[1]} learned positions")
        return _forward(ops_of(self, host=_HostOps), self, pixels)


def _forward(ops: Any, enc: Gemma4VEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`Gemma4VEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py, :class:`_HostOps`
    on the host; on the GPU the patches go up once and the rows come down once): the patches (2x - 1, F16) with the x
    and y tables' rows, the blocks (RMSNorms; per-head RMSNorms of Q and K, the unweighted one of V; each half of a
    head neox-roped, the first by the patch's column, the second by its row; unscaled attention; the post norms,
    SwiGLU-style GELU, the output scale), the post norm, then :func:`_project`; every product clamped where the file
    says (:func:`_mm`)."""
    c, xp = enc.cfg, ops.xp
    p, E, H = c.patch_size, c.n_embd, c.n_head
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    T, D = nx * ny, E // H
    x = (pixels * F32(2.0) - F32(1.0)).astype(F32)
    patches = np.ascontiguousarray(x.reshape(3, ny, p, nx, p).transpose(1, 3, 0, 2, 4).reshape(T, 3 * p * p))
    x = ops.matmul(patches, enc.patch_w, f16=True)  # (ggml's conv_2d: F16 patches and kernel)
    idx = np.arange(T)
    px, py = idx % nx, idx // nx
    x = x + ops.vector(enc.pos[0][px]) + ops.vector(enc.pos[1][py])
    cos, sin = (ops.vector(t) for t in rope_tables(px, py, D))

    def heads_norm(t: Any, w: np.ndarray) -> Any:  # (per head where the weight is a head wide, else over the row)
        return ops.rms_norm(t.reshape(T * H, D) if w.size == D else t.reshape(T, E), w, c.eps).reshape(T, H, D)

    for L in enc.layers:
        h = ops.rms_norm(x, L["ln1"], c.eps)
        q, k, v = (_mm(ops, enc, L[r], h).reshape(T, H, D) for r in ("q", "k", "v"))
        if L["q_norm"] is not None:
            q = heads_norm(q, L["q_norm"])
        if L["k_norm"] is not None:
            k = heads_norm(k, L["k_norm"])
        q, k = rope_turn(xp, q, cos, sin), rope_turn(xp, k, cos, sin)
        v = ops.rms_norm(v.reshape(T * H, D), None, c.eps).reshape(T, H, D)
        o = _mm(ops, enc, L["o"], ops.attend(q, k, v, F32(1.0)))
        if L["attn_post"] is not None:
            o = ops.rms_norm(o, L["attn_post"], c.eps)
        x = x + o
        h = ops.rms_norm(x, L["ln2"], c.eps)
        up = _mm(ops, enc, L["up"], h)
        f = ops.act(_mm(ops, enc, L["gate"], h), c.ffn_op) * up if L["gate"] is not None else ops.act(up, c.ffn_op)
        f = _mm(ops, enc, L["down"], f)
        if L["ffn_post"] is not None:
            f = ops.rms_norm(f, L["ffn_post"], c.eps)
        x = x + f
        if L["out_scale"] is not None:
            x = x * ops.const(L["out_scale"])
    if enc.post_ln is not None:
        x = ops.rms_norm(x, enc.post_ln, c.eps)
    return ops.to_host(_project(ops, enc, x, nx, ny))


def _mm(ops: Any, enc: Gemma4VEncoder, w: Any, x: Any) -> Any:
    """clip_graph_gemma4v's ``build_mm``: ``x @ w.T``, its input and output clamped where the file says."""
    b = enc.clamps.get(id(w))
    if b is not None:
        x = ops.xp.clip(x, F32(b[0]), F32(b[1]))
    y = ops.linear(w, x)
    return y if b is None else ops.xp.clip(y, F32(b[2]), F32(b[3]))


def _project(ops: Any, enc: Gemma4VEncoder, x: Any, nx: int, ny: int) -> Any:
    """The encoder's rows [nx * ny, E] pooled k x k (raster order), times sqrt(E), standardised, RMS-normed, projected
    into the text width."""
    c = enc.cfg
    x = ops.avg_pool(x, nx, ny, c.n_merge) * F32(math.sqrt(c.n_embd))
    if enc.std_bias is not None and enc.std_scale is not None:
        x = (x - ops.const(enc.std_bias)) * ops.const(enc.std_scale)
    return ops.xp.ascontiguousarray(_mm(ops, enc, enc.proj, ops.rms_norm(x, None, c.eps)), F32)
