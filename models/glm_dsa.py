"""GLM-5 (Z.ai) as llama.cpp's ``glm-dsa``: GLM with DeepSeek sparse attention (DSA), its dense path.

DeepSeek-V3's trunk (``deepseek2.py``): multi-head latent attention with a query LoRA and the split ``attn_k_b``/
``attn_v_b``, rope over consecutive pairs of each head's rope part; a leading dense layer, then a mixture of experts
with a selection bias ``exp_probs_b`` and shared experts.  GLM's own: the router's probabilities by sigmoid where
``expert_gating_func`` is unstated (deepseek2's default is the softmax), and NextN layers (multi-token prediction) at
the end of ``block_count`` that llama.cpp loads and never runs (``ModelConfig.n_layer`` counts the trunk alone).

The sparse attention: a *lightning indexer* per layer (``indexer.attn_q_b``, ``indexer.attn_k``, ``indexer.k_norm``,
``indexer.proj``) scores every cached key for each query and the attention reads only the best
``attention.indexer.top_k`` (GLM-5: 2048) of them.  llama.cpp takes ``min(top_k, n_kv)``: up to ``top_k`` cached
cells every key is chosen and the attention is the dense MLA that ``deepseek2.py`` runs, whatever the indexer scores.
kvrun runs that dense path only: a context longer than ``top_k`` is refused in one line (``--ctx-size`` <= top_k), and
the indexer's weights are never read.

Refused besides: a context past ``top_k``.  The dense path runs on ``--device gpu`` as deepseek2's does.
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .deepseek2 import Deepseek2Layer, Deepseek2Model
from .moe import gating_func

#: llama.cpp's expert_gating_func values glm-dsa runs; 0 (unstated): sigmoid (GLM-4.5's), not deepseek2's softmax
GATING = {0: "sigmoid", 1: "softmax", 2: "sigmoid"}


class GlmDsaModel(Deepseek2Model):
    archs = ("glm-dsa",)
    yarn_log_mul_key = None  # (llama.cpp's glm-dsa reads no rope.scaling.yarn_log_multiplier: its mscale's is 0)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        top_k = g.arch_get("attention.indexer.top_k")
        if top_k is None:
            raise GGUFError(f"{g.path}: metadata {g.architecture}.attention.indexer.top_k is missing; the file is not a complete model")
        self.indexer_top_k = int(top_k)
        if n_ctx > self.indexer_top_k:
            raise UnsupportedModelError(f"{g.path}: {g.architecture}'s sparse attention past {self.indexer_top_k} tokens (its indexer's top_k) "
                                        f"is not supported yet; use a context (--ctx-size) of at most {self.indexer_top_k}, not {n_ctx}")  # fmt: skip
        self._glm_gating = gating_func(g, GATING)
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> Deepseek2Layer:
        self.gating = self._glm_gating  # (Deepseek2Model's __init__ set deepseek2's default)
        return super().load_layer(w, i)
