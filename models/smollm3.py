"""SmolLM3: the Llama block where every fourth layer attends without positional encoding (NoPE:
no rotation of Q and K), as llama.cpp's ``n_no_rope_layer_step``: https://huggingface.co/blog/smollm3
"""

from __future__ import annotations

import dataclasses

from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel

NO_ROPE_LAYER_STEP = 4  # layers 3, 7, 11, ... (fixed in the model, not stated in the file)


class SmolLM3Model(LlamaModel):
    archs = ("smollm3",)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        return dataclasses.replace(super().load_layer(w, i), rope=(i + 1) % NO_ROPE_LAYER_STEP != 0)
