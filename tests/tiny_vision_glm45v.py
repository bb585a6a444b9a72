"""Tiny random GLM-4.5V text models (``glm4moe`` with multimodal rope sections: llama.cpp gives GLM-4.5V no
architecture of its own, its converter writes GLM-4.5's ``glm4moe`` with ``rope.dimension_sections``), written
through tiny_glm4.py's glm4moe writer (per-head QK norm, a leading dense layer, sigmoid-routed experts with a shared
one, heads 32 wide with rope over 16 dimensions: 8 neox pairs):

* :func:`write_tiny_glm45v_arch`: the arch fixture ``glm4moe-mrope`` (tinymodel.FIXTURE_MODELS), sections
  [3, 2, 2, 1]: a text token turns by (p, p, p, 0), so the last pair (the extra sector) stays unturned where plain
  neox rope would turn it; GLM-4.5V's own sections ([8, 12, 12, 0]) leave no extra sector and text turns as neox.
* :func:`write_tiny_glm45v_text`: the text half of a tiny GLM-4.5V pair beside tiny_vision_glm4v.py's "glm4v"
  projector (its rows 64 wide, as this model's embeddings): sections [2, 3, 3, 0] (GLM-4.5V's proportions), the
  vocabulary with ``<|begin_of_image|>`` and ``<|end_of_image|>``, and a rope base of 100 so that a row turned by the
  wrong (t, h, w) shows in the logits.
"""

from __future__ import annotations

from pathlib import Path

from gguf import GGMLQuantizationType

from tiny_glm4 import write_tiny_glm4
from tiny_vision_glm4v import IMAGE_TOKENS

Q = GGMLQuantizationType

ARCH_SECTIONS = [1, 1, 1, 5]
#: the pair's sections (GLM-4.5V's [8, 12, 12, 0] over 32 pairs, here over 8)
SECTIONS = [2, 3, 3, 0]


def write_tiny_glm45v_arch(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """The ``glm4moe-mrope`` fixture's model: tiny_glm4's glm4moe (with QK norm) and the sections above."""
    return write_tiny_glm4(path, "glm4moe", qtype, seed, qk_norm=True, sections=ARCH_SECTIONS)


def write_tiny_glm45v_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """The pair's text model."""
    return write_tiny_glm4(path, "glm4moe", qtype, seed, qk_norm=True, sections=SECTIONS, extra_tokens=IMAGE_TOKENS, rope_base=100.0)
