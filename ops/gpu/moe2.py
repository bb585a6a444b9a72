"""Launching moe2.cu: the mixture-of-experts variants moe.cu leaves out, and the small device steps their models need
so a decode step stays on the device (nothing to the host: it is captured as a CUDA graph).

* Experts with Grok's float16-table GELU (``"gelu_f16"``, ggml's CPU GELU as models/bert.py ``gelu``), Step-3.5's
  clamped SwiGLU (``"swiglu_clamp"`` with its limit), Maple's with the gate clamped before its SiLU
  (``"swiglu_clamp_first"``, ggml's ``swiglu_clamp``), Kimi K3's situ (``"situ"``, its beta and linear beta) and
  Llama 4's ``weight_before_ffn`` (the slot's weight scales the expert's input), reading the ids and weights
  ``moe.cu``'s routing kernel wrote (:func:`experts`).
* GroveMoE's chunk experts' ids and weights (:func:`chunk_route`).
* Element-wise steps: Grok-2's dense GELU FFN, Step-3.5's clamped dense FFN and shared expert (GLM-5.3-Flash's with
  the gate clamped first), Kimi K3's situ (its dense FFN and shared expert), MiniMax-M3's shared expert (gpt-oss's
  ``swiglu_oai``), the sigmoid attention gates (AFMoE's, Step-3.5's).  (A device copy is every backend's ``copy``.)

:class:`MoEVariantOps` is the GPU backend's side of them (a base of ``GPUBackend``, as ``GemmaOps``); the models call
them on ``--device gpu`` only, where the CPU does the same in host numpy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import Weight
from ..host import whole_runs
from . import kernels as K
from .arrays import device_out, to_device
from .moe import launch_experts

WARP = 32
ACT = {"silu": 0, "relu": 2, "gelu": 3, "gelu_f16": 4, "swiglu_clamp": 5, "swiglu_clamp_first": 6, "situ": 7}  # MOEX_SILU ... in moe2.cu


def experts(gate: Weight, up: Weight, down: Weight, n_ff: int, ids: Any, wts: Any, xn: Any, x: Any, h: Any, act: str,
            limit: float = 0.0, weight_before: bool = False, accumulate: bool = True, limit2: float = 0.0) -> None:  # fmt: skip
    """``x (+)= sum_j wts[:, j] * expert_{ids[:, j]}(xn)`` (``weight_before``: ``sum_j expert_{ids[:, j]}(wts[:, j] xn)``),
    the GLU ``act`` (``limit``: ``"swiglu_clamp"``'s, ``min(silu(g), limit) * clamp(u, -limit, limit)``, or
    ``"swiglu_clamp_first"``'s, ``silu(min(g, limit)) * clamp(u, -limit, limit)``; ``"situ"``: ``limit`` its beta,
    ``limit2`` its linear beta, models/kimi_k3.py ``situ``); ``h`` ``[T, k * n_ff]`` scratch.  ``xn`` and ``x`` may be
    narrower than the model (Kimi K3's latent experts): the experts' widths are theirs.
    As ``ops/gpu/moe.py`` ``experts`` (its launches, ``launch_experts``): one gate/up launch (two where gate and up are
    of two types), one down launch."""
    wbf = int(weight_before)
    launch_experts("_x", gate, up, down, n_ff, ids, wts, xn, x, h, accumulate, True, (), (ACT[act], wbf, limit, limit2), (), (wbf,))


def chunk_route(logits: Any, ids: Any, group: int, scale: float, cids: Any, cw: Any) -> None:
    """GroveMoE: ``cids`` ``[T, kc]`` the chunk experts ``ids[:, :kc] // group``, ``cw`` their weights (the router's
    softmax probability of expert ``cid``, renormalised over the ``kc``, the sum floored at 6.1e-5) times ``scale``."""
    T, n_expert = logits.shape
    k, kc = ids.shape[1], cids.shape[1]
    if kc > k or tuple(cw.shape) != (T, kc) or ids.shape[0] != T:
        raise ValueError(f"moe chunk route: logits {tuple(logits.shape)}, ids {tuple(ids.shape)}, cids {tuple(cids.shape)} do not match")
    ld, idd = to_device(logits), to_device(ids, np.int32)
    with device_out(cids, np.int32) as cd, device_out(cw) as wd:
        K.launch("moe_chunk_route_f32", (T,), (WARP,), ld, idd, cd, wd, n_expert, k, kc, group, scale)


class MoEVariantOps:
    """The GPU backend's steps for the mixture-of-experts variants (``models/moe.py`` and the models that call them on
    the device): see the module's docstring."""

    def moe_experts_x(self, gate: Weight, up: Weight, down: Weight, n_ff: int, ids: Any, wts: Any, xn: Any, x: Any, h: Any,
                      act: str, limit: float = 0.0, weight_before: bool = False, accumulate: bool = True, limit2: float = 0.0) -> None:  # fmt: skip
        """:func:`experts`: the chosen experts (ids, wts as ``moe_route`` wrote them) with the GLUs moe.cu lacks."""
        experts(gate, up, down, n_ff, ids, wts, xn, x, h, act, limit, weight_before, accumulate, limit2)

    def moe_chunk_route(self, logits: Any, ids: Any, group: int, scale: float, cids: Any, cw: Any) -> None:
        """:func:`chunk_route`: GroveMoE's chunk experts chosen and weighed on the device."""
        chunk_route(logits, ids, group, scale, cids, cw)

    def gelu_f16_mul(self, gate: Any, up: Any, out: Any) -> None:
        """``out = gelu(gate) * up``, ggml's float16-table GELU (models/bert.py ``gelu``); out may be gate."""
        self._ew3("gelu_f16_mul_f32", gate, up, out)

    def swiglu_clamp(self, gate: Any, up: Any, out: Any, limit: float, gate_first: bool = False) -> None:
        """``out = min(silu(gate), limit) * clamp(up, -limit, limit)`` (models/moe.py ``swiglu_clamped``); ``gate_first``:
        ``silu(min(gate, limit)) * clamp(up, -limit, limit)`` (ggml's ``swiglu_clamp``).  out may be gate."""
        self._ew3("swiglu_clamp_f32", gate, up, out, limit, int(gate_first))

    def situ_mul(self, gate: Any, up: Any, out: Any, beta: float, linear_beta: float) -> None:
        """``out = beta tanh(gate / beta) sigmoid(gate) * lb tanh(up / lb)`` (``up`` as it is where ``lb`` = ``linear_beta``
        <= 0): Kimi K3's situ (models/kimi_k3.py ``situ``) element by element; out may be gate."""
        self._ew3("situ_f32", gate, up, out, beta, linear_beta)

    def swiglu_oai(self, gate: Any, up: Any, out: Any) -> None:
        """``out = m sigmoid(1.702 m) (clamp(up, -7, 7) + 1)``, ``m = min(gate, 7)``: gpt-oss's clamped GLU (ops/cpu/moe.py
        ``swiglu_oai``, moe.cu's experts' act), element by element; out may be gate."""
        self._ew3("swiglu_oai_f32", gate, up, out)

    def sigmoid_mul(self, x: Any, s: Any) -> None:
        """``x *= sigmoid(s)`` in place, each of ``s``'s values over ``x.size / s.size`` consecutive ones of ``x`` (an
        attention gate element by element, or one a head)."""
        n, m = whole_runs("sigmoid_mul", x, s)
        sd = to_device(s)
        with device_out(x) as xd:
            K.launch("sigmoid_mul_f32", K.ew_grid(n), (K.EW_BLOCK,), xd, sd, n // m, n)

    @staticmethod
    def _ew3(kernel: str, gate: Any, up: Any, out: Any, *scalars: float) -> None:
        n = math.prod(gate.shape)
        gd, ud = to_device(gate), to_device(up)
        with device_out(out) as od:
            K.launch(kernel, K.ew_grid(n), (K.EW_BLOCK,), gd, ud, od, *scalars, n)
