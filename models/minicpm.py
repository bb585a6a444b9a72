"""OpenBMB MiniCPM (1B, 2B) and MiniCPM4 (0.5B, 8B): the Llama block with muP's multipliers, as
llama.cpp runs it (Granite's graph, its hparams from the file or MiniCPM's defaults):

* embeddings times ``embedding_scale`` (``scale_emb``, 12 unless the file says), each attention and
  FFN output times ``residual_scale`` (``scale_depth / sqrt(n_layer)``, 1.4 / sqrt(n_layer) unless the
  file says) before its residual add, logits divided by ``logit_scale`` (``n_embd / dim_model_base``;
  see ``ModelConfig`` and ``loaders/config.py``'s defaults).  The Llama forward applies them.
* Llama's rope layout (the converter undoes HF's permutation of Q and K), rope in every layer.
* MiniCPM4's LongRoPE (``rope.scaling.type`` ``longrope``): per-frequency factors,
  ``rope_factors_long`` for a context beyond the original one (``rope.scaling.original_context_length``,
  else the training context), ``rope_factors_short`` within it, as llama.cpp chooses by the context
  asked for (Phi-3's rule); otherwise Llama 3's ``rope_freqs`` where the file has it.
"""

from __future__ import annotations

import numpy as np

from ..loaders.errors import UnsupportedModelError
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel


class MiniCPMModel(LlamaModel):
    archs = ("minicpm",)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        # (llama.cpp takes optional attn_output, ffn_gate, ffn_up, ffn_down biases here, as Granite's; MiniCPM's
        # checkpoints have none, and kvrun's Llama block no place for them)
        biases = [f"blk.{i}.{t}.bias" for t in ("attn_output", "ffn_gate", "ffn_up", "ffn_down")]
        found = [b for b in biases if b in w.g.tensors]
        if found:
            raise UnsupportedModelError(f"{w.g.path}: tensor {found[0]!r}: MiniCPM with biased projections is not supported")
        return super().load_layer(w, i)

    def rope_factors(self, w: WeightLoader, n_ctx: int) -> np.ndarray | None:
        c = self.cfg
        if c.rope_scaling_type != "longrope":
            return super().rope_factors(w, n_ctx)
        if c.rope_scaling_factor != 1.0:  # (llama.cpp would scale the positions too; no MiniCPM4 file states one)
            raise UnsupportedModelError(f"{w.g.path}: LongRoPE with rope.scaling.factor {c.rope_scaling_factor} is not supported")
        long = n_ctx > (c.rope_orig_ctx or c.n_ctx_train)
        return w.host_vector("rope_factors_long" if long else "rope_factors_short", required=False)
