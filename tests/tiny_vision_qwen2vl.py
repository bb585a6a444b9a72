"""A tiny random Qwen2-VL / Qwen2.5-VL pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "qwen2vl_merger" or "qwen2.5vl_merger") and a ``qwen2vl`` text model
whose width is the projector's output and whose vocabulary knows ``<|vision_start|>`` and ``<|vision_end|>``.

The projector is laid out as llama.cpp's converter writes Qwen2-VL's: the conv3d's two temporal kernels as
``v.patch_embd.weight`` and ``v.patch_embd.weight.1`` (no bias, no position embeddings: the ViT's rope places the
patches), ``v.blk.N.*`` with biases everywhere, ``v.post_ln`` (the merger's ``ln_q``) and the merger's MLP ``mm.0``,
``mm.2``.  Qwen2-VL's blocks: LayerNorm and a GELU MLP; Qwen2.5-VL's (``qwen25=True``): RMSNorm (weights only),
a gated SiLU MLP (``clip.use_silu``) and window attention (``clip.vision.n_wa_pattern`` 2: layer 0 in 112-pixel
windows, layer 1 over the whole picture).  Sizes are toys but the patch is the real 14 pixels, so llama.cpp's fixed
112-pixel attention window spans 4x4 merged rows as in the real models: a 32-wide encoder, 2 heads of 16 (4 rope
pairs for a patch's row, 4 for its column), merged 2x2 into rows of the text model's 64.

The text model is tinymodel's qwen2vl geometry (heads of 16, ``rope.dimension_sections`` [2, 3, 3, 0]) with a rope
base of 100, so that the height and width sections' low-frequency pairs turn far enough across a picture's rows for
a wrong (t, h, w) to show in the logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, write_vit, write_vl_text
from tinymodel import _finish

Q = GGMLQuantizationType

PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, N_WA_PATTERN = 14, 32, 48, 2, 2, 2
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)  # (Qwen2-VL's CLIP statistics, rounded: distinct per channel)
IMAGE_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
#: the text model: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer) and its M-RoPE sections
TEXT_GEOMETRY, SECTIONS = (64, 4, 2, 16, 96, 2), [2, 3, 3, 0]


def write_tiny_qwen2vl_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, qwen25: bool = False,
                              n_text_embd: int = TEXT_GEOMETRY[0]) -> Path:  # fmt: skip
    """A random Qwen2-VL projector (``qwen25``: Qwen2.5-VL's); its matrices (patch kernels included) stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    flags = {"clip.use_silu": True, "clip.vision.n_wa_pattern": N_WA_PATTERN} if qwen25 else {}
    # (image_size 560: unused by the dynamic-size preprocessing; the converter writes it)
    w = mmproj_writer(path, "tiny-qwen2.5vl-mmproj" if qwen25 else "tiny-qwen2vl-mmproj", "qwen2.5vl_merger" if qwen25 else "qwen2vl_merger",
                      flags, 560, PATCH, geometry, n_text_embd, MEAN, STD)  # fmt: skip
    mat, vec, _ = write_vit(w, rng, qtype, geometry, PATCH, norm_bias=not qwen25, gate=qwen25)
    mat("mm.0.weight", 4 * V_EMBD, 4 * V_EMBD, 0.2)
    vec("mm.0.bias", 4 * V_EMBD, 0.0)
    mat("mm.2.weight", n_text_embd, 4 * V_EMBD, 0.2)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_qwen2vl_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random ``qwen2vl`` text model whose vocabulary knows Qwen2-VL's vision tokens (control tokens)."""
    return write_vl_text(path, "qwen2vl", "tiny-qwen2vl", TEXT_GEOMETRY, list(IMAGE_TOKENS), [3] * len(IMAGE_TOKENS), 1e-6, 100.0,
                         qtype, seed, chat_template, sections=SECTIONS)  # fmt: skip
