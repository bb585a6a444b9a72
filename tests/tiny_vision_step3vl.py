"""A tiny random Step3-VL pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj, ``general.architecture``
"clip", projector type "step3vl") and a Qwen3 text model (Step3-VL-10B's) whose width is the projector's output and
whose vocabulary knows ``<im_start>``, ``<im_end>``, ``<patch_start>``, ``<patch_end>`` and ``<patch_newline>``.

The projector is laid out as llama.cpp's converter writes Step3-VL's (PE-lang's ViT: ``v.patch_embd`` with no bias,
``v.position_embd`` learned positions for ``image_size``, ``v.pre_ln``, ``v.blk.N.*`` with LayerScale ``ls1``/``ls2``
and no ``v.post_ln``; the projector ``mm.0`` and ``mm.1``, two 3x3 stride-2 convolutions with biases, and
``mm.model.fc`` into the text width), at toy sizes: a 112-pixel overview (Step3-VL's 728) in 14-pixel patches, so 8 x 8
learned positions that libmtmd's 504-pixel crops (fixed in libmtmd, 36 x 36 patches) interpolate; a 32-wide encoder of
2 layers; a longest edge (``clip.vision.preproc_image_size``) of 800 pixels, Step3-VL's 3024, so a big picture is
scaled down first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, tensor_writer, write_qwen3_text, write_vit_blocks
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, LONGEST_EDGE = 112, 14, 32, 48, 2, 2, 800
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)  # (distinct per channel: a channel mix-up shows)
#: the text model: n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer
TEXT_GEOMETRY = (64, 4, 2, 16, 96, 2)
IMAGE_TOKENS = ["<im_start>", "<im_end>", "<patch_start>", "<patch_end>", "<patch_newline>"]


def write_tiny_step3vl_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = TEXT_GEOMETRY[0]) -> Path:
    """A random Step3-VL projector; its matrices (the convolutions' kernels included) stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-step3vl-mmproj", "step3vl", {}, IMAGE_SIZE, PATCH, geometry, n_text_embd, MEAN, STD,
                      preproc_size=LONGEST_EDGE, eps=1e-5)  # fmt: skip
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)

    tensor("v.patch_embd.weight", (V_EMBD, 3, PATCH, PATCH), 0.05)
    n_pos = (IMAGE_SIZE // PATCH) ** 2
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((n_pos, V_EMBD)) * 0.5).astype(np.float32))
    vec("v.pre_ln.weight", V_EMBD)
    vec("v.pre_ln.bias", V_EMBD, 0.0)
    write_vit_blocks(mat, vec, V_LAYER, V_EMBD, V_FF, internvit=True)  # (LayerScale ls1 / ls2, as InternViT's)
    E = V_EMBD
    tensor("mm.0.weight", (2 * E, E, 3, 3), 0.08)
    vec("mm.0.bias", 2 * E, 0.0, 0.2)
    tensor("mm.1.weight", (4 * E, 2 * E, 3, 3), 0.05)
    vec("mm.1.bias", 4 * E, 0.0, 0.2)
    mat("mm.model.fc.weight", n_text_embd, 4 * E, 0.1)
    return _finish(w, path)


def write_tiny_step3vl_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None,
                            markers: list[str] = IMAGE_TOKENS) -> Path:  # fmt: skip
    """A random Qwen3 text model (Q/K norms) 64 wide whose vocabulary knows ``markers`` (Step3-VL's five)."""
    return write_qwen3_text(path, "tiny-step3vl-text", TEXT_GEOMETRY, markers, qtype, seed, chat_template)
