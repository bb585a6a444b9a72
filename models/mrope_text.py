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

Text after pictures turns by the text tables at its slot plus a shift (a picture takes max(nx, ny) positions over
nx * ny slots), the positions made by the backend (:func:`text_rope_positions`, on the GPU ops/gpu/mrope.cu), not by
per-row tables: a decode step captured as a CUDA graph reads its position from the buffer each replay refills
(runtime/graphs.py) and keeps the tables of its capture, so only positions made on the device from that buffer turn
every replayed step by its own.  The shift is the kernel's scalar, and so part of the graph's key
(:meth:`MropeText.decode_graph_key`).  A picture's own rows (a prefill, never captured) keep their per-row tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from .llama import LlamaLayer
from ..cache.batch import BatchedKVCache
from .mrope_images import forward_positions, images_of, mrope_rows, text_position


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


def text_rope_positions(model: Any, cache: Any, pos: Any) -> Any | None:
    """The rope positions of a text forward's rows at slots ``pos`` (host) over one sequence's ``cache``: None where
    they are the slots themselves (no picture before them, or one that takes as many positions as slots), else the
    slots plus the last picture's shift, computed on the model's backend into a buffer of its own (``shift_positions``:
    on the GPU a kernel, so that a captured decode step turns by its position read from the replay's buffer, with the
    tables of the text, not per-row tables a graph would keep from its capture).  Drops pictures recorded past
    ``pos[0]``, as ``forward_positions`` does for text."""
    P = forward_positions(cache, pos, False)
    shift = 0 if P is None else int(P[0, 0]) - int(pos[0])
    if not shift:
        return None
    out = model.buf.get("mrope_text_pos", len(pos), dtype=np.int32)  # (one buffer: a captured step keeps its pointer)
    model.be.shift_positions(pos, shift, out)
    return out


def decode_shift(cache: Any, pos: int) -> int:
    """What a one-token text step at slot ``pos`` turns by besides its slot (``text_rope_positions``' shift): part of a
    captured decode step's key (runtime/graphs.py), since the step's kernel takes it as a scalar."""
    images = images_of(cache)
    return text_position(images, pos) - pos if images else 0



def rope_rows(row_rope: tuple | None, text_pos: Any, pos: Any, cos: Any, sin: Any) -> tuple[Any, Any, Any]:
    """What a forward's rows turn by, (positions, cos, sin): a picture's rows their own per-row tables (``row_rope``),
    text after pictures the tables given at its shifted positions (``text_pos``), else ``pos`` in the tables given
    (:meth:`MropeText.rope_rows`; Qwen3-VL's and Hunyuan-VL's text models, whose forwards are their own, call it too)."""
    if row_rope is not None:
        return row_rope
    return (pos if text_pos is None else text_pos), cos, sin

class MropeText:
    """Rows turned by per-section positions, for a Llama-like model (``LlamaModel`` after this in the bases): call
    :meth:`init_mrope` after the model's own __init__ built its rope tables; a model where it was not called (no
    sections) runs as before."""

    sections: list[int] | None = None
    _row_rope: tuple | None = None
    _text_pos: Any = None  # the forward's text rows' rope positions where pictures shifted them (text_rope_positions)

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
        if self.input_embd is None and not isinstance(cache, BatchedKVCache):  # text: its own tables, shifted positions
            self._text_pos = text_rope_positions(self, cache, pos)
        else:  # a picture's rows (a prefill, never a captured step), or a batch's sequences each with its own shift
            P = forward_positions(cache, pos, self.input_embd is not None)
            if P is not None:
                cos, sin = mrope_rows(P, self.sections, self.neox_cos, self.neox_sin, self.rope_cos, self.rope_sin)
                self._row_rope = (np.arange(len(P), dtype=np.int32), self.be.vector(cos), self.be.vector(sin))
        try:
            super().forward(tokens, pos, cache, out_rows, logits)  # type: ignore[misc]
        finally:
            self._row_rope, self._text_pos = None, None

    def decode_graph_key(self, cache: Any, pos: int) -> int:
        """runtime/graphs.py's key part: the shift a text step after pictures turns by (:func:`decode_shift`)."""
        return decode_shift(cache, pos) if self.sections is not None else 0

    def rope_rows(self, pos: Any, cos: Any, sin: Any) -> tuple[Any, Any, Any]:
        """What the forward's rows turn by, (positions, cos, sin): a picture's rows their per-row tables, text after
        pictures the text tables at its shifted positions, else ``pos`` in the tables given (this forward's, set by
        :meth:`forward`; Ling 3's MLA rope takes it too, models/bailingmoe3.py)."""
        return rope_rows(self._row_rope, self._text_pos, pos, cos, sin)

    def qk_norm_rope(self, L: LlamaLayer, q: Any, k: Any, q3: Any, k3: Any, pos: Any, cos: Any, sin: Any) -> None:
        super().qk_norm_rope(L, q, k, q3, k3, *self.rope_rows(pos, cos, sin))  # type: ignore[misc]
