"""GLM-4V's image side (GLM-4.1V, GLM-4.5V, GLM-4.6V), as llama.cpp's clip.cpp builds it (``clip_graph_glm4v``, projector
type "glm4v") from an mmproj file (loaders/mmproj.py).  The picture's size and pixels are Qwen2-VL's
(models/qwen2vl_image.py: Hugging Face's ``smart_resize`` to whole 2x2 blocks of 14-pixel patches, 8 to 4096 merged
rows' worth, Pillow's bicubic, padded black).  Its rows are then:

    pixels [3, H, W] -> patches of p x p, each embedded by the conv3d's two temporal kernels (kernel 0 + kernel 1,
       both seeing the still picture) plus the patch bias
    -> RMSNorm (``v.norm_embd``: the checkpoints' post_conv_layernorm)
    -> plus the learned position embeddings (``v.position_embd``, a square grid) resized to the picture's patches by
       ggml_interpolate, bicubic (a = -0.75) with half-pixel centres, edges clamped (:func:`resize_positions`; Hugging
       Face's grid_sample, bicubic, align_corners False, border padding, is the same)
    -> in 2x2 blocks (models/qwen2vl_image.block_order), n_layer pre-norm ViT blocks: RMSNorm, attention with a fused
       QKV product (or Q, K, V apart) and Qwen2-VL's 2-D rope, residual; RMSNorm, SiLU(gate) * up, down, residual (biases where the file
       has them; the published ones have none)
    -> post RMSNorm (``v.post_ln``)
    -> each 2x2 block through the downsampling conv (``mm.patch_merger``, a 2x2 kernel of stride 2, plus its bias:
       one row of the text model's width a block)
    -> the merger: ``mm.model.fc``, LayerNorm (``mm.post_norm``, eps 1e-5), GELU, then SiLU(``mm.gate``) *
       ``mm.up``, ``mm.down``
    -> [ny * nx, n_text_embd], the blocks in raster order.

ggml's CPU numerics are followed as in models/qwen2vl_image.py: F16 weights multiply an F16 copy of their input, the
patch kernels run in F16, GELU is ggml's F16 table.
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
from .qwen2vl_image import MERGE, QUERY_CHUNK, Qwen2VLEncoder, check_pixels, norm, patch_rows, vision_rope
from .vit_ops import ops_of
from .siglip import _f16

MERGER_EPS = 1e-5  # clip.cpp's epsilon of the merger's LayerNorm (fixed, whatever the file's)
CUBIC_A = -0.75  # ggml's (and PyTorch's) bicubic coefficient


def _cubic_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of a bicubic resize with half-pixel centres (ggml's BICUBIC without ALIGN_CORNERS):
    output i samples input ``(i + 0.5) * n_in / n_out - 0.5`` from its 4 neighbours, indices clamped to the edges."""
    A = CUBIC_A
    w = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        x = (i + 0.5) * n_in / n_out - 0.5
        x0 = int(np.floor(x))
        t = x - x0
        taps = (((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A, ((A + 2) * t - (A + 3)) * t * t + 1,
                ((A + 2) * (1 - t) - (A + 3)) * (1 - t) * (1 - t) + 1,
                ((A * (2 - t) - 5 * A) * (2 - t) + 8 * A) * (2 - t) - 4 * A)  # fmt: skip
        for k, wk in zip(range(-1, 3), taps):
            w[i, min(max(x0 + k, 0), n_in - 1)] += wk
    return w


def resize_positions(pos: np.ndarray, side: int, nx: int, ny: int) -> np.ndarray:
    """A square grid of position embeddings [side*side, E] (raster order) resized to nx x ny patches [ny*nx, E], as
    clip.cpp's ``resize_position_embeddings`` does for GLM-4V (measured against libmtmd: bicubic with half-pixel
    centres matches to 5e-3 on rows ~7; bilinear, aligned or not, antialiased or not, is 1 to 4 off)."""
    if (nx, ny) == (side, side):
        return pos
    g = pos.reshape(side, side, -1).astype(np.float64)
    g = np.einsum("yi,ixe->yxe", _cubic_weights(side, ny), g)
    g = np.einsum("xj,yje->yxe", _cubic_weights(side, nx), g)
    return np.ascontiguousarray(g.reshape(ny * nx, -1), np.float32)


class Glm4VEncoder(Qwen2VLEncoder):
    """GLM-4V's vision encoder, downsampling conv and merger from an mmproj file: :meth:`encode` pixels into rows
    ``n_text_embd`` wide.  Qwen2-VL's patch embedding, products and rope, inherited, with RMSNorms throughout."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend, patches=False)  # (two patch kernels, below)
        self.rms = True
        E, p = cfg.n_embd, cfg.patch_size
        self.kernels = [_f16(self._tensor(g, n, E * 3 * p * p).reshape(E, 3 * p * p)) for n in ("v.patch_embd.weight", "v.patch_embd.weight.1")]
        self.patch_b = self._vector(g, "v.patch_embd.bias")
        self.embd_norm = self._tensor(g, "v.norm_embd.weight", E)
        self.embd_norm_b = self._vector(g, "v.norm_embd.bias")
        pos = self._tensor(g, "v.position_embd.weight", None)
        side = math.isqrt(pos.size // E)
        if side * side * E != pos.size:
            raise KvrunError(f"{g.path}: v.position_embd.weight holds {pos.size // E} positions, not a square grid")
        self.pos, self.pos_side = pos.reshape(side * side, E), side
        self.layers: list[dict[str, Any]] = []
        for i in range(cfg.n_layer):
            b = f"v.blk.{i}."
            L: dict[str, Any] = {r: ld.host_vector(f"v_{r}", i, required=r in ("ln1", "ln2")) for r in ("ln1", "ln1_b", "ln2", "ln2_b")}
            fused = b + "attn_qkv.weight" in g.tensors  # (else Q, K and V apart, which clip.cpp's build_vit takes too)
            for r in ("attn_qkv",) if fused else ("attn_q", "attn_k", "attn_v"):
                L[r], L[r + "_b"] = self._named_matrix(ld, b + r + ".weight"), self._vector(g, b + r + ".bias")
            for r in ("attn_out", "ffn_gate", "ffn_up", "ffn_down"):
                L[r], L[r + "_b"] = self._named_matrix(ld, b + r + ".weight"), self._vector(g, b + r + ".bias")
            self.layers.append(L)
        self.post_ln, self.post_ln_b = self._tensor(g, "v.post_ln.weight", E), self._vector(g, "v.post_ln.bias")
        T = cfg.n_text_embd
        self.down_conv = self._tensor(g, "mm.patch_merger.weight", T * E * MERGE * MERGE).reshape(T, E, MERGE, MERGE)
        self.down_conv_b = self._vector(g, "mm.patch_merger.bias")
        self.down_k = self.down_conv.reshape(T, E * MERGE * MERGE)  # (the conv as a matrix over each block's patches)
        self.fc = self._named_matrix(ld, "mm.model.fc.weight")
        self.merger_norm, self.merger_norm_b = self._tensor(g, "mm.post_norm.weight", T), self._vector(g, "mm.post_norm.bias")
        self.gate, self.up, self.down = (self._named_matrix(ld, f"mm.{r}.weight") for r in ("gate", "up", "down"))

    @staticmethod
    def _tensor(g: GGUFFile, name: str, n: int | None) -> np.ndarray:
        """A required tensor as float32 (flat), ``n`` elements where given; a one-line error otherwise."""
        t = g.tensors.get(name)
        if t is None:
            raise KvrunError(f"{g.path}: tensor {name!r} is missing; the GLM-4V projector file is incomplete")
        if n is not None and t.n_elements != n:
            raise KvrunError(f"{g.path}: {name} has shape {t.shape}, {t.n_elements} elements where {n} were expected")
        return dequantize(t.data, t.qtype, t.shape).reshape(-1).astype(np.float32)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (qwen2vl_image.preprocess; sides whole 2x2 blocks of patches) -> the rows
        [ny * nx, n_text_embd], blocks in raster order."""
        check_pixels(self.cfg, pixels)
        return _forward(ops_of(self, QUERY_CHUNK), self, pixels)


def _forward(ops: Any, enc: Glm4VEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`Glm4VEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the pixels
    go up once and the rows come down once): Qwen2-VL's patches, the patch bias, ``v.norm_embd``, the resized
    positions (in block order), the RMSNorm blocks with the 2-D rope and SiLU(gate) * up, the post RMSNorm, the 2x2
    downsampling conv (kernel [out, E, dy, dx] over each block's patches channel-major, plus its bias: measured,
    llama.cpp adds it, without it the rows are 1.3 off), ``mm.model.fc``, LayerNorm, GELU and the SwiGLU merger."""
    c, xp = enc.cfg, ops.xp
    p = c.patch_size
    npy, npx = pixels.shape[1] // p, pixels.shape[2] // p
    x, ys, xs = patch_rows(ops, enc, pixels)
    if enc.patch_b is not None:
        x = x + ops.const(enc.patch_b)
    x = norm(ops, enc, x, enc.embd_norm, enc.embd_norm_b)
    x = x + ops.vector(resize_positions(enc.pos, enc.pos_side, npx, npy)[ys * npx + xs])  # (the picture's grid, in block order)
    T, H, E = x.shape[0], c.n_head, c.n_embd
    D = E // H
    cos, sin = (ops.vector(t) for t in vision_rope(ys, xs, D))
    scale = np.float32(1.0 / math.sqrt(D))
    for L in enc.layers:
        h = norm(ops, enc, x, L["ln1"], L["ln1_b"])
        if "attn_qkv" in L:
            qkv = ops.linear(L["attn_qkv"], h, L["attn_qkv_b"])
        else:
            qkv = xp.concatenate([ops.linear(L[r], h, L[r + "_b"]) for r in ("attn_q", "attn_k", "attn_v")], axis=1)
        q, k = ops.rope_neox(qkv[:, :E].reshape(T, H, D), qkv[:, E : 2 * E].reshape(T, H, D), cos, sin)
        a = ops.attend(q, k, qkv[:, 2 * E :].reshape(T, H, D), scale)
        x = x + ops.linear(L["attn_out"], a, L["attn_out_b"])
        h = norm(ops, enc, x, L["ln2"], L["ln2_b"])
        act = ops.act(ops.linear(L["ffn_gate"], h, L["ffn_gate_b"]), "silu") * ops.linear(L["ffn_up"], h, L["ffn_up_b"])
        x = x + ops.linear(L["ffn_down"], act, L["ffn_down_b"])
    x = norm(ops, enc, x, enc.post_ln, enc.post_ln_b)
    blocks = xp.ascontiguousarray(xp.transpose(x.reshape(T // 4, MERGE, MERGE, E), (0, 3, 1, 2)).reshape(T // 4, E * MERGE * MERGE))
    y = ops.linear(enc.fc, ops.product64(blocks, enc.down_k, enc.down_conv_b))
    y = ops.act(ops.layer_norm(y, enc.merger_norm, enc.merger_norm_b, MERGER_EPS), "gelu")
    act = ops.act(ops.linear(enc.gate, y), "silu") * ops.linear(enc.up, y)
    return ops.to_host(xp.ascontiguousarray(ops.linear(enc.down, act), np.float32))
