"""Nemotron Nano VL's pictures in the prompt, as llama.cpp's libmtmd lays them out (projector type "nemotron_v2_vl").

libmtmd 0.3.36 cuts no tiles for Nemotron Nano VL and puts no tokens around its picture: the picture is one square
(models/nemotronvl_image.py), its rows stand where the media marker was, one image chunk, the text on either side
tokenized as it is.  The text model (``nemotron_h``: Mamba-2, attention and MLP layers) reads image rows causally,
as any token (``mtmd_decode_use_non_causal`` is false for it), so :meth:`NemotronVLLayout.rows` gives the picture's
rows as one array, fed as one image.  The file names no tokens to check a vocabulary by: any text model of the
projector's width goes with it (the width is checked in runtime/vision.py).
"""

from __future__ import annotations

import numpy as np

from ..models import nemotronvl_image
from ..models.nemotronvl_image import NemotronVLEncoder
from .vision_janus import JanusProLayout


class NemotronVLLayout(JanusProLayout):
    """The picture layout of a Nemotron Nano VL projector beside ``engine``'s model: Janus-Pro's (one square's rows
    whatever the picture's size, -1 ids, no marker tokens), Nemotron Nano VL's pixels."""

    encoder: NemotronVLEncoder

    def rows(self, image: np.ndarray) -> np.ndarray:
        """The picture's rows [n_positions, n_embd]: its square encoded."""
        enc = self.encoder
        return np.ascontiguousarray(enc.encode(nemotronvl_image.preprocess(image, enc.cfg)), np.float32)
