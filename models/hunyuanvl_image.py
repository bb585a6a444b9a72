"""HunyuanOCR's and Hunyuan-VL's image side (its ViT and the perceiver projector), as llama.cpp 0.3.36's clip.cpp builds
it (``clip_graph_hunyuanvl`` for PROJECTOR_TYPE_HUNYUANVL) from an mmproj file (loaders/mmproj.py).

The picture keeps (about) its own size and aspect, as libmtmd's dynamic-size preprocessor sizes it: its sides rounded
to whole 2x2 blocks of patches and scaled, if need be, into ``image_min_pixels`` .. ``image_max_pixels`` (the file's,
else clip.cpp's 256 to 16384 blocks' worth; Hugging Face's ``smart_resize``: models/qwen2vl_image.py's
:func:`~kvrun.models.qwen2vl_image.smart_size`), then stretched to exactly that size (no padding) with clip.cpp's
port of Pillow's Lanczos-3.  Its rows:

    pixels [3, H, W] -> patches of p x p embedded by the patch kernel (F16, as ggml's conv_2d) + bias, raster order
    -> + the learned position grid (a square; the converter drops its CLS row) resized to the picture's patches on the
       CPU (clip.cpp fills the graph input ``hunyuanvl_pos_embd``: Hugging Face's bilinear with a scale factor of
       (n + 0.1) / side, :func:`resize_positions`)
    -> n_layer pre-norm ViT blocks without rope: LayerNorm, attention with biases, residual; LayerNorm, GELU MLP,
       residual -> ``v.post_ln`` where the file has one
    -> RMSNorm ``mm.pre_norm`` -> the 2x2 conv ``mm.0`` of stride 2 (+ bias), GELU, the 1x1 conv ``mm.2`` (+ bias):
       one column a 2x2 block
    -> each row of blocks followed by ``v.image_newline`` -> ``mm.model.fc`` (+ bias) into the text width
    -> ``mm.image_begin`` first and ``mm.image_end`` last -> RMSNorm ``mm.post_norm``
    -> [1 + ny (nx + 1) + 1, n_text_embd]

ggml's CPU numerics are followed where they show, as models/siglip.py does.  runtime/vision_hunyuanvl.py lays the rows
out and gives them their XD-RoPE positions (models/hunyuan_vl.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import TENSOR_NAMES
from .pillow_resize import LANCZOS, resize_axes
from .qwen2vl_image import QUERY_CHUNK, smart_size
from .siglip import F16, MmprojEncoder, _f16, embed_patches, vit_block, vit_layer
from .vit_ops import ops_of

F32 = np.float32
TENSOR_NAMES.update({"hv_fc": "mm.model.fc.weight"})  # (Hunyuan-VL's projection into the text width: clip.cpp's TN_MM_PROJECTOR)


def target_size(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(width, height) a picture is stretched to: sides whole blocks of 2x2 patches, within the pixel limits."""
    return smart_size(width, height, cfg.patch_size * cfg.n_merge, cfg)


def grid(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(nx, ny): the merged blocks a width x height picture becomes, a side (its rows: 1 + ny (nx + 1) + 1)."""
    w, h = target_size(width, height, cfg)
    f = cfg.patch_size * cfg.n_merge
    return w // f, h // f


def n_rows(nx: int, ny: int) -> int:
    """Rows of a picture of nx x ny blocks: the begin row, each row of blocks and its newline, the end row."""
    return 1 + ny * (nx + 1) + 1


def preprocess(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> normalised pixels [3, H, W] float32 at :func:`target_size` (Lanczos, stretched)."""
    w, h = target_size(img.shape[1], img.shape[0], cfg)
    a = resize_axes(img, w, h, LANCZOS).astype(F32) / F32(255.0)
    mean, std = np.asarray(cfg.image_mean, F32), np.asarray(cfg.image_std, F32)
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1), F32)


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of Hugging Face's resize of Hunyuan-VL's position grid, as clip.cpp 0.3.36 fills
    ``hunyuanvl_pos_embd``: PyTorch's bilinear (align_corners False) with the scale factor (n_out + 0.1) / n_in, so
    output i samples input ``(i + 0.5) n_in / (n_out + 0.1) - 0.5`` (clamped at 0; the upper neighbour at the
    edge), not quite the plain resize's (i + 0.5) n_in / n_out - 0.5: a grid of the picture's own size moves too."""
    w = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        x = max((i + 0.5) * n_in / (n_out + 0.1) - 0.5, 0.0)
        x0 = min(int(math.floor(x)), n_in - 1)
        x1 = min(x0 + 1, n_in - 1)
        t = x - x0
        w[i, x0] += 1.0 - t
        w[i, x1] += t
    return w


def resize_positions(pos: np.ndarray, side: int, nx: int, ny: int) -> np.ndarray:
    """A square grid of position embeddings [side*side, E] (raster order) resized to nx x ny patches [ny*nx, E]
    (:func:`_bilinear_weights` along each axis; measured: 8e-7 off the oracle's, the plain resize 0.4)."""
    g = pos.reshape(side, side, -1).astype(np.float64)
    g = np.einsum("yi,ixe->yxe", _bilinear_weights(side, ny), g)
    g = np.einsum("xj,yje->yxe", _bilinear_weights(side, nx), g)
    return np.ascontiguousarray(g.reshape(ny * nx, -1), F32)


class HunyuanVLEncoder(MmprojEncoder):
    """Hunyuan-VL's vision encoder and perceiver projector from an mmproj file: :meth:`encode` pixels of any
    block-aligned size into the picture's rows, its begin and end rows and newlines included."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend, patches=False)  # (the patch kernel's own checks below)
        E, p, m = cfg.n_embd, cfg.patch_size, cfg.n_merge
        pt = self._need(g, "v.patch_embd.weight")
        if pt.n_elements != E * 3 * p * p:
            raise KvrunError(f"{g.path}: v.patch_embd.weight has shape {pt.shape}, expected {(E, 3, p, p)}")
        self.patch_w = _f16(dequantize(pt.data, pt.qtype, pt.shape).reshape(E, 3 * p * p).astype(F32))
        self.patch_b = self._vector(g, "v.patch_embd.bias")
        pos = self._need(g, "v.position_embd.weight")
        side = math.isqrt(pos.n_elements // E)
        if side * side * E != pos.n_elements:
            raise KvrunError(f"{g.path}: v.position_embd.weight holds {pos.n_elements // E} positions, not a square grid")
        self.pos_embd, self.pos_side = dequantize(pos.data, pos.qtype, pos.shape).reshape(side * side, E).astype(F32), side
        self.layers = [vit_layer(ld, i) for i in range(cfg.n_layer)]
        self.post_ln, self.post_ln_b = self._vector(g, "v.post_ln.weight"), self._vector(g, "v.post_ln.bias")
        self.pre_norm = self._need_vector(g, "mm.pre_norm.weight", E)
        c0 = self._need(g, "mm.0.weight")
        oc1 = c0.n_elements // (E * m * m)
        if oc1 * E * m * m != c0.n_elements:
            raise KvrunError(f"{g.path}: mm.0.weight has shape {c0.shape}, not a {m}x{m} kernel over {E} channels")
        self.conv0 = dequantize(c0.data, c0.qtype, c0.shape).reshape(oc1, E * m * m).astype(F32)
        self.conv0_f16, self.conv0_b = c0.qtype == F16, self._vector(g, "mm.0.bias")
        c2 = self._need(g, "mm.2.weight")
        oc2 = c2.n_elements // oc1
        if oc2 * oc1 != c2.n_elements:
            raise KvrunError(f"{g.path}: mm.2.weight has shape {c2.shape}, not a 1x1 kernel over {oc1} channels")
        self.conv2 = dequantize(c2.data, c2.qtype, c2.shape).reshape(oc2, oc1).astype(F32)
        self.conv2_f16, self.conv2_b = c2.qtype == F16, self._vector(g, "mm.2.bias")
        self.newline = self._need_vector(g, "v.image_newline", oc2)
        self._need(g, "mm.model.fc.weight")
        self.fc, self.fc_b = ld.matrix("hv_fc"), self._vector(g, "mm.model.fc.bias")
        if self.fc.shape[1] != oc2:
            raise KvrunError(f"{g.path}: mm.model.fc.weight takes {self.fc.shape[1]} inputs, not the {oc2} of mm.2")
        T = cfg.n_text_embd
        self.begin, self.end = self._need_vector(g, "mm.image_begin", T), self._need_vector(g, "mm.image_end", T)
        self.post_norm = self._need_vector(g, "mm.post_norm.weight", T)

    @staticmethod
    def _need(g: GGUFFile, name: str):
        t = g.tensors.get(name)
        if t is None:
            raise KvrunError(f"{g.path}: tensor {name!r} is missing; the Hunyuan-VL projector file is incomplete")
        return t

    @classmethod
    def _need_vector(cls, g: GGUFFile, name: str, n: int) -> np.ndarray:
        t = cls._need(g, name)
        if t.n_elements != n:
            raise KvrunError(f"{g.path}: {name} has {t.n_elements} values where {n} were expected")
        return dequantize(t.data, t.qtype, t.shape).reshape(-1).astype(F32)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (:func:`preprocess`; sides whole blocks) -> the picture's rows
        [1 + ny (nx + 1) + 1, n_text_embd]."""
        c = self.cfg
        p, m = c.patch_size, c.n_merge
        if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.shape[1] % (p * m) or pixels.shape[2] % (p * m):
            raise KvrunError(f"the Hunyuan-VL encoder takes pixels [3, H, W] with sides multiples of {p * m}, got {list(pixels.shape)}")
        return _forward(ops_of(self, QUERY_CHUNK), self, pixels)


def _forward(ops: Any, enc: HunyuanVLEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`HunyuanVLEncoder.encode` past its check on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels and the resized positions go up once, the rows come down once).  The perceiver's convolutions are products
    over im2col rows (channel, dy, dx), F16 inputs for an F16 kernel as ggml's conv_2d (float64 sums on the host, as
    the CPU encoder had them; float32 on the device)."""
    c, xp = enc.cfg, ops.xp
    p, m, E = c.patch_size, c.n_merge, c.n_embd
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    x = embed_patches(ops, enc, pixels) + ops.vector(resize_positions(enc.pos_embd, enc.pos_side, nx, ny))
    for L in enc.layers:
        x = vit_block(ops, enc, L, x, c.ffn_op)
    if enc.post_ln is not None:
        x = ops.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    x = ops.rms_norm(x, enc.pre_norm, c.eps)
    oy, ox = ny // m, nx // m
    cols = xp.ascontiguousarray(xp.transpose(x.reshape(oy, m, ox, m, E), (0, 2, 4, 1, 3)).reshape(oy * ox, E * m * m))
    y = ops.act(ops.product64(ops.f16(cols) if enc.conv0_f16 else cols, enc.conv0, enc.conv0_b), "gelu")
    y = ops.product64(ops.f16(y) if enc.conv2_f16 else y, enc.conv2, enc.conv2_b).reshape(oy, ox, -1)
    newline = xp.broadcast_to(ops.const(enc.newline).reshape(1, 1, -1), (oy, 1, y.shape[-1]))
    y = ops.linear(enc.fc, xp.concatenate([y, newline], axis=1).reshape(oy * (ox + 1), -1), enc.fc_b)
    y = xp.concatenate([ops.const(enc.begin).reshape(1, -1), y, ops.const(enc.end).reshape(1, -1)])
    return ops.to_host(xp.ascontiguousarray(ops.rms_norm(y, enc.post_norm, c.eps), F32))
