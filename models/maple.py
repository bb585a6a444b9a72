"""Maple (deepgrove's ``MapleForCausalLM``, maple-preview), as llama.cpp's ``maple`` graph.

The pre-norm Llama block (``llama.py``: RMSNorm -> attention -> residual -> RMSNorm -> FFN -> residual) with Q and K
RMS-normalised head by head (QK-norm), a mixture of experts in every layer, and what sets it apart:

* hybrid attention: the layers the file's ``sliding_window_pattern`` array flags (required: the converter writes one flag
  a layer) attend within ``sliding_window``; only they rotate (neox, over ``rope.dimension_count_swa`` where stated,
  else ``rope.dimension_count``: the converter's partial rotary), at ``rope.freq_base_swa`` where stated, with the
  file's rope scaling and no ``rope_freqs``; the global layers NoPE;
* the experts routed by a softmax over all of them whatever ``expert_gating_func`` says, the chosen ``expert_used_count``
  renormalised to sum 1 whatever ``expert_weights_norm`` says; no shared expert;
* the experts' SwiGLU clamped as ggml's ``swiglu_clamp`` does it (``swiglu_clamp_exp``, required, one limit or one a
  layer; the converter's 7.0): ``silu(min(gate, limit)) * clamp(up, -limit, limit)``, the gate clamped *before* its
  SiLU (Step-3.5's clamps after it: ``moe.MoE.clamp_gate_first``);
* an output head of its own (llama.cpp requires ``output.weight``: no tied fallback).

On ``--device gpu`` too: the routing and the gate-first clamped experts are kernels (moe2.cu's ``"swiglu_clamp_first"``),
the rest the Llama block's, so a decode step copies nothing to the host (a CUDA graph captures it).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader, make_rope
from .exaone_moe import WindowRopeModel
from .llama import LlamaLayer
from .mimo2 import per_layer
from .moe import check_expert_counts

#: llama.cpp's get_key / get_arr without a default for maple (the window and its pattern, the experts' width, the clamp)
REQUIRED_KEYS = ("attention.sliding_window", "attention.sliding_window_pattern", "expert_feed_forward_length", "swiglu_clamp_exp")


class MapleModel(WindowRopeModel):
    archs = ("maple",)
    head_qk_norms = "maple"  # (every layer's attn_q_norm/attn_k_norm, one head wide)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in REQUIRED_KEYS:
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata maple.{key} is missing; the file is not a complete model")
        if not hasattr(g.arch_get("attention.sliding_window_pattern"), "__len__"):  # (llama.cpp's get_arr: an array)
            raise GGUFError(f"{g.path}: metadata maple.attention.sliding_window_pattern is not an array of one flag a layer")
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        if "output.weight" not in g.tensors:
            raise GGUFError(f"{g.path}: tensor 'output.weight' is missing; maple has an output head of its own")
        # (one limit or one a layer; llama.cpp clamps where it is above 1e-6)
        self.clamp_exp = [v if v > 1e-6 else 0.0 for v in per_layer(g, "swiglu_clamp_exp", cfg.n_layer, 0, float)]
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        # (only the window layers rotate: at their own base and width, the file's scaling; llama.cpp's *_train_swa)
        n_rot_swa = int(g.arch_get("rope.dimension_count_swa", cfg.rope_dim) or cfg.rope_dim)
        self.rope_cos, self.rope_sin = make_rope(dataclasses.replace(cfg, rope_dim=n_rot_swa), n_ctx, cfg.rope_theta_swa or cfg.rope_theta)

    def rope_factors(self, w: WeightLoader, n_ctx: int) -> np.ndarray | None:
        return None  # (llama.cpp's maple graph rotates without rope_freqs)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        if not w.has("ffn_gate_inp", i):  # (a mixture of experts in every layer: the one-line error naming the router)
            w.matrix("ffn_gate_inp", i)
        L = super().load_layer(w, i)
        L.moe.gating, L.moe.norm_weights = "softmax", True  # (fixed in llama.cpp's graph)
        L.moe.swiglu_limit, L.moe.clamp_gate_first = self.clamp_exp[i], True
        return L
