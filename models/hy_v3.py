"""Tencent's Hy3 (HY V3 MoE), as llama.cpp's ``hy_v3`` graph: not its Hunyuan forebears' attention (``hunyuan_dense.py``
and ``hunyuan_moe.py`` norm Q and K *after* the rope, with NTK-alpha bases) but Qwen3's (``llama.py``: Q and K
RMS-normalised per head *before* the neox rope, over every dimension of the head) with DeepSeek-V3's FFNs:

* a dense SwiGLU FFN where a layer has no router (the leading dense blocks: llama.cpp decides by the tensor, not by a
  count), elsewhere a mixture of experts (``moe.py``) routed by ``expert_gating_func`` (sigmoid unless stated), chosen
  with the selection bias ``blk.N.exp_probs_b`` (no ``.bias`` suffix: llama.cpp's hy_v3 loader names it so, and
  without it routes unbiased), renormalised where ``expert_weights_norm`` says, times ``expert_weights_scale``;
* beside them a plain SwiGLU shared expert every token runs, ``expert_shared_feed_forward_length`` wide (else
  ``expert_feed_forward_length``), its output added to the experts';
* the output head the token embeddings where the file has no ``output.weight``.

The last ``nextn_predict_layers`` of ``block_count`` are the multi-token-prediction block, which llama.cpp's main
graph loads but does not run, nor does kvrun (it reads none of it).  Experts with gate and up fused
(``ffn_gate_up_exps``, which the converter does not write) are refused in one line.  It runs on the CPU and the GPU
(the GPU routes in kernels: models/moe.py).
"""

from __future__ import annotations

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .llama import LlamaLayer, LlamaModel
from .moe import expert_groups, gating_func, weights_scale

TENSOR_NAMES.update({"hy_v3_exp_probs_b": "blk.{i}.exp_probs_b"})  # (llama.cpp's hy_v3 reads LLM_TENSOR_FFN_EXP_PROBS_B without a suffix)

#: llama.cpp's expert_gating_func values the graph runs (0, unstated: sigmoid, as llama.cpp defaults it for hy_v3)
GATING = {0: "sigmoid", 1: "softmax", 2: "sigmoid"}


class HyV3Model(LlamaModel):
    archs = ("hy_v3",)
    shared_expert = "plain"  # (every MoE layer has one, neither gated nor scaled)
    head_qk_norms = "hy_v3"
    #: the metadata llama.cpp requires
    required_keys = ("attention.layer_norm_rms_epsilon", "expert_feed_forward_length")

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in self.required_keys:
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata hy_v3.{key} is missing; the file is not a complete model")
        if not cfg.rope_dim == cfg.head_dim == cfg.head_dim_v:  # (llama.cpp's graph asserts both)
            raise GGUFError(f"{g.path}: hy_v3 with rope.dimension_count {cfg.rope_dim}, key_length {cfg.head_dim} and value_length "
                            f"{cfg.head_dim_v}: llama.cpp requires them equal")  # fmt: skip
        self.gating = gating_func(g, GATING)
        self.weights_scale = weights_scale(g)
        self.groups = expert_groups(g, cfg.n_expert)
        self.n_ff_shexp = int(g.arch_get("expert_shared_feed_forward_length", 0) or 0) or cfg.n_ff_exp
        super().__init__(g, cfg, backend, n_ctx, n_batch)

    def rope_factors(self, w: WeightLoader, n_ctx: int) -> np.ndarray | None:
        """None: llama.cpp's hy_v3 loads no ``rope_freqs``."""
        return None

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        if f"blk.{i}.ffn_gate_up_exps.weight" in w.g.tensors:
            raise UnsupportedModelError(f"{w.g.path}: blk.{i}.ffn_gate_up_exps (fused gate and up experts) is not supported yet")
        if w.has("exp_probs_b", i):  # (llama.cpp's hy_v3 refuses the file: a tensor it does not read)
            raise GGUFError(f"{w.g.path}: tensor 'blk.{i}.exp_probs_b.bias' is not hy_v3's; its selection bias is blk.{i}.exp_probs_b")
        L = super().load_layer(w, i)
        if L.moe is not None:
            if L.moe.shared.gate.shape[0] != self.n_ff_shexp:
                raise GGUFError(f"{w.g.path}: blk.{i}.ffn_gate_shexp.weight has {L.moe.shared.gate.shape[0]} rows, expected "
                                f"{self.n_ff_shexp}; the file is not a supported model")  # fmt: skip
            L.moe.gating, L.moe.weights_scale = self.gating, self.weights_scale
            L.moe.n_group, L.moe.n_group_used = self.groups
            L.moe.bias = w.host_vector("hy_v3_exp_probs_b", i, required=False)
        return L
