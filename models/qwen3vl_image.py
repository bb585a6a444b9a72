"""Qwen3-VL's image side, as llama.cpp's clip.cpp builds it (``clip_graph_qwen3vl``, projector type "qwen3vl_merger")
from an mmproj file (loaders/mmproj.py).  The picture's size and pixels are Qwen2-VL's (models/qwen2vl_image.py:
Hugging Face's ``smart_resize`` to whole 2x2 blocks of patches, 8 to 4096 merged rows' worth, Pillow's bicubic),
with Qwen3-VL's 16-pixel patches (blocks of 32).  Its rows are then:

    pixels [3, H, W] -> patches of p x p, each embedded by the conv3d's two temporal kernels (kernel 0 + kernel 1,
       both seeing the still picture) plus the patch bias
    -> in 2x2 blocks (models/qwen2vl_image.block_order), plus the learned position embeddings: a square grid
       (``v.position_embd``, 48 x 48 in the published files) resized to the picture's patches by ggml_interpolate,
       bilinear with aligned corners (:func:`resize_positions`; Hugging Face's ``fast_pos_embed_interpolate``, a
       linspace over the grid, is the same), put in block order likewise
    -> n_layer pre-norm ViT blocks: LayerNorm, attention with a fused QKV product (biases) and Qwen2-VL's 2-D rope
       (a head's first quarter of pairs turned by the patch's row, the second by its column), residual; LayerNorm,
       up, GELU, down (biases), residual.  After each layer with a DeepStack merger (``v.deepstack.N``, the layers
       ``clip.vision.is_deepstack_layers`` flags; llama.cpp takes those whose tensors are there): each block's 4
       patches side by side (4 x n_embd), LayerNorm, fc1, GELU, fc2: a DeepStack level [n_rows, n_text_embd]
    -> post LayerNorm, each block's 4 patches side by side -> mm.0 (+ bias), GELU, mm.2 (+ bias): the main rows
    -> [ny * nx, n_text_embd * (1 + n_deepstack)]: the main rows, then the DeepStack levels in layer order, side by side
       (clip.cpp's ggml_concat along the features), which the text model splits again (models/qwen3vl.py: the main
       part is the row's embedding, level j is added to the output of text layer j).

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
from .qwen2vl_image import QUERY_CHUNK, Qwen2VLEncoder, check_pixels, patch_rows, vision_rope
from .vit_ops import ops_of
from .siglip import _f16


def _corner_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of a bilinear resize with aligned corners (ggml's BILINEAR | ALIGN_CORNERS): output i
    samples input ``i * (n_in - 1) / (n_out - 1)``, the ends on the ends."""
    w = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        x = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        x0 = min(int(np.floor(x)), n_in - 1)
        d = x - x0
        w[i, x0] += 1.0 - d
        w[i, min(x0 + 1, n_in - 1)] += d
    return w


def resize_positions(pos: np.ndarray, side: int, nx: int, ny: int) -> np.ndarray:
    """A square grid of position embeddings [side*side, E] (raster order) resized to nx x ny patches [ny*nx, E], as
    clip.cpp's ``resize_position_embeddings`` does for Qwen3-VL (measured against libmtmd: bilinear with aligned
    corners matches to 4e-3 on rows ~12; PyTorch's antialiased bilinear, LFM2-VL's, is 1.5 off)."""
    if (nx, ny) == (side, side):
        return pos
    g = pos.reshape(side, side, -1).astype(np.float64)
    g = np.einsum("yi,ixe->yxe", _corner_weights(side, ny), g)
    g = np.einsum("xj,yje->yxe", _corner_weights(side, nx), g)
    return np.ascontiguousarray(g.reshape(ny * nx, -1), np.float32)


class Qwen3VLEncoder(Qwen2VLEncoder):
    """Qwen3-VL's vision encoder, merger and DeepStack mergers from an mmproj file: :meth:`encode` pixels into rows
    ``n_text_embd * (1 + n_deepstack)`` wide.  Qwen2-VL's encoder with learned positions, a patch bias, fused QKV and
    DeepStack; its patch embedding, products and norms are inherited."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend, patches=False)  # (two patch kernels, below)
        self.rms = False
        E, p = cfg.n_embd, cfg.patch_size
        self.kernels = []
        for name in ("v.patch_embd.weight", "v.patch_embd.weight.1"):
            k = self._tensor(g, name, E * 3 * p * p).reshape(E, 3 * p * p)
            self.kernels.append(_f16(k))
        self.patch_b = self._tensor(g, "v.patch_embd.bias", E)  # (clip.cpp asserts both are there)
        pos = self._tensor(g, "v.position_embd.weight", None)
        side = math.isqrt(pos.size // E)
        if side * side * E != pos.size:
            raise KvrunError(f"{g.path}: v.position_embd.weight holds {pos.size // E} positions, not a square grid")
        self.pos, self.pos_side = pos.reshape(side * side, E), side
        self.layers: list[dict[str, Any]] = []
        self.deepstack: list[tuple[int, dict[str, Any]]] = []
        for i in range(cfg.n_layer):
            b = f"v.blk.{i}."
            L: dict[str, Any] = {r: ld.host_vector(f"v_{r}", i, required=r in ("ln1", "ln2")) for r in ("ln1", "ln1_b", "ln2", "ln2_b")}
            for r in ("attn_qkv", "attn_out", "ffn_up", "ffn_down"):
                L[r], L[r + "_b"] = self._named_matrix(ld, b + r + ".weight"), self._vector(g, b + r + ".bias")
            self.layers.append(L)
            if f"v.deepstack.{i}.fc1.weight" in g.tensors:  # (llama.cpp: a layer whose merger is there is a DeepStack one)
                d = f"v.deepstack.{i}."
                D = {"norm": self._tensor(g, d + "norm.weight", 4 * E), "norm_b": self._vector(g, d + "norm.bias")}
                for r in ("fc1", "fc2"):
                    D[r], D[r + "_b"] = self._named_matrix(ld, d + r + ".weight"), self._vector(g, d + r + ".bias")
                self.deepstack.append((i, D))
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        self.mm0, self.mm0_b = self._named_matrix(ld, "mm.0.weight"), self._vector(g, "mm.0.bias")
        self.mm2, self.mm2_b = self._named_matrix(ld, "mm.2.weight"), self._vector(g, "mm.2.bias")

    @staticmethod
    def _tensor(g: GGUFFile, name: str, n: int | None) -> np.ndarray:
        """A required tensor as float32 (flat), ``n`` elements where given; a one-line error otherwise."""
        t = g.tensors.get(name)
        if t is None:
            raise KvrunError(f"{g.path}: tensor {name!r} is missing; the Qwen3-VL projector file is incomplete")
        if n is not None and t.n_elements != n:
            raise KvrunError(f"{g.path}: {name} has shape {t.shape}, {t.n_elements} elements where {n} were expected")
        return dequantize(t.data, t.qtype, t.shape).reshape(-1).astype(np.float32)

    @property
    def n_deepstack(self) -> int:
        """DeepStack levels each row carries after its main part."""
        return len(self.deepstack)

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (qwen2vl_image.preprocess; sides whole 2x2 blocks of patches) -> the rows
        [ny * nx, n_text_embd * (1 + n_deepstack)], blocks in raster order."""
        check_pixels(self.cfg, pixels)
        return _forward(ops_of(self, QUERY_CHUNK), self, pixels)


def _merged(ops: Any, enc: Qwen3VLEncoder, x: Any, norm: np.ndarray, norm_b: np.ndarray | None, w1: Any, b1: Any, w2: Any, b2: Any,
            norm_before: bool) -> Any:  # fmt: skip
    """Each block's 4 patches side by side, normed (over the patch, ``norm_before``: the merger's post_ln; else over
    the 4 x n_embd row: a DeepStack merger's), then w1, GELU, w2."""
    E = enc.cfg.n_embd
    if norm_before and norm is not None:
        x = ops.layer_norm(x, norm, norm_b, enc.cfg.eps)
    x = x.reshape(len(x) // 4, 4 * E)
    if not norm_before:
        x = ops.layer_norm(x, norm, norm_b, enc.cfg.eps)
    return ops.linear(w2, ops.act(ops.linear(w1, x, b1), "gelu"), b2)


def _forward(ops: Any, enc: Qwen3VLEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`Qwen3VLEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once): the patches and their bias, the resized position embeddings (in
    block order), the blocks with the fused QKV product and the 2-D rope, the DeepStack mergers after their layers,
    the main merger; the main rows and the levels side by side."""
    c, xp = enc.cfg, ops.xp
    p = c.patch_size
    npy, npx = pixels.shape[1] // p, pixels.shape[2] // p
    x, ys, xs = patch_rows(ops, enc, pixels)
    x = x + ops.const(enc.patch_b)
    x = x + ops.vector(resize_positions(enc.pos, enc.pos_side, npx, npy)[ys * npx + xs])  # (the picture's grid, in block order)
    T, H, E = x.shape[0], c.n_head, c.n_embd
    D = E // H
    cos, sin = (ops.vector(t) for t in vision_rope(ys, xs, D))
    scale = np.float32(1.0 / math.sqrt(D))
    levels = []
    taps = dict(enc.deepstack)
    for il, L in enumerate(enc.layers):
        h = ops.layer_norm(x, L["ln1"], L["ln1_b"], c.eps)
        qkv = ops.linear(L["attn_qkv"], h, L["attn_qkv_b"])
        q, k = ops.rope_neox(qkv[:, :E].reshape(T, H, D), qkv[:, E : 2 * E].reshape(T, H, D), cos, sin)
        a = ops.attend(q, k, qkv[:, 2 * E :].reshape(T, H, D), scale)
        x = x + ops.linear(L["attn_out"], a, L["attn_out_b"])
        h = ops.layer_norm(x, L["ln2"], L["ln2_b"], c.eps)
        x = x + ops.linear(L["ffn_down"], ops.act(ops.linear(L["ffn_up"], h, L["ffn_up_b"]), c.ffn_op), L["ffn_down_b"])
        if il in taps:
            S = taps[il]
            levels.append(_merged(ops, enc, x, S["norm"], S["norm_b"], S["fc1"], S["fc1_b"], S["fc2"], S["fc2_b"], False))
    main = _merged(ops, enc, x, enc.post_ln, enc.post_ln_b, enc.mm0, enc.mm0_b, enc.mm2, enc.mm2_b, True)
    return ops.to_host(xp.ascontiguousarray(xp.concatenate([main, *levels], axis=1), np.float32))
