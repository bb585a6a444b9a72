"""MPT (MosaicML: MPT-7B/30B and their -Instruct/-Chat/-StoryWriter; Replit's replit-code-v1-3b), as llama.cpp's
MPT graph: BLOOM's ALiBi block (models/bloom.py) stripped down:

* ALiBi with the file's own maximum bias (``attention.max_alibi_bias``: the checkpoint's ``alibi_bias_max``,
  8 in every release), no positions in the input and no LayerNorm on the embeddings;
* no biases anywhere (``no_bias``): LayerNorms of a weight alone, projections without biases (llama.cpp takes
  each where a file has one; here a missing bias is zero);
* where the file states ``attention.clamp_kqv`` (``clip_qkv``, MPT-7B-8k's 8), Q, K and V clipped to
  ``[-clamp_kqv, clamp_kqv]`` right after the fused projection;
* Q, K and V from one fused ``attn_qkv``; an ungated GELU FFN; the output head the token embeddings (tied).

Not taken: learned positions (``learned_pos_emb`` with ALiBi off), the QK LayerNorms (``qk_ln``) and AWQ's
``ffn_act`` scales, which no released checkpoint has with ALiBi; such files are refused in one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .bloom import BloomModel, file_max_alibi_bias
from .common import WeightLoader
from .gpt2 import GPT2Layer


class MptModel(BloomModel):
    archs = ("mpt",)
    norm_biases = False

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for name in ("position_embd.weight", "blk.0.attn_q_norm.weight", "blk.0.ffn_act.scales"):
            if name in g.tensors:
                raise UnsupportedModelError(f"{g.path}: {name} (MPT without ALiBi, with QK LayerNorms or AWQ scales) is not supported")
        #: Q, K and V clipped to +-clamp_kqv after their projection (0: not clipped)
        self.clamp_kqv = float(g.arch_get("attention.clamp_kqv", 0.0) or 0.0)
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def max_alibi_bias(self, g: GGUFFile) -> float:
        return file_max_alibi_bias(g, "MPT")

    def load_tok_norm(self, w: WeightLoader) -> tuple[Any, Any]:
        return None, None

    def load_layer(self, w: WeightLoader, i: int) -> GPT2Layer:
        c = self.cfg

        def bias(role: str, n: int) -> Any:  # (zero where the file has none: MPT's no_bias)
            b = w.vector(role, i, required=False)
            return self.be.vector(np.zeros(n, np.float32)) if b is None else b

        q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        wq, wk, wv, bq, bk, bv = w.qkv(i, (q_dim, kv_dim, kv_dim))
        zero = self.be.vector(np.zeros(q_dim + 2 * kv_dim, np.float32))
        return GPT2Layer(
            attn_norm=w.vector("attn_norm", i), attn_norm_b=bias("attn_norm_b", c.n_embd),
            wq=wq, wk=wk, wv=wv, bq=zero[:q_dim] if bq is None else bq, bk=zero[q_dim:q_dim + kv_dim] if bk is None else bk,
            bv=zero[q_dim + kv_dim:] if bv is None else bv, wo=w.matrix("wo", i), bo=bias("bo", c.n_embd),
            w_up=w.matrix("w_up", i), b_up=bias("b_up", c.n_ff), w_down=w.matrix("w_down", i), b_down=bias("b_down", c.n_embd),
            ffn_norm=w.vector("ffn_norm", i), ffn_norm_b=bias("ffn_norm_b", c.n_embd),
        )  # fmt: skip

    def final_norm(self, x: Any, out: Any) -> None:
        # (None where the file has none, MPT's no_bias: the backends' "no bias", which the GPU's kernel needs)
        self.be.layer_norm(x, self.output_norm, self.output_norm_b, self.cfg.norm_eps, out)

    def attend(self, layer_cache: Any, q3: Any, k3: Any, v3: Any, pos: Any, att3: Any) -> None:
        if self.clamp_kqv > 0:  # (clip_qkv: on the fused projection's output, before the attention)
            for t in (q3, k3, v3):
                self.be.clamp(t, self.clamp_kqv)
        super().attend(layer_cache, q3, k3, v3, pos, att3)
