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

from ..loaders.errors import KvrunError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .bert import gelu, layer_norm
from .common import WeightLoader
from .qwen2vl_image import MERGE, QUERY_CHUNK, Qwen2VLEncoder, block_order, vision_rope
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
        if backend.name not in ("cpu", "gpu"):  # (on the GPU: models/vit_device.py)
            raise UnsupportedModelError(f"{g.path}: the vision encoder runs on the CPU; drop --device gpu to pass images")
        self.cfg, self.be, self.path, self.rms = cfg, backend, g.path, True
        ld = WeightLoader(g, backend)
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

    def downsample(self, x: np.ndarray) -> np.ndarray:
        """Patches [T, E] in block order -> one row a 2x2 block [T/4, n_text_embd]: the 2x2 conv of stride 2 (kernel
        [out, E, dy, dx] over the block's patches in raster order), plus its bias where the file has one (measured:
        llama.cpp adds it; without it the rows are 1.3 off)."""
        E = self.cfg.n_embd
        blocks = x.reshape(len(x) // 4, MERGE, MERGE, E).transpose(0, 3, 1, 2).reshape(len(x) // 4, E * MERGE * MERGE)
        k = self.down_conv.reshape(len(self.down_conv), E * MERGE * MERGE)
        out = (blocks.astype(np.float64) @ k.T.astype(np.float64)).astype(np.float32)
        return out + self.down_conv_b if self.down_conv_b is not None else out

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (qwen2vl_image.preprocess; sides whole 2x2 blocks of patches) -> the rows
        [ny * nx, n_text_embd], blocks in raster order."""
        c = self.cfg
        p = c.patch_size
        if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.shape[1] % (2 * p) or pixels.shape[2] % (2 * p):
            raise KvrunError(f"the vision encoder takes pixels [3, H, W] with sides multiples of {2 * p}, got {list(pixels.shape)}")
        if self.be.name == "gpu":  # (the activations on the device, the rows down once: models/vit_device.py)
            from .vit_device import glm4v_rows

            return glm4v_rows(self, pixels)
        npy, npx = pixels.shape[1] // p, pixels.shape[2] // p
        ys, xs = block_order(npx, npy)
        x = self.patch_embeddings(pixels)
        if self.patch_b is not None:
            x = x + self.patch_b
        x = self._norm(x, self.embd_norm, self.embd_norm_b)
        x = x + resize_positions(self.pos, self.pos_side, npx, npy)[ys * npx + xs]  # (the picture's grid, in block order)
        T, H, E = x.shape[0], c.n_head, c.n_embd
        D = E // H
        cos, sin = vision_rope(ys, xs, D)
        scale = np.float32(1.0 / math.sqrt(D))

        def rope(t: np.ndarray) -> np.ndarray:  # [T, H, D], neox pairs (i, i + D/2)
            a, b = t[..., : D // 2], t[..., D // 2 :]
            cc, ss = cos[:, None, :], sin[:, None, :]
            return np.concatenate([a * cc - b * ss, a * ss + b * cc], axis=-1)

        for L in self.layers:
            h = self._norm(x, L["ln1"], L["ln1_b"])
            if "attn_qkv" in L:
                qkv = self._linear(L["attn_qkv"], h, L["attn_qkv_b"])
            else:
                qkv = np.concatenate([self._linear(L[r], h, L[r + "_b"]) for r in ("attn_q", "attn_k", "attn_v")], axis=1)
            q, k = rope(qkv[:, :E].reshape(T, H, D)), rope(qkv[:, E : 2 * E].reshape(T, H, D))
            v = qkv[:, 2 * E :].reshape(T, H, D)
            a = np.empty((T, H, D), np.float32)
            for q0 in range(0, T, QUERY_CHUNK):  # (a big picture's scores a slice of queries at a time)
                for hd in range(H):
                    sc = (q[q0 : q0 + QUERY_CHUNK, hd] @ k[:, hd].T) * scale
                    sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
                    sc /= sc.sum(axis=-1, keepdims=True)
                    a[q0 : q0 + QUERY_CHUNK, hd] = sc @ v[:, hd]
            x = x + self._linear(L["attn_out"], a.reshape(T, E), L["attn_out_b"])
            h = self._norm(x, L["ln2"], L["ln2_b"])
            g = self._linear(L["ffn_gate"], h, L["ffn_gate_b"])
            act = g / (np.float32(1.0) + np.exp(-g)) * self._linear(L["ffn_up"], h, L["ffn_up_b"])
            x = x + self._linear(L["ffn_down"], act.astype(np.float32), L["ffn_down_b"])
        x = self._norm(x, self.post_ln, self.post_ln_b)
        y = self._linear(self.fc, self.downsample(x), None)
        y = gelu(layer_norm(y, self.merger_norm, self.merger_norm_b, MERGER_EPS))
        g = self._linear(self.gate, y, None)
        act = g / (np.float32(1.0) + np.exp(-g)) * self._linear(self.up, y, None)
        return np.ascontiguousarray(self._linear(self.down, act.astype(np.float32), None), np.float32)
