"""A tiny random LightOnOCR pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj, ``general.architecture``
"clip", projector type "lightonocr") and a qwen3 text model whose width is the projector's output and whose vocabulary
knows ``<|im_start|>`` and ``<|im_end|>``.

The projector is tiny_vision_pixtral.py's Mistral Small 3.1 layout (8-pixel patches merged 2x2, 16 pixels a row's
block, a 32-wide encoder of 2 layers, ``mm.input_norm``, ``mm.patch_merger``, ``mm.1``/``mm.2``) under projector type
"lightonocr", without the [IMG_BREAK] row, and a longest edge ``clip.vision.preproc_image_size`` of 80 pixels (5 blocks;
``clip.vision.image_size`` a nominal 64, which clip.cpp takes only where the file states no longest edge).  The text
model is a qwen3 (Q/K norms) of tinymodel's width with heads of 16.
"""

from __future__ import annotations

from pathlib import Path

from gguf import GGMLQuantizationType

from tiny_vision import write_vl_text
from tiny_vision_pixtral import write_tiny_pixtral_mmproj

Q = GGMLQuantizationType

LONGEST_EDGE = 80
TEXT_GEOMETRY = (64, 4, 2, 16, 96, 2)  # (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer)
IMAGE_TOKENS = ["<|im_start|>", "<|im_end|>"]


def write_tiny_lightonocr_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, preproc_size: int | None = LONGEST_EDGE) -> Path:
    """A random LightOnOCR projector; its matrices stored as ``qtype``; ``preproc_size`` None: no longest edge stated."""
    return write_tiny_pixtral_mmproj(path, qtype, seed, TEXT_GEOMETRY[0], projector_type="lightonocr", preproc_size=preproc_size)


def write_tiny_lightonocr_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random qwen3 text model whose vocabulary knows ``<|im_start|>`` and ``<|im_end|>``."""
    return write_vl_text(path, "qwen3", "tiny-lightonocr-text", TEXT_GEOMETRY, IMAGE_TOKENS, [3, 3], 1e-6, 1000000.0, qtype, seed,
                         chat_template)  # fmt: skip
