"""Launching ssm.cu: the state-space layers' convolution, scan, gate and norms on the device (Mamba-2's and Mamba 1's:
``cache/gpu_ssm.py`` runs the first two as the CPU's cache runs ``ops/cpu/ssm.py``, ``models/gpu_ssm.py`` the rest).

Every input is a device array the kernels read in place, a column range of a wider row where the in-projection wrote
it (``stride``, ``col0``); the small weights (kernels, biases, ``A``, ``D``, norms) are host arrays uploaded once
(:data:`CONSTS`), so a captured decode step uploads nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels as K
from .arrays import ConstCache

SCAN_BLOCK = 128  # threads a block of ssm_scan_f32: a warp per state row, 4 rows a block
MAX_STATE = 256  # SSM_MAX_STATE in ssm.cu: the d_state a scan warp holds

CONSTS = ConstCache()  #: device copies of the layers' host weights, by identity


def const(a: np.ndarray) -> Any:
    """The device copy of a layer's host weight (uploaded on first use)."""
    return CONSTS.get(a)


def conv(x: Any, x_stride: int, x_col0: int, ring: Any, n_ring: int, pos: Any, w: Any, b: Any, out: Any) -> None:
    """``out`` [T, C] = SiLU(causal depthwise convolution + ``b``) of the chunk's columns ``x_col0 ..`` of ``x``, the
    positions before the chunk read from ``ring`` [n_ring, ring_w] (columns 0 .. C) at row ``p % n_ring``."""
    T, C = out.shape
    Kc = w.shape[0]
    if T:
        K.launch("ssm_conv_f32", K.ew_grid(T * C), (K.EW_BLOCK,), x, ring, pos, w, b, out, T, C, Kc, x_stride, x_col0, ring.shape[1], n_ring)


def store(x: Any, x_stride: int, x_col0: int, n: int, ring: Any, ring_col0: int, n_ring: int, pos: Any, T: int) -> None:
    """The chunk's last ``min(T, n_ring)`` rows of ``n`` columns (from ``x_col0``) into the ring at their positions."""
    keep = min(T, n_ring)
    if keep:
        K.launch("ssm_store_f32", K.ew_grid(keep * n), (K.EW_BLOCK,), x, ring, pos, T, keep, n, x_stride, x_col0, ring.shape[1], ring_col0, n_ring)


def scan(state: Any, x: Any, x_stride: int, dt: Any, dt_stride: int, dt_col0: int, dt_b: Any, A: Any, a_hs: int, a_ks: int,
         bc: Any, bc_stride: int, b_col0: int, c_col0: int, D: Any, n_group: int, y: Any, ck: Any, n_ck: int, ck_buf: Any) -> None:  # fmt: skip
    """The selective scan of ``y``'s T tokens in place on ``state`` [n_head, head_dim, d_state] (ssm.cu says the
    arguments); ``ck`` holds ``n_ck`` (tokens, slot) pairs of the copies to make into ``ck_buf``."""
    n_head, head_dim, d_state = state.shape
    T = y.shape[0]
    if d_state > MAX_STATE:
        raise ValueError(f"ssm scan: a state of {d_state} values a row exceeds the kernel's {MAX_STATE}")
    if T:
        K.launch("ssm_scan_f32", (K.cdiv(n_head * head_dim, SCAN_BLOCK // 32),), (SCAN_BLOCK,), state, x, dt, dt_b, A, bc, D, y, ck, ck_buf,
                 T, n_head, head_dim, d_state, n_group, x_stride, dt_stride, dt_col0, a_hs, a_ks, bc_stride, b_col0, c_col0, n_ck)  # fmt: skip


def gate_norm(y: Any, z: Any, z_stride: int, z_col0: int, w: Any, n_group: int, eps: float) -> None:
    """``y *= silu(z)`` in place, then (``w`` not None) RMS-normalised over each of ``n_group`` slices and weighted."""
    T, n = y.shape
    if T:
        K.launch("ssm_gate_norm_f32", (T, n_group if w is not None else 1), (256,), y, z, y if w is None else w,
                 n, n_group if w is not None else 1, z_stride, z_col0, eps, int(w is not None))  # fmt: skip


def rms_cols(x: Any, col0: int, n: int, w: Any, eps: float) -> None:
    """Each row's columns ``col0 .. col0 + n`` of ``x`` RMS-normalised in place (times ``w`` where not None)."""
    T, stride = x.shape
    if T:
        K.launch("ssm_rms_cols_f32", (T,), (32,), x, x if w is None else w, n, stride, col0, eps, int(w is not None))


def copy_cols(src: Any, col0: int, dst: Any) -> None:
    """``dst`` [T, n] = ``src``'s columns ``col0 .. col0 + n``."""
    T, n = dst.shape
    if T:
        K.launch("ssm_copy_cols_f32", K.ew_grid(T * n), (K.EW_BLOCK,), src, dst, T, n, src.shape[1], col0)


def rms_norm_heads_each(x: Any, w: Any, eps: float) -> None:
    """In place: each head of ``x`` [T, n_head, head_dim] RMS-normalised and weighted by its own row of ``w`` [n_head,
    head_dim] (PLaMo 2's Q/K norms)."""
    T, H, D = x.shape
    if T:
        K.launch("rms_norm_heads_each_f32", (K.cdiv(T * H, 4),), (128,), x, w, T * H, H, D, eps)
