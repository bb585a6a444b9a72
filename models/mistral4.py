"""Mistral 4 (Mistral Small 4, 119B: ``mistral4``), as llama.cpp runs it: DeepSeek-V3's graph unchanged.

llama.cpp's ``llama_model_mistral4`` is its ``deepseek2`` with another name: the same hyperparameters, tensors and graph
(``models/deepseek2.py`` describes them: multi-head latent attention with a query LoRA and the split
``attn_k_b``/``attn_v_b``, YaRN with DeepSeek's magnitude rules, rope over consecutive pairs of each head's rope part;
leading dense layers where stated, the others a mixture of experts beside shared experts).  What Mistral's converter
(``Mistral3Model.Mistral4Model``, over DeepSeek-V2's) sets: no leading dense layer, a softmax router whose chosen weights
are renormalised (``expert_weights_norm``), one shared expert, ``rope.scaling.yarn_log_multiplier`` from the model's
``mscale_all_dim``.  Its experts arrive stacked 3-D from the checkpoint; files whose gate and up experts are one fused
``ffn_gate_up_exps`` are refused in one line, as is the query temperature (``attention.temperature_scale``,
deepseek2's refusal).  It runs on ``--device gpu`` as deepseek2 does.
"""

from __future__ import annotations

from ..loaders.errors import UnsupportedModelError
from .common import WeightLoader
from .deepseek2 import Deepseek2Layer, Deepseek2Model


class Mistral4Model(Deepseek2Model):
    archs = ("mistral4",)

    def load_layer(self, w: WeightLoader, i: int) -> Deepseek2Layer:
        if f"blk.{i}.ffn_gate_up_exps.weight" in w.g.tensors:
            raise UnsupportedModelError(f"{w.g.path}: blk.{i}.ffn_gate_up_exps (fused gate and up experts) is not supported yet")
        return super().load_layer(w, i)
