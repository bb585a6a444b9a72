"""EXAONE 4.5's image side (LG's vision-language EXAONE), as llama.cpp's clip.cpp builds it (``clip_graph_exaone4_5``
for projector type "exaone4_5") from an mmproj file (loaders/mmproj.py), and the picture's size as libmtmd's
dynamic-size preprocessor chooses it.

clip.cpp's graph is Qwen2.5-VL's (models/qwen2vl_image.py) but for grouped-query attention, and libmtmd sizes the
picture as Qwen2-VL's (``mtmd_image_preprocessor_dyn_size``: bicubic, padded with black), within the file's own pixel
limits (``clip.vision.image_min_pixels`` / ``image_max_pixels``, which clip.cpp requires).  Its rows are:

    pixels [3, H, W] -> patches of p x p, each embedded by the conv3d's two temporal kernels added (no bias, no
       position embeddings), the patches in 2x2 blocks (Qwen2-VL's :func:`~.qwen2vl_image.block_order`)
    -> n_layer pre-norm ViT blocks: RMSNorm; ONE fused ``attn_qkv`` product (+ bias) whose rows are Q's n_head heads,
       then K's and V's ``clip.vision.attention.head_count_kv`` heads each; Qwen2-VL's 2-D vision rope on Q and K (base
       10000); attention with query head h reading key/value head h // (n_head / n_head_kv) (ggml's broadcast in
       mul_mat), scale 1/sqrt(head_dim); the output product (+ bias), residual; RMSNorm, SiLU(gate) * up, down (biases
       all), residual.  With ``clip.vision.n_wa_pattern`` n > 0, every layer but each n-th attends within windows of
       112 x 112 pixels (clip.cpp's fixed default: this projector reads no window size), cut short at the right and
       bottom; the n-th see the whole picture
    -> post RMSNorm -> each 2x2 block's 4 patches side by side -> mm.0 (+ bias), GELU, mm.2 (+ bias)
    -> [ny * nx, n_text_embd], the blocks in raster order

ggml's CPU numerics are followed as models/qwen2vl_image.py follows them (F16 patch kernels, the F16 GELU table);
windowed attention runs in the picture's own order, each window's patches among themselves, which is the same sums
as clip.cpp's window permutation and mask.  runtime/vision_exaone45.py lays the rows out.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..ops.backend import Backend
from .common import TENSOR_NAMES
from .dotsocr_image import fused_qkv_layer
from .qwen2vl_image import QUERY_CHUNK, check_pixels, patch_kernels, patch_rows, preprocess, target_size, vision_rope, windows
from .siglip import MmprojEncoder
from .vit_ops import ops_of

__all__ = ["Exaone45Encoder", "grid", "preprocess", "target_size", "kv_heads"]

F32 = np.float32
MERGE = 2  # patches a side merged into one row (clip.cpp's graph merges 2x2)
TENSOR_NAMES.update({  # (EXAONE 4.5's names as its converter writes them: clip.cpp's TN_* for PROJECTOR_TYPE_EXAONE4_5)
    "ex45_qkv": "v.blk.{i}.attn_qkv.weight", "ex45_qkv_b": "v.blk.{i}.attn_qkv.bias",
    "ex45_gate": "v.blk.{i}.ffn_gate.weight", "ex45_gate_b": "v.blk.{i}.ffn_gate.bias",
    "ex45_mm0": "mm.0.weight", "ex45_mm0_b": "mm.0.bias", "ex45_mm2": "mm.2.weight", "ex45_mm2_b": "mm.2.bias",
})  # fmt: skip


def grid(width: int, height: int, cfg: MmprojConfig) -> tuple[int, int]:
    """(nx, ny): the merged rows a width x height picture becomes, a side."""
    w, h = target_size(width, height, cfg)
    f = cfg.patch_size * MERGE
    return w // f, h // f


def kv_heads(t: Any, xp: Any, n_head: int) -> Any:
    """K's or V's [T, n_head_kv, D] widened to the queries' n_head heads as ggml's mul_mat broadcasts them: query head
    h reads key/value head h // (n_head / n_head_kv) (each kv head repeated, not the heads tiled)."""
    r = n_head // t.shape[1]
    return t if r == 1 else xp.repeat(t, r, axis=1)


class Exaone45Encoder(MmprojEncoder):
    """EXAONE 4.5's vision encoder and merger from an mmproj file: :meth:`encode` pixels into rows."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend, patches=False)  # (two patch kernels, below)
        self.rms = True  # (models/qwen2vl_image.py's ``norm``: RMSNorms throughout)
        E, p, H = cfg.n_embd, cfg.patch_size, cfg.n_head
        self.n_head_kv = int(g.get("clip.vision.attention.head_count_kv", 0) or 0)  # (loaders/mmproj.py checked it)
        kv = E // H * self.n_head_kv
        self.kernels = patch_kernels(g, E, p)
        if "v.patch_embd.bias" in g.tensors:  # (clip.cpp asserts there is none)
            raise UnsupportedModelError(f"{g.path}: v.patch_embd.bias is present; llama.cpp's EXAONE 4.5 graph has no patch bias")
        self.layers = []
        for i in range(cfg.n_layer):
            L = fused_qkv_layer(ld, i, E, kv, "ex45")  # (dots.ocr's block weights, K and V narrower)
            if L["down"].shape[1] == E:  # (clip.cpp's fix for old files, up and down stored swapped: it swaps them back)
                L["up"], L["down"], L["up_b"], L["down_b"] = L["down"], L["up"], L["down_b"], L["up_b"]
            self.layers.append(L)
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln"), ld.host_vector("v_post_ln_b", required=False)
        self.mm0, self.mm0_b = ld.matrix("ex45_mm0"), ld.host_vector("ex45_mm0_b")
        self.mm2, self.mm2_b = ld.matrix("ex45_mm2"), ld.host_vector("ex45_mm2_b")
        if self.mm0.shape[1] != 4 * E:
            raise KvrunError(f"{g.path}: mm.0.weight takes {self.mm0.shape[1]} inputs, not 4 merged patches of {E}")

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (:func:`preprocess`; sides whole 2x2 blocks of patches) -> the rows
        [ny * nx, n_text_embd], blocks in raster order."""
        check_pixels(self.cfg, pixels)
        return _forward(ops_of(self, QUERY_CHUNK), self, pixels)


def _forward(ops: Any, enc: Exaone45Encoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`Exaone45Encoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once), as the module's docstring lists the steps."""
    c, xp = enc.cfg, ops.xp
    p = c.patch_size
    npy, npx = pixels.shape[1] // p, pixels.shape[2] // p
    x, ys, xs = patch_rows(ops, enc, pixels)
    T, H, Hkv = x.shape[0], c.n_head, enc.n_head_kv
    D = c.n_embd // H
    cos, sin = (ops.vector(t) for t in vision_rope(ys, xs, D))
    win = windows(npx, npy, p) if c.n_wa_pattern > 0 else None
    groups = None if win is None else ops.window_groups(win, T)
    everything = ops.window_groups(None, T)
    scale = F32(1.0 / math.sqrt(D))
    for il, L in enumerate(enc.layers):
        full = win is None or (il + 1) % c.n_wa_pattern == 0
        h = ops.rms_norm(x, L["ln1"], c.eps, L["ln1_b"])
        q = ops.linear(L["q"], h, L["q_b"]).reshape(T, H, D)
        k, v = (kv_heads(ops.linear(L[r], h, L[r + "_b"]).reshape(T, Hkv, D), xp, H) for r in ("k", "v"))
        q, k = ops.rope_neox(q, k, cos, sin)  # (per head: the kv heads turned before or after their widening alike)
        a = ops.attend_windows(q, k, v, everything if full else groups, scale)
        x = x + ops.linear(L["o"], a, L["o_b"])
        h = ops.rms_norm(x, L["ln2"], c.eps, L["ln2_b"])
        act = ops.act(ops.linear(L["gate"], h, L["gate_b"]), c.ffn_op) * ops.linear(L["up"], h, L["up_b"])  # (ggml's swiglu)
        x = x + ops.linear(L["down"], act, L["down_b"])
    x = ops.rms_norm(x, enc.post_ln, c.eps, enc.post_ln_b)
    x = x.reshape(T // 4, 4 * c.n_embd)  # (each block's 4 patches side by side)
    x = ops.linear(enc.mm2, ops.act(ops.linear(enc.mm0, x, enc.mm0_b), "gelu"), enc.mm2_b)
    return ops.to_host(xp.ascontiguousarray(x, F32))
