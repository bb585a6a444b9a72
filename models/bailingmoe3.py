"""Ling 3 (inclusionAI's Ling-3.0: ``bailingmoe3``), as llama.cpp's graph of that name: Kimi Linear's shape
(``kimi_linear.py``: Kimi Delta Attention layers where the per-layer ``attention.head_count_kv`` is 0, multi-head latent
attention elsewhere, a leading dense block, sigmoid-routed experts with ``exp_probs_b`` beside a shared expert) with
Ling's own parts, which are all this module adds:

* the KDA decay is the "safe gate", full rank: ``g = gate_lower_bound * sigmoid(ssm_a[head] * (ssm_f_a x + ssm_dt.bias))``
  per key channel (``ssm_a`` = exp(A_log), positive; llama.cpp requires ``kda.safe_gate`` and a bound below 0), in
  place of Kimi's ``softplus(f_b(f_a x) + dt_b) * A``;
* the KDA output gate full rank: ``sigmoid(ssm_g_a x)`` (no ``ssm_g_b``), after the per-head RMS norm as Kimi's;
* MLA (a query LoRA where ``q_lora_rank`` says, else ``attn_q``) turns its rope parts: normal rope (consecutive pairs)
  over q_pe and the shared k_pe, or, where the file states ``rope.dimension_sections`` (Ling-3-VL's), llama.cpp's
  M-RoPE (halves; text rows at (p, p, p, 0), a picture's rows at their (t, t + y, t + x, 0) where the cache records
  pictures: models/mrope_images.py); scores times ``1/sqrt(key_length_mla)``;
* MLA's output is gated per head, ``attn_out * sigmoid(attn_gate xn)`` (``attn_gate`` [n_head, n_embd], from the normed
  layer input), before ``attn_output``;
* the experts' weights renormalised only where ``expert_weights_norm`` says, times ``expert_weights_scale``; the shared
  expert as wide as ``expert_shared_feed_forward_length`` (the file's tensors); clamped SwiGLUs where
  ``swiglu_clamp_exp`` (the routed experts) and ``swiglu_clamp_shexp`` (the shared expert, and the leading dense
  layers' FFN, which llama.cpp's ``build_ffn`` clamps alike) are above 0, one limit a layer;
* ``output.weight`` may be absent (the head then ``token_embd``);
* the last ``nextn_predict_layers`` of ``block_count`` are multi-token-prediction layers, which llama.cpp loads but its
  trunk never runs, and kvrun neither runs nor reads.

The forward is Kimi Linear's (``KimiLinearModel.forward``: it takes picture rows, ``Model.input_embd``, for Ling-3-VL)
inside models/mrope_text.py's ``MropeText.forward``, the M-RoPE of Qwen2-VL's and the others' (nothing where the file
states no sections): a picture's own rows (a prefill) turn by per-row tables, the text after pictures by the text
tables at its slot plus the pictures' shift, the positions made by the backend, the shift part of a captured decode
step's key (``MropeText.decode_graph_key``).  On ``--device gpu`` it runs as Kimi's there (``models/gpu_delta.py``),
every step a kernel so that a decode step is captured as a CUDA graph: the safe gate a flag of the decay kernel, the
full-rank gates the products' outputs as they are, the rope parts turned by the backend's rope over the heads
``mla_qk`` lays out ``[pe, nope]`` (deepseek2's) at those positions, the head gate a kernel.  Refused in one line: a
missing ``exp_probs_b``, a non-safe gate or a bound not below 0 (which llama.cpp asserts), and Kimi's refusals.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader, make_rope
from .kimi_linear import KDA, KimiLinearModel
from .mimo2 import per_layer
from .moe import moe_or_swiglu_add
from .mrope_text import MropeText, mrope_tables, rope_sections


class _TurnedCache:
    """A layer cache seen through the rope: Kimi's ``mla_attend`` hands it each head's ``[nope, pe]`` query and key
    (``k_pe`` every head's copy); it turns their ``pe`` parts at the rows' rope positions, then attends as the cache."""

    def __init__(self, model: Bailingmoe3Model, lc: Any) -> None:
        self.model, self.lc = model, lc

    def update_and_attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
        m = self.model
        q_pe, k_pe = np.ascontiguousarray(q[..., m.qk_nope :]), np.ascontiguousarray(k[..., m.qk_nope :])
        m.be.rope_qk(q_pe, k_pe, *m.rope_rows(pos, m.rope_cos, m.rope_sin), m.sections is not None)
        q[..., m.qk_nope :], k[..., m.qk_nope :] = q_pe, k_pe
        self.lc.update_and_attend(q, k, v, pos, out)


class Bailingmoe3Model(MropeText, KimiLinearModel):
    archs = ("bailingmoe3",)
    ROPE_ABSENCE = None  # (its MLA turns q_pe and k_pe)
    GATED_MLA = True
    TIED_OUTPUT = True
    takes_images = True  # Kimi's forward reads Model.input_embd (Ling-3-VL's picture rows)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        if not bool(g.arch_get("kda.safe_gate", True)):
            raise UnsupportedModelError(f"{g.path}: bailingmoe3 with kda.safe_gate false is not supported (llama.cpp requires the safe gate)")
        self.lower_bound = float(g.arch_get("kda.gate_lower_bound", 0.0) or 0.0)
        if not self.lower_bound < 0.0:
            raise GGUFError(f"{g.path}: metadata bailingmoe3.kda.gate_lower_bound must be stated and below 0; the file is not a supported model")
        # (one value or one a layer, 0 where unstated; llama.cpp clamps where it is above 1e-6)
        self.clamp_exp, self.clamp_shexp = (
            [v if v > 1e-6 else 0.0 for v in per_layer(g, key, cfg.n_layer, 0, float)] for key in ("swiglu_clamp_exp", "swiglu_clamp_shexp")
        )
        n_ff_exp = int(g.arch_get("expert_feed_forward_length", 0) or 0)
        self.n_ff_shexp = int(g.arch_get("expert_shared_feed_forward_length", 0) or 0) or n_ff_exp * max(1, int(g.arch_get("expert_shared_count", 0) or 0))
        super().__init__(g, cfg, backend, n_ctx, n_batch)  # (Kimi's checks and layers, load_layer below for each)
        self.rope_cos, self.rope_sin = make_rope(cfg, n_ctx, cfg.rope_theta)
        s = g.arch_get("rope.dimension_sections")
        #: llama.cpp's rope for the file: normal (None), or M-RoPE where the first two sections are above 0 (its use_mrope)
        self.sections = rope_sections(g) if s is not None and len(s) > 1 and int(s[0]) > 0 and int(s[1]) > 0 else None
        if self.sections is not None:  # (the plain halves' tables kept for per-row ones, the text's llama.cpp's multimodal)
            self.neox_cos, self.neox_sin = self.rope_cos, self.rope_sin
            self.rope_cos, self.rope_sin = mrope_tables(self.rope_cos, self.rope_sin, self.sections)

    def load_layer(self, w: WeightLoader, i: int) -> Any:
        c = self.cfg
        L = super().load_layer(w, i)
        if not c.ssm_layers[i]:
            L.attn_gate = w.matrix("attn_gate", i)
            if tuple(L.attn_gate.shape) != (c.n_head, c.n_embd):
                raise GGUFError(f"{w.g.path}: blk.{i}.attn_gate.weight has shape {tuple(L.attn_gate.shape)}, expected {(c.n_head, c.n_embd)}; "
                                "the file is not a supported model")  # fmt: skip
        if L.moe is not None:
            L.moe.norm_weights = c.expert_weights_norm  # (Kimi's are always renormalised, Ling's where the file says)
            L.moe.swiglu_limit, L.moe.shared.swiglu_limit = self.clamp_exp[i], self.clamp_shexp[i]
            if L.moe.shared.gate.shape[0] != self.n_ff_shexp:
                raise GGUFError(f"{w.g.path}: blk.{i}.ffn_gate_shexp.weight is {L.moe.shared.gate.shape[0]} wide, expected "
                                f"expert_shared_feed_forward_length {self.n_ff_shexp}; the file is not a supported model")  # fmt: skip
        else:
            L.swiglu_limit = self.clamp_shexp[i]  # (llama.cpp's build_ffn clamps a dense SwiGLU by the shared limit)
        return L

    def load_kda(self, w: WeightLoader, i: int, low_rank: bool = False) -> KDA:
        K = super().load_kda(w, i, low_rank=False)  # (full-rank ssm_f_a and ssm_g_a)
        K.lower_bound = self.lower_bound
        return K

    def dense_ffn(self, L: Any, x: np.ndarray, xn: np.ndarray, o: Any) -> None:
        moe_or_swiglu_add(self.be, L, x, xn, self.cfg.norm_eps, self.buf, L.swiglu_limit)

    def mla_attend(self, L: Any, lc: Any, xn: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Kimi's MLA with the rope parts turned, each head's output times its sigmoid gate (before ``attn_output``)."""
        if self.be.name == "gpu":  # (Kimi's kernels with the rope and the gate: a decode step is captured)
            from .gpu_delta import kimi_mla_attend

            rows, cos, sin = self.rope_rows(pos, self.rope_cos, self.rope_sin)
            return kimi_mla_attend(self, L, lc, xn, pos, (cos, sin, self.sections is not None), L.attn_gate, rope_pos=rows)
        T, H = xn.shape[0], self.cfg.n_head
        att = super().mla_attend(L, _TurnedCache(self, lc), xn, pos)
        gate = self.buf.get("mla_gate", T, H)
        self.be.linear(L.attn_gate, xn, gate)
        self.be.sigmoid_mul(att, gate)  # (one gate over each head's consecutive values)
        return att
