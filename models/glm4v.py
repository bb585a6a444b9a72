"""GLM-4.1V's and GLM-4.5V's language side: the ``glm4`` text model (models/glm4.py) with multimodal rope
(``rope.dimension_sections``), as llama.cpp runs it beside a "glm4v" projector.

llama.cpp gives a glm4 file with rope sections the rope type MROPE (measured in the oracle, llama.cpp 0.3.36: "rope
type = 8" and four positions a token), so its rope is ggml's ``rope_multi`` over the first ``rope.dimension_count``
dimensions of each head, neox-paired (pairs (i, i + n_rot/2)), pair i turning with its sector's position (sector
``i % sum(sections)``: time, height, width, extra) where the plain glm4 turns consecutive pairs.  A text token's
positions are (p, p, p, 0); an image's row (y, x) fed at position t has (t, t + y, t + x, 0) and the text after an
image goes on from t + max(nx, ny) (models/mrope_images.py), as Qwen2-VL's (models/qwen2vl.py, whose machinery this
reuses).

:class:`MropeText` is the part that turns rows by their own positions, mixed into ``Glm4Model`` where the file has
sections (a file without keeps glm4's plain rope and takes no images).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.gguf_file import GGUFFile
from .llama import LlamaLayer
from .mrope_images import forward_positions, mrope_rows
from .qwen2vl import mrope_tables, rope_sections


def has_sections(g: GGUFFile) -> bool:
    """Whether the file states multimodal rope sections (GLM-4.1V's, GLM-4.5V's language models)."""
    sections = g.arch_get("rope.dimension_sections")
    return sections is not None and any(int(s) for s in sections)


def mrope_config(cfg: ModelConfig) -> ModelConfig:
    """The config a sectioned file runs with: neox-paired rope (llama.cpp's MROPE type)."""
    return replace(cfg, rope_neox=True)


class MropeText:
    """Rows turned by per-section positions, for a Llama-like model (``LlamaModel`` after this in the bases): call
    :meth:`init_mrope` after the model's own __init__ built its rope tables; a model where it was not called (no
    sections) runs as before."""

    sections: list[int] | None = None
    _row_rope: tuple | None = None

    @property
    def takes_images(self) -> bool:
        """Image rows need their (t, h, w) positions: only a sectioned model takes them."""
        return self.sections is not None

    def init_mrope(self, g: GGUFFile) -> None:
        """Keep the plain neox tables for image rows and make the text tables llama.cpp's multimodal ones."""
        self.sections = rope_sections(g)
        self.neox_cos, self.neox_sin = self.rope_cos, self.rope_sin
        self.rope_cos, self.rope_sin = mrope_tables(self.rope_cos, self.rope_sin, self.sections)

    def forward(self, tokens: Any, pos: Any, cache: Any, out_rows: Any, logits: Any) -> None:
        """The model's forward; where the cache holds images (models/mrope_images.py) each row turns by its own
        sections' positions, through per-row tables (Qwen2VLModel.forward's way)."""
        if self.sections is None:
            return super().forward(tokens, pos, cache, out_rows, logits)  # type: ignore[misc]
        P = forward_positions(cache, pos, self.input_embd is not None)
        if P is not None:
            cos, sin = mrope_rows(P, self.sections, self.neox_cos, self.neox_sin, self.rope_cos, self.rope_sin)
            self._row_rope = (np.arange(len(P), dtype=np.int32), cos, sin)
        try:
            super().forward(tokens, pos, cache, out_rows, logits)  # type: ignore[misc]
        finally:
            self._row_rope = None

    def qk_norm_rope(self, L: LlamaLayer, q: Any, k: Any, q3: Any, k3: Any, pos: Any, cos: Any, sin: Any) -> None:
        if self._row_rope is not None:
            pos, cos, sin = self._row_rope
        super().qk_norm_rope(L, q, k, q3, k3, pos, cos, sin)  # type: ignore[misc]
