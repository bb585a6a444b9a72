"""A tiny random Pixtral / Mistral Small 3.1 pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "pixtral") and a mistral3 text model whose width is the projector's
output and whose vocabulary knows Mistral's ``[IMG]``, ``[IMG_BREAK]`` and ``[IMG_END]``.

The projector is laid out as llama.cpp's converter writes Mistral Small 3.1's (``v.patch_embd`` without a bias,
``v.pre_ln``, ``v.blk.N.*`` with RMSNorms and a gated MLP and no biases, ``mm.input_norm`` and ``mm.patch_merger``
(``clip.vision.spatial_merge_size`` 2), the adapter ``mm.1``/``mm.2`` with biases, as Pixtral 12B's, and
``v.token_embd.img_break``, the [IMG_BREAK] row), at toy sizes: 8-pixel patches, merged 2x2 (16 pixels a row's
block), a 32-wide encoder of 2 layers (heads of 16: the 2-D rope turns 4 pairs by the row, 4 by the column).
``clip.vision.image_size`` is a nominal 64 (libmtmd keeps a picture at its own size, within 8 to 1024 merged rows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, tensor_writer, write_vl_text
from tinymodel import ARCH_GEOMETRY, _finish, _random_tensors

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, MERGE, V_EMBD, V_FF, V_LAYER, V_HEAD, MM_FF = 64, 8, 2, 32, 48, 2, 2, 96
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # (Pixtral's: CLIP's)
IMAGE_TOKENS = ["[IMG]", "[IMG_BREAK]", "[IMG_END]"]


def write_tiny_pixtral_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = ARCH_GEOMETRY["mistral3"][0],
                              merge: int | None = MERGE, projector_type: str = "pixtral", preproc_size: int | None = None) -> Path:  # fmt: skip
    """A random Mistral Small 3.1 projector; its matrices (patch kernel and merger included) stored as ``qtype``;
    ``merge`` None: Pixtral 12B's, without the patch merger (one row a patch).  ``projector_type`` "lightonocr":
    LightOnOCR's (tiny_vision_lightonocr.py), the same tensors without the [IMG_BREAK] row, ``preproc_size`` its
    longest edge."""
    rng = np.random.default_rng(seed)
    w = mmproj_writer(path, f"tiny-{projector_type}-mmproj", projector_type, {"clip.use_silu": True}, IMAGE_SIZE, PATCH,
                      (V_EMBD, V_FF, V_LAYER, V_HEAD), n_text_embd, MEAN, STD, preproc_size, merge=merge, eps=1e-5)  # fmt: skip
    mat, vec = _random_tensors(w, rng, qtype)
    tensor_writer(w, rng, qtype)("v.patch_embd.weight", (V_EMBD, 3, PATCH, PATCH), 0.05)
    vec("v.pre_ln.weight", V_EMBD)
    for i in range(V_LAYER):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", V_EMBD)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            mat(b + t + ".weight", V_EMBD, V_EMBD, 0.3)
        vec(b + "ln2.weight", V_EMBD)
        mat(b + "ffn_gate.weight", V_FF, V_EMBD, 0.3)
        mat(b + "ffn_up.weight", V_FF, V_EMBD, 0.3)
        mat(b + "ffn_down.weight", V_EMBD, V_FF, 0.3)
    if merge is not None:
        vec("mm.input_norm.weight", V_EMBD)
        mat("mm.patch_merger.weight", V_EMBD, V_EMBD * merge * merge, 0.2)
    mat("mm.1.weight", MM_FF, V_EMBD, 0.2)
    vec("mm.1.bias", MM_FF, 0.0)
    mat("mm.2.weight", n_text_embd, MM_FF, 0.2)
    vec("mm.2.bias", n_text_embd, 0.0)
    if projector_type == "pixtral":
        w.add_tensor("v.token_embd.img_break", (rng.standard_normal(n_text_embd) * 0.5).astype(np.float32))
    return _finish(w, path)


def write_tiny_pixtral_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random mistral3 text model (tinymodel's geometry) whose vocabulary knows Mistral's image tokens."""
    return write_vl_text(path, "mistral3", "tiny-mistral3-vl", ARCH_GEOMETRY["mistral3"], IMAGE_TOKENS, [3] * len(IMAGE_TOKENS),
                         1e-5, 1000000.0, qtype, seed, chat_template)  # fmt: skip
