"""Phi-3 / Phi-3.5 / Phi-4-mini: the Llama block with fused weights and NeoX-style RoPE.

* Q, K and V are one matrix (``attn_qkv``, their rows one after another) and the FFN's gate and
  up are one (``ffn_up``: gate rows, then up rows, as llama.cpp's fused SwiGLU splits it); each is
  cut into row ranges at load, views of the file's rows, so the forward is Llama's.
* The long-context models (128k) carry two sets of rope factors, ``rope_factors_short`` for a
  context within the original one and ``rope_factors_long`` beyond it (llama.cpp's choice by
  the context asked for); the attention factor comes with the file's rope metadata.
* The file may state a sliding window; llama.cpp runs Phi-3 without one (its converter's window
  is not what the model was trained with), and so does kvrun: Llama's layers have none.
"""

from __future__ import annotations

import numpy as np

from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel


class Phi3Model(LlamaModel):
    archs = ("phi3",)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        c = self.cfg
        if w.has("wqkv", i):
            wq, wk, wv = w.matrix_rows("wqkv", i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        else:
            wq, wk, wv = w.matrix("wq", i), w.matrix("wk", i), w.matrix("wv", i)
        if w.has("w_gate", i):
            w_gate, w_up = w.matrix("w_gate", i), w.matrix("w_up", i)
        else:
            w_gate, w_up = w.matrix_rows("w_up", i, (c.n_ff, c.n_ff))
        return LlamaLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i),
            bq=None, bk=None, bv=None, q_norm=None, k_norm=None,
            ffn_norm=w.vector("ffn_norm", i), w_gate=w_gate, w_up=w_up, w_down=w.matrix("w_down", i),
        )  # fmt: skip

    def rope_factors(self, w: WeightLoader, n_ctx: int) -> np.ndarray | None:
        long = n_ctx > (self.cfg.rope_orig_ctx or self.cfg.n_ctx_train)
        return w.host_vector("rope_factors_long" if long else "rope_factors_short", required=False)
