"""dots.ocr's image side (rednote's NaViT encoder and its patch merger), as llama.cpp 0.3.36's clip.cpp builds it
(``clip_graph_dotsocr`` for PROJECTOR_TYPE_DOTS_OCR, projector type "dots_ocr") from an mmproj file (loaders/mmproj.py).

The picture keeps (about) its own size and aspect, as libmtmd's dynamic-size preprocessor sizes it: its sides rounded
to whole blocks of n_merge x n_merge patches and scaled, if need be, into the file's ``image_min_pixels`` ..
``image_max_pixels`` (Hugging Face's ``smart_resize``: models/qwen2vl_image.py's :func:`~kvrun.models.qwen2vl_image.smart_size`),
then resized into that size keeping its aspect, clip.cpp's bicubic, centred on black.  Its rows:

    pixels [3, H, W] -> patches of p x p embedded by the patch kernel (F16, as ggml's conv_2d) + bias, raster order
       (no position table: the rope places the patches)
    -> RMSNorm ``v.pre_ln`` (the patchifier's norm)
    -> n_layer pre-norm ViT blocks: RMSNorm, the fused ``attn_qkv`` product (Q, K, V its thirds), Qwen2-VL's vision
       rope (ggml's ``rope_multi`` in vision mode, sections of head/4: a head's first quarter of pairs turned by the
       patch's row, the second by its column, pairs (i, i + head/2), base 10000), attention both ways, the output
       product, residual; RMSNorm, SwiGLU MLP (SiLU(gate) * up, down), residual
    -> RMSNorm ``mm.post_norm`` (the trunk's post norm; the file's epsilon as every ViT norm's)
    -> LayerNorm ``mm.input_norm`` (eps 1e-6, fixed in clip.cpp) on each patch
    -> each n_merge x n_merge block's patches side by side (clip.cpp's ``build_patch_merge_permute``: the block's rows
       in order, each row's patches in order), the blocks in raster order
    -> ``mm.0`` (+ bias), GELU (exact, erf: ggml_gelu_erf), ``mm.2`` (+ bias) -> [(H/mp)(W/mp), n_text_embd]

What sets it apart from its neighbours: Qwen2.5-VL's ViT (models/qwen2vl_image.py) takes its patches in 2x2 blocks and
merges them as they lie, with no pre-norm; PaddleOCR-VL's (models/paddleocr_image.py) has LayerNorms, a position grid
and stacks four consecutive patches.  dots.ocr keeps raster order through the ViT and merges true blocks at the end.
ggml's CPU numerics are followed where they show, as models/siglip.py does.  runtime/vision_dotsocr.py lays the rows out.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import MmprojConfig
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .paddleocr_image import grid, preprocess, target_size  # (PaddleOCR-VL's sizing and pixels: block-aligned, bicubic, padded)
from .qwen2vl_image import QUERY_CHUNK, vision_rope
from .siglip import MmprojEncoder
from .vit_ops import merge_permute, ops_of

__all__ = ["DotsOCREncoder", "grid", "preprocess", "target_size"]

F32 = np.float32
TENSOR_NAMES.update({  # (dots.ocr's names as its converter writes them: clip.cpp's TN_* for PROJECTOR_TYPE_DOTS_OCR)
    "dots_pre_ln": "v.pre_ln.weight", "dots_pre_ln_b": "v.pre_ln.bias",
    "dots_qkv": "v.blk.{i}.attn_qkv.weight", "dots_qkv_b": "v.blk.{i}.attn_qkv.bias",
    "dots_gate": "v.blk.{i}.ffn_gate.weight", "dots_gate_b": "v.blk.{i}.ffn_gate.bias",
    "dots_post_norm": "mm.post_norm.weight",
    "dots_in_norm": "mm.input_norm.weight", "dots_in_norm_b": "mm.input_norm.bias",
    "dots_mm0": "mm.0.weight", "dots_mm0_b": "mm.0.bias", "dots_mm2": "mm.2.weight", "dots_mm2_b": "mm.2.bias",
})  # fmt: skip
MERGER_EPS = 1e-6  # clip.cpp's epsilon of the merger's LayerNorm (hard-coded, whatever the file's)


def fused_qkv_layer(ld: WeightLoader, i: int, E: int, kv: int, tag: str, mlp: bool = True) -> dict[str, Any]:
    """Block ``i``'s weights from the loader ``ld`` where Q, K and V are one fused ``<tag>_qkv`` [E + 2 kv, E] (its
    optional bias likewise) and the MLP is SwiGLU with a ``<tag>_gate``: the norms ``ln1`` / ``ln2`` (biases optional),
    ``q`` / ``k`` / ``v`` as clip.cpp's views of the fused product, ``o``, ``up``, ``down`` and ``gate`` (dots.ocr's;
    EXAONE 4.5's with kv narrower; without ``mlp``, no MLP: dots.note's blocks of experts)."""
    L: dict[str, Any] = {}
    for r in ("ln1", "ln2"):
        L[r], L[r + "_b"] = ld.host_vector(f"v_{r}", i), ld.host_vector(f"v_{r}_b", i, required=False)
    L["q"], L["k"], L["v"] = ld.matrix_rows(f"{tag}_qkv", i, (E, kv, kv))
    b = ld.host_vector(f"{tag}_qkv_b", i, required=False)
    L["q_b"], L["k_b"], L["v_b"] = (None,) * 3 if b is None else (b[:E], b[E : E + kv], b[E + kv :])
    for r in ("o", "up", "down") if mlp else ("o",):
        L[r], L[r + "_b"] = ld.matrix(f"v_{r}", i), ld.host_vector(f"v_{r}_b", i, required=False)
    if mlp:
        L["gate"], L["gate_b"] = ld.matrix(f"{tag}_gate", i), ld.host_vector(f"{tag}_gate_b", i, required=False)
    return L


class DotsOCREncoder(MmprojEncoder):
    """dots.ocr's vision encoder and patch merger from an mmproj file: :meth:`encode` pixels of any block-aligned size."""

    def __init__(self, g: GGUFFile, cfg: MmprojConfig, backend: Backend) -> None:
        ld = self._begin(g, cfg, backend)  # (the patch kernel in F16 and its bias)
        E = cfg.n_embd
        self.pre_ln, self.pre_ln_b = ld.host_vector("dots_pre_ln", required=False), ld.host_vector("dots_pre_ln_b", required=False)
        self.layers = []
        for i in range(cfg.n_layer):
            self.layers.append(self.load_block(ld, i))
        self.post_norm = ld.host_vector("dots_post_norm")
        self.in_norm, self.in_norm_b = ld.host_vector("dots_in_norm"), ld.host_vector("dots_in_norm_b")
        self.mm0, self.mm0_b = ld.matrix("dots_mm0"), ld.host_vector("dots_mm0_b")
        self.mm2, self.mm2_b = ld.matrix("dots_mm2"), ld.host_vector("dots_mm2_b")
        k = cfg.n_merge * cfg.n_merge
        if self.mm0.shape[1] != E * k:
            raise KvrunError(f"{g.path}: mm.0.weight takes {self.mm0.shape[1]} inputs, not {k} merged patches of {E}")

    def load_block(self, ld: WeightLoader, i: int) -> dict[str, Any]:
        """Block ``i``'s weights (dots.note's encoder, models/dots3note_image.py, adds its own)."""
        return fused_qkv_layer(ld, i, self.cfg.n_embd, self.cfg.n_embd, "dots")

    def heads(self, ops: Any, L: dict[str, Any], r: str, t: Any) -> Any:
        """A block's queries (``r`` "q") or keys ("k") [T, H, D] before the rope: as they are (dots.note RMS-norms each
        head here)."""
        return t

    def mlp(self, ops: Any, L: dict[str, Any], h: Any) -> Any:
        """A block's MLP of its normed input ``h``: SwiGLU (dots.note routes some blocks' to experts)."""
        act = ops.act(ops.linear(L["gate"], h, L["gate_b"]), self.cfg.ffn_op) * ops.linear(L["up"], h, L["up_b"])  # (silu: ggml's swiglu_split)
        return ops.linear(L["down"], act, L["down_b"])

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Normalised ``pixels`` [3, H, W] (:func:`preprocess`; sides whole blocks) -> rows [blocks, n_text_embd]."""
        c = self.cfg
        f = c.patch_size * c.n_merge
        if pixels.ndim != 3 or pixels.shape[0] != 3 or pixels.shape[1] % f or pixels.shape[2] % f:
            raise KvrunError(f"the dots.ocr encoder takes pixels [3, H, W] with sides multiples of {f}, got {list(pixels.shape)}")
        return _forward(ops_of(self, QUERY_CHUNK), self, pixels)


def _forward(ops: Any, enc: DotsOCREncoder, pixels: np.ndarray) -> np.ndarray:
    """:meth:`DotsOCREncoder.encode` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU the
    pixels go up once and the rows come down once), as the module's docstring lists the steps."""
    c, xp = enc.cfg, ops.xp
    p, m = c.patch_size, c.n_merge
    ny, nx = pixels.shape[1] // p, pixels.shape[2] // p
    T, H = nx * ny, c.n_head
    D = c.n_embd // H
    x = ops.embed_patches(pixels)  # (ggml's conv_2d: F16 patches and kernel, then the bias)
    if enc.pre_ln is not None:
        x = ops.rms_norm(x, enc.pre_ln, c.eps, enc.pre_ln_b)
    idx = np.arange(T)
    cos, sin = (ops.vector(t) for t in vision_rope(idx // nx, idx % nx, D))  # (positions [y, x, y, x] a patch, raster order)
    scale = F32(1.0 / math.sqrt(D))
    for L in enc.layers:
        h = ops.rms_norm(x, L["ln1"], c.eps, L["ln1_b"])
        q, k = ops.rope_neox(*(enc.heads(ops, L, r, ops.linear(L[r], h, L[r + "_b"]).reshape(T, H, D)) for r in ("q", "k")), cos, sin)
        v = ops.linear(L["v"], h, L["v_b"]).reshape(T, H, D)
        x = x + ops.linear(L["o"], ops.attend(q, k, v, scale), L["o_b"])
        x = x + enc.mlp(ops, L, ops.rms_norm(x, L["ln2"], c.eps, L["ln2_b"]))
    x = ops.rms_norm(x, enc.post_norm, c.eps)
    x = merge_permute(ops.layer_norm(x, enc.in_norm, enc.in_norm_b, MERGER_EPS), nx, ny, m)
    x = ops.linear(enc.mm2, ops.act(ops.linear(enc.mm0, x, enc.mm0_b), "gelu_erf"), enc.mm2_b)
    return ops.to_host(xp.ascontiguousarray(x, F32))
