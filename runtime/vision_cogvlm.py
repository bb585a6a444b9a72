"""CogVLM's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "cogvlm").

A picture, resized to the projector's square (models/cogvlm_image.py), becomes one image chunk of
(image_size / patch_size)^2 + 2 rows: the projector's begin-of-image row, the patches' rows, its end-of-image row
(all embeddings, made in clip.cpp's graph), with no tokens around them (libmtmd states no markers for cogvlm).  The
cogvlm text model runs a batch of embeddings through its visual expert and a batch of tokens through its language
weights (models/cogvlm.py, as llama.cpp's graph picks the set by ``ubatch.token``), and reads image rows causally
(``mtmd_decode_use_non_causal`` is false for cogvlm), so :meth:`CogVLMLayout.rows` gives them as one array, fed as
an image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..models import cogvlm_image
from ..models.cogvlm_image import CogVLMEncoder


class CogVLMLayout:
    """The picture layout of a cogvlm projector beside ``engine``'s model, which must be CogVLM's (its visual expert)."""

    def __init__(self, engine: Any, encoder: CogVLMEncoder) -> None:
        if engine.cfg.arch != "cogvlm":  # (another model would read the rows through its language weights)
            raise KvrunError(f"{engine.path}: a cogvlm projector's rows are read by CogVLM's visual expert; "
                             f"this is a {engine.cfg.arch} model")  # fmt: skip
        self.engine, self.encoder = engine, encoder

    def ids(self, image: np.ndarray) -> list[int]:
        """The image chunk's ids: -1 for each row, the begin/end-of-image rows included (as the fixture records)."""
        return [-1] * self.n_positions(image.shape[1], image.shape[0])

    def n_positions(self, w: int, h: int) -> int:
        """Positions a picture's rows take, whatever its size: one a patch, and the two around them."""
        return self.encoder.cfg.n_tokens + 2

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd], resized as libmtmd does and encoded."""
        enc = self.encoder
        return enc.encode(cogvlm_image.preprocess(image, enc.cfg))
