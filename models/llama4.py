"""Llama 4 (Llama-4-Scout-17B-16E, Llama-4-Maverick-17B-128E) as llama.cpp's ``llama4`` graph: the Llama block
(RMSNorm -> attention (GQA, rope over consecutive pairs, Llama 3's rope factors) -> residual -> RMSNorm -> FFN ->
residual) with Meta's "iRoPE" attention and interleaved experts:

* attention by layers of 4 (llama.cpp's fixed ``n_no_rope_layer_step`` and swa pattern): three *chunked* rope
  layers, where a token sees only the tokens of its own chunk of 8192 positions (llama.cpp's
  ``LLAMA_SWA_TYPE_CHUNKED``, its chunk fixed in code: ``LayerSpec.window`` -8192), then one NoPE layer that sees
  the whole context without positional encoding;
* on the rope layers Q and K are L2-normalised per head after the rope (an RMSNorm without weights: Meta's
  ``Llama4TextL2Norm``), except in Maverick (128 experts), which has no such norm;
* on the NoPE layers the queries are multiplied by the attention temperature ``1 + 0.1 ln(1 + floor((pos + 1) /
  8192))`` (Mistral 3's arithmetic, :func:`.mistral3.attn_temperature`, one position on): 1 within the first chunk;
* every ``interleave_moe_layer_step``-th layer (Scout 1, Maverick 2) a mixture of experts: a sigmoid router picks
  one expert a token, whose weight scales the expert's *input* (llama.cpp's ``weight_before_ffn``: through the
  SiLU that is not the same as scaling its output), plus a shared expert (``ffn_*_shexp``) every token runs; the
  other layers a dense SwiGLU FFN.

The chunks are the attention kernels' (a negative ``LayerSpec.window``; the plain fp16 cache, the CPU's or the GPU's).
On the GPU the temperature is a rope launch whose tables scale without turning (it reads the step's positions on the
device, as a captured decode step must), and the experts, weighted before their FFN, run in moe2.cu's kernels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..cache.base import LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .llama import LlamaLayer, LlamaModel
from .mistral3 import attn_temperature

#: what llama.cpp fixes in code for Llama 4 (no file states them): the chunk of the chunked layers, every 4th layer
#: NoPE (and, unless ``attention.sliding_window_pattern`` says otherwise, global), the NoPE layers' query temperature
CHUNK = 8192
NO_ROPE_LAYER_STEP = 4
SWA_PERIOD = 4
TEMP_FLOOR_SCALE = 8192
TEMP_SCALE = 0.1
#: Maverick's expert count: llama.cpp leaves out the QK L2 norm for that model type (17B_128E)
N_EXPERT_NO_QK_NORM = 128


class Llama4Model(LlamaModel):
    archs = ("llama4",)
    shared_expert = "plain"  # (required in every MoE layer, ungated, as llama.cpp loads it)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if cfg.n_expert <= 0:
            raise GGUFError(f"{g.path}: llama4.expert_count is missing or 0; the file is not a supported model")
        sw = g.arch_get("attention.sliding_window")
        if sw is not None and int(sw) == 0:  # (MobileLLM-R1's marking: llama.cpp 0.3.36 then NoPEs its last layer and
            # asserts on the missing temperature, so no reference runs such a file)
            raise UnsupportedModelError(f"{g.path}: llama4 without chunked attention (attention.sliding_window 0) is not supported")
        if cfg.rope_theta_swa and cfg.rope_theta_swa != cfg.rope_theta:
            raise UnsupportedModelError(f"{g.path}: llama4 with a rope.freq_base_swa of its own is not supported")
        period = int(g.arch_get("attention.sliding_window_pattern", SWA_PERIOD) or 0)
        self.chunked = [period == 0 or il % period < period - 1 for il in range(cfg.n_layer)]  # (llama.cpp's set_swa_pattern)
        self.moe_step = int(g.arch_get("interleave_moe_layer_step", 0) or 0)
        self.qk_l2 = cfg.n_expert != N_EXPERT_NO_QK_NORM
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.ones = backend.vector(np.ones(cfg.head_dim, np.float32))  # (the L2 norm: an RMSNorm with unit weights)
        # position p's query factor, llama.cpp's floor((p + 1) / 8192): its attn_temperature at p + 1
        self.q_temp = attn_temperature(n_ctx + 1, TEMP_SCALE, TEMP_FLOOR_SCALE)[1:]
        self.q_temp_cos = self.q_temp_sin = None
        if backend.name != "cpu":  # (the factor as rope tables: cos it, sin 0, so that x' = x t exactly)
            self.q_temp_cos = np.repeat(self.q_temp[:, None], cfg.head_dim // 2, axis=1)
            self.q_temp_sin = np.zeros_like(self.q_temp_cos)

    def load_layer(self, w: WeightLoader, i: int) -> LlamaLayer:
        is_moe = self.moe_step > 0 and (i + 1) % self.moe_step == 0
        if is_moe and not w.has("ffn_gate_inp", i):
            w.matrix("ffn_gate_inp", i)  # (raises: a one-line error naming the router an expert layer lacks)
        if not is_moe and w.has("ffn_gate_inp", i):
            raise GGUFError(f"{w.g.path}: blk.{i}.ffn_gate_inp in a dense layer (interleave_moe_layer_step {self.moe_step}); "
                            "the file is not a supported model")  # fmt: skip
        L = super().load_layer(w, i)
        moe = L.moe and dataclasses.replace(L.moe, gating="sigmoid", norm_weights=False, weights_scale=1.0, weight_before_ffn=True)
        return dataclasses.replace(L, rope=(i + 1) % NO_ROPE_LAYER_STEP != 0, moe=moe)

    def qk_norm_rope(self, L: LlamaLayer, q: Any, k: Any, q3: Any, k3: Any, pos: Any, cos: Any, sin: Any) -> None:
        super().qk_norm_rope(L, q, k, q3, k3, pos, cos, sin)  # (the rope layers' rope; the file has no QK-norm weights)
        if L.rope and self.qk_l2:
            self.be.rms_norm_heads(q3, self.ones, self.cfg.norm_eps)
            self.be.rms_norm_heads(k3, self.ones, self.cfg.norm_eps)
        elif not L.rope and self.q_temp_cos is not None:
            self.be.rope(q3, pos, self.q_temp_cos, self.q_temp_sin, False)
        elif not L.rope:
            q *= self.q_temp[pos][:, None]

    def layer_specs(self) -> list[LayerSpec]:
        c = self.cfg
        scale = c.attention_scale or 1.0 / np.sqrt(c.head_dim)
        return [LayerSpec(c.n_head, c.n_head_kv, c.head_dim, c.head_dim_v, -CHUNK if ch else 0, scale) for ch in self.chunked]
