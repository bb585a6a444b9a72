"""DeepSeek-V3.2 (V3.2-Exp, V3.2, V3.2-Speciale) as llama.cpp's ``deepseek32`` graph: DeepSeek-V3 with DeepSeek sparse
attention (DSA), its dense path.

DeepSeek-V3's trunk as ``deepseek2.py`` runs it: multi-head latent attention in the absorbed form (``mla.py``: the
cache holds the normed latent and the shared rope key) with the query LoRA and the split ``attn_k_b``/``attn_v_b``,
rope over consecutive pairs of the heads' rope parts, YaRN with DeepSeek's magnitude (``rope.scaling.yarn_log_multiplier``
and the scores' ``mscale^2``); leading dense layers, then a mixture of experts routed by ``expert_gating_func`` with
``exp_probs_b``, chosen from the best ``expert_group_used_count`` groups, renormalised where ``expert_weights_norm``
says, times ``expert_weights_scale``, beside the shared experts; the MTP layer past the trunk (``nextn_predict_layers``)
loaded by llama.cpp and never run by its trunk's graph (kvrun reads none of it: ``ModelConfig.n_layer`` counts the
trunk alone).

What llama.cpp's deepseek32 asks of a file beyond deepseek2 (its ``load_arch_hparams``/``load_arch_tensors``):
``expert_gating_func`` stated (no default: deepseek2's is the softmax, glm-dsa's the sigmoid; 0 aborts its graph), the
query LoRA (``attention.q_lora_rank``), MLA's decompressed widths (``key_length_mla``/``value_length_mla``: "requires
MLA"), and the lightning indexer on every layer: ``attention.indexer.head_count``, ``.key_length`` (at least
``n_rot``: its heads are ``[rope | nope]``), ``.top_k``, and its tensors ``indexer.attn_q_b``, ``indexer.attn_k``,
``indexer.k_norm`` (weight and bias), ``indexer.proj``, all required (glm-dsa's are optional).  Each is checked here and
a missing one named in one line; the indexer's weights are never read.

The sparse attention: the indexer scores every cached key for each query and the attention reads only the best
``min(top_k, n_kv)`` (V3.2: 2048).  Up to ``top_k`` cached cells every key is chosen, whatever the scores, and the
attention is deepseek2's dense MLA; kvrun runs that path only, as glm-dsa (``glm_dsa.py``): a context (``--ctx-size``)
past ``top_k`` is refused in one line.  The dense path runs on ``--device gpu`` as deepseek2's does.
"""

from __future__ import annotations

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .deepseek2 import Deepseek2Layer, Deepseek2Model
from .glm_dsa import GlmDsaModel

#: the keys llama.cpp's deepseek32 reads without a default (beyond the ones every model's config requires)
REQUIRED_KEYS = ("expert_feed_forward_length", "expert_shared_count", "expert_gating_func", "attention.q_lora_rank",
                 "attention.kv_lora_rank", "attention.key_length_mla", "attention.value_length_mla",
                 "attention.indexer.head_count", "attention.indexer.key_length", "attention.indexer.top_k")  # fmt: skip


class Deepseek32Model(GlmDsaModel):
    """glm-dsa's dense path (the top_k refusal; its gating table: 1 softmax, 2 sigmoid, the same as deepseek2's where
    stated), with deepseek32's required keys and indexer tensors."""

    archs = ("deepseek32",)
    yarn_log_mul_key = Deepseek2Model.yarn_log_mul_key  # (deepseek32 reads it, as deepseek2 does; glm-dsa not)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in REQUIRED_KEYS:
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata {g.architecture}.{key} is missing; the file is not a complete model")
        if int(g.arch_get("expert_gating_func")) == 0:  # (llama.cpp's build_moe_ffn aborts on LLAMA_EXPERT_GATING_FUNC_TYPE_NONE)
            raise GGUFError(f"{g.path}: {g.architecture}.expert_gating_func is 0 (none); the file is not a complete model")
        self.indexer_heads = int(g.arch_get("attention.indexer.head_count"))
        self.indexer_head_dim = int(g.arch_get("attention.indexer.key_length"))
        if self.indexer_head_dim < cfg.rope_dim:
            raise GGUFError(f"{g.path}: {g.architecture}.attention.indexer.key_length {self.indexer_head_dim} is narrower than "
                            f"rope.dimension_count {cfg.rope_dim}; the file is not a supported model")  # fmt: skip
        if int(g.arch_get("attention.q_lora_rank")) <= 0:
            raise GGUFError(f"{g.path}: {g.architecture}.attention.q_lora_rank is 0 (llama.cpp requires the query LoRA); the file is not a supported model")
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def load_layer(self, w: WeightLoader, i: int) -> Deepseek2Layer:
        L = super().load_layer(w, i)
        self.check_indexer(w, i)
        return L

    def check_indexer(self, w: WeightLoader, i: int) -> None:
        """Layer i's lightning indexer is in the file at its shapes (llama.cpp requires it; kvrun's dense path reads none of it)."""
        n_ih, d_ih = self.indexer_heads, self.indexer_head_dim
        shapes = {"indexer.attn_q_b.weight": (n_ih * d_ih, self.q_rank), "indexer.attn_k.weight": (d_ih, self.cfg.n_embd),
                  "indexer.k_norm.weight": (d_ih,), "indexer.k_norm.bias": (d_ih,), "indexer.proj.weight": (n_ih, self.cfg.n_embd)}  # fmt: skip
        for name, shape in shapes.items():
            t = w.g.tensors.get(f"blk.{i}.{name}")
            if t is None:
                raise GGUFError(f"{w.g.path}: tensor 'blk.{i}.{name}' is missing; the file is incomplete or not a supported model")
            if tuple(t.shape) != shape:
                raise GGUFError(f"{w.g.path}: blk.{i}.{name} has shape {tuple(t.shape)}, expected {shape}; the file is not a supported model")
