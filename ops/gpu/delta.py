"""Launching delta.cu: Gated DeltaNet's and Kimi Delta Attention's steps on the device (``cache/gpu_delta.py`` runs the
delta rule as the CPU's cache runs ``ops/cpu/deltanet.py`` / ``ops/cpu/kda.py``, ``models/gpu_delta.py`` the rest).

Every input is a device array the kernels read in place; the small weights (``dt_b``, ``A``, the norm's, ``k_of_v``) are
host arrays uploaded once (``ssm.CONSTS``, the state-space layers' cache of them), so a captured decode step uploads
nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels as K
from .ssm import CONSTS

RULE_BLOCK = 128  # threads a block of delta_rule_f32: a warp per state row, 4 rows a block
MAX_K = 256  # DELTA_MAX_K in delta.cu: the d_k a warp holds


def const(a: np.ndarray, dtype: Any = np.float32) -> Any:
    """The device copy of a layer's host weight (uploaded on first use)."""
    return CONSTS.get(a, dtype)


def decay_beta(a: Any, beta: Any, dt_b: Any, A: Any, gb: Any, per: int, lower_bound: float = 0.0) -> None:
    """``gb`` [T, n_g + n_v]: ``softplus(a + dt_b) * A[c // per]`` (the decay's log: ``per`` 1 one a head, ``d_k`` KDA's
    one a key channel; ``lower_bound`` < 0: Ling 3's safe gate ``lower_bound * sigmoid(A[c // per] * (a + dt_b))``),
    then ``sigmoid(beta)``.   a: [T, n_g]; beta: [T, n_v]."""
    T, n_g = a.shape
    n_v = beta.shape[1]
    if T:
        K.launch("delta_gb_f32", K.ew_grid(T * (n_g + n_v)), (K.EW_BLOCK,), a, beta, dt_b, A, gb, T, n_g, n_v, per, float(lower_bound))


def rule(state: Any, qkv: Any, gb: Any, gb_col0: int, k_of_v: Any, y: Any, ck: Any, n_ck: int, ck_buf: Any, n_k: int,
         per_channel: bool, eps: float) -> None:  # fmt: skip
    """The delta rule of ``y``'s T tokens in place on ``state`` [n_v, d_v, d_k] (delta.cu says the arguments); ``ck``
    holds ``n_ck`` (tokens, slot) pairs of the copies to make into ``ck_buf``."""
    n_v, d_v, d_k = state.shape
    T = y.shape[0]
    if d_k > MAX_K:
        raise ValueError(f"delta rule: a state of {d_k} values a row exceeds the kernel's {MAX_K}")
    if T:
        K.launch("delta_rule_f32", (K.cdiv(n_v * d_v, RULE_BLOCK // 32),), (RULE_BLOCK,), state, qkv, gb, k_of_v, y, ck, ck_buf,
                 T, n_v, n_k, d_v, d_k, gb.shape[1], gb_col0, int(per_channel), eps, n_ck)  # fmt: skip


def norm_gate(y: Any, z: Any, w: Any, eps: float, sigmoid_gate: bool) -> None:
    """In place: each head of ``y`` [T, n_head * d] RMS-normed, times ``w`` [d] and ``silu(z)`` (or ``sigmoid(z)``)."""
    d = w.shape[0]
    n_rows = y.shape[0] * (y.shape[1] // d)
    if n_rows:
        K.launch("delta_norm_gate_f32", (K.cdiv(n_rows, 4),), (128,), y, z, w, n_rows, d, eps, int(sigmoid_gate))


def query(qg: Any, q: Any) -> None:
    """``q`` [T, H, d] = each head's first d values of ``qg`` [T, H, 2 d] (the query; its output gate after it)."""
    T, H, d = q.shape
    if T:
        K.launch("delta_qgate_f32", K.ew_grid(T * H * d), (K.EW_BLOCK,), qg, q, T * H, d, 0)


def sigmoid_gate(qg: Any, att: Any) -> None:
    """``att`` [T, H, d] *= sigmoid of each head's last d values of ``qg`` [T, H, 2 d]."""
    T, H, d = att.shape
    if T:
        K.launch("delta_qgate_f32", K.ew_grid(T * H * d), (K.EW_BLOCK,), qg, att, T * H, d, 1)


def head_gate(gate: Any, att: Any) -> None:
    """``att`` [T, H, d] *= ``sigmoid(gate)`` [T, H], one value a head (Ling 3's MLA output gate)."""
    T, H, d = att.shape
    if T:
        K.launch("delta_qgate_f32", K.ew_grid(T * H * d), (K.EW_BLOCK,), gate, att, T * H, d, 2)


def put_cols(src: Any, dst: Any, col0: int) -> None:
    """``dst``'s columns ``col0 .. col0 + n`` = ``src`` [T, n]."""
    T, n = src.shape
    if T:
        K.launch("delta_put_cols_f32", K.ew_grid(T * n), (K.EW_BLOCK,), src, dst, T, n, dst.shape[1], col0)
