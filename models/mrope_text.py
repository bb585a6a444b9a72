"""The text side of llama.cpp's multimodal rope (M-RoPE, not interleaved): the tables a text token turns by and the
forward that turns a picture's rows by their own positions, for every model that has it.

A file states ``rope.dimension_sections``: each head's pairs, taken in neox layout, fall in four consecutive sections
(sector ``i % sum(sections)``) that turn with a token's time, height, width and extra positions.  A text token's are
``(p, p, p, 0)`` (:func:`mrope_tables`); an image's row (y, x) fed at position t has (t, t + y, t + x, 0) and the text
after an image goes on from t + max(nx, ny), as llama.cpp's libmtmd feeds them (models/mrope_images.py).
:class:`MropeText` mixes that forward into a Llama-like model: Qwen2-VL's (models/qwen2vl.py), GLM-4V's
(models/glm4.py, models/glm4v.py) and PaddleOCR-VL's (models/paddleocr.py).  One module of its own, below them all,
so that each imports it without importing another (models/glm4v.py and models/qwen2vl.py each would import the
other).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from .llama import LlamaLayer
from .mrope_images import forward_positions, mrope_rows


def rope_sections(g: GGUFFile) -> list[int]:
    """The file's ``rope.dimension_sections`` padded to four (time, height, width, extra), required as llama.cpp
    requires it for the multimodal-rope architectures."""
    sections = g.arch_get("rope.dimension_sections")
    if sections is None:
        raise GGUFError(f"{g.path}: metadata {g.architecture}.rope.dimension_sections is missing; the file is not a complete model")
    s = [int(x) for x in sections][:4]
    return s + [0] * (4 - len(s))


def mrope_tables(cos: np.ndarray, sin: np.ndarray, sections: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Neox rope tables ``[n_pos, n_rot/2]`` made llama.cpp's multimodal rope's for text: pair ``i``'s sector is
    ``i % sum(sections)``; the sectors of the first three sections turn with the text position, the extra
    section's with position 0, i.e. not at all (ggml's ``ggml_mrope_cache_init``, not interleaved)."""
    n, turned = sum(sections), sum(sections[:3])
    cos, sin = cos.copy(), sin.copy()
    for i in range(cos.shape[1]):
        if n > 0 and i % n >= turned:
            cos[:, i], sin[:, i] = 1.0, 0.0
    return cos, sin


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
        sections' positions, through per-row tables."""
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
