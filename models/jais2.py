"""Jais 2 (Inception / MBZUAI: Jais-2-8B, -70B and their -Chat models, Arabic-English), as llama.cpp's JAIS2 graph.

Unlike Jais 1 (ALiBi, SwiGLU), Jais 2 is Nemotron's block (models/nemotron.py: pre-LayerNorm, sequential):

* LayerNorms with weights *and biases* before attention, before the FFN and before the output head;
* biases on Q, K and V and on the attention output, all required (multi-head attention: each ``n_embd`` wide);
* an *ungated* squared-ReLU FFN with biases on both projections, ``x += W_down relu(W_up h + b_up)^2 + b_down``;
* rope over halves (NeoX's layout) of the whole head;
* the output head tied to the token embeddings where the file has no ``output.weight``.
"""

from __future__ import annotations

from ..ops.backend import Weight
from .common import WeightLoader
from .nemotron import NemotronModel
from .olmo import OlmoLayer


class Jais2Model(NemotronModel):
    archs = ("jais2",)

    def load_output(self, w: WeightLoader) -> Weight:
        return w.matrix("output", required=False) or self.tok_embd

    def load_layer(self, w: WeightLoader, i: int) -> OlmoLayer:
        return OlmoLayer(
            attn_norm=w.vector("attn_norm", i), attn_norm_b=w.vector("attn_norm_b", i),
            wq=w.matrix("wq", i), wk=w.matrix("wk", i), wv=w.matrix("wv", i),
            bq=w.vector("bq", i), bk=w.vector("bk", i), bv=w.vector("bv", i), q_norm=None, k_norm=None,
            wo=w.matrix("wo", i), bo=w.vector("bo", i),
            ffn_norm=w.vector("ffn_norm", i), ffn_norm_b=w.vector("ffn_norm_b", i), w_gate=None,
            w_up=w.matrix("w_up", i), b_up=w.vector("b_up", i), w_down=w.matrix("w_down", i), b_down=w.vector("b_down", i),
        )  # fmt: skip
