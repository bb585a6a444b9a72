"""GLM-4V's pictures in the prompt (GLM-4.1V, GLM-4.5V; llama.cpp's projector type "glm4v"), as libmtmd lays them out
and feeds them: Qwen2-VL's way (runtime/vision_qwen2vl.py), which this extends.

At a picture's ``<__media__>`` the prompt holds ``<|begin_of_image|>``, the picture's rows (models/glm4v_image.py:
``ny`` x ``nx`` of them, the picture rounded to 28-pixel blocks) and ``<|end_of_image|>``; the rows are fed causally,
one cache slot each, turned by their (t, t + y, t + x) positions (models/mrope_images.py) under the text model's
multimodal rope (models/glm4v.py), and the text after a picture goes on from t + max(nx, ny), as
``mtmd_helper_eval_chunks`` positions them.
"""

from __future__ import annotations

from typing import Any

from .vision_markers import require_arch, require_markers
from .vision_qwen2vl import Qwen2VLLayout

IMAGE_START, IMAGE_END = "<|begin_of_image|>", "<|end_of_image|>"


class Glm4VLayout(Qwen2VLLayout):
    """A GLM-4V projector beside ``engine``'s ``glm4`` (GLM-4.1V) or ``glm4moe`` (GLM-4.5V) text model with
    multimodal rope: Qwen2-VL's layout between GLM's image markers."""

    def __init__(self, engine: Any, encoder: Any) -> None:
        require_arch(engine, ("glm4", "glm4moe"), "a glm4v projector goes with a GLM-4.1V text model (glm4 with rope sections) "
                     "or a GLM-4.5V one (glm4moe with rope sections)", takes_images=True)  # fmt: skip
        require_markers(engine, (IMAGE_START, IMAGE_END), "a GLM-4V")
        self.engine, self.encoder = engine, encoder
