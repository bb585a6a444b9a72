"""Qwen3-VL's pictures in the prompt (llama.cpp's projector type "qwen3vl_merger"), as libmtmd lays them out and feeds
them: Qwen2-VL's way (runtime/vision_qwen2vl.py), which this extends.

At a picture's ``<__media__>`` the prompt holds ``<|vision_start|>``, the picture's rows (models/qwen3vl_image.py:
``ny`` x ``nx`` of them, the picture rounded to 32-pixel blocks) and ``<|vision_end|>``; the rows are fed causally,
one cache slot each, turned by their (t, t + y, t + x) positions (models/mrope_images.py) under the text model's
interleaved sections, and the text after a picture goes on from t + max(nx, ny).  What differs is a row's width:
``n_embd * (1 + n_deepstack)``, the embedding then its DeepStack levels, which the text model (``qwen3vl``,
``qwen3vlmoe``: models/qwen3vl.py) adds to its first layers' outputs, as ``mtmd_helper_eval_chunks`` hands
llama.cpp rows of ``llama_model_n_embd_inp``.
"""

from __future__ import annotations

from typing import Any

from ..loaders.errors import KvrunError
from .vision_markers import require_arch, require_markers
from .vision_qwen2vl import VISION_END, VISION_START, Qwen2VLLayout

QWEN3VL_ARCHS = ("qwen3vl", "qwen3vlmoe")


class Qwen3VLLayout(Qwen2VLLayout):
    """A Qwen3-VL projector beside ``engine``'s ``qwen3vl`` or ``qwen3vlmoe`` text model: Qwen2-VL's layout, its rows
    wide with DeepStack levels."""

    def __init__(self, engine: Any, encoder: Any) -> None:
        require_arch(engine, QWEN3VL_ARCHS, "a qwen3vl_merger projector goes with a Qwen3-VL text model (qwen3vl, qwen3vlmoe)")
        levels, takes = encoder.n_deepstack, engine.model.n_deepstack_layers
        if levels != takes:  # (llama.cpp would read rows of the wrong width: one line here instead)
            raise KvrunError(f"{engine.path}: the projector makes {levels} DeepStack levels and the text model takes {takes}; "
                             "not this model's mmproj")  # fmt: skip
        require_markers(engine, (VISION_START, VISION_END), "a Qwen3-VL")
        self.engine, self.encoder = engine, encoder
