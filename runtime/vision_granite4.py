"""Granite 4 Vision's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "granite4_vision").

libmtmd puts no text before a picture and ``"\\n"`` after it (``img_end``, tokenized on its own); the picture is one
image chunk, its rows as models/granite4v_image.py assembles them:

    (the overview's rows) (the tiles' grid, unpadded, each of its rows then the newline row) "\\n"

The ``"\\n"`` is this layout's own (libmtmd tokenizes it apart from the text after it, which a real tokenizer could
otherwise merge with it): :meth:`Granite4VisionLayout.rows` gives the picture's rows and that token's embedding, fed
causally as one block (``mtmd_decode_use_non_causal`` is false for it), so the text model scales them as it scales
its token embeddings, as llama.cpp does for a text model without DeepStack.

The text model: any of the rows' width (K blocks x projection_dim; checked in runtime/vision.py), or Granite 4.1
Vision's own (granite with ``deepstack_mapping``, models/granite.py: block 0 of a row as the embedding, the other
blocks added at the layers the mapping names, the image rows unscaled), whose ``n_embd_inp`` the rows must be; its
``"\n"`` row is then the token embedding scaled as llama.cpp scales a token (``embedding_scale``) and padded with
zeros (no level added), as a text token is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..models.granite4v_image import Granite4VisionEncoder

#: the text libmtmd puts after a picture
IMAGE_END = "\n"


class Granite4VisionLayout:
    """The picture layout of a granite4_vision projector beside ``engine``'s text model."""

    def __init__(self, engine: Any, encoder: Granite4VisionEncoder) -> None:
        width = getattr(engine.model, "n_embd_inp", engine.cfg.n_embd)
        if encoder.cfg.n_text_embd != width:  # (a DeepStack Granite: K blocks must be its embedding and levels)
            raise KvrunError(f"{engine.path}: its image rows are {width} wide (DeepStack levels included) and the projector "
                             f"makes {encoder.cfg.n_text_embd}: not this model's mmproj")  # fmt: skip
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
        if getattr(eng.model, "n_deepstack_layers", 0):  # (a token's scale, as the model does not scale image rows; no levels)
            nl = np.pad(nl * np.float32(eng.model.cfg.embedding_scale), ((0, 0), (0, self.encoder.cfg.n_text_embd - eng.cfg.n_embd)))
        return np.ascontiguousarray(np.concatenate([self.encoder.encode(image), nl]), np.float32)
