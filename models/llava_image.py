"""LLaVA's image side (projector type "mlp": LLaVA 1.5 and 1.6, BakLLaVA, ...) and MobileVLM's ("ldp", "ldpv2"), as
llama.cpp's libmtmd prepares a picture (``mtmd_image_preprocessor_fixed_size``, or ``_llava_uhd`` where the file has
``clip.vision.image_grid_pinpoints``) and clip.cpp encodes it (``clip_graph_llava``), from an mmproj file.

The picture.  LLaVA 1.5's (no pinpoints) is fitted into one square of ``image_size`` keeping its aspect, Pillow's
bicubic (clip.cpp's port), and centred on LLaVA's mean colour rgb(122, 116, 104) (LLaVA's ``expand2square``).
LLaVA 1.6's (anyres: pinpoints) is, no larger than a square on both sides, stretched to one square; a larger one
becomes the tiles of the best of the pinpoint grids (llava's ``select_best_resolution``: the grid showing the most of
the picture's pixels, then wasting the least), the picture fitted into it keeping its aspect on black and cut row by
row into squares, then an overview, the picture stretched to one square.  (libmtmd 0.3.36 builds neither the
``spatial_unpad`` merge nor the ``image_newline`` row of the reference LLaVA 1.6, and puts the overview last, where
LLaVA puts its base image first: each tile's rows and the overview's follow one another in one image chunk.)

Each square is then the CLIP ViT:

    pixels [3, S, S] -> patches of p x p embedded by the patch kernel (F16, as ggml's conv_2d; a bias if the file has
    one) -> the class token appended after the patches -> + learned positions, in that order -> ``v.pre_ln`` LayerNorm
    -> the ViT blocks up to the feature layer: libmtmd takes the input of the last block (the penultimate layer's
       output, LLaVA's ``vision_feature_layer`` -2), or the deepest of ``clip.vision.feature_layer`` (Granite's, whose
       listed layers' outputs are concatenated), each: LayerNorm, attention with biases, residual; LayerNorm, MLP
       (GELU-quick unless ``clip.use_gelu``), residual
    -> ``v.post_ln`` where the file has one -> rows 1.. kept -> [(S/p)^2, n_embd]

(libmtmd 0.3.36 as measured: the class token goes after the patches and its row is kept, last, while the first
patch's is dropped, its ``patches`` still offset by one as when the token came first; the reference LLaVA puts the
class token first, with the first position, and drops it.  kvrun runs libmtmd's.)

and the projector: "mlp" ``mm.0`` (+ bias), GELU, ``mm.2`` (+ bias) -> [(S/p)^2, n_text_embd]; "ldp" and "ldpv2" as
:func:`ldp` and :func:`ldpv2` say, on libmtmd's fixed 24x24 patches -> 144 rows.

ggml's CPU numerics are followed where they show, as models/siglip.py does.  runtime/vision_llava.py lays the rows out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .internvl_image import best_resolution, normalise
from .pillow_resize import BICUBIC, resize_axes
from .siglip import SiglipEncoder, _f16, patch_kernel, vit_layer
from .vit_ops import ops_of

F32 = np.float32
#: LLaVA's padding colour (its image processor's mean, in bytes), clip.cpp's for every llava-style projector
PAD_COLOUR = (122, 116, 104)
#: the side of the patch grid libmtmd's MobileVLM projectors are built for (clip.cpp's ``n_patch = 24``)
LDP_SIDE = 24

TENSOR_NAMES.update({  # CLIP's pre-LayerNorm and the projectors (clip.cpp's TN_LN_PRE, TN_LLAVA_PROJ, TN_MVLM_PROJ_*)
    "v_pre_ln": "v.pre_ln.weight", "v_pre_ln_b": "v.pre_ln.bias",
    "llava_mm0": "mm.0.weight", "llava_mm0_b": "mm.0.bias", "llava_mm2": "mm.2.weight", "llava_mm2_b": "mm.2.bias",
    "mvlm_mlp": "mm.model.mlp.{i}.weight", "mvlm_mlp_b": "mm.model.mlp.{i}.bias",
    "mvlm_peg_b": "mm.model.peg.0.bias",
    "mvlm_ln0": "mm.model.mb_block.{i}.block.0.1.weight", "mvlm_ln0_b": "mm.model.mb_block.{i}.block.0.1.bias",
    "mvlm_fc1": "mm.model.mb_block.{i}.block.1.fc1.weight", "mvlm_fc1_b": "mm.model.mb_block.{i}.block.1.fc1.bias",
    "mvlm_fc2": "mm.model.mb_block.{i}.block.1.fc2.weight", "mvlm_fc2_b": "mm.model.mb_block.{i}.block.1.fc2.bias",
    "mvlm_pw": "mm.model.mb_block.{i}.block.2.0.weight",
    "mvlm_ln2": "mm.model.mb_block.{i}.block.2.1.weight", "mvlm_ln2_b": "mm.model.mb_block.{i}.block.2.1.bias",
})  # fmt: skip


# ---------------------------------------------------------------- the picture


def pinpoints(g: GGUFFile) -> list[tuple[int, int]]:
    """LLaVA 1.6's grids (width, height) in pixels, ``clip.vision.image_grid_pinpoints`` read in pairs; [] for 1.5."""
    raw = g.get("clip.vision.image_grid_pinpoints")
    v = [] if raw is None else [int(x) for x in raw]
    if len(v) % 2:
        raise KvrunError(f"{g.path}: clip.vision.image_grid_pinpoints has {len(v)} values, not (width, height) pairs")
    return [(v[i], v[i + 1]) for i in range(0, len(v), 2)]


def fit_padded(img: np.ndarray, width: int, height: int, colour: tuple[int, int, int]) -> np.ndarray:
    """clip.cpp's ``img_tool::resize`` with PAD_CEIL: uint8 RGB [h, w, 3] scaled by the smaller of width/w and
    height/h (float32, sides rounded up), Pillow's bicubic, centred on ``colour``; a picture already that size kept."""
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    scale = min(F32(width) / F32(w), F32(height) / F32(h))
    nw, nh = min(int(math.ceil(F32(w) * scale)), width), min(int(math.ceil(F32(h) * scale)), height)
    out = np.empty((height, width, 3), np.uint8)
    out[:] = np.asarray(colour, np.uint8)
    ox, oy = (width - nw) // 2, (height - nh) // 2
    out[oy : oy + nh, ox : ox + nw] = resize_axes(img, nw, nh, BICUBIC)
    return out


@dataclass
class Squares:
    """A picture as libmtmd prepares it for LLaVA: the squares encoded, in order (LLaVA 1.6's tiles row by row, then
    the overview), each uint8 RGB [S, S, 3], and the tiles' grid (0 x 0 without tiles)."""

    images: list[np.ndarray]
    n_cols: int = 0
    n_rows: int = 0


def grid(width: int, height: int, size: int, cands: list[tuple[int, int]]) -> tuple[int, int]:
    """(columns, rows) of tiles LLaVA 1.6 cuts a width x height picture into: (0, 0) without pinpoints or for one no
    larger than a square on both sides."""
    if not cands or (width <= size and height <= size):
        return 0, 0
    w, h = best_resolution(width, height, cands)
    return w // size, h // size


def squares(img: np.ndarray, size: int, cands: list[tuple[int, int]]) -> Squares:
    """uint8 RGB ``img`` [h, w, 3] -> its squares: LLaVA 1.5's one padded square (no ``cands``), or LLaVA 1.6's
    tiles and overview."""
    h, w = img.shape[:2]
    if not cands:
        return Squares([fit_padded(img, size, size, PAD_COLOUR)])
    overview = img if (w, h) == (size, size) else resize_axes(img, size, size, BICUBIC)
    cols, rows = grid(w, h, size, cands)
    if not cols:
        return Squares([overview])
    refined = fit_padded(img, cols * size, rows * size, (0, 0, 0))
    tiles = [np.ascontiguousarray(refined[y : y + size, x : x + size]) for y in range(0, rows * size, size) for x in range(0, cols * size, size)]
    return Squares([*tiles, overview], cols, rows)  # (the overview last, as libmtmd 0.3.36 measured puts it)


# ---------------------------------------------------------------- MobileVLM's projectors


def dw_conv3(fmap: np.ndarray, k: np.ndarray, stride: int) -> np.ndarray:
    """ggml's ``conv_2d_dw`` of a feature map [C, H, W] by 3x3 kernels [C, 3, 3], padding 1: each channel by its own
    kernel (cross-correlation), input and kernel in F16 (its im2col is F16), sums in float32."""
    C, H, W = fmap.shape
    x = np.pad(_f16(fmap), ((0, 0), (1, 1), (1, 1)))
    oh, ow = (H - 1) // stride + 1, (W - 1) // stride + 1
    out = np.zeros((C, oh, ow), F32)
    for ky in range(3):
        for kx in range(3):
            out += k[:, ky, kx, None, None] * x[:, ky : ky + stride * oh : stride, kx : kx + stride * ow : stride]
    return out


def hardswish(x: np.ndarray) -> np.ndarray:
    return x * np.minimum(F32(1.0), np.maximum(F32(0.0), (x + F32(3.0)) / F32(6.0)))


def hardsigmoid(x: np.ndarray) -> np.ndarray:
    return np.minimum(F32(1.0), np.maximum(F32(0.0), (x + F32(3.0)) / F32(6.0)))


# ---------------------------------------------------------------- the encoder


class LlavaEncoder(SiglipEncoder):
    """LLaVA's CLIP ViT and projector ("mlp", "ldp", "ldpv2") from an mmproj file: :meth:`encode` a square's pixels."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:  # (SiglipEncoder's loader has no class token)
        self.cfg, self.be, self.path = cfg, backend, g.path
        ld = WeightLoader(g, backend)
        E = cfg.n_embd
        self.patch_w = patch_kernel(g, cfg)
        self.patch_b = ld.host_vector("v_patch_b", required=False)
        cls = g.tensors.get("v.class_embd")
        self.cls = None if cls is None else dequantize(cls.data, cls.qtype, cls.shape).reshape(E).astype(F32)
        pos = g.tensor("v.position_embd.weight")
        n_pos = cfg.n_patches_side**2 + (cls is not None)
        if cls is None and pos.n_elements == (n_pos + 1) * E:  # (positions for a class token the file lacks)
            raise KvrunError(f"{g.path}: tensor 'v.class_embd' is missing; the projector file is incomplete")
        if pos.n_elements != n_pos * E:
            raise KvrunError(f"{g.path}: v.position_embd.weight has shape {pos.shape}, expected {(n_pos, E)} (the patches and the class token)")
        self.pos_embd = dequantize(pos.data, pos.qtype, pos.shape).reshape(n_pos, E).astype(F32)
        self.pre_ln, self.pre_ln_b = ld.host_vector("v_pre_ln", required=False), ld.host_vector("v_pre_ln_b", required=False)
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        # clip.cpp's ViT MLP activation, as any file's: GELU with clip.use_gelu, SiLU with clip.use_silu, else CLIP's quick GELU
        self.ffn_op = "gelu" if g.get("clip.use_gelu", False) else "silu" if g.get("clip.use_silu", False) else "gelu_quick"
        # the layers run: up to the deepest listed feature layer, else all but the last (clip_graph_llava's)
        raw = g.get("clip.vision.feature_layer")
        self.feature_layers = [] if raw is None else sorted({int(v) for v in raw})
        n_run = max(self.feature_layers) if self.feature_layers else cfg.n_layer - 1
        if not 0 < n_run <= cfg.n_layer:
            raise KvrunError(f"{g.path}: the feature layer {n_run} is not one of the encoder's {cfg.n_layer} layers")
        self.layers = [vit_layer(ld, i) for i in range(n_run)]
        self.cands = pinpoints(g)
        ptype = cfg.projector_type
        if ptype == "mlp":
            self.mm0, self.mm0_b = ld.matrix("llava_mm0"), ld.host_vector("llava_mm0_b")
            self.mm2, self.mm2_b = ld.matrix("llava_mm2", required=False), ld.host_vector("llava_mm2_b", required=False)
            return
        if cfg.n_patches_side != LDP_SIDE:
            raise UnsupportedModelError(f"{g.path}: libmtmd's MobileVLM projector takes {LDP_SIDE}x{LDP_SIDE} patches, "
                                        f"this encoder makes {cfg.n_patches_side}x{cfg.n_patches_side}")  # fmt: skip
        a, b = (1, 3) if ptype == "ldp" else (0, 2)
        self.mlp_a, self.mlp_a_b = ld.matrix("mvlm_mlp", a), ld.host_vector("mvlm_mlp_b", a)
        self.mlp_b, self.mlp_b_b = ld.matrix("mvlm_mlp", b), ld.host_vector("mvlm_mlp_b", b)

        def kernel(name: str) -> np.ndarray:  # a depthwise 3x3 kernel [C, 1, 3, 3] -> [C, 3, 3], in F16 as ggml runs it
            t = g.tensors.get(name)
            if t is None:
                raise KvrunError(f"{g.path}: tensor {name!r} is missing; the MobileVLM projector file is incomplete")
            return _f16(dequantize(t.data, t.qtype, t.shape).reshape(-1, 3, 3))

        if ptype == "ldpv2":
            self.peg, self.peg_b = kernel("mm.model.peg.0.weight"), ld.host_vector("mvlm_peg_b")
            return
        self.blocks = []
        for i in (1, 2):
            B: dict[str, Any] = {"dw": kernel(f"mm.model.mb_block.{i}.block.0.0.weight")}
            for r in ("ln0", "ln0_b", "fc1_b", "fc2_b", "ln2", "ln2_b"):
                B[r] = ld.host_vector(f"mvlm_{r}", i)
            for r in ("fc1", "fc2", "pw"):
                B[r] = ld.matrix(f"mvlm_{r}", i)
            self.blocks.append(B)

    def n_rows(self) -> int:
        """Rows one square becomes: a row a patch ("mlp"), or MobileVLM's 12x12."""
        n = self.cfg.n_patches_side
        return n * n if self.cfg.projector_type == "mlp" else (LDP_SIDE // 2) ** 2

    def features(self, pixels: np.ndarray) -> Any:
        """Normalised ``pixels`` [3, S, S] -> the ViT's features at the feature layer [(S/p)^2, n_embd (x layers)],
        on the encoder's device (models/vit_ops.py: device rows on the GPU, where the pixels go up once)."""
        c = self.cfg
        S = c.image_size
        if pixels.shape != (3, S, S):
            raise KvrunError(f"the LLaVA encoder takes pixels [3, {S}, {S}], got {list(pixels.shape)}")
        ops = ops_of(self)
        xp = ops.xp
        x = ops.embed_patches(pixels)
        cls = self.cls is not None
        if cls:  # (libmtmd 0.3.36 appends the class token after the patches, positions in that order)
            x = xp.concatenate([x, ops.const(self.cls).reshape(1, -1)])
        x = x + ops.const(self.pos_embd)
        if self.pre_ln is not None:
            x = ops.layer_norm(x, self.pre_ln, self.pre_ln_b, c.eps)
        stack = []
        for il, L in enumerate(self.layers):
            if il in self.feature_layers:  # (Granite's: this layer's input kept)
                stack.append(x)
            x = ops.vit_block(L, x, self.ffn_op)
        if self.post_ln is not None:
            x = ops.layer_norm(x, self.post_ln, self.post_ln_b, c.eps)
        if len(self.layers) in self.feature_layers:
            stack.append(x)
        if stack:
            x = xp.concatenate(stack, axis=-1)
        # libmtmd 0.3.36 then keeps rows 1.. (its ``patches`` offset by one, as when the class token came first): the
        # first patch's row is dropped and the class token's kept, last (measured on the tiny projectors: every row
        # matches this way; the reference LLaVA drops the class token)
        return xp.ascontiguousarray(x[1:] if cls else x, F32)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, S, S] (one square) -> its rows [:meth:`n_rows`, n_text_embd] (on either device,
        the rows down once; MobileVLM's convolutions too)."""
        x = self.features(pixels)
        ptype = self.cfg.projector_type
        ops = ops_of(self)
        if ptype == "mlp":
            x = ops.act(ops.linear(self.mm0, x, self.mm0_b), "gelu")
            return ops.to_host(ops.xp.ascontiguousarray(x if self.mm2 is None else ops.linear(self.mm2, x, self.mm2_b), F32))
        return ops.to_host(ldp(ops, self, x) if ptype == "ldp" else ldpv2(ops, self, x))


def _mlp(ops: Any, enc: LlavaEncoder, x: Any) -> Any:
    """MobileVLM's MLP into the text width, as a feature map [C, 24, 24] (rows in raster order)."""
    x = ops.linear(enc.mlp_b, ops.act(ops.linear(enc.mlp_a, x, enc.mlp_a_b), "gelu"), enc.mlp_b_b)
    return ops.xp.ascontiguousarray(x.T.reshape(-1, LDP_SIDE, LDP_SIDE), F32)


def _block(ops: Any, enc: LlavaEncoder, B: dict[str, Any], fmap: Any, stride: int) -> Any:
    """One of MobileVLM's blocks on a feature map [C, H, W]: depthwise 3x3 conv, LayerNorm over channels, hardswish,
    squeeze-excite (global mean, ``fc1``, ReLU, ``fc2``, hardsigmoid, scaling), pointwise matrix, LayerNorm -> rows
    [h * w, C] (raster order)."""
    xp, eps = ops.xp, enc.cfg.eps
    y = ops.dw_conv3(fmap, B["dw"], stride)
    C, h, w = y.shape
    y = ops.layer_norm(y.reshape(C, h * w).T, B["ln0"], B["ln0_b"], eps)  # [h*w, C]
    y = y * ops.hardsigmoid(y)  # (hardswish)
    se = y.mean(axis=0, dtype=xp.float64).astype(F32)[None]
    se = xp.maximum(ops.linear(B["fc1"], se, B["fc1_b"]), F32(0.0))
    se = ops.hardsigmoid(ops.linear(B["fc2"], se, B["fc2_b"]))
    y = ops.linear(B["pw"], y * se, None)
    return ops.layer_norm(y, B["ln2"], B["ln2_b"], eps)


def ldp(ops: Any, enc: LlavaEncoder, x: Any) -> Any:
    """MobileVLM's projector ("ldp", clip.cpp's PROJECTOR_TYPE_LDP) on the ViT's features [576, n_embd], on ``ops``
    (models/vit_ops.py): the MLP ``mm.model.mlp.1`` / ``.3`` (GELU between), block 1 at stride 1 with a residual,
    block 2 at stride 2 -> [144, C]."""
    xp = ops.xp
    fmap = _mlp(ops, enc, x)
    C = fmap.shape[0]
    rows = _block(ops, enc, enc.blocks[0], fmap, 1) + fmap.reshape(C, -1).T
    fmap = xp.ascontiguousarray(rows.T.reshape(C, LDP_SIDE, LDP_SIDE))
    return xp.ascontiguousarray(_block(ops, enc, enc.blocks[1], fmap, 2), F32)


def ldpv2(ops: Any, enc: LlavaEncoder, x: Any) -> Any:
    """MobileVLM V2's projector ("ldpv2") on ``ops``: the MLP ``mm.model.mlp.0`` / ``.2`` (GELU between), 2x2 average
    pooling, then the positional conv ``mm.model.peg.0`` (depthwise 3x3, + bias) added to its input -> [144, C]."""
    xp = ops.xp
    fmap = _mlp(ops, enc, x)
    C, n = fmap.shape[0], LDP_SIDE // 2
    pooled = fmap.reshape(C, n, 2, n, 2).mean(axis=(2, 4), dtype=xp.float64).astype(F32)
    y = ops.dw_conv3(pooled, enc.peg, 1).reshape(C, n * n).T + ops.const(enc.peg_b)
    return xp.ascontiguousarray(y + pooled.reshape(C, n * n).T, F32)


def prepare(img: np.ndarray, enc: LlavaEncoder) -> list[np.ndarray]:
    """uint8 RGB ``img`` [h, w, 3] -> the normalised squares [3, S, S] the encoder takes, in order."""
    return [normalise(s, enc.cfg) for s in squares(img, enc.cfg.image_size, enc.cands).images]
