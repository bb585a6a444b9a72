"""Gemma 3n's image side (projector type "gemma3nv"): the MobileNetV5 encoder and Gemma 3n's embed_vision projection,
as llama.cpp's clip.cpp builds them (``clip_graph_mobilenetv5``, tools/mtmd/models/mobilenetv5.cpp) from an mmproj
file (loaders/mmproj.py).

A picture is resized to the file's square ``image_size`` (768 for Gemma 3n) by libmtmd's fixed-size preprocessor
(Gemma 3's: models/siglip.py's :func:`~.siglip.preprocess`), normalised by the file's image_mean/std (Gemma 3n's: 0
and 1), and becomes 256 rows:

    pixels [3, S, S] -> stem: 3x3 stride-2 conv (TF "SAME" padding, the extra row and column at the bottom right),
       its bias, RMSNorm2d, GELU
    -> the blocks of 4 stages (``v.blk.<stage>.<block>.*``), each stage's first block at stride 2:
       edge residual (``conv_exp`` 3x3, RMSNorm2d, GELU, ``conv_pwl`` 1x1, RMSNorm2d; + input at stride 1),
       universal inverted residual (optional depthwise ``dw_start`` (stride 1), ``pw_exp`` 1x1 + RMSNorm2d + GELU,
       optional depthwise ``dw_mid`` (the stride; SAME padding at 2) + RMSNorm2d + GELU, ``pw_proj`` 1x1 + RMSNorm2d,
       ``layer_scale``; + input where shape and width allow), or multi-query attention (RMSNorm2d; Q a 1x1 conv of
       n_head x D channels; K and V one head of D each, from the input downsampled by a depthwise 3x3 stride-2 conv
       and RMSNorm2d where the file has ``down_conv``; softmax(QK^T / sqrt(D)) V; the ``output`` 1x1 conv;
       ``layer_scale`` and + input where the width is kept)
    -> the multi-scale fusion adapter (MSFA): the outputs of stages 2 and 3, the smaller upsampled (nearest) to
       the larger and concatenated by channel; ``pw_exp`` 1x1 + RMSNorm2d + GELU, ``pw_proj`` 1x1 + RMSNorm2d;
       average pooling down to 16 x 16 (where wider); RMSNorm2d ``v.msfa.norm``
    -> rows in raster order, times sqrt(n_embd), RMSNorm times ``mm.soft_emb_norm``, ``mm.input_projection``,
       RMSNorm without a weight -> [256, n_text_embd]

RMSNorm2d normalises each pixel over its channels (eps 1e-6 everywhere, as the graph's).  Stage starts and the
fusion points follow the graph: block ``i`` is at stride 2 where it begins a stage (the first block, or one after a
stage's last); features are taken at the ends of stages 2 and 3 (with fewer than 4 stages, after the last block).

ggml's CPU numerics are followed where they show: every F16 kernel multiplies an F16 copy of its input (conv_2d's
patches, the depthwise conv's F16 im2col, mul_mat's F16 activations), F32 kernels (the stem, as the converter
stores it) an F32 one; GELU is ggml's F16 table (models/bert.py's :func:`~.bert.gelu`).  libmtmd 0.3.36 runs only
F16 depthwise kernels on the CPU (an F32 file aborts in ggml's scheduler), as the converter writes them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig, open_mmproj
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .siglip import _f16, preprocess as _fixed_size
from .vit_ops import ops_of

F32 = np.float32
EPS = 1e-6  # every RMSNorm2d's and the embedder's (the graph's constants)
N_ROWS_SIDE = 16  # the MSFA's output resolution (MobileNetV5's output_resolution): 256 rows a picture
STAGES = 4  # clip.cpp looks for blocks in stages 0..3


def n_rows(cfg: MmprojConfig) -> int:
    """Rows (context positions) a picture becomes: clip.cpp's image_size / patch_size (the converter writes
    patch_size = image_size / 256), which the graph's 16 x 16 MSFA output matches."""
    return cfg.image_size // cfg.patch_size


def preprocess(img: Any, cfg: MmprojConfig) -> np.ndarray:
    """An RGB picture -> normalised pixels [3, S, S] (libmtmd's fixed-size preprocessor, as Gemma 3's)."""
    return _fixed_size(img, cfg)


@dataclass
class Kernel:
    """A convolution kernel [out, in/groups, kh, kw] as float32, and whether ggml multiplies it in F16."""

    w: np.ndarray
    f16: bool

    @property
    def k(self) -> int:
        return self.w.shape[-1]


@dataclass
class Block:
    """One MobileNetV5 block; its kind follows from which tensors the file has (clip.cpp's order of checks)."""

    name: str
    tensors: dict[str, Any]

    @property
    def kind(self) -> str:
        t = self.tensors
        return "edge" if t.get("conv_exp") is not None else "attn" if t.get("attn_q") is not None else "uir"


def same_split(n: int, k: int, stride: int) -> tuple[int, int]:
    """``Conv2dSame``'s padding of an axis n long: the total the output ceil(n / stride) needs, half before (rounded
    down), the rest after."""
    total = max(0, (-(-n // stride) - 1) * stride + k - n)
    return total // 2, total - total // 2


def pad_same(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """TF/PyTorch ``Conv2dSame`` padding of ``x`` [C, H, W] for a k x k kernel at ``stride``: the total the output
    ceil(H / stride) needs, half before (rounded down), the rest after (clip.cpp's ``pad_same_2d``)."""
    _, h, w = x.shape
    (t, b), (lft, r) = same_split(h, k, stride), same_split(w, k, stride)
    return np.pad(x, ((0, 0), (t, b), (lft, r))) if t or b or lft or r else x


def windows(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """The k x k windows of the padded ``x`` [C, H, W] at ``stride``: a view [C, Ho, Wo, k, k]."""
    v = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))
    return v[:, ::stride, ::stride]


def conv(x: np.ndarray, kern: Kernel, stride: int = 1, pad: int | None = None, depthwise: bool = False) -> np.ndarray:
    """``x`` [C, H, W] convolved by ``kern`` (no bias): symmetric zero padding ``pad`` (None: SAME padding for the
    stride), a full or a depthwise convolution; ggml's F16 products where the kernel is F16."""
    k = kern.k
    if x.shape[0] != (kern.w.shape[0] if depthwise else kern.w.shape[1]):  # (a tensor missing breaks the chain of widths)
        raise KvrunError(f"a kernel of shape {list(kern.w.shape)} meets {x.shape[0]} channels: the projector file is "
                         "incomplete or not a Gemma 3n one")  # fmt: skip
    x = _f16(x) if kern.f16 else x.astype(F32, copy=False)
    if k == 1 and stride == 1 and not depthwise:  # (a pointwise conv: one product)
        c, h, w = x.shape
        return (kern.w.reshape(kern.w.shape[0], c) @ x.reshape(c, h * w)).reshape(-1, h, w).astype(F32)
    x = pad_same(x, k, stride) if pad is None else np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    win = windows(x, k, stride)
    if depthwise:
        return np.einsum("chwij,cij->chw", win, kern.w[:, 0], optimize=True).astype(F32)
    return np.einsum("chwij,ocij->ohw", win, kern.w, optimize=True).astype(F32)


def rms_norm_2d(x: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """Each pixel of ``x`` [C, H, W] RMS-normalised over its channels (the mean square in float64, as ggml's), times
    the per-channel ``w`` where given."""
    ms = np.mean(np.square(x, dtype=np.float64), axis=0, keepdims=True)
    y = (x * (1.0 / np.sqrt(ms + EPS)).astype(F32)).astype(F32)
    return y * w[:, None, None] if w is not None else y


def rms_norm(x: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """RMSNorm over the last axis of rows ``x`` [T, n]."""
    ms = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
    y = (x * (1.0 / np.sqrt(ms + EPS)).astype(F32)).astype(F32)
    return y * w if w is not None else y


class Gemma3nVisionEncoder:
    """Gemma 3n's MobileNetV5 and embedder from an mmproj file: :meth:`encode` pixels into 256 rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        self.cfg, self.be, self.path = cfg, backend, g.path

        def tensor(name: str, required: bool = False) -> np.ndarray | None:
            t = g.tensors.get(name)
            if t is None:
                if required:
                    raise KvrunError(f"{g.path}: tensor {name!r} is missing; the projector file is incomplete")
                return None
            return dequantize(t.data, t.qtype, t.shape).astype(F32).reshape(t.shape)

        def kernel(name: str, required: bool = False) -> Kernel | None:
            a = tensor(name, required)
            if a is None:
                return None
            if a.ndim != 4:  # (a 1x1 conv may be stored [out, in]: clip.cpp reads the kernel's own shape)
                a = a.reshape(a.shape[0], -1, 1, 1)
            return Kernel(a, g.tensors[name].qtype != 0)

        def vec(name: str) -> np.ndarray | None:
            a = tensor(name)
            return None if a is None else a.reshape(-1)

        self.stem = kernel("v.conv_stem.conv.weight", True)
        self.stem_b, self.stem_norm = vec("v.conv_stem.conv.bias"), vec("v.conv_stem.bn.weight")
        self.blocks: list[Block] = []
        self.stage_ends: list[int] = []
        for s in range(STAGES):  # (clip.cpp's dynamic loading: blocks until the first index a stage lacks)
            n0 = len(self.blocks)
            for j in range(10_000):
                p = f"v.blk.{s}.{j}."
                t: dict[str, Any] = {"conv_exp": kernel(p + "conv_exp.weight")}
                if t["conv_exp"] is not None:
                    t.update(bn1=vec(p + "bn1.weight"), conv_pwl=kernel(p + "conv_pwl.weight", True), bn2=vec(p + "bn2.weight"))
                else:
                    t.update(dw_start=kernel(p + "dw_start.conv.weight"), pw_exp=kernel(p + "pw_exp.conv.weight"))
                    if t["dw_start"] is not None or t["pw_exp"] is not None:
                        t.update(dw_start_bn=vec(p + "dw_start.bn.weight"), pw_exp_bn=vec(p + "pw_exp.bn.weight"),
                                 dw_mid=kernel(p + "dw_mid.conv.weight"), dw_mid_bn=vec(p + "dw_mid.bn.weight"),
                                 pw_proj=kernel(p + "pw_proj.conv.weight"), pw_proj_bn=vec(p + "pw_proj.bn.weight"))  # fmt: skip
                t["attn_q"] = kernel(p + "attn.query.proj.weight")
                if t["attn_q"] is not None:
                    t.update(attn_k=kernel(p + "attn.key.proj.weight", True), attn_v=kernel(p + "attn.value.proj.weight", True),
                             attn_o=kernel(p + "attn.output.proj.weight", True),
                             k_dw=kernel(p + "attn.key.down_conv.weight"), k_norm=vec(p + "attn.key.norm.weight"),
                             v_dw=kernel(p + "attn.value.down_conv.weight"), v_norm=vec(p + "attn.value.norm.weight"),
                             attn_norm=vec(p + "norm.weight"))  # fmt: skip
                if all(v is None for v in t.values()):
                    break
                t["layer_scale"] = vec(p + "layer_scale.gamma")
                self.blocks.append(Block(p[:-1], t))
            if len(self.blocks) > n0:
                self.stage_ends.append(len(self.blocks) - 1)
        if not self.blocks:
            raise KvrunError(f"{g.path}: no MobileNetV5 blocks (v.blk.<stage>.<block>.*); not a Gemma 3n projector file")
        self.msfa_exp, self.msfa_exp_bn = kernel("v.msfa.ffn.pw_exp.conv.weight"), vec("v.msfa.ffn.pw_exp.bn.weight")
        self.msfa_proj, self.msfa_proj_bn = kernel("v.msfa.ffn.pw_proj.conv.weight"), vec("v.msfa.ffn.pw_proj.bn.weight")
        self.msfa_norm = vec("v.msfa.norm.weight")
        self.soft_emb_norm = vec("mm.soft_emb_norm.weight")
        if self.soft_emb_norm is None:
            raise KvrunError(f"{g.path}: tensor 'mm.soft_emb_norm.weight' is missing; the projector file is incomplete")
        proj = g.tensor("mm.input_projection.weight")
        self.proj = dequantize(proj.data, proj.qtype, proj.shape).astype(F32).reshape(-1, cfg.n_embd)  # [n_text, E]
        self.proj_f16 = proj.qtype != 0
        if self.proj.shape[0] != cfg.n_text_embd:
            raise KvrunError(f"{g.path}: mm.input_projection.weight has shape {proj.shape}, expected ({cfg.n_text_embd}, {cfg.n_embd})")

    @classmethod
    def load(cls, path: str | os.PathLike, backend: Backend) -> Gemma3nVisionEncoder:
        g, cfg = open_mmproj(path)
        return cls(g, cfg, backend)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, S, S] (:func:`preprocess`) -> the picture's rows [256, n_text_embd]."""
        c = self.cfg
        if pixels.shape != (3, c.image_size, c.image_size):
            raise KvrunError(f"the Gemma 3n vision encoder takes pixels [3, {c.image_size}, {c.image_size}], got {list(pixels.shape)}")
        return _forward(ops_of(self), self, pixels)


# ---------------------------------------------------------------- the forward, once for both devices (models/vit_ops.py)


def _edge_residual(ops: Any, x: Any, t: dict[str, Any], stride: int) -> Any:
    y = ops.mobilenet_conv(x, t["conv_exp"], stride, None if stride == 2 else 1)  # (stride 2: SAME padding; else 1 a side)
    if t["bn1"] is not None:
        y = ops.rms_norm_2d(y, t["bn1"], EPS)
    y = ops.mobilenet_conv(ops.act(y, "gelu"), t["conv_pwl"])
    if t["bn2"] is not None:
        y = ops.rms_norm_2d(y, t["bn2"], EPS)
    return y + x if stride == 1 and y.shape[0] == x.shape[0] and y.shape[2] == x.shape[2] else y


def _inverted_residual(ops: Any, x: Any, t: dict[str, Any], stride: int) -> Any:
    y = x
    if t["dw_start"] is not None:  # (always stride 1)
        y = ops.mobilenet_conv(y, t["dw_start"], 1, t["dw_start"].k // 2, depthwise=True)
        if t["dw_start_bn"] is not None:
            y = ops.rms_norm_2d(y, t["dw_start_bn"], EPS)
    if t["pw_exp"] is not None:
        y = ops.mobilenet_conv(y, t["pw_exp"])
        if t["pw_exp_bn"] is not None:
            y = ops.rms_norm_2d(y, t["pw_exp_bn"], EPS)
        y = ops.act(y, "gelu")
    if t["dw_mid"] is not None:  # (where a stage downsamples: SAME padding at stride 2)
        k = t["dw_mid"].k
        y = ops.mobilenet_conv(y, t["dw_mid"], stride, None if stride > 1 else k // 2, depthwise=True)
        if t["dw_mid_bn"] is not None:
            y = ops.rms_norm_2d(y, t["dw_mid_bn"], EPS)
        y = ops.act(y, "gelu")
    if t["pw_proj"] is not None:
        y = ops.mobilenet_conv(y, t["pw_proj"])
        if t["pw_proj_bn"] is not None:
            y = ops.rms_norm_2d(y, t["pw_proj_bn"], EPS)
    if t["layer_scale"] is not None:
        y = y * ops.const(t["layer_scale"])[:, None, None]
    return y + x if y.shape == x.shape else y


def _attention(ops: Any, x: Any, t: dict[str, Any]) -> Any:
    """Multi-query attention over the pixels: n_head query heads, one key and value head (downsampled)."""
    xp = ops.xp
    h = ops.rms_norm_2d(x, t["attn_norm"], EPS) if t["attn_norm"] is not None else x
    q = ops.mobilenet_conv(h, t["attn_q"])
    kv = []
    for dw, norm, proj in ((t["k_dw"], t["k_norm"], t["attn_k"]), (t["v_dw"], t["v_norm"], t["attn_v"])):
        s = h
        if dw is not None:  # (Conv2dSame, stride 2, depthwise)
            s = ops.mobilenet_conv(s, dw, 2, None, depthwise=True)
            if norm is not None:
                s = ops.rms_norm_2d(s, norm, EPS)
        kv.append(ops.mobilenet_conv(s, proj))
    k, v = kv
    D = k.shape[0]
    C, H, W = q.shape
    n_head = C // D
    qh = q.reshape(n_head, D, H * W).transpose(0, 2, 1)  # [heads, N, D] (channel = head * D + d)
    km, vm = k.reshape(D, -1), v.reshape(D, -1)  # [D, M]
    sc = (qh @ km) * F32(1.0 / math.sqrt(D))  # [heads, N, M]
    sc = xp.exp(sc - sc.max(axis=-1, keepdims=True))
    sc /= sc.sum(axis=-1, keepdims=True)
    o = (sc @ vm.T).transpose(0, 2, 1).reshape(n_head * D, H, W).astype(F32)  # [heads * D, H, W]
    y = ops.mobilenet_conv(o, t["attn_o"])
    if y.shape[2] == x.shape[2] and y.shape[0] == x.shape[0]:
        if t["layer_scale"] is not None:
            y = y * ops.const(t["layer_scale"])[:, None, None]
        y = y + x
    return y


def _features(ops: Any, enc: Gemma3nVisionEncoder, pixels: np.ndarray) -> Any:
    """Normalised ``pixels`` [3, S, S] -> the MSFA's output [n_embd, 16, 16] (the backbone and the fusion)."""
    xp = ops.xp
    x = ops.mobilenet_conv(ops.vector(pixels.astype(F32)), enc.stem, 2, None)
    if enc.stem_b is not None:
        x = x + ops.const(enc.stem_b)[:, None, None]
    if enc.stem_norm is not None:
        x = ops.rms_norm_2d(x, enc.stem_norm, EPS)
    x = ops.act(x, "gelu")
    ends = enc.stage_ends
    starts = {0} | {e + 1 for e in ends}
    fuse = set(ends[2:4]) if len(ends) >= 4 else {len(enc.blocks) - 1}
    taken = []
    for i, b in enumerate(enc.blocks):
        stride = 2 if i in starts else 1
        kind = b.kind
        if kind == "edge":
            x = _edge_residual(ops, x, b.tensors, stride)
        elif kind == "attn":
            x = _attention(ops, x, b.tensors)
        else:
            x = _inverted_residual(ops, x, b.tensors, stride)
        if i in fuse:
            taken.append(x)
    hw, hh = taken[0].shape[2], taken[0].shape[1]
    parts = []
    for f in taken:  # (the smaller maps upsampled, nearest, to the first's size: whole factors, as ggml_upscale)
        if f.shape[2] < hw or f.shape[1] < hh:
            if hw % f.shape[2]:
                raise KvrunError(f"{enc.path}: fusion maps {hw} and {f.shape[2]} wide are not whole multiples")
            s = hw // f.shape[2]
            f = xp.repeat(xp.repeat(f, s, axis=1), s, axis=2)
        parts.append(f)
    x = xp.concatenate(parts, axis=0)
    if enc.msfa_exp is not None:
        x = ops.mobilenet_conv(x, enc.msfa_exp)
        if enc.msfa_exp_bn is not None:
            x = ops.rms_norm_2d(x, enc.msfa_exp_bn, EPS)
        x = ops.act(x, "gelu")
    if enc.msfa_proj is not None:
        x = ops.mobilenet_conv(x, enc.msfa_proj)
        if enc.msfa_proj_bn is not None:
            x = ops.rms_norm_2d(x, enc.msfa_proj_bn, EPS)
    w = x.shape[2]
    if w > N_ROWS_SIDE:  # (average pooling, kernel = stride = w / 16)
        if w % N_ROWS_SIDE:
            raise KvrunError(f"{enc.path}: the fused map is {w} wide, not a whole multiple of {N_ROWS_SIDE}")
        s = w // N_ROWS_SIDE
        c, h, _ = x.shape
        x = x[:, : h // s * s].reshape(c, h // s, s, w // s, s).mean(axis=(2, 4), dtype=xp.float64).astype(F32)
    if enc.msfa_norm is not None:
        x = ops.rms_norm_2d(x, enc.msfa_norm, EPS)
    return x


def _forward(ops: Any, enc: Gemma3nVisionEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`Gemma3nVisionEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU
    the pixels go up once, the rows come down once)."""
    c, xp = enc.cfg, ops.xp
    x = _features(ops, enc, pixels)
    E = x.shape[0]
    if E != c.n_embd:
        raise KvrunError(f"{enc.path}: the encoder makes {E} channels and the file says {c.n_embd}")
    if x.shape[1] * x.shape[2] != n_rows(c):  # (a fused map under 16 x 16: libmtmd would count rows it does not make)
        raise KvrunError(f"{enc.path}: the encoder makes {x.shape[1]} x {x.shape[2]} rows and the file counts {n_rows(c)}")
    rows = x.reshape(E, -1).T * F32(math.sqrt(E))  # (raster order: row by row of the 16 x 16 map)
    rows = ops.rms_norm_scaled(rows, enc.soft_emb_norm, EPS)
    out = ops.product(rows, enc.proj, enc.proj_f16)  # (an F16 weight times an F16 copy of the activations, as ggml's)
    return ops.to_host(xp.ascontiguousarray(ops.rms_norm_scaled(out, None, EPS), F32))
