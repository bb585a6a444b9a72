"""CodeShell (WisdomShell / Peking University: CodeShell-7B and -7B-Chat), as llama.cpp's CODESHELL graph: GPT-2's
pre-LayerNorm block (models/gpt2.py) with rope in place of learned positions and grouped-query attention:

    x = tok_embd[t];  x = x + attn(LN(x));  x = x + W_down gelu(W_up LN(x) + b_up) + b_down

* rope over halves (llama.cpp's NeoX type) of the whole head; no ``position_embd``;
* grouped-query attention (CodeShell-7B: 8 K/V heads for 32), Q, K and V from one fused ``attn_qkv`` with its bias
  (the converter keeps GPT-BigCode's ``c_attn``: Q's rows, then K's, then V's);
* LayerNorms with biases, biased projections, an ungated GELU FFN (GPT-2's);
* its own output head, ``output.weight`` (the converter writes one, copying the embeddings where the checkpoint ties
  them), no bias.
"""

from __future__ import annotations

from typing import Any

from ..ops.backend import Weight
from .common import WeightLoader
from .gpt2 import GPT2Model


class CodeShellModel(GPT2Model):
    archs = ("codeshell",)
    learned_positions = False  # (rope on Q and K: GPT2Model.rope)

    def load_output(self, w: WeightLoader) -> tuple[Weight, Any]:
        return w.matrix("output"), None  # (llama.cpp requires it; never a bias)
