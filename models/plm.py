"""PLM (PLM-Team: PLM-1.8B-Base and -Instruct), as llama.cpp's PLM graph: DeepSeek-V2-Lite's multi-head latent attention
(models/deepseek2.py) in a small dense model:

* the queries straight from ``attn_q`` (no query LoRA); ``attn_kv_a_mqa`` gives every token a latent of
  ``kv_lora_rank`` values (RMSNormed by ``attn_kv_a_norm``) and one rope key all heads share; ``attn_kv_b`` expands the
  latent into each head's non-rope key part and its value (``key_length`` = qk_nope + qk_rope, ``value_length`` wide);
* rope over consecutive pairs (llama.cpp's normal type) of each head's rope part, no YaRN; scores scaled by
  ``1 / sqrt(key_length)``;
* every layer's FFN dense and *ungated*: squared ReLU between ``ffn_up`` and ``ffn_down``, ``x += W_down relu(W_up h)^2``;
* the output head the token embeddings (llama.cpp loads no ``output.weight`` for PLM).

Like deepseek2, it runs on ``--device gpu`` too (deepseek2.py's forward on the GPU backend's kernels).
"""

from __future__ import annotations

from typing import Any

from ..loaders.errors import GGUFError
from ..ops.backend import Weight
from .common import WeightLoader
from .deepseek2 import Deepseek2Layer, Deepseek2Model


class PLMModel(Deepseek2Model):
    archs = ("plm",)

    def load_layer(self, w: WeightLoader, i: int) -> Deepseek2Layer:
        self.n_dense_lead = self.cfg.n_layer  # (no experts: every layer Deepseek2's leading dense kind)
        return super().load_layer(w, i)

    def load_kv_b(self, w: WeightLoader, i: int) -> tuple[Weight, Weight]:
        if not w.has("wkv_b", i):  # (llama.cpp's PLM reads attn_kv_b alone, never the split attn_k_b/attn_v_b)
            raise GGUFError(f"{w.g.path}: tensor 'blk.{i}.attn_kv_b.weight' is missing; the file is incomplete or not a supported model")
        return super().load_kv_b(w, i)

    def load_latent_kv_b(self, w: WeightLoader, i: int) -> tuple[Any, Any]:
        if not w.has("wkv_b", i):
            raise GGUFError(f"{w.g.path}: tensor 'blk.{i}.attn_kv_b.weight' is missing; the file is incomplete or not a supported model")
        return super().load_latent_kv_b(w, i)

    def load_dense_ffn(self, w: WeightLoader, i: int, L: Deepseek2Layer) -> None:
        L.w_up, L.w_down = w.matrix("w_up", i), w.matrix("w_down", i)  # (no gate)

    def dense_ffn(self, L: Deepseek2Layer, x: Any, xn: Any, o: Any) -> None:
        """``x +=`` the squared-ReLU FFN of ``x`` RMSNormed into ``xn``."""
        be = self.be
        up = self.buf.get("up", x.shape[0], L.w_up.shape[0])
        be.rms_norm(x, L.ffn_norm, self.cfg.norm_eps, xn)
        be.linear(L.w_up, xn, up)
        be.relu_sqr(up, up)
        self.add_output(x, o, lambda out, acc: (be.linear_add if acc else be.linear)(L.w_down, up, out))
