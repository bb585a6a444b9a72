"""Reka Edge's image side (Yasa2: a ConvNeXtV2 backbone and a two-layer projector), as llama.cpp's libmtmd prepares a
picture (``mtmd_image_preprocessor_fixed_size``) and clip.cpp encodes it (``clip_graph_yasa2`` for projector type
"yasa2"), from an mmproj file (loaders/mmproj.py).

The picture.  libmtmd 0.3.36 cuts no tiles for Reka Edge: any picture is stretched to one square of ``image_size``
(clip.cpp's port of Pillow's bicubic filter, PAD_NONE: no padding, the aspect not kept; one already that square kept
as it is) and normalised by the file's mean and std.  Then, on feature maps [C, H, W]:

    pixels [3, S, S] -> ``v.patch_embd`` p x p stride p (+ bias) -> channel LayerNorm ``v.patch_ln``
    -> stages ``v.stage.S``: a downsampler where the file has one (channel LayerNorm ``down.ln``, 2x2 stride-2
       ``down.conv`` + bias), then ConvNeXtV2 blocks ``blk.B``: x + pw2(GRN(GELU(pw1(LN(dw7x7(x))))))
       (``dw`` depthwise 7x7 padding 3 + bias, ``ln`` channel LayerNorm, ``pw1``/``pw2`` biased products over the
       channels, exact GELU (erf), GRN: y = x + (x * Nx) * w + b with Nx = ||x||_spatial / mean_channels ||x||)
    -> rows in raster order, + ``v.vision_pos_embed`` where its rows are the grid's cells
    -> average pooled kw x kh (clip.cpp's AdaptiveAvgPool2d stand-in: min(8, side) cells a side, kw = side / that)
    -> ``mm.0`` (+ bias), exact GELU, ``mm.2`` (+ bias) -> [64, n_text_embd] (8 x 8, libmtmd's count for yasa2)

``v.backbone_ln`` is in the file but read by no step of clip.cpp's graph, so not here either.  ggml's CPU numerics are
followed where they show: every convolution's input goes through an F16 im2col (ggml_conv_2d and ggml_conv_2d_dw make
it F16 whatever the kernel), and a full convolution's kernel is rounded to F16 too (its product runs in the im2col's
type); the depthwise kernel meets the F16 input as stored.  The LayerNorms and GRN clamp their statistics (at eps,
1e-6) where the HF model adds the epsilon: the same numbers for any picture whose channels differ.
runtime/vision_yasa2.py lays the rows out (between ``<image>`` and ``</image>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..loaders.quants import dequantize
from ..ops.backend import Backend, Weight
from .common import TENSOR_NAMES
from .gemma3nv_image import Kernel
from .pillow_resize import BICUBIC, resize_axes
from .siglip import MmprojEncoder, _f16
from .vit_ops import ops_of

F32 = np.float32
POOLED = 8  #: clip.cpp pools the backbone's grid to at most 8 x 8 cells (libmtmd counts 64 rows a picture)
GRN_EPS = 1e-6  # (clip.cpp clamps GRN's channel mean at this, "approx +eps")
#: Yasa2's names as clip.cpp reads them (TN_YASA_*); a stage's block is ``i`` = "S.blk.B", a stage's own ``i`` = "S"
TENSOR_NAMES.update({
    "yasa_patch_ln": "v.patch_ln.weight", "yasa_patch_ln_b": "v.patch_ln.bias", "yasa_pos": "v.vision_pos_embed",
    "yasa_down_ln": "v.stage.{i}.down.ln.weight", "yasa_down_ln_b": "v.stage.{i}.down.ln.bias",
    "yasa_down_conv": "v.stage.{i}.down.conv.weight", "yasa_down_conv_b": "v.stage.{i}.down.conv.bias",
    **{f"yasa_{r}{s}": f"v.stage.{{i}}.{r}.{'weight' if not s else 'bias'}" for r in ("dw", "ln", "pw1", "grn", "pw2") for s in ("", "_b")},
    "yasa_mm0": "mm.0.weight", "yasa_mm0_b": "mm.0.bias", "yasa_mm2": "mm.2.weight", "yasa_mm2_b": "mm.2.bias",
})  # fmt: skip


def preprocess(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> normalised pixels [3, S, S] float32: stretched to the square (bicubic, no
    padding; a picture already S x S kept), then the file's mean and std."""
    S = cfg.image_size
    a = resize_axes(img, S, S, BICUBIC).astype(F32) / F32(255.0)
    mean, std = np.asarray(cfg.image_mean, F32), np.asarray(cfg.image_std, F32)
    return np.ascontiguousarray(((a - mean) / std).transpose(2, 0, 1), F32)


@dataclass
class Block:
    """One ConvNeXtV2 block's weights (None: not in the file, so not applied, as clip.cpp's null checks)."""

    dw: Kernel
    dw_b: np.ndarray | None
    ln: np.ndarray | None
    ln_b: np.ndarray | None
    pw1: Weight
    pw1_b: np.ndarray | None
    grn: np.ndarray | None
    grn_b: np.ndarray | None
    pw2: Weight
    pw2_b: np.ndarray | None


@dataclass
class Stage:
    """A stage: its downsampler (``down`` None where the file has none, the first stage's) and its blocks."""

    down: Kernel | None
    down_b: np.ndarray | None
    down_ln: np.ndarray | None
    down_ln_b: np.ndarray | None
    blocks: list[Block]


class Yasa2Encoder(MmprojEncoder):
    """Reka Edge's Yasa2 ConvNeXtV2 and projector from an mmproj file: :meth:`encode` a square's pixels into 64 rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend, patches=False)

        def kernel(name: str, full: bool) -> Kernel:
            t = g.tensor(name)  # (a full convolution's kernel goes through F16: ggml multiplies in the im2col's type)
            w = dequantize(t.data, t.qtype, t.shape).astype(F32).reshape(t.shape)
            return Kernel(_f16(w) if full else w, True)

        self.patch = kernel("v.patch_embd.weight", True)
        self.patch_b = ld.host_vector("v_patch_b", required=False)
        self.patch_ln, self.patch_ln_b = ld.host_vector("yasa_patch_ln", required=False), ld.host_vector("yasa_patch_ln_b", required=False)
        self.stages: list[Stage] = []
        for s in range(len(g.tensors)):  # (clip.cpp's loop: stages until one has neither a downsampler nor blocks)
            v = lambda role, i=str(s): ld.host_vector(role, i, required=False)  # noqa: E731
            down = kernel(f"v.stage.{s}.down.conv.weight", True) if f"v.stage.{s}.down.conv.weight" in g.tensors else None
            blocks = []
            while f"v.stage.{s}.blk.{len(blocks)}.dw.weight" in g.tensors:
                i = f"{s}.blk.{len(blocks)}"
                blocks.append(Block(kernel(f"v.stage.{i}.dw.weight", False), v("yasa_dw_b", i), v("yasa_ln", i), v("yasa_ln_b", i),
                                    ld.matrix("yasa_pw1", i), v("yasa_pw1_b", i), v("yasa_grn", i), v("yasa_grn_b", i),
                                    ld.matrix("yasa_pw2", i), v("yasa_pw2_b", i)))  # fmt: skip
            if down is None and not blocks:
                break
            self.stages.append(Stage(down, v("yasa_down_conv_b"), v("yasa_down_ln"), v("yasa_down_ln_b"), blocks))
        pos = g.tensors.get("v.vision_pos_embed")
        self.pos = None if pos is None else dequantize(pos.data, pos.qtype, pos.shape).astype(F32).reshape(-1, pos.shape[-1])
        self.mm0, self.mm0_b = ld.matrix("yasa_mm0"), ld.host_vector("yasa_mm0_b", required=False)
        self.mm2, self.mm2_b = ld.matrix("yasa_mm2"), ld.host_vector("yasa_mm2_b", required=False)
        side = cfg.image_size // cfg.patch_size // 2 ** sum(st.down is not None for st in self.stages)
        self.side, self.pool = side, side // min(POOLED, side) if side else 0
        if not side or side // self.pool != POOLED or side % self.pool:  # (libmtmd counts 64 rows whatever the graph makes)
            raise KvrunError(f"{g.path}: the backbone's grid is {side} x {side} cells, which clip.cpp's pooling does not make "
                             f"{POOLED} x {POOLED} (libmtmd's 64 rows); not a Yasa2 projector kvrun runs")  # fmt: skip

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, S, S] (:func:`preprocess`) -> the picture's rows [64, n_text_embd]."""
        S = self.cfg.image_size
        if pixels.shape != (3, S, S):
            raise KvrunError(f"the Yasa2 encoder takes pixels [3, {S}, {S}], got {list(pixels.shape)}")
        return _forward(ops_of(self), self, pixels)


def channel_norm(ops: Any, x: Any, w: np.ndarray | None, b: np.ndarray | None, eps: float) -> Any:
    """clip.cpp's ``layer_norm_channels`` on the map ``x`` [C, H, W]: each cell's channels less their mean, divided by
    the root of their mean square clamped at ``eps`` (not of it plus eps, as a LayerNorm's), then times ``w`` and plus
    ``b`` where the file has them (the normalisation runs either way)."""
    xm = x - x.mean(axis=0, dtype=F32)
    y = xm / ops.xp.sqrt(ops.xp.maximum((xm * xm).mean(axis=0, dtype=F32), F32(eps)))
    if w is not None:
        y = y * ops.const(w)[:, None, None]
    return _bias(ops, y, b)


def _bias(ops: Any, x: Any, b: np.ndarray | None) -> Any:
    """``x`` [C, H, W] plus the per-channel ``b`` where there is one."""
    return x if b is None else x + ops.const(b)[:, None, None]


def grn(ops: Any, x: Any, w: np.ndarray | None, b: np.ndarray | None) -> Any:
    """ConvNeXtV2's global response normalisation on rows ``x`` [T, C] (the T cells of one map), as clip.cpp's
    ``convnext_grn``: Gx the L2 norm of each channel over the cells, Nx = Gx / max(mean_c Gx, 1e-6), and
    x + (x * Nx) * w + b (``w``/``b`` skipped where absent)."""
    xp = ops.xp
    gx = xp.sqrt((x * x).sum(axis=0, dtype=F32))
    y = x * (gx / xp.maximum(gx.mean(dtype=F32), F32(GRN_EPS)))
    if w is not None:
        y = y * ops.const(w)
    if b is not None:
        y = y + ops.const(b)
    return x + y


def convnext_block(ops: Any, blk: Block, x: Any, eps: float) -> Any:
    """One ConvNeXtV2 block on the map ``x`` [C, H, W]: the depthwise 7x7 (+ bias), the channel LayerNorm, then on the
    cells as rows pw1 (+ bias), exact GELU, :func:`grn`, pw2 (+ bias), added back onto ``x``."""
    xp = ops.xp
    C, H, W = x.shape
    h = channel_norm(ops, _bias(ops, ops.mobilenet_conv(x, blk.dw, 1, 3, depthwise=True), blk.dw_b), blk.ln, blk.ln_b, eps)
    t = ops.linear(blk.pw1, xp.ascontiguousarray(h.reshape(C, H * W).T), blk.pw1_b)
    t = grn(ops, ops.act(t, "gelu_erf"), blk.grn, blk.grn_b)
    t = ops.linear(blk.pw2, t, blk.pw2_b)
    return x + xp.ascontiguousarray(t.T).reshape(C, H, W)


def _forward(ops: Any, enc: Yasa2Encoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`Yasa2Encoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once), as the module's docstring lists the steps."""
    c, xp = enc.cfg, ops.xp
    x = _bias(ops, ops.conv2d(ops.vector(pixels), enc.patch, c.patch_size, 0), enc.patch_b)
    x = channel_norm(ops, x, enc.patch_ln, enc.patch_ln_b, c.eps)
    for st in enc.stages:
        if st.down is not None:
            x = _bias(ops, ops.conv2d(channel_norm(ops, x, st.down_ln, st.down_ln_b, c.eps), st.down, 2, 0), st.down_b)
        for blk in st.blocks:
            x = convnext_block(ops, blk, x, c.eps)
    C, H, W = x.shape
    t = xp.ascontiguousarray(x.reshape(C, H * W).T)  # (rows, raster order)
    if enc.pos is not None and enc.pos.shape[0] == H * W:  # (clip.cpp adds the table only where it fits the grid)
        t = t + ops.const(enc.pos)
    t = ops.avg_pool(t, W, H, enc.pool)
    t = ops.linear(enc.mm2, ops.act(ops.linear(enc.mm0, t, enc.mm0_b), "gelu_erf"), enc.mm2_b)
    return ops.to_host(xp.ascontiguousarray(t, F32))
