"""MiniMax-M3 as llama.cpp's ``minimax-m3`` graph: MiniMax-M2's attention with DeepSeek-V3's FFN, swigluoai, and
MiniMax Sparse Attention (MSA) on its dense path.

The pre-norm Llama block (``llama.py``) with:

* MiniMax-M2's attention (``minimax_m2.py``) but QK-norm head by head (``attn_q_norm``/``attn_k_norm`` one head wide, the
  converter's weights with Gemma's +1 already in them), partial neox rope (``rope.dimension_count`` of each head), an
  output head of its own, attention scaled by ``1/sqrt(head_dim)``;
* DeepSeek-V3's FFN (``moe.py``, as exaone_moe.py's): the first ``leading_dense_block_count`` layers dense, the others a
  mixture of experts routed by ``expert_gating_func`` (sigmoid) and chosen with ``exp_probs_b``, renormalised where
  ``expert_weights_norm`` says (llama.cpp's default: not), times ``expert_weights_scale``, beside a plain shared expert
  ``expert_shared_count`` experts wide;
* every GLU gpt-oss's clamped ``swiglu_oai`` (``gptoss.py``: ``min(g, 7) sigmoid(1.702 min(g, 7)) (clamp(u, -7, 7) + 1)``):
  the routed experts', the shared expert's and the dense layers' (a dense FFN runs as a mixture of one expert, whose
  softmax weight is exactly 1, so the experts' swiglu_oai serves it).

MSA: each sparse layer (the MoE ones) has an indexer (``indexer.q_proj``/``k_proj``/``q_norm``/``k_norm``) that scores
the cached positions block by block (``attention.indexer.block_size``); each query then attends only to the
``attention.indexer.top_k`` best blocks of its own (its ``local_blocks`` latest forced in), the rest masked.  llama.cpp
takes ``min(top_k, blocks)`` blocks, and a query at position ``p`` sees ``p // block_size + 1`` blocks, so up to
``top_k * block_size`` positions every block a query sees is chosen and the attention is exactly the dense one (as
llama.cpp also runs it without flash attention).  kvrun runs that dense path only: a context (``--ctx-size``) past
``top_k * block_size`` is refused in one line, and the indexer's weights are checked, never read (glm_dsa.py's way).

``--device gpu``: the routed experts (and the dense layers' one) route and run in moe.cu's kernels, swiglu_oai their act;
the shared expert's swiglu_oai is moe2.cu's element-wise kernel between its ordinary products; the attention (per-head
QK-norm, partial rope) is the Llama block's.  A decode step launches kernels only (captured as a CUDA graph).
"""

from __future__ import annotations

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel
from .minimax_m2 import GATING
from .moe import MoE, check_expert_counts, gating_func, weights_scale

#: what llama.cpp's loader requires of the file beside the Llama block's keys
REQUIRED_KEYS = ("expert_feed_forward_length", "expert_shared_count", "expert_gating_func") + tuple(
    f"attention.indexer.{k}" for k in ("head_count", "key_length", "top_k", "block_size", "local_blocks"))  # fmt: skip
#: a sparse layer's indexer tensors (llama.cpp's LLM_TENSOR_INDEXER_*), required though the dense path never reads them
INDEXER_TENSORS = ("q_proj", "k_proj", "q_norm", "k_norm")


class MiniMaxM3Model(LlamaModel):
    archs = ("minimax-m3",)
    shared_expert = "plain"  # (every MoE layer has one, neither gated nor scaled)
    head_qk_norms = "MiniMax-M3"  # (one head wide, every layer)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in REQUIRED_KEYS:
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata {g.architecture}.{key} is missing; the file is not a complete model")
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        block, top_k = int(g.arch_get("attention.indexer.block_size")), int(g.arch_get("attention.indexer.top_k"))
        if block <= 0 or top_k <= 0:
            raise GGUFError(f"{g.path}: attention.indexer.block_size {block}, top_k {top_k}: both must be > 0")
        #: the longest context MSA keeps every key of (its dense path, which kvrun runs)
        self.dense_ctx = block * top_k
        if n_ctx > self.dense_ctx:
            raise UnsupportedModelError(f"{g.path}: minimax-m3's sparse attention (MSA) past {self.dense_ctx} tokens (its indexer's top_k {top_k} "
                                        f"x block_size {block}) is not supported yet; use a context (--ctx-size) of at most {self.dense_ctx}, not {n_ctx}")  # fmt: skip
        self.gating = gating_func(g, GATING)
        self.weights_scale = weights_scale(g)
        self.n_dense_lead = int(g.arch_get("leading_dense_block_count", 0) or 0)
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        if self.output is self.tok_embd:  # (llama.cpp requires the output head: WeightLoader's message)
            WeightLoader(g, backend).matrix("output")

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        g = w.g
        dense = i < self.n_dense_lead
        if not dense:  # (llama.cpp requires them: a one-line error naming the one missing)
            w.host_vector("exp_probs_b", i)
            w.matrix("ffn_gate_inp", i)
            for t in INDEXER_TENSORS:
                if f"blk.{i}.indexer.{t}.weight" not in g.tensors:
                    raise GGUFError(f"{g.path}: tensor 'blk.{i}.indexer.{t}.weight' is missing; the file is incomplete or not a supported model")
        elif w.has("ffn_gate_inp", i):
            raise GGUFError(f"{g.path}: blk.{i}.ffn_gate_inp.weight is in a leading dense layer; the file is not a supported model")
        L = super().load_layer(w, i)
        if dense:
            L.moe = self.one_expert(L)
            L.w_gate = L.w_up = L.w_down = None
        else:
            L.moe.gating, L.moe.weights_scale, L.moe.act = self.gating, self.weights_scale, "swiglu_oai"
            L.moe.shared.act = "swiglu_oai"
        return L

    def one_expert(self, L: LlamaLayer) -> MoE:
        """A dense layer's swiglu_oai FFN as a mixture of one expert: a softmax over its one (zero) router logit weighs it
        exactly 1, so the experts' swiglu_oai runs it as llama.cpp's build_ffn does."""
        n_embd = self.cfg.n_embd
        router = self.be.upload(np.zeros((1, n_embd), np.float32).view(np.uint8), 0, (1, n_embd))  # (its raw bytes; 0: GGML_TYPE_F32)
        return MoE(router=router, gate=L.w_gate, up=L.w_up, down=L.w_down, n_expert=1, n_used=1, norm_weights=False, act="swiglu_oai")
