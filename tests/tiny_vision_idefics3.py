"""A tiny random SmolVLM (Idefics3) pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "idefics3") and a llama text model whose width is the projector's
output and whose vocabulary knows SmolVLM's image tokens.

The projector is laid out as llama.cpp's converter writes SmolVLM's (``v.patch_embd``, ``v.position_embd``,
``v.blk.N.*``, ``v.post_ln``, ``mm.model.fc``), at toy sizes: 32-pixel tiles in 8-pixel patches (4x4 patches,
pixel-shuffled 2x2 into 4 rows of 4 x 32 wide, projected to the text model's 64), a 32-wide encoder of 2 layers,
and a longest edge (``clip.vision.preproc_image_size``) of 64, so pictures become a grid of up to 2x2 tiles and the
global view.  The text model is tinymodel's llama geometry with ``<fake_token_around_image>``, ``<global-img>``,
``<row_R_col_C>`` (R, C up to 4) added as control tokens and ``\\n\\n`` as one token (libmtmd looks it up by its
text, as SmolLM2's vocabulary has it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer, write_vit, write_vl_text
from tinymodel import ARCH_GEOMETRY, _finish

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, SCALE, LONGEST_EDGE, V_EMBD, V_FF, V_LAYER, V_HEAD = 32, 8, 2, 64, 32, 48, 2, 2
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (SmolVLM's are 0.5 each: distinct ones catch a channel mix-up)
IMAGE_TOKENS = ["<fake_token_around_image>", "<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)]


def write_tiny_idefics3_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = ARCH_GEOMETRY["llama"][0],
                               longest_edge: int | None = LONGEST_EDGE) -> Path:
    """A random SmolVLM projector; its matrices (patch kernel and projection included) stored as ``qtype``;
    ``longest_edge`` None: a file without ``clip.vision.preproc_image_size`` (no tiles, the global view alone)."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-idefics3-mmproj", "idefics3", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, geometry, n_text_embd,
                      MEAN, STD, preproc_size=longest_edge, scale=SCALE)  # fmt: skip
    mat, _, _ = write_vit(w, rng, qtype, geometry, PATCH, IMAGE_SIZE)
    mat("mm.model.fc.weight", n_text_embd, V_EMBD * SCALE * SCALE, 0.2)  # [n_text_embd, 4 * 32]: no bias
    return _finish(w, path)


def write_tiny_smolvlm(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random llama text model (tinymodel's geometry) whose vocabulary knows SmolVLM's image tokens."""
    return write_vl_text(path, "llama", "tiny-smolvlm", ARCH_GEOMETRY["llama"], ["ĊĊ"] + IMAGE_TOKENS, [1] + [3] * len(IMAGE_TOKENS),
                         1e-5, 100000.0, qtype, seed, chat_template)  # fmt: skip
