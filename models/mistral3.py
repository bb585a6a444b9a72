"""Mistral 3 text models as llama.cpp converts them to ``mistral3``: Ministral 3 (3B, 8B, 14B) and the
Mistral Small 3.x text towers.

As llama.cpp's MISTRAL3 graph, the Llama block (RMSNorm -> attention (GQA, rope over consecutive
pairs, Llama 3's rope factors where the file has them) -> residual -> RMSNorm -> SwiGLU FFN, or a
mixture of experts where a layer has a router -> residual; a tied or separate output head), with
two changes Ministral 3 uses:

* YaRN's attention magnitude from ``rope.scaling.yarn_log_multiplier`` (the HF config's
  ``mscale_all_dim``), as llama.cpp's context computes it for every YaRN model since
  ggml-org/llama.cpp#17945: Q and K times ``mscale(f, 1) / mscale(f, mscale_all_dim)``, ``mscale(f, m) =
  1 + 0.1 m ln f``, ``f`` the scaling factor (so 1 for Ministral 3, whose ``mscale_all_dim`` is 1), times
  ``rope.scaling.attn_factor`` where the file states one (:func:`yarn_attn_factor`);
* Llama 4's attention temperature (``attention.temperature_scale``, the HF config's
  ``llama_4_scaling_beta``): after rope, each query is multiplied by
  ``1 + beta * ln(1 + floor(pos / n))``, ``n`` the rope's original context
  (``rope.scaling.original_context_length``, else the training context); 1 below position ``n``.
  Folded here into a second pair of rope tables for Q (cos and sin times the position's factor).

Mistral Small 3.x files state neither, and run as the Llama block.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .llama import LlamaLayer, LlamaModel


def attn_temperature(n_pos: int, beta: float, floor_scale: int) -> np.ndarray:
    """The queries' factor at positions ``[0, n_pos)``, float32, in llama.cpp's arithmetic
    (``llm_graph_input_attn_temp``: the position and its division in float32, the log in double)."""
    p = np.arange(n_pos, dtype=np.float32)
    f = np.floor(p / np.float32(floor_scale)).astype(np.float64)
    return (np.log(f + 1.0) * np.float64(np.float32(beta)) + 1.0).astype(np.float32)


def yarn_attn_factor(cfg: ModelConfig, log_mul: float) -> float:
    """The ``attn_factor`` rope_tables takes for YaRN as llama.cpp's context sets it: Q and K come out times
    ``mscale(f, 1) / mscale(f, log_mul)`` (``log_mul`` the file's ``rope.scaling.yarn_log_multiplier``, the HF
    config's ``mscale_all_dim``; ``mscale(f, 1)`` where it is 0) times ``rope.scaling.attn_factor``, with
    ``mscale(f, m) = 1 + 0.1 m ln f`` (1 for ``f <= 1``); rope_tables multiplies in YaRN's own ``1 + 0.1 ln f``,
    so it is divided out here."""
    f = cfg.rope_scaling_factor

    def mscale(m: float) -> float:
        return 1.0 if f <= 1.0 else 0.1 * m * math.log(f) + 1.0

    net = mscale(1.0) / mscale(log_mul) if log_mul != 0.0 else mscale(1.0)
    return cfg.yarn_attn_factor * net / (1.0 + 0.1 * math.log(f))


class Mistral3Model(LlamaModel):
    archs = ("mistral3",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if cfg.rope_scaling_type == "yarn" and cfg.rope_scaling_factor > 0:
            cfg = dataclasses.replace(cfg, yarn_attn_factor=yarn_attn_factor(cfg, float(g.arch_get("rope.scaling.yarn_log_multiplier", 0.0) or 0.0)))
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.temp_beta = float(g.arch_get("attention.temperature_scale", 0.0) or 0.0)
        self.q_cos = self.q_sin = None
        if self.temp_beta != 0.0:
            floor_scale = cfg.rope_orig_ctx or cfg.n_ctx_train
            if floor_scale <= 0:
                raise GGUFError(f"{g.path}: attention temperature scaling needs rope.scaling.original_context_length")
            s = attn_temperature(n_ctx, self.temp_beta, floor_scale)[:, None]
            self.q_cos, self.q_sin = self.rope_cos * s, self.rope_sin * s

    def qk_norm_rope(self, L: LlamaLayer, q: Any, k: Any, q3: Any, k3: Any, pos: Any, cos: Any, sin: Any) -> None:
        if self.q_cos is None or L.q_norm is not None or not L.rope:
            return super().qk_norm_rope(L, q, k, q3, k3, pos, cos, sin)
        neox = self.cfg.rope_neox
        self.be.rope(q3, pos, self.q_cos, self.q_sin, neox)  # the rotation and the temperature at once
        self.be.rope(k3, pos, cos, sin, neox)
