"""InternLM2 / InternLM2.5 (Shanghai AI Lab: 1.8B, 7B, 20B; the 7B-chat-1m too), as llama.cpp's INTERNLM2 graph.

In GGUF it is the Llama block (RMSNorm -> GQA attention, rope over consecutive pairs -> residual -> RMSNorm ->
SwiGLU FFN -> residual, a separate output head): what sets the Hugging Face model apart is in its weights' layout,
which the converter undoes.  InternLM2 keeps Q, K and V in one ``wqkv`` whose rows go by KV group (each group's
queries, then its key, then its value); the converter cuts it into ``attn_q``/``attn_k``/``attn_v`` and permutes Q's
and K's rows for llama.cpp's rope over consecutive pairs, as it does Llama's.  llama.cpp's loader takes one
``attn_qkv`` too (Q's rows, then K's, then V's): both are read here.  The output head is never tied (llama.cpp
requires ``output.weight``).
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .llama import LlamaLayer, LlamaModel


class InternLM2Model(LlamaModel):
    archs = ("internlm2",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if TENSOR_NAMES["output"] not in g.tensors:  # (InternLM2 never ties its head; llama.cpp refuses such a file too)
            raise GGUFError(f"{g.path}: tensor {TENSOR_NAMES['output']!r} is missing; the file is incomplete or not a supported model")
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        c = self.cfg
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        return LlamaLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=bq, bk=bk, bv=bv,
            q_norm=None, k_norm=None, ffn_norm=w.vector("ffn_norm", i),
            w_gate=w.matrix("w_gate", i), w_up=w.matrix("w_up", i), w_down=w.matrix("w_down", i),
        )  # fmt: skip
