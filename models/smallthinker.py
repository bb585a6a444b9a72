"""SmallThinker (PowerInfer's SmallThinker-4B-A0.6B and SmallThinker-21B-A3B): mixtures of experts designed to run
on local devices, as llama.cpp's SMALLTHINKER graph.

The Llama block (``llama.py``: RMSNorm, grouped-query attention, neox rope over the whole head, scores scaled by
``1/sqrt(head_dim)``) with a mixture of experts (``moe.py``) for every FFN, and what sets it apart:

* The router reads the layer's *input*: the residual stream before the attention norm (the checkpoints'
  ``router_input``), not the FFN's normed input.  The model can so choose a layer's experts, and fetch them from
  storage, while its attention runs.
* Router probabilities by softmax or by sigmoid, as ``expert_gating_func`` says (the converter writes softmax where
  the checkpoint's ``moe_primary_router_apply_softmax`` says, sigmoid otherwise); the top ``expert_used_count``
  weighted by them renormalised to sum 1 (always, as llama.cpp); no selection bias, no shared expert; groups where
  the file states ``expert_group_count`` (llama.cpp applies them to every architecture).
* The experts are ReGLU, ``down(relu(gate x) * up x)`` (llama.cpp's LLM_FFN_RELU).
* Where the file states ``attention.sliding_window`` (the 4B's ``sliding_window_layout``), of every
  ``sliding_window_pattern`` layers (4 unless stated) the first attends over the whole context and the others
  within 4096 positions (llama.cpp's window, whatever the file states: ``ModelConfig.swa_layers``), those rotating
  with ``rope.freq_base_swa`` where stated; and every 4th layer from layer 0 (llama.cpp's ``n_no_rope_layer_step``,
  which SmallThinker leaves at its default) attends without rope, unless the model has exactly 4 layers.  Without a
  window every layer rotates with the one base.
* The output head is the token embeddings where the file has no ``output.weight``.

On ``--device gpu`` the layer's input is copied into the router's buffer by a kernel and the experts route in moe.cu's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..cache.base import LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader, make_rope
from .llama import LlamaLayer, LlamaModel
from .moe import check_expert_counts, expert_groups, gating_func, load_moe

#: llama.cpp's expert_gating_func values (LLAMA_EXPERT_GATING_FUNC_TYPE_*) SmallThinker's converter writes
GATING = {1: "softmax", 2: "sigmoid"}
#: llama.cpp's n_no_rope_layer_step, which SmallThinker's loader leaves at its default where the file states a window:
#: layers 0, 4, 8... attend without rope
NO_ROPE_STEP = 4


@dataclass
class SmallThinkerLayer(LlamaLayer):
    swa: bool = False  # attends within the window, rotating with the window layers' rope base


class SmallThinkerModel(LlamaModel):
    archs = ("smallthinker",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        if g.arch_get("expert_gating_func") is None:  # (llama.cpp reads it optionally, and then has no gating to run)
            raise GGUFError(f"{g.path}: metadata smallthinker.expert_gating_func is missing; the file is not a complete model")
        self.gating = gating_func(g, GATING)
        self.groups = expert_groups(g, cfg.n_expert)
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.router_x = self.buf.get("router_x", n_batch, cfg.n_embd)  # each layer's input, which its router reads
        for L in self.layers:
            L.moe.router_in = self.router_x
        theta_swa = cfg.rope_theta_swa or cfg.rope_theta
        self.rope_swa = make_rope(cfg, n_ctx, theta_swa) if cfg.sliding_window and theta_swa != cfg.rope_theta else None

    def load_layer(self, w: WeightLoader, i: int) -> SmallThinkerLayer:
        c = self.cfg
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, True, gating=self.gating, act="relu")
        moe.n_group, moe.n_group_used = self.groups
        # (llama.cpp: no NoPE layers without a window, its step then n_layer; nor where the step is n_layer itself)
        nope = c.sliding_window > 0 and c.n_layer != NO_ROPE_STEP and i % NO_ROPE_STEP == 0
        return SmallThinkerLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=bq, bk=bk, bv=bv,
            q_norm=None, k_norm=None, ffn_norm=w.vector("ffn_norm", i), w_gate=None, w_up=None, w_down=None,
            rope=not nope, moe=moe, swa=c.is_swa(i),
        )  # fmt: skip

    def layer_input(self, L: LlamaLayer, x: Any) -> None:
        self.be.copy(x, self.router_x[: x.shape[0]])  # (the attention adds into x before the router would read it)

    def qk_norm_rope(self, L: SmallThinkerLayer, q: Any, k: Any, q3: Any, k3: Any, pos: Any, cos: Any, sin: Any) -> None:
        if L.swa and self.rope_swa is not None:
            cos, sin = self.rope_swa
        super().qk_norm_rope(L, q, k, q3, k3, pos, cos, sin)

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        return [dataclasses.replace(s, window=c.sliding_window if c.is_swa(il) else 0) for il, s in enumerate(super().layer_specs())]
