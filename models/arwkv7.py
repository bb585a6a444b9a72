"""ARWKV-7 (RWKV-Red-Team's ARWKV-R1-1B5, ARWKV-7B: ``arwkv7``), as llama.cpp's graph of that name: a Qwen 2.5
model whose attention was distilled into RWKV-7's time mix (models/rwkv7.py), everything else Qwen's::

    x = embedding                                                   (no LN0)
    x = x + time_mix(rms_norm(x, attn_norm), its previous row)
    x = x + ffn_down(silu(ffn_gate h) * ffn_up h),   h = rms_norm(x, ffn_norm)

What sets it apart from RWKV-7:

* Qwen's trunk: RMSNorms without biases (``attention.layer_norm_rms_epsilon``), no ``token_embd_norm``, Qwen's SwiGLU
  FFN (``ffn_gate``, ``ffn_up``, ``ffn_down``) in place of the channel mix, and a separate output head;
* one token shift: only the time mix reads the previous token, so the file states ``token_shift_count`` 1 (llama.cpp
  asserts its state is one row: ``n_embd_r() == n_embd``);
* the gate is optional (the converter's ``wkv_has_gate``): without ``time_mix_g1``/``g2``, ``time_mix_lerp_fused`` has
  five mus (r, w, k, v, a), not six; the group norm after the recurrence (``time_mix_ln``) is optional as in RWKV-7.

The time mix (its LoRAs, value residual, WKV-7 recurrence, bonus) is RWKV-7's, read from the same tensor names.  The
cache is RWKV-7's (``cache/rwkv.py``), its second shift row written and never read (on the GPU
``cache/gpu_recurrent.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import GGUFError
from ..ops.backend import Weight
from .common import WeightLoader
from .rwkv7 import RWKV7Layer, RWKV7Model


@dataclass
class ARWKV7Layer(RWKV7Layer):
    """RWKV-7's layer (its LayerNorm biases and channel mix None) with Qwen's FFN."""

    w_gate: Weight | None = None  # [n_ff, n_embd]
    w_up: Weight | None = None  # [n_ff, n_embd]
    w_down: Weight | None = None  # [n_embd, n_ff]


class ARWKV7Model(RWKV7Model):
    archs = ("arwkv7",)
    token_shift_count = 1  # (the time mix's: the FFN reads no previous token)
    ungated_lerp_rows = 5  # (r, w, k, v, a: the converter writes no gate's mu where the model has no gate)
    layer_type = ARWKV7Layer
    ffn_act = "silu"  # (Qwen's SwiGLU, as LlamaModel's)

    def load_ends(self, w: WeightLoader) -> None:
        """The embeddings (no LN0), the output RMSNorm and the output head (Qwen 2.5's: separate, no bias)."""
        self.tok_embd = w.matrix("tok_embd")
        self.tok_norm = self.tok_norm_b = None
        self.output = w.matrix("output")
        self.output_norm, self.output_norm_b = w.vector("output_norm"), None

    def load_ffn(self, w: WeightLoader, i: int) -> dict[str, Any]:
        """Layer i's two RMSNorms and its SwiGLU FFN (ARWKV7Layer's fields by name; no channel mix)."""
        c = self.cfg
        mats = {role: w.matrix(role, i) for role in ("w_gate", "w_up", "w_down")}
        want = {"w_gate": (c.n_ff, c.n_embd), "w_up": (c.n_ff, c.n_embd), "w_down": (c.n_embd, c.n_ff)}
        for role, m in mats.items():
            if tuple(m.shape) != want[role]:
                raise GGUFError(f"{w.g.path}: blk.{i}.ffn_{role[2:]}.weight has shape {tuple(m.shape)}, expected {want[role]}; "
                                "the file is not a supported model")  # fmt: skip
        return dict(attn_norm=w.vector("attn_norm", i), attn_norm_b=None, ffn_norm=w.vector("ffn_norm", i), ffn_norm_b=None,
                    cm_lerp=None, cm_key=None, cm_value=None, **mats)  # fmt: skip

    def norm(self, x: Any, weight: Any, bias: Any, out: Any) -> None:
        """Qwen's RMSNorm (no bias)."""
        self.be.rms_norm(x, weight, self.cfg.norm_eps, out)

    def channel_mix(self, L: ARWKV7Layer, state: Any, xn: np.ndarray, pos: np.ndarray, x: np.ndarray) -> None:
        """Qwen's SwiGLU FFN of the normed input ``xn`` [T, n_embd], added to the residual ``x``.  It reads no previous
        token; the step is closed in the cache all the same (its second shift row, never read)."""
        be, buf = self.be, self.buf
        T = xn.shape[0]
        state.token_shift(xn, pos, 1)
        gate, up = buf.get("gate", T, self.cfg.n_ff), buf.get("up", T, self.cfg.n_ff)
        be.linear(L.w_gate, xn, gate)
        be.linear(L.w_up, xn, up)
        be.linear_glu(L.w_down, gate, up, x, self.ffn_act, accumulate=True)

