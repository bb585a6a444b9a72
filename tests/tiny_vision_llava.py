"""A tiny random LLaVA pair, for tests held to llama.cpp's libmtmd: projector files (mmproj, ``general.architecture``
"clip", projector types "mlp" for LLaVA 1.5 / 1.6 and "ldp" / "ldpv2" for MobileVLM 1 / 2) and a llama text model whose
width is the projectors' output (LLaVA puts no marker tokens around a picture, so the vocabulary is tinymodel's own).

The projectors are laid out as llama.cpp's converter writes LLaVA's CLIP ViT (``v.class_embd``, ``v.patch_embd``
without a bias, ``v.position_embd`` with the class token's row first, ``v.pre_ln``, ``v.blk.N.*`` with biases, no
``v.post_ln`` unless asked), GELU-quick in the ViT (no ``clip.use_gelu``), at toy sizes: LLaVA's 32-pixel pictures
in 8-pixel patches (4x4 patches and the class token), a 32-wide encoder of 3 layers (libmtmd takes the
penultimate's output, so 2 run); then

* "mlp": ``mm.0`` / ``mm.2`` (GELU between); LLaVA 1.6's file adds ``clip.vision.image_grid_pinpoints`` (grids of
  up to 2x2 pictures) and ``clip.vision.mm_patch_merge_type`` "spatial_unpad";
* "ldp" (MobileVLM): ``mm.model.mlp.1`` / ``.3`` then two blocks (``mm.model.mb_block.N``) of a 3x3 depthwise convolution, LayerNorm,
  hardswish, squeeze-excite (``fc1``/``fc2``), a pointwise matrix and LayerNorm, the second at stride 2;
* "ldpv2" (MobileVLM V2): ``mm.model.mlp.0`` / ``.2``, 2x2 average pooling and the positional conv ``mm.model.peg.0``.

libmtmd's MobileVLM graphs are fixed at 24x24 patches, so those files are 48-pixel pictures of 2-pixel patches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tiny_vision import mmproj_writer, tensor_writer, write_vit_blocks, write_vl_text
from tinymodel import ARCH_GEOMETRY, _finish, _random_tensors

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, MM_FF = 32, 8, 32, 48, 3, 2, 96
LDP_IMAGE_SIZE, LDP_PATCH = 48, 2  # (24x24 patches: libmtmd's MobileVLM graphs are built for 24)
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # (CLIP's)
#: LLaVA 1.6's grids in the tiny file (width, height), in pixels: up to 2x2 pictures of IMAGE_SIZE
PINPOINTS = [(64, 32), (32, 64), (64, 64), (96, 32), (32, 96)]
N_TEXT = ARCH_GEOMETRY["llama"][0]


def write_clip_vit(w: GGUFWriter, rng: np.random.Generator, qtype: int, image_size: int, patch: int, post_ln: bool = False):
    """CLIP's ViT tensors, drawn from ``rng`` in order: the class token, the patch kernel (no bias), the positions
    (the class token's first), ``v.pre_ln``, the blocks with biases and, with ``post_ln``, ``v.post_ln``.  Returns
    ``(mat, vec, tensor)`` for the projector's own."""
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    w.add_tensor("v.class_embd", (rng.standard_normal(V_EMBD) * 0.5).astype(np.float32))
    tensor("v.patch_embd.weight", (V_EMBD, 3, patch, patch), 0.05)
    n_pos = (image_size // patch) ** 2 + 1
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((n_pos, V_EMBD)) * 0.5).astype(np.float32))
    vec("v.pre_ln.weight", V_EMBD)
    vec("v.pre_ln.bias", V_EMBD, 0.0)
    write_vit_blocks(mat, vec, V_LAYER, V_EMBD, V_FF)
    if post_ln:
        vec("v.post_ln.weight", V_EMBD)
        vec("v.post_ln.bias", V_EMBD, 0.0)
    return mat, vec, tensor


def write_tiny_llava_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT, anyres: bool = False,
                            post_ln: bool = False, feature_layer: list[int] | None = None) -> Path:  # fmt: skip
    """A random LLaVA projector ("mlp"); its matrices stored as ``qtype``.  ``anyres``: LLaVA 1.6's (the pinpoints and
    spatial_unpad); ``post_ln``: with ``v.post_ln``; ``feature_layer``: ``clip.vision.feature_layer`` written."""
    rng = np.random.default_rng(seed)
    w = mmproj_writer(path, "tiny-llava-mmproj", "mlp", {}, IMAGE_SIZE, PATCH, (V_EMBD, V_FF, V_LAYER, V_HEAD), n_text_embd, MEAN, STD,
                      eps=1e-5)  # fmt: skip
    if anyres:
        w.add_array("clip.vision.image_grid_pinpoints", [v for wh in PINPOINTS for v in wh])
        w.add_string("clip.vision.mm_patch_merge_type", "spatial_unpad")
    if feature_layer is not None:
        w.add_array("clip.vision.feature_layer", feature_layer)
    mat, vec, _ = write_clip_vit(w, rng, qtype, IMAGE_SIZE, PATCH, post_ln)
    mat("mm.0.weight", MM_FF, V_EMBD * max(1, len(feature_layer or [])), 0.2)  # (the listed layers side by side)
    vec("mm.0.bias", MM_FF, 0.0)
    mat("mm.2.weight", n_text_embd, MM_FF, 0.2)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_ldp_mmproj(path: Path, version: int = 1, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT) -> Path:
    """A random MobileVLM projector: ``version`` 1 "ldp", 2 "ldpv2"; its matrices stored as ``qtype`` (the
    depthwise kernels F16)."""
    rng = np.random.default_rng(seed)
    ptype = "ldp" if version == 1 else "ldpv2"
    w = mmproj_writer(path, f"tiny-{ptype}-mmproj", ptype, {}, LDP_IMAGE_SIZE, LDP_PATCH, (V_EMBD, V_FF, V_LAYER, V_HEAD), n_text_embd,
                      MEAN, STD, eps=1e-5)  # fmt: skip
    mat, vec, _ = write_clip_vit(w, rng, qtype, LDP_IMAGE_SIZE, LDP_PATCH)
    C = n_text_embd

    def kernel(name: str) -> None:  # a depthwise 3x3 kernel [C, 1, 3, 3], F16 (ggml's CPU runs conv_2d_dw on no other)
        w.add_tensor(name, (rng.standard_normal((C, 1, 3, 3)) * 0.3).astype(np.float16))

    if version == 1:
        mat("mm.model.mlp.1.weight", C, V_EMBD, 0.2)
        vec("mm.model.mlp.1.bias", C, 0.0)
        mat("mm.model.mlp.3.weight", C, C, 0.2)
        vec("mm.model.mlp.3.bias", C, 0.0)
        for blk in (1, 2):
            b = f"mm.model.mb_block.{blk}.block."
            kernel(b + "0.0.weight")
            vec(b + "0.1.weight", C)
            vec(b + "0.1.bias", C, 0.0)
            mat(b + "1.fc1.weight", C // 4, C, 0.3)
            vec(b + "1.fc1.bias", C // 4, 0.0)
            mat(b + "1.fc2.weight", C, C // 4, 0.3)
            vec(b + "1.fc2.bias", C, 0.0)
            mat(b + "2.0.weight", C, C, 0.2)
            vec(b + "2.1.weight", C)
            vec(b + "2.1.bias", C, 0.0)
    else:
        mat("mm.model.mlp.0.weight", C, V_EMBD, 0.2)
        vec("mm.model.mlp.0.bias", C, 0.0)
        mat("mm.model.mlp.2.weight", C, C, 0.2)
        vec("mm.model.mlp.2.bias", C, 0.0)
        kernel("mm.model.peg.0.weight")
        vec("mm.model.peg.0.bias", C, 0.0)
    return _finish(w, path)


def write_tiny_llava_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random llama text model (tinymodel's geometry) with the byte vocabulary and no image tokens."""
    return write_vl_text(path, "llama", "tiny-llava-text", ARCH_GEOMETRY["llama"], [], [], 1e-5, 10000.0, qtype, seed, chat_template)
