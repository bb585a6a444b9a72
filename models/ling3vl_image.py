"""Ling 3 VL's image side (inclusionAI's Ling-3.0 VL), as llama.cpp's clip.cpp builds it (``clip_graph_ling3vl`` for
projector type "ling3vl") from an mmproj file (loaders/mmproj.py).

llama.cpp's converter (conversion/bailingmoe3.py) writes Ling 3 VL's vision tower as Qwen3-VL's
(models/qwen3vl_image.py) with its merger cut down to the norm: Ling's ``merger.norm`` becomes ``mm.input_norm`` and
its top-level ``linear_proj.0`` / ``.2`` the MLP ``mm.0`` / ``mm.2``; no DeepStack levels are read (clip.cpp loads none
for this type), and Ling's files carry no patch bias.  libmtmd sizes the picture as Qwen2-VL's (models/
qwen2vl_image.py: whole 2x2 blocks of patches, 8 to 4096 merged rows' worth, bicubic).  Its rows are:

    pixels [3, H, W] -> patches of p x p, each embedded by the conv3d's two temporal kernels added, plus
       ``v.patch_embd.bias`` where the file has one, the patches in 2x2 blocks
       (models/qwen2vl_image.block_order)
    -> plus the learned position embeddings ``v.position_embd`` (a square grid) resized to the picture's patches,
       bilinear with aligned corners (Qwen3-VL's :func:`~.qwen3vl_image.resize_positions`), in block order likewise
    -> ``v.pre_ln`` (LayerNorm) where the file has one (clip.cpp's build_vit reads it optionally)
    -> n_layer pre-norm ViT blocks as Qwen3-VL's: LayerNorm, a fused QKV product (+ bias), Qwen2-VL's 2-D rope,
       attention, output (+ bias), residual; LayerNorm, up, the file's activation (``clip.use_gelu``), down (biases),
       residual
    -> ``v.post_ln`` (LayerNorm) where the file has one
    -> the merger norm ``mm.input_norm`` (LayerNorm over each PATCH, before the merge: where Qwen3-VL's DeepStack
       mergers norm the merged 4 x n_embd row)
    -> each 2x2 block's 4 patches side by side -> mm.0 (+ bias), GELU, mm.2 (+ bias)
    -> [ny * nx, n_text_embd], the blocks in raster order

ggml's CPU numerics are followed as models/qwen2vl_image.py follows them (F16 patch kernels, an F16 copy of the input
of an F16 weight, the F16 GELU table).  runtime/vision_ling3vl.py lays the rows out (Qwen2-VL's M-RoPE layout).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..ops.backend import Backend
from .common import TENSOR_NAMES
from .qwen2vl_image import QUERY_CHUNK, Qwen2VLEncoder, check_pixels, patch_kernels, patch_rows, vision_rope
from .qwen3vl_image import resize_positions
from .vit_ops import ops_of

F32 = np.float32
TENSOR_NAMES.update({  # (Ling 3 VL's names as conversion/bailingmoe3.py writes them: clip.cpp's TN_* for PROJECTOR_TYPE_LING3VL)
    "l3_pre_ln": "v.pre_ln.weight", "l3_pre_ln_b": "v.pre_ln.bias",
    "l3_pos": "v.position_embd.weight",
    "l3_qkv": "v.blk.{i}.attn_qkv.weight", "l3_qkv_b": "v.blk.{i}.attn_qkv.bias",
    "l3_in_norm": "mm.input_norm.weight", "l3_in_norm_b": "mm.input_norm.bias",
    "l3_mm0": "mm.0.weight", "l3_mm0_b": "mm.0.bias", "l3_mm2": "mm.2.weight", "l3_mm2_b": "mm.2.bias",
})  # fmt: skip


class Ling3VLEncoder(Qwen2VLEncoder):
    """Ling 3 VL's vision encoder and merger from an mmproj file: :meth:`encode` pixels into rows [n, n_text_embd]."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend, patches=False)  # (two patch kernels, below)
        self.rms = False
        E, p = cfg.n_embd, cfg.patch_size
        self.kernels = patch_kernels(g, E, p)
        self.patch_b = ld.host_vector("v_patch_b", required=False)  # (Ling's converter writes none; clip.cpp adds one if there)
        if "v.class_embd" in g.tensors:  # (clip.cpp asserts there is none)
            raise KvrunError(f"{g.path}: v.class_embd is present; llama.cpp's Ling 3 VL graph has no class embedding")
        pos = ld.host_vector("l3_pos")
        side = math.isqrt(pos.size // E)
        if side * side * E != pos.size:
            raise KvrunError(f"{g.path}: v.position_embd.weight holds {pos.size // E} positions, not a square grid")
        self.pos, self.pos_side = pos.reshape(side * side, E), side
        self.pre_ln, self.pre_ln_b = ld.host_vector("l3_pre_ln", required=False), ld.host_vector("l3_pre_ln_b", required=False)
        self.layers: list[dict[str, Any]] = []
        for i in range(cfg.n_layer):
            L: dict[str, Any] = {r: ld.host_vector(f"v_{r}", i, required=r in ("ln1", "ln2")) for r in ("ln1", "ln1_b", "ln2", "ln2_b")}
            L["qkv"], L["qkv_b"] = ld.matrix("l3_qkv", i), ld.host_vector("l3_qkv_b", i, required=False)
            for r in ("o", "up", "down"):
                L[r], L[r + "_b"] = ld.matrix(f"v_{r}", i), ld.host_vector(f"v_{r}_b", i, required=False)
            self.layers.append(L)
        self.post_ln, self.post_ln_b = ld.host_vector("v_post_ln", required=False), ld.host_vector("v_post_ln_b", required=False)
        self.in_norm, self.in_norm_b = ld.host_vector("l3_in_norm"), ld.host_vector("l3_in_norm_b")  # (clip.cpp requires both)
        self.mm0, self.mm0_b = ld.matrix("l3_mm0"), ld.host_vector("l3_mm0_b")
        self.mm2, self.mm2_b = ld.matrix("l3_mm2"), ld.host_vector("l3_mm2_b")
        if self.mm0.shape[1] != 4 * E:
            raise KvrunError(f"{g.path}: mm.0.weight takes {self.mm0.shape[1]} inputs, not 4 merged patches of {E}")

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (qwen2vl_image.preprocess; sides whole 2x2 blocks of patches) -> the rows
        [ny * nx, n_text_embd], blocks in raster order."""
        check_pixels(self.cfg, pixels)
        return _forward(ops_of(self, QUERY_CHUNK), self, pixels)


def merger(ops: Any, enc: Ling3VLEncoder, x: Any) -> Any:
    """The merger: ``mm.input_norm`` over each patch [T, n_embd], each block's 4 patches side by side, mm.0, GELU,
    mm.2 (clip.cpp's build_norm, then build_ffn with FFN_GELU)."""
    E = enc.cfg.n_embd
    x = ops.layer_norm(x, enc.in_norm, enc.in_norm_b, enc.cfg.eps)
    x = x.reshape(len(x) // 4, 4 * E)
    return ops.linear(enc.mm2, ops.act(ops.linear(enc.mm0, x, enc.mm0_b), "gelu"), enc.mm2_b)


def _forward(ops: Any, enc: Ling3VLEncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`Ling3VLEncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once), as the module's docstring lists the steps."""
    c, xp = enc.cfg, ops.xp
    p = c.patch_size
    npy, npx = pixels.shape[1] // p, pixels.shape[2] // p
    x, ys, xs = patch_rows(ops, enc, pixels)
    if enc.patch_b is not None:
        x = x + ops.const(enc.patch_b)
    x = x + ops.vector(resize_positions(enc.pos, enc.pos_side, npx, npy)[ys * npx + xs])  # (the picture's grid, in block order)
    if enc.pre_ln is not None:
        x = ops.layer_norm(x, enc.pre_ln, enc.pre_ln_b, c.eps)
    T, H, E = x.shape[0], c.n_head, c.n_embd
    D = E // H
    cos, sin = (ops.vector(t) for t in vision_rope(ys, xs, D))
    scale = F32(1.0 / math.sqrt(D))
    for L in enc.layers:
        h = ops.layer_norm(x, L["ln1"], L["ln1_b"], c.eps)
        qkv = ops.linear(L["qkv"], h, L["qkv_b"])
        q, k = ops.rope_neox(qkv[:, :E].reshape(T, H, D), qkv[:, E : 2 * E].reshape(T, H, D), cos, sin)
        a = ops.attend(q, k, qkv[:, 2 * E :].reshape(T, H, D), scale)
        x = x + ops.linear(L["o"], a, L["o_b"])
        h = ops.layer_norm(x, L["ln2"], L["ln2_b"], c.eps)
        x = x + ops.linear(L["down"], ops.act(ops.linear(L["up"], h, L["up_b"]), c.ffn_op), L["down_b"])
    if enc.post_ln is not None:
        x = ops.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    return ops.to_host(xp.ascontiguousarray(merger(ops, enc, x), F32))
