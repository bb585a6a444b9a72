"""DeepSeek-OCR's image side: the SAM ViT-B image encoder feeding a CLIP-L ViT, then one projection, as llama.cpp's
clip.cpp builds them (``clip_graph_deepseekocr``, PROJECTOR_TYPE_DEEPSEEKOCR), read from an mmproj file
(loaders/mmproj.py).

A view (the picture padded to a 1024-pixel square, or a 640-pixel tile of it: runtime/vision_deepseekocr.py cuts
them) becomes rows of the text model's width:

    pixels [3, S, S] (normalised by image_mean/std)
    -> SAM: a 16-pixel patch convolution (+ bias) -> [S/16, S/16] patches, + learned positions ``v.sam.pos_embd``
       (64 x 64, ggml's bicubic interpolation to a tile's 40 x 40)
    -> SAM blocks: LayerNorm (eps 1e-6), attention with a fused QKV and SAM's decomposed relative positions (a query's
       dot product with the tables ``attn.pos_h`` / ``attn.pos_w`` at its offset from the key, added to the scaled
       scores), within 14 x 14 windows of the zero-padded grid except in layers 2, 5, 8, 11 (global: clip.cpp's fixed
       indices, the tables bilinearly resized where the grid is not 64), residual; LayerNorm, GELU MLP, residual
    -> the neck: 1x1 conv, LayerNorm over channels, 3x3 conv, LayerNorm; ``net_2`` and ``net_3``, 3x3 convs of stride
       2: [E_clip, S/64, S/64] (no biases)
    -> CLIP-L: those features are its patches (raster order), a CLS token first, + learned positions, pre-LayerNorm,
       pre-norm ViT blocks with GELU-quick (eps 1e-5); the CLS row dropped
    -> [CLIP's rows | SAM's features] side by side, ``mm.model.fc`` (+ bias) -> [(S/64)^2, n_text_embd]

The picture's layout (the rows ``v.image_newline`` after each grid row, ``v.view_seperator`` after the global view)
is :meth:`DeepseekOCREncoder.view_rows`.  Where a tile's grid is not the tables' size, what clip.cpp does is kept as
it runs in the oracle (llama.cpp's libmtmd 0.3.36): CLIP's position table read as it lays it out there, first
``(16*16)`` rows as a [n_embd, 256] image interpolated to [t, t, n_embd] and read back as rows, and its "CLS" row
the table's values from element 256 / (bytes an element) on (:func:`clip_tile_positions`).

The forward is written once against models/vit_ops.py's ops: on the CPU numpy on the host, the weight products on the
CPU backend's kernels in the file's format (an F16 weight's input rounded to F16, as ggml's), convolutions on F16
patches where the kernel is F16; beside a GPU text model the same steps on device arrays (models/vit_device.py), the
pixels and the picture's tables (positions, relative tables) up, the rows down once.
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
from .bert import layer_norm
from .common import TENSOR_NAMES, WeightLoader
from .siglip import MmprojEncoder, _f16, vit_layer
from .vit_ops import ops_of

F32 = np.float32
F16 = 1  # ggml's type id of float16

#: clip.cpp's fixed geometry for deepseekocr: 1024-pixel global views in 16-pixel patches, 640-pixel tiles, 2 to 9 of
#: them; SAM's global-attention layers; its LayerNorms' epsilon and CLIP's
IMAGE_SIZE, PATCH, TILE, MIN_TILES, MAX_TILES = 1024, 16, 640, 2, 9
GLOBAL_LAYERS = (2, 5, 8, 11)
SAM_EPS, CLIP_EPS = 1e-6, 1e-5

TENSOR_NAMES.update({  # (clip-impl.h's TN_SAM_*, TN_IMAGE_NEWLINE, TN_IMAGE_SEPERATOR, TN_MM_PROJECTOR)
    "sam_ln1": "v.sam.blk.{i}.pre_ln.weight", "sam_ln1_b": "v.sam.blk.{i}.pre_ln.bias",
    "sam_ln2": "v.sam.blk.{i}.post_ln.weight", "sam_ln2_b": "v.sam.blk.{i}.post_ln.bias",
    "sam_qkv": "v.sam.blk.{i}.attn.qkv.weight", "sam_qkv_b": "v.sam.blk.{i}.attn.qkv.bias",
    "sam_o": "v.sam.blk.{i}.attn.out.weight", "sam_o_b": "v.sam.blk.{i}.attn.out.bias",
    "sam_up": "v.sam.blk.{i}.mlp.lin1.weight", "sam_up_b": "v.sam.blk.{i}.mlp.lin1.bias",
    "sam_down": "v.sam.blk.{i}.mlp.lin2.weight", "sam_down_b": "v.sam.blk.{i}.mlp.lin2.bias",
    "v_pre_ln": "v.pre_ln.weight", "v_pre_ln_b": "v.pre_ln.bias",
    "dsocr_fc": "mm.model.fc.weight", "dsocr_fc_b": "mm.model.fc.bias",
})  # fmt: skip


# ---------------------------------------------------------------- ggml's interpolations


def _cubic(x: np.ndarray) -> tuple[np.ndarray, ...]:
    """ggml's bicubic weights (a = -0.75, PyTorch's) of the four taps around offset ``x``, float32."""
    a = F32(-0.75)

    def w1(t: np.ndarray) -> np.ndarray:
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def w2(t: np.ndarray) -> np.ndarray:
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    return w2(x + 1), w1(x), w1(1 - x), w2(2 - x)


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The source coordinate's floor and fraction for each of ``n_out`` outputs over ``n_in`` (ggml's half-pixel
    ``(i + 0.5) / sf - 0.5``, float32)."""
    sf = F32(n_out) / F32(n_in)
    x = (np.arange(n_out, dtype=F32) + F32(0.5)) / sf - F32(0.5)
    x0 = np.floor(x)
    return x0.astype(np.int64), (x - x0).astype(F32)


def bicubic(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """ggml_interpolate's GGML_SCALE_MODE_BICUBIC of ``img`` [..., H, W] to [..., h, w]: rows of four taps (edges
    clamped) across, then four such rows down, float32 as ggml's CPU sums them."""
    H, W = img.shape[-2:]
    y0, dy = _taps(H, h)
    x0, dx = _taps(W, w)
    wx, wy = _cubic(dx), _cubic(dy)
    img = img.astype(F32)
    rows = []
    for j in range(4):  # each of the four source rows, interpolated across
        r = img[..., np.clip(y0 + j - 1, 0, H - 1), :]
        acc = None
        for i in range(4):
            t = r[..., np.clip(x0 + i - 1, 0, W - 1)] * wx[i]
            acc = t if acc is None else acc + t
        rows.append(acc)
    out = None
    for j in range(4):
        t = rows[j] * wy[j][:, None]
        out = t if out is None else out + t
    return out.astype(F32)


def bilinear_1d(a: np.ndarray, n: int) -> np.ndarray:
    """ggml_interpolate's GGML_SCALE_MODE_BILINEAR of ``a`` [L, C] along its first axis to [n, C] (half-pixel, the
    two taps clamped to the ends, the fraction taken from the clamped left tap and kept in [0, 1])."""
    L = a.shape[0]
    sf = F32(n) / F32(L)
    x = (np.arange(n, dtype=F32) + F32(0.5)) / sf - F32(0.5)
    x0 = np.clip(np.floor(x).astype(np.int64), 0, L - 1)
    x1 = np.clip(np.floor(x).astype(np.int64) + 1, 0, L - 1)
    dx = np.clip(x - x0.astype(F32), 0, 1).astype(F32)[:, None]
    return (a[x0] * (1 - dx) + a[x1] * dx).astype(F32)


def rel_table(table: np.ndarray, size: int) -> np.ndarray:
    """SAM's relative position table for a ``size``-long axis, [size (query), size (key), C]: the table's row at
    ``q - k + size - 1``, the table first resized to 2*size-1 rows where it is another length (clip.cpp's
    ``get_rel_pos``)."""
    n = 2 * size - 1
    if table.shape[0] != n:
        table = bilinear_1d(table, n)
    idx = np.arange(size)[:, None] - np.arange(size)[None, :] + size - 1
    return table[idx]


# ---------------------------------------------------------------- convolutions


@dataclass
class Kernel:
    """A convolution kernel [out, in, k, k] as float32 and whether the file stores it in F16 (ggml then runs it on F16
    patches)."""

    w: np.ndarray
    f16: bool


def conv2d(x: np.ndarray, kern: Kernel, stride: int, pad: int) -> np.ndarray:
    """``x`` [C, H, W] convolved by ``kern`` (no bias), zero padding ``pad``, at ``stride``: [out, Ho, Wo]."""
    o, c, k, _ = kern.w.shape
    if x.shape[0] != c:  # (a kernel of the wrong width: a file that is not one DeepSeek-OCR projector)
        raise KvrunError(f"a kernel of shape {list(kern.w.shape)} meets {x.shape[0]} channels: the projector file is incomplete "
                         "or not a DeepSeek-OCR one")  # fmt: skip
    x = _f16(x) if kern.f16 else x.astype(F32, copy=False)
    if pad:
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    if k == 1 and stride == 1:
        _, h, w = x.shape
        return (kern.w.reshape(o, c) @ x.reshape(c, h * w)).reshape(o, h, w).astype(F32)
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    _, ho, wo = win.shape[:3]
    cols = np.ascontiguousarray(win.transpose(1, 2, 0, 3, 4)).reshape(ho * wo, c * k * k)
    return (cols @ kern.w.reshape(o, c * k * k).T).T.reshape(o, ho, wo).astype(F32)


def channel_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """LayerNorm over the channels of each pixel of ``x`` [C, H, W] (SAM's LayerNorm2d; eps 1e-6)."""
    return np.ascontiguousarray(layer_norm(x.transpose(1, 2, 0), w, b, SAM_EPS).transpose(2, 0, 1))


def _conv(ops: Any, x: Any, kern: Kernel, stride: int, pad: int) -> Any:
    """:func:`conv2d` on ``ops`` (models/vit_ops.py; the device's im2col rows times the kernel uploaded once)."""
    if x.shape[0] != kern.w.shape[1]:  # (a kernel of the wrong width: a file that is not one DeepSeek-OCR projector)
        raise KvrunError(f"a kernel of shape {list(kern.w.shape)} meets {x.shape[0]} channels: the projector file is incomplete "
                         "or not a DeepSeek-OCR one")  # fmt: skip
    return ops.conv2d(x, kern, stride, pad)


# ---------------------------------------------------------------- the encoder


def clip_tile_positions(table: np.ndarray, elem_size: int, n: int) -> np.ndarray:
    """CLIP's position rows [n*n + 1, E] for a grid of n x n patches other than the table's (a tile's), as clip.cpp
    builds them in the oracle: the table's first s*s rows (s = the table's side) taken as an image E wide and s*s high,
    bicubic-interpolated to n x n and repeated over E channels, that buffer read back as n*n rows of E; then the
    row of E values starting ``s*s`` bytes into the table (``elem_size`` bytes an element)."""
    E = table.shape[1]
    s = math.isqrt(table.shape[0] - 1)
    img = bicubic(table[: s * s], n, n)  # [n (y over the s*s rows), n (x over the E columns)]
    buf = np.broadcast_to(img[None], (E, n, n)).reshape(-1)  # ggml's [n, n, E] buffer, x fastest
    grid = buf.reshape(n * n, E)
    off = (s * s) // elem_size
    cls = table.reshape(-1)[off : off + E]
    return np.concatenate([grid, cls[None]]).astype(F32)


class DeepseekOCREncoder(MmprojEncoder):
    """DeepSeek-OCR's SAM and CLIP encoders and projector from an mmproj file: :meth:`encode` a view's pixels into
    its grid of rows, :meth:`view_rows` lays them out with the newline and separator rows."""

    #: whether ``__init__`` stops after SAM (a subclass loading its own encoder after it)
    sam_only = False

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        self.cfg, self.be, self.path = cfg, backend, g.path
        ld = WeightLoader(g, backend)

        def need(key: str) -> int:
            v = g.get(f"clip.vision.{key}")
            if v is None:
                raise KvrunError(f"{g.path}: clip.vision.{key} is missing; the DeepSeek-OCR projector file is incomplete")
            return int(v)

        self.sam_layers, self.sam_heads, self.sam_embd = need("sam.block_count"), need("sam.head_count"), need("sam.embedding_length")
        self.window = need("window_size")
        if self.sam_embd % self.sam_heads or self.window <= 0:
            raise KvrunError(f"{g.path}: inconsistent SAM hyperparameters (width {self.sam_embd}, heads {self.sam_heads}, window {self.window})")

        def tensor(name: str) -> np.ndarray:
            t = g.tensors.get(name)
            if t is None:
                raise KvrunError(f"{g.path}: tensor {name!r} is missing; the DeepSeek-OCR projector file is incomplete")
            return dequantize(t.data, t.qtype, t.shape).astype(F32).reshape(t.shape)

        def kernel(name: str) -> Kernel:
            a = tensor(name)
            return Kernel(a.reshape(a.shape[0], -1, *a.shape[-2:]) if a.ndim == 4 else a.reshape(a.shape[0], -1, 1, 1),
                          g.tensors[name].qtype == F16)  # fmt: skip

        E = self.sam_embd
        self.patch = kernel("v.sam.patch_embd.weight")
        self.patch_b = tensor("v.sam.patch_embd.bias").reshape(-1)
        n = IMAGE_SIZE // PATCH
        pos = tensor("v.sam.pos_embd.weight")
        if pos.size != n * n * E:
            raise KvrunError(f"{g.path}: v.sam.pos_embd.weight has shape {list(pos.shape)}, expected {[n, n, E]}")
        self.sam_pos = pos.reshape(n, n, E)
        self.sam = []
        for i in range(self.sam_layers):
            L: dict[str, Any] = {r: ld.host_vector(f"sam_{r}", i) for r in ("ln1", "ln1_b", "ln2", "ln2_b", "qkv_b", "o_b", "up_b", "down_b")}
            for r in ("qkv", "o", "up", "down"):
                L[r] = ld.matrix(f"sam_{r}", i)
            L["pos_h"], L["pos_w"] = tensor(f"v.sam.blk.{i}.attn.pos_h.weight"), tensor(f"v.sam.blk.{i}.attn.pos_w.weight")
            L["rel_f16"] = g.tensors[f"v.sam.blk.{i}.attn.pos_h.weight"].qtype == F16
            self.sam.append(L)
        self.neck = [kernel("v.sam.neck.0.weight"), kernel("v.sam.neck.2.weight")]
        self.neck_norm = [(tensor(f"v.sam.neck.{j}.weight").reshape(-1), tensor(f"v.sam.neck.{j}.bias").reshape(-1)) for j in (1, 3)]
        self.net = [kernel("v.sam.net_2.weight"), kernel("v.sam.net_3.weight")]
        if self.sam_only:  # (DeepSeek-OCR 2's encoder past SAM is its own: models/deepseekocr2_image.py)
            return
        # CLIP-L
        C = cfg.n_embd
        if self.net[1].w.shape[0] != C:
            raise KvrunError(f"{g.path}: v.sam.net_3.weight makes {self.net[1].w.shape[0]} channels, the CLIP encoder is {C} wide")
        self.cls = tensor("v.class_embd").reshape(-1)
        pt = g.tensors.get("v.position_embd.weight")
        self.clip_pos = tensor("v.position_embd.weight").reshape(-1, C)
        self.clip_pos_elem = 2 if pt is not None and pt.qtype == F16 else 4
        s = math.isqrt(self.clip_pos.shape[0] - 1)
        if s * s + 1 != self.clip_pos.shape[0]:
            raise KvrunError(f"{g.path}: v.position_embd.weight has {self.clip_pos.shape[0]} rows, not a square grid and the CLS token")
        self.pre_ln, self.pre_ln_b = ld.host_vector("v_pre_ln", required=False), ld.host_vector("v_pre_ln_b", required=False)
        self.layers = [vit_layer(ld, i) for i in range(cfg.n_layer)]
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        self.fc, self.fc_b = ld.matrix("dsocr_fc"), ld.host_vector("dsocr_fc_b")
        self.newline = tensor("v.image_newline").reshape(-1)
        self.view_sep = tensor("v.view_seperator").reshape(-1)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, S, S] (S 1024, a global view, or 640, a tile) -> the view's grid of rows
        [(S/64)^2, n_text_embd], raster order, no newlines."""
        if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.shape[1] != pixels.shape[2] or pixels.shape[1] % 64:
            raise KvrunError(f"the DeepSeek-OCR encoder takes pixels [3, S, S], S a multiple of 64, got {list(pixels.shape)}")
        return _forward(ops_of(self), self, pixels)

    def view_rows(self, grids: list[np.ndarray], overview: bool) -> np.ndarray:
        """The rows of one image libmtmd encodes: ``overview`` the global view's grid (one of ``grids``), each of its
        rows followed by ``v.image_newline``, then ``v.view_seperator``; else a row of tiles side by side, each grid row
        running across all of them, then ``v.image_newline``."""
        n = math.isqrt(grids[0].shape[0])
        E = grids[0].shape[1]
        g = np.stack([x.reshape(n, n, E) for x in grids], axis=1).reshape(n, len(grids) * n, E)  # [y, tile and x, E]
        rows = np.concatenate([g, np.broadcast_to(self.newline, (n, 1, E))], axis=1).reshape(-1, E)
        if overview:
            rows = np.concatenate([rows, self.view_sep[None]])
        return np.ascontiguousarray(rows, F32)


# ---------------------------------------------------------------- the forward, once for both devices (models/vit_ops.py)


def _sam_attention(ops: Any, enc: DeepseekOCREncoder, L: dict[str, Any], x: Any) -> Any:
    """Attention over ``x`` [B, h, w, E] (B windows, or one whole grid), each of the B attending within itself,
    SAM's relative positions added to the scaled scores (the tables built on the host, :func:`rel_table`)."""
    xp = ops.xp
    B, h, w, E = x.shape
    H = enc.sam_heads
    d = E // H
    T = h * w
    qkv = ops.linear(L["qkv"], x.reshape(B * T, E), L["qkv_b"]).reshape(B, T, 3, H, d)
    q, k, v = (xp.ascontiguousarray(qkv[:, :, j].transpose(0, 2, 1, 3)) for j in range(3))  # [B, H, T, d]
    rh, rw = rel_table(L["pos_h"], h), rel_table(L["pos_w"], w)  # [h, h, d], [w, w, d]
    out = ops.attend_rel(q, k, v, ops.vector(rh), ops.vector(rw), L["rel_f16"], F32(1.0 / math.sqrt(d)))
    a = out.transpose(0, 2, 1, 3).reshape(B * T, E)
    return ops.linear(L["o"], a, L["o_b"]).reshape(B, h, w, E)


def _sam_features(ops: Any, enc: DeepseekOCREncoder, pixels: np.ndarray) -> Any:
    """Normalised ``pixels`` [3, S, S] -> SAM's neck output [E_clip, S/64, S/64]."""
    xp = ops.xp
    S = pixels.shape[1]
    n = S // PATCH
    E = enc.sam_embd
    x = _conv(ops, ops.vector(pixels), enc.patch, PATCH, 0) + ops.const(enc.patch_b)[:, None, None]  # [E, n, n]
    x = xp.ascontiguousarray(x.transpose(1, 2, 0)).reshape(n * n, E)  # (rows of the grid, raster order)
    if n == enc.sam_pos.shape[0]:
        pos = ops.const(enc.sam_pos)
    else:
        pos = ops.vector(bicubic(enc.sam_pos.transpose(2, 0, 1), n, n).transpose(1, 2, 0))
    x = x + pos.reshape(n * n, E)
    ws = enc.window
    for i, L in enumerate(enc.sam):
        h = ops.layer_norm(x, L["ln1"], L["ln1_b"], SAM_EPS).reshape(n, n, E)
        if i in GLOBAL_LAYERS:
            a = _sam_attention(ops, enc, L, h[None])[0]
        else:  # windows of the grid padded with zeros to whole windows, row by row (clip.cpp's window_partition)
            p = (ws - n % ws) % ws
            hp = xp.pad(h, ((0, p), (0, p), (0, 0)))
            m = (n + p) // ws
            win = hp.reshape(m, ws, m, ws, E).transpose(0, 2, 1, 3, 4).reshape(m * m, ws, ws, E)
            a = _sam_attention(ops, enc, L, win).reshape(m, m, ws, ws, E).transpose(0, 2, 1, 3, 4).reshape(n + p, n + p, E)[:n, :n]
        x = x + a.reshape(n * n, E)
        h = ops.layer_norm(x, L["ln2"], L["ln2_b"], SAM_EPS)
        x = x + ops.linear(L["down"], ops.act(ops.linear(L["up"], h, L["up_b"]), "gelu"), L["down_b"])
    x = xp.ascontiguousarray(x.reshape(n, n, E).transpose(2, 0, 1))  # [E, n, n]
    x = ops.channel_norm(_conv(ops, x, enc.neck[0], 1, 0), *enc.neck_norm[0], SAM_EPS)
    x = ops.channel_norm(_conv(ops, x, enc.neck[1], 1, 1), *enc.neck_norm[1], SAM_EPS)
    return _conv(ops, _conv(ops, x, enc.net[0], 2, 1), enc.net[1], 2, 1)


def _forward(ops: Any, enc: DeepseekOCREncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`DeepseekOCREncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels and the picture's tables go up, the rows come down once): SAM, CLIP, the projector."""
    c, xp = enc.cfg, ops.xp
    sam = _sam_features(ops, enc, pixels)  # [C, n, n]
    C, n, _ = sam.shape
    sam_rows = xp.ascontiguousarray(sam.reshape(C, n * n).T)
    s = math.isqrt(enc.clip_pos.shape[0] - 1)
    pos = ops.const(enc.clip_pos) if n == s else ops.vector(clip_tile_positions(enc.clip_pos, enc.clip_pos_elem, n))
    x = xp.concatenate([ops.const(enc.cls).reshape(1, -1), sam_rows]) + pos
    if enc.pre_ln is not None:
        x = ops.layer_norm(x, enc.pre_ln, enc.pre_ln_b, CLIP_EPS)
    H = c.n_head
    D = C // H
    T = x.shape[0]
    scale = F32(1.0 / math.sqrt(D))
    for L in enc.layers:
        h = ops.layer_norm(x, L["ln1"], L["ln1_b"], CLIP_EPS)
        q, k, v = (ops.linear(L[r], h, L[r + "_b"]).reshape(T, H, D) for r in ("q", "k", "v"))
        x = x + ops.linear(L["o"], ops.attend(q, k, v, scale), L["o_b"])
        h = ops.layer_norm(x, L["ln2"], L["ln2_b"], CLIP_EPS)
        x = x + ops.linear(L["down"], ops.act(ops.linear(L["up"], h, L["up_b"]), "gelu_quick"), L["down_b"])
    if enc.post_ln is not None:
        x = ops.layer_norm(x, enc.post_ln, enc.post_ln_b, CLIP_EPS)
    return ops.to_host(ops.linear(enc.fc, xp.concatenate([x[1:], sam_rows], axis=1), enc.fc_b))
