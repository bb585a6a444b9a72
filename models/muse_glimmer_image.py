"""Muse Glimmer's image side (Muse-Glimmer-30B's vision tower, adapter and vision projection), as llama.cpp's libmtmd
sizes a picture (``mtmd_image_preprocessor_muse_glimmer``) and clip.cpp encodes it (``clip_graph_muse_glimmer`` for
PROJECTOR_TYPE_MUSE_GLIMMER), from an mmproj file (loaders/mmproj.py; projector type "muse-glimmer").

The picture is stretched (Lanczos, clip.cpp's port of Pillow's, no padding) to whole merged blocks (patch x 2 pixels)
of about its own aspect: transformers' ``get_aspect_ratio_preserving_size`` (:func:`target_size`: the block grid scaled
within 4096 blocks, then of floor/ceil of each side the pair nearest the picture's aspect, the larger on a tie).  Its
rows:

    pixels [3, H, W] -> patches of p x p embedded by the patch kernel (the converter's two temporal slabs summed; F16
       as ggml's conv_2d) + bias
    -> + the learned square position grid resized to the picture's patches (ggml_interpolate, plain bilinear with
       half-pixel centres: :func:`resize_positions`)
    -> LayerNorm ``v.pre_ln`` -> n_layer pre-norm ViT blocks: LayerNorm, attention with biases and a 2-D rope (a head's
       first half turned by the patch's column, the second by its row, both counted from 1; adjacent pairs:
       models/llama4_image.py's :func:`~kvrun.models.llama4_image.rope_2d`), residual; LayerNorm, exact (erf) GELU MLP,
       residual.  Every 4th layer and the last see the whole picture; the others attend within square windows of the
       position grid's side in patches (the last of a row or column cut short) -> LayerNorm ``v.post_ln``
    -> each 2x2 block of patches gathered, channel-major (row c*4 + s for channel c of the block's patch s: the
       pixel shuffle's transpose, unlike Kimi-VL's patch-major merge) -> ``mm.0``, erf GELU, ``mm.1``, erf GELU,
       ``mm.2`` (no biases) -> [blocks, n_text_embd], blocks in raster order

clip.cpp runs the window layers on the patches grouped window by window and back (``sp_perm``/``inv_perm``): the
same sums in another order, so here the windows are groups in raster order.  runtime/vision_muse_glimmer.py lays the
rows out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import TENSOR_NAMES
from .lfm2vl_image import normalise
from .llama4_image import rope_2d
from .pillow_resize import LANCZOS, resize_axes
from .siglip import MmprojEncoder, vit_layer
from .vit_ops import merge_permute, ops_of

F32 = np.float32
#: clip.cpp's set_limit_image_tokens(1, 4096): the most merged blocks a picture becomes
MAX_BLOCKS = 4096
#: every this many layers (and the last) the whole picture is attended (clip.cpp's muse_glimmer_sparse_factor)
GLOBAL_EVERY = 4
QUERY_CHUNK = 1024  # (host attention: query rows scored at once)

TENSOR_NAMES.update({  # (clip.cpp's TN_LLAVA_PROJ 0, 1, 2: the adapter's fc1, fc2 and the text model's vision_projection)
    "mg_pre_ln": "v.pre_ln.weight", "mg_pre_ln_b": "v.pre_ln.bias",
    "mg_mm0": "mm.0.weight", "mg_mm1": "mm.1.weight", "mg_mm2": "mm.2.weight",
})  # fmt: skip


def target_size(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """libmtmd's ``muse_glimmer_grid_size``: the (width, height) in pixels, whole merged blocks, a picture is stretched
    to (transformers' get_aspect_ratio_preserving_size)."""
    hw = cfg.patch_size * cfg.n_merge
    nph, npw = height / hw, width / hw
    ratio = npw / nph if nph > 0 else 1.0
    if nph * npw > MAX_BLOCKS:
        nph = math.sqrt(MAX_BLOCKS / ratio)
        npw = nph * ratio
    target, best, best_d = height / width, None, 0.0
    for h in (math.floor(nph), math.ceil(nph)):
        for w in (math.floor(npw), math.ceil(npw)):
            if h < 1 or w < 1 or h * w > MAX_BLOCKS:
                continue
            d = abs(h / w - target)
            if best is None or d < best_d or (d == best_d and h * w > best[0] * best[1]):
                best, best_d = (h, w), d
    if best is None:  # (no candidate under the cap: rounded, at least one block; C's lround, halves away from zero)
        best = (max(1, int(math.floor(nph + 0.5))), max(1, int(math.floor(npw + 0.5))))
    return best[1] * hw, best[0] * hw


def preprocess(img: np.ndarray, cfg: MmprojConfig) -> np.ndarray:
    """uint8 RGB ``img`` [h, w, 3] -> normalised pixels [3, H, W] float32 at :func:`target_size` (Lanczos, stretched)."""
    w, h = target_size(img.shape[1], img.shape[0], cfg)
    return normalise(resize_axes(img, w, h, LANCZOS), cfg)


def n_rows(width: int, height: int, cfg: MmprojConfig) -> int:
    """Rows a width x height picture becomes: its merged blocks."""
    w, h = target_size(width, height, cfg)
    f = cfg.patch_size * cfg.n_merge
    return (w // f) * (h // f)


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of ggml_interpolate's plain bilinear (GGML_SCALE_MODE_BILINEAR, no flags): output i at
    input ``(i + 0.5) n_in / n_out - 0.5``, its neighbours clamped to the grid and the fraction to [0, 1]."""
    w = np.zeros((n_out, n_in), np.float64)
    sf = F32(n_out) / F32(n_in)
    for i in range(n_out):
        x = float((F32(i) + F32(0.5)) / sf - F32(0.5))
        x0 = min(max(math.floor(x), 0), n_in - 1)
        x1 = min(max(math.floor(x) + 1, 0), n_in - 1)
        t = min(max(x - x0, 0.0), 1.0)
        w[i, x0] += 1.0 - t
        w[i, x1] += t
    return w


def resize_positions(pos: np.ndarray, side: int, nx: int, ny: int) -> np.ndarray:
    """A square grid of position embeddings [side*side, E] (raster order) resized to nx x ny patches [ny*nx, E], as
    clip.cpp's ``resize_position_embeddings(GGML_SCALE_MODE_BILINEAR)``."""
    if (nx, ny) == (side, side):
        return pos
    g = pos.reshape(side, side, -1).astype(np.float64)
    g = np.einsum("yi,ixe->yxe", _bilinear_weights(side, ny), g)
    g = np.einsum("xj,yje->yxe", _bilinear_weights(side, nx), g)
    return np.ascontiguousarray(g.reshape(ny * nx, -1), F32)


def windows(nx: int, ny: int, side: int) -> np.ndarray:
    """Each patch's window [ny*nx] (raster order): squares of ``side`` patches, the windows in raster order."""
    ys, xs = np.divmod(np.arange(nx * ny), nx)
    return (ys // side) * -(-nx // side) + xs // side


class MuseGlimmerEncoder(MmprojEncoder):
    """Muse Glimmer's ViT, adapter and vision projection from an mmproj file: :meth:`encode` a picture's pixels."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        merge = int(g.get("clip.vision.spatial_merge_size", 2) or 2)
        if merge != 2:  # (clip.cpp counts a picture's rows by 2x2 blocks whatever the file says; its graph by the file's)
            raise KvrunError(f"{g.path}: clip.vision.spatial_merge_size is {merge}; libmtmd's Muse Glimmer merges 2x2")
        cfg = dataclasses.replace(cfg, n_merge=2, max_pixels=MAX_BLOCKS * (cfg.patch_size * 2) ** 2, ffn_op="gelu_erf")
        ld = self._begin(g, cfg, backend)
        E = cfg.n_embd
        if E % cfg.n_head or (E // cfg.n_head) % 4:
            raise KvrunError(f"{g.path}: heads of {E / cfg.n_head:g}; the 2-D rope turns two halves of a head by pairs "
                             "(a multiple of 4)")  # fmt: skip
        pos = g.tensor("v.position_embd.weight")
        self.side = math.isqrt(pos.n_elements // E)
        if self.side**2 * E != pos.n_elements:
            raise KvrunError(f"{g.path}: v.position_embd.weight has shape {pos.shape}, not a square grid of {E}-wide rows")
        self.pos_embd = dequantize(pos.data, pos.qtype, pos.shape).reshape(-1, E).astype(F32)
        self.pre_ln, self.pre_ln_b = ld.host_vector("mg_pre_ln", required=False), ld.host_vector("mg_pre_ln_b", required=False)
        self.layers = [vit_layer(ld, i) for i in range(cfg.n_layer)]
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        self.mm0, self.mm1, self.mm2 = (ld.matrix(n) for n in ("mg_mm0", "mg_mm1", "mg_mm2"))
        if self.mm0.n_cols != 4 * E:
            raise KvrunError(f"{g.path}: mm.0.weight takes {self.mm0.n_cols} inputs, not a 2x2 block's {4 * E}")

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (:func:`preprocess`; sides whole 2x2 blocks) -> rows [blocks, n_text_embd]."""
        f = self.cfg.patch_size * 2
        if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.shape[1] % f or pixels.shape[2] % f:
            raise KvrunError(f"the Muse Glimmer encoder takes pixels [3, H, W] with sides multiples of {f}, "
                             f"got {list(pixels.shape)}")  # fmt: skip
        return _forward(ops_of(self, QUERY_CHUNK), self, pixels)


def _forward(ops: Any, enc: MuseGlimmerEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`MuseGlimmerEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once)."""
    c, xp = enc.cfg, ops.xp
    p = c.patch_size
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    T, H = nx * ny, c.n_head
    D = c.n_embd // H
    x = ops.embed_patches(pixels)  # (ggml's conv_2d: F16 patches and kernel; the bias)
    x = x + ops.vector(resize_positions(enc.pos_embd, enc.side, nx, ny))
    if enc.pre_ln is not None:
        x = ops.layer_norm(x, enc.pre_ln, enc.pre_ln_b, c.eps)
    ys, xs = np.divmod(np.arange(T), nx)
    cos, sin = (ops.vector(t) for t in rope_2d(ys + 1, xs + 1, D))  # (clip.cpp's positions count from 1)
    groups, everything = ops.window_groups(windows(nx, ny, enc.side), T), ops.window_groups(None, T)
    scale = F32(1.0 / math.sqrt(D))
    for il, L in enumerate(enc.layers):
        h = ops.layer_norm(x, L["ln1"], L["ln1_b"], c.eps)
        q, k, v = (ops.linear(L[r], h, L[r + "_b"]).reshape(T, H, D) for r in ("q", "k", "v"))
        q, k = ops.rope_pairs(q, k, cos, sin)
        whole = il == c.n_layer - 1 or (il + 1) % GLOBAL_EVERY == 0
        x = x + ops.linear(L["o"], ops.attend_windows(q, k, v, everything if whole else groups, scale), L["o_b"])
        h = ops.layer_norm(x, L["ln2"], L["ln2_b"], c.eps)
        x = x + ops.linear(L["down"], ops.act(ops.linear(L["up"], h, L["up_b"]), "gelu_erf"), L["down_b"])
    if enc.post_ln is not None:
        x = ops.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    E = c.n_embd
    x = merge_permute(x, nx, ny, 2).reshape(-1, 4, E).transpose(0, 2, 1).reshape(-1, 4 * E)  # (channel-major blocks)
    x = ops.act(ops.linear(enc.mm0, xp.ascontiguousarray(x)), "gelu_erf")
    x = ops.linear(enc.mm2, ops.act(ops.linear(enc.mm1, x), "gelu_erf"))
    return ops.to_host(xp.ascontiguousarray(x, F32))
