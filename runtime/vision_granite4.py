"""Granite 4 Vision's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "granite4_vision").

libmtmd puts no text before a picture and ``"\\n"`` after it (``img_end``, tokenized on its own); the picture is one
image chunk, its rows as models/granite4v_image.py assembles them:

    (the overview's rows) (the tiles' grid, unpadded, each of its rows then the newline row) "\\n"

The ``"\\n"`` is this layout's own (libmtmd tokenizes it apart from the text after it, which a real tokenizer could
otherwise merge with it): :meth:`Granite4VisionLayout.rows` gives the picture's rows and that token's embedding, fed
causally as one block (``mtmd_decode_use_non_causal`` is false for it), so the text model scales them as it scales
its token embeddings, as llama.cpp does for a text model without DeepStack.

The text model: any of the rows' width (K blocks x projection_dim; checked in runtime/vision.py).  Granite 4.1
Vision's own (granite with ``deepstack_mapping``: the first projection_dim of a row as the embedding, the other blocks
added at the layers the mapping names, the rows unscaled) is refused in one line: kvrun's Granite model does not
inject them yet.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import KvrunError, UnsupportedModelError
from ..models.granite4v_image import Granite4VisionEncoder

#: the text libmtmd puts after a picture
IMAGE_END = "\n"


class Granite4VisionLayout:
    """The picture layout of a granite4_vision projector beside ``engine``'s text model."""

    def __init__(self, engine: Any, encoder: Granite4VisionEncoder) -> None:
        if engine.gguf.get(f"{engine.cfg.arch}.deepstack_mapping") is not None:
            raise UnsupportedModelError(f"{engine.path}: a DeepStack Granite text model ({engine.cfg.arch}.deepstack_mapping); "
                                        "kvrun runs Granite 4 Vision's pictures with text models that take the whole row")  # fmt: skip
        self.engine, self.encoder = engine, encoder
        self.end = engine.tokenizer.encode(IMAGE_END, add_bos=False, parse_special=True)
        if not self.end:
            raise KvrunError(f"{engine.path}: the vocabulary cannot write {IMAGE_END!r}")

    def ids(self, image: np.ndarray) -> list[int]:
        """The picture's ids: -1 for each row of its image chunk, then the ids of ``"\\n"`` (as the fixture records
        mtmd's chunks)."""
        return [-1] * self.encoder.n_rows(image.shape[1], image.shape[0]) + self.end

    def n_positions(self, w: int, h: int) -> int:
        """Positions a w x h picture takes: its image chunk's rows and the ``"\\n"`` after them."""
        return self.encoder.n_rows(w, h) + len(self.end)

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's block [n_positions, n_embd]: its image chunk's rows, then the text model's ``token_embd`` rows
        of ``"\\n"``."""
        eng = self.engine
        nl = np.empty((len(self.end), eng.cfg.n_embd), np.float32)
        eng.backend.get_rows(eng.model.tok_embd, np.asarray(self.end, np.int32), nl)
        return np.ascontiguousarray(np.concatenate([self.encoder.encode(image), nl]), np.float32)
