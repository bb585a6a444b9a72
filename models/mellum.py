"""Mellum 2 (JetBrains' Mellum2-12B-A2.5B, a code model), as llama.cpp's ``mellum`` graph: Qwen3-MoE's block
(``qwen3moe.py``: RMSNorm, grouped-query attention with each head of Q and K RMS-normalised before a neox rope, a
softmax-routed mixture of SwiGLU experts for the FFN, the chosen experts' weights renormalised), and what sets it apart:

* where the file states ``attention.sliding_window``, the layers its ``sliding_window_pattern`` names (the converter's
  per-layer array from the checkpoint's ``layer_types``; a number, or 3 window layers then 1 global where unstated)
  attend within it, the others over the whole context;
* the window layers rotate without the file's rope scaling (llama.cpp's freq_scale 1, ext_factor 0, attn_factor 1:
  plain rope) and at the *global* base: llama.cpp reads ``rope.freq_base_swa`` but its graph rotates every layer at
  ``rope.freq_base``, so kvrun does too; the global layers keep the scaling the file states (YaRN, linear);
* every layer a mixture of experts: llama.cpp requires the router and the experts in each and
  ``expert_feed_forward_length`` stated (0: ``feed_forward_length / expert_used_count`` wide); the chosen weights always
  renormalised (the file's ``expert_weights_norm`` unread) and never scaled (``expert_weights_scale`` unread); no shared
  expert; groups where the file states ``expert_group_count`` (llama.cpp's generic loader);
* the QK norms and an output head of its own (``output.weight``: no tied fallback) required.

On ``--device gpu`` it runs as Qwen3-MoE does (the experts routed in moe.cu's kernels), the window layers reading
their own rope tables.
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
from .moe import check_expert_counts, expert_groups, load_moe


@dataclass
class MellumLayer(LlamaLayer):
    swa: bool = False  # attends within the window, rotating with plain rope


class MellumModel(LlamaModel):
    archs = ("mellum",)
    required_keys = ("attention.layer_norm_rms_epsilon", "expert_feed_forward_length")  # (llama.cpp's, without a default)

    @classmethod
    def rope_window(cls, cfg: ModelConfig, g: GGUFFile) -> str:
        """`kvrun info`'s words for the window layers' rope, in place of the file's ``rope.freq_base_swa`` (read, never
        rotated with): the global base, without the scaling the global layers take; nothing where no layer is a window
        one or the file scales none (every layer then rotates alike)."""
        windowed = cfg.sliding_window and any(cfg.is_swa(il) for il in range(cfg.n_layer))
        return "window layers unscaled" if windowed and cfg.rope_scaling_type != "none" else ""

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        for key in self.required_keys:
            if g.arch_get(key) is None:
                raise GGUFError(f"{g.path}: metadata mellum.{key} is missing; the file is not a complete model")
        check_expert_counts(g, cfg.n_expert, cfg.n_expert_used)
        if "output.weight" not in g.tensors:
            raise GGUFError(f"{g.path}: tensor 'output.weight' is missing; mellum has an output head of its own")
        n_ff_exp = int(g.arch_get("expert_feed_forward_length")) or cfg.n_ff // cfg.n_expert_used
        self.groups = expert_groups(g, cfg.n_expert)
        # (always renormalised, whatever the file's expert_weights_norm says: llama.cpp's graph passes norm_w true)
        super().__init__(g, dataclasses.replace(cfg, n_ff_exp=n_ff_exp, expert_weights_norm=True), backend, n_ctx, n_batch)
        # the window layers' plain rope, at the global base (llama.cpp's graph passes freq_base, not the swa base)
        plain = dataclasses.replace(self.cfg, rope_scaling_type="none", yarn_attn_factor=1.0)
        self.rope_swa = make_rope(plain, n_ctx, self.cfg.rope_theta)

    def load_layer(self, w: WeightLoader, i: int) -> MellumLayer:
        c = self.cfg
        wq, wk, wv, bq, bk, bv = w.qkv(i, (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v))
        q_norm, k_norm, full = self.load_qk_norm(w, i, required=True)
        if full:
            raise GGUFError(f"{w.g.path}: blk.{i}.attn_q_norm/attn_k_norm span all heads; mellum's are one head ({c.head_dim}) wide")
        moe = load_moe(w, i, c.n_expert, c.n_expert_used, c.n_ff_exp, c.n_embd, True)
        moe.n_group, moe.n_group_used = self.groups
        return MellumLayer(
            attn_norm=w.vector("attn_norm", i), wq=wq, wk=wk, wv=wv, wo=w.matrix("wo", i), bq=bq, bk=bk, bv=bv,
            q_norm=q_norm, k_norm=k_norm, ffn_norm=w.vector("ffn_norm", i), w_gate=None, w_up=None, w_down=None,
            moe=moe, swa=c.is_swa(i),
        )  # fmt: skip

    def rope_factors(self, w: WeightLoader, n_ctx: int) -> None:
        return None  # (llama.cpp's graph rotates without per-frequency factors)

    def qk_norm_rope(self, L: MellumLayer, q: Any, k: Any, q3: Any, k3: Any, pos: Any, cos: Any, sin: Any) -> None:
        if L.swa:
            cos, sin = self.rope_swa
        super().qk_norm_rope(L, q, k, q3, k3, pos, cos, sin)

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        # (scores by 1/sqrt(head_dim) whatever attention.scale a file states: llama.cpp's graph fixes it)
        return [dataclasses.replace(s, window=c.sliding_window if c.is_swa(il) else 0, scale=c.head_dim**-0.5)
                for il, s in enumerate(super().layer_specs())]  # fmt: skip
