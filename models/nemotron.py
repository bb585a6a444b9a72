"""NVIDIA Nemotron (Nemotron-Mini-4B-Instruct, Minitron-4B/8B), as llama.cpp's NEMOTRON graph:
OLMo's block (models/olmo.py: pre-LayerNorm, sequential) with

* LayerNorms with weights *and biases* (before attention, before the FFN, before the output head).  Nemotron's are
  "layernorm1p", ``(x - mean) / std * (1 + w) + b``: the converter adds the 1 into the stored weights, so the file's
  are plain LayerNorm weights;
* partial rotary, NeoX layout: only the first ``rope.dimension_count`` dimensions of each head turn
  (partial_rotary_factor 0.5), the rest pass through (the rope tables are that narrow);
* an *ungated* squared-ReLU FFN, ``x += W_down relu(W_up h)^2``;
* biases on the attention output and the FFN's projections where the file has them (none in the published models);
  Q, K and V fused (``attn_qkv``) or apart, as llama.cpp's loader takes them;
* a separate output head, never tied (llama.cpp requires ``output.weight``).
"""

from __future__ import annotations

from typing import Any

from ..ops.backend import Weight
from .common import WeightLoader
from .olmo import OlmoLayer, OlmoModel


class NemotronModel(OlmoModel):
    archs = ("nemotron",)
    clamps_kqv = False

    def load_output(self, w: WeightLoader) -> Weight:
        return w.matrix("output")

    def load_output_norm(self, w: WeightLoader) -> tuple[Any, Any]:
        return w.vector("output_norm"), w.vector("output_norm_b")

    def load_layer(self, w: WeightLoader, i: int) -> OlmoLayer:
        c = self.cfg
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        return OlmoLayer(
            attn_norm=w.vector("attn_norm", i), attn_norm_b=w.vector("attn_norm_b", i),
            wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv, q_norm=None, k_norm=None, wo=w.matrix("wo", i), bo=w.vector("bo", i, required=False),
            ffn_norm=w.vector("ffn_norm", i), ffn_norm_b=w.vector("ffn_norm_b", i), w_gate=None,
            w_up=w.matrix("w_up", i), b_up=w.vector("b_up", i, required=False),
            w_down=w.matrix("w_down", i), b_down=w.vector("b_down", i, required=False),
        )  # fmt: skip

    def ffn_add(self, L: OlmoLayer, xn: Any, x: Any, gate: Any, up: Any) -> None:
        be = self.be
        be.linear(L.w_up, xn, up)
        if L.b_up is not None:
            be.add_bias(up, L.b_up)
        be.relu_sqr(up, up)
        be.linear_add(L.w_down, up, x)
        if L.b_down is not None:
            be.add_bias(x, L.b_down)
