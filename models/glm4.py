"""GLM-4 (Zhipu AI / Z.ai): ``glm4``, the dense GLM-4-9B-0414, GLM-Z1-9B-0414, GLM-4-32B-0414 and GLM-Z1-32B,
and ``glm4moe``, the mixtures of experts GLM-4.5, GLM-4.5-Air and GLM-4.6, as llama.cpp's GLM4 and GLM4_MOE graphs.

Both are the Llama block (``llama.py``) with biases on Q, K and V (where the file has them; a fused ``attn_qkv``
is cut into Q, K and V at load), scores scaled by ``1/sqrt(head_dim)``, and rope over only the first
``rope.dimension_count`` dimensions of each head (half of them: the models' partial_rotary_factor 0.5).

glm4 (dense):

* Sandwich norms: the attention's output is RMS-normalised by ``post_attention_norm`` before its residual add,
  the FFN's by ``post_ffw_norm`` (Gemma 2's placement), besides the pre-norms ``attn_norm`` and ``ffn_norm``.
* The FFN's gate and up are one matrix, ``ffn_up`` of ``2 * n_ff`` rows: gate rows, then up rows (llama.cpp's
  LLM_FFN_SWIGLU: silu of the first half times the second), cut in two at load as Phi-3's.
* Rope over consecutive pairs (llama.cpp's normal rope).

glm4moe:

* No post-norms: its ``post_attention_norm`` is the FFN's pre-norm (the checkpoints' post_attention_layernorm,
  after the attention's residual add), in ``ffn_norm``'s place.
* Per-head RMSNorm of Q and K before the rope where the file has ``attn_q_norm``/``attn_k_norm`` (GLM-4.5 and 4.6,
  the checkpoints' use_qk_norm; GLM-4.5-Air has none); neox rope.
* The first ``leading_dense_block_count`` layers a dense SwiGLU FFN (gate and up apart); the others a mixture of
  experts (``moe.py``): router probabilities by sigmoid (``expert_gating_func``; llama.cpp's default for glm4moe where
  unstated), the top ``expert_used_count`` chosen by probability plus ``exp_probs_b`` (a selection bias that does not
  weight), from the best ``expert_group_used_count`` groups where the file states ``expert_group_count``, their
  weights renormalised where ``expert_weights_norm`` says and times ``expert_weights_scale``; plus
  ``expert_shared_count`` shared experts as one plain SwiGLU FFN every token runs.
* It runs on the CPU and the GPU (the GPU routes in kernels: models/moe.py).

Both: the last ``nextn_predict_layers`` of ``block_count`` (GLM-4.5's multi-token prediction, GLM-OCR's) are draft
heads for speculative decoding, which llama.cpp loads and its forward skips; kvrun neither runs nor reads them
(``ModelConfig.n_layer`` counts the trunk alone).

A file with multimodal rope (``rope.dimension_sections``: GLM-4.1V's language model, a glm4; GLM-4.5V's, a glm4moe:
llama.cpp has no architecture of its own for either) runs it as llama.cpp does, neox-paired, and takes GLM-4V's image
rows (models/glm4v.py).  Refused: experts with gate and up fused (``ffn_gate_up_exps``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..cache.base import KVCache
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .glm4v import MropeText, has_sections, mrope_config
from .llama import LlamaLayer, LlamaModel
from .moe import check_expert_counts, expert_groups, gating_func, load_moe, weights_scale

#: llama.cpp's expert_gating_func values (LLAMA_EXPERT_GATING_FUNC_TYPE_*) glm4moe runs; 0 (unstated): sigmoid
GATING = {0: "sigmoid", 1: "softmax", 2: "sigmoid"}


def _qkv(w: WeightLoader, c: ModelConfig, i: int) -> tuple[Any, ...]:
    """Layer i's Q, K, V projections and their biases (None where the file has none)."""
    return w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))


@dataclass
class Glm4Layer(LlamaLayer):
    attn_post_norm: Any = None  # [n_embd]: the attention's output, normalised before its residual add
    ffn_post_norm: Any = None  # [n_embd]: the FFN's


class Glm4Model(MropeText, LlamaModel):
    archs = ("glm4",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        mrope = has_sections(g)  # (GLM-4.1V's / 4.5V's text: llama.cpp's multimodal rope, images; models/glm4v.py)
        self._post_norms: Iterator[Any] = iter(())
        super().__init__(g, mrope_config(cfg) if mrope else cfg, backend, n_ctx, n_batch)
        if mrope:
            self.init_mrope(g)

    def load_layer(self, w: WeightLoader, i: int) -> Glm4Layer:
        c = self.cfg
        wq, wk, wv, bq, bk, bv = _qkv(w, c, i)
        w_gate, w_up = w.matrix_rows("w_up", i, (c.n_ff, c.n_ff))  # (gate rows first)
        return Glm4Layer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=bq, bk=bk, bv=bv,
            q_norm=None, k_norm=None, ffn_norm=w.vector("ffn_norm", i), w_gate=w_gate, w_up=w_up,
            w_down=w.matrix("w_down", i), attn_post_norm=w.vector("attn_post_norm", i),
            ffn_post_norm=w.vector("ffn_post_norm", i),
        )  # fmt: skip

    def add_output(self, x: Any, o: Any, product: Callable[[Any, bool], None]) -> None:
        """``x += rms_norm(block output) * post_norm``.  Llama's forward hands over the block outputs in order, each
        layer's attention's and then its FFN's, and ``forward`` lines up their post-norms in that order."""
        y = self.buf.get("o", x.shape[0], self.cfg.n_embd)
        product(y, False)
        self.be.rms_norm_add(y, next(self._post_norms), self.cfg.norm_eps, x)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        self._post_norms = itertools.chain.from_iterable((L.attn_post_norm, L.ffn_post_norm) for L in self.layers)
        super().forward(tokens, pos, cache, out_rows, logits)


class Glm4MoeModel(MropeText, LlamaModel):
    archs = ("glm4moe",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        mrope = has_sections(g)  # (GLM-4.5V's text: glm4moe's graph turns by sections where the file states them)
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        self.n_dense_lead = int(g.arch_get("leading_dense_block_count", 0) or 0)
        self.gating = gating_func(g, GATING)
        self.weights_scale = weights_scale(g)
        self.n_shared = int(g.arch_get("expert_shared_count", 0) or 0)
        self.groups = expert_groups(g, cfg.n_expert)
        super().__init__(g, mrope_config(cfg) if mrope else cfg, backend, n_ctx, n_batch)
        if mrope:
            self.init_mrope(g)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        c = self.cfg
        wq, wk, wv, bq, bk, bv = _qkv(w, c, i)
        q_norm, k_norm, full = self.load_qk_norm(w, i, required=False)
        if full:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm span all heads; glm4moe's are one head ({c.head_dim}) wide")
        L = LlamaLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=bq, bk=bk, bv=bv,
            q_norm=q_norm, k_norm=k_norm, ffn_norm=w.vector("attn_post_norm", i),  # (the FFN's pre-norm)
            w_gate=None, w_up=None, w_down=None,
        )  # fmt: skip
        if i < self.n_dense_lead:
            L.w_gate, L.w_up, L.w_down = (w.matrix(r, i) for r in ("w_gate", "w_up", "w_down"))
            return L
        if f"blk.{i}.ffn_gate_up_exps.weight" in w.g.tensors:
            raise UnsupportedModelError(f"{w.g.path}: blk.{i}.ffn_gate_up_exps (fused gate and up experts) is not supported yet")
        w.host_vector("exp_probs_b", i)  # (required, as llama.cpp's loader: a missing one is named here)
        L.moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, c.expert_weights_norm, gating=self.gating,
                         shared="plain" if self.n_shared > 0 else None)  # fmt: skip
        L.moe.weights_scale = self.weights_scale
        L.moe.n_group, L.moe.n_group_used = self.groups
        return L
