"""GLM-4.1V's and GLM-4.5V's language side: the ``glm4`` text model (models/glm4.py) with multimodal rope
(``rope.dimension_sections``), as llama.cpp runs it beside a "glm4v" projector.

llama.cpp gives a glm4 file with rope sections the rope type MROPE (measured in the oracle, llama.cpp 0.3.36: "rope
type = 8" and four positions a token), so its rope is ggml's ``rope_multi`` over the first ``rope.dimension_count``
dimensions of each head, neox-paired (pairs (i, i + n_rot/2)), pair i turning with its sector's position (sector
``i % sum(sections)``: time, height, width, extra) where the plain glm4 turns consecutive pairs.  A text token's
positions are (p, p, p, 0); an image's row (y, x) fed at position t has (t, t + y, t + x, 0) and the text after an
image goes on from t + max(nx, ny) (models/mrope_images.py), as Qwen2-VL's (models/qwen2vl.py, whose machinery this
reuses).

:class:`~kvrun.models.mrope_text.MropeText` (models/mrope_text.py, Qwen2-VL's too) is the part that turns rows by
their own positions, mixed into ``Glm4Model`` where the file has sections (a file without keeps glm4's plain rope and
takes no images).
"""

from __future__ import annotations

from dataclasses import replace

from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from .mrope_text import MropeText

__all__ = ["MropeText", "has_sections", "mrope_config"]  # (MropeText: models/mrope_text.py's, which glm4.py takes from here)


def has_sections(g: GGUFFile) -> bool:
    """Whether the file states multimodal rope sections (GLM-4.1V's, GLM-4.5V's language models)."""
    sections = g.arch_get("rope.dimension_sections")
    return sections is not None and any(int(s) for s in sections)


def mrope_config(cfg: ModelConfig) -> ModelConfig:
    """The config a sectioned file runs with: neox-paired rope (llama.cpp's MROPE type)."""
    return replace(cfg, rope_neox=True)
