"""Huawei's openPangu-Embedded (1B, 7B), as llama.cpp's ``pangu-embedded`` graph: the Llama block (``llama.py``) with
biases on the attention's four projections, Q, K and V (``attn_q.bias`` ... as Qwen2's) and the output projection
(``attn_output.bias``, which Llama's block adds into the residual stream after ``attn_output``), and rope over halves
(llama.cpp's NeoX type).  The FFN is SwiGLU without biases (llama.cpp would take optional ``ffn_*.bias`` and
``output.bias``; openPangu's checkpoints have none, and a file with them is refused in one line).
"""

from __future__ import annotations

from ..loaders.errors import UnsupportedModelError
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel


class PanguEmbeddedModel(LlamaModel):
    archs = ("pangu-embedded",)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        for role in ("bq", "bk", "bv", "bo"):  # (llama.cpp requires all four: a one-line error naming the one missing)
            w.host_vector(role, i)
        found = [t for t in (f"blk.{i}.ffn_{p}.bias" for p in ("gate", "up", "down")) if t in w.g.tensors]
        if found or (i == 0 and "output.bias" in w.g.tensors):
            raise UnsupportedModelError(f"{w.g.path}: tensor {(found or ['output.bias'])[0]!r}: openPangu-Embedded with FFN or output biases is not supported")
        L = super().load_layer(w, i)
        L.bo = w.vector("bo", i)
        return L
