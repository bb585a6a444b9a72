"""The state-space mixers on ``--device gpu``: Mamba-2's (``mamba2.py``'s ``mixer_y``: mamba2, Granite 4.0-H,
Falcon-H1, Nemotron-H) and Mamba 1's (``mamba.py``'s ``MambaModel.mixer``: mamba, Falcon-Mamba, Jamba, PLaMo 2).

The same steps as the CPU's, in the same order, each a kernel on device buffers (``ops/gpu/ssm.cu``; the products
the backend's): the in-projection's rows stay whole and every later kernel reads its columns in place, the
convolution and the scan run in the layer's GPU cache (``cache/gpu_ssm.py``), which keeps the state, and the gate,
the grouped norm and Mamba 1's norms of dt, B and C are kernels too, not array operations: a decode step is nothing
but launches, so it is captured as a CUDA graph and replayed (runtime/graphs.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops.backend import Backend
from ..ops.gpu import ssm as S
from .common import Buffers


def mamba2_mixer_y(be: Backend, buf: Buffers, geo: Any, M: Any, state: Any, xn: Any, pos: np.ndarray, eps: float) -> Any:
    """``mamba2.mixer_y`` on the GPU: the gated and normed ``y`` [T, d_inner] (a buffer) of the normed input ``xn``."""
    T = xn.shape[0]
    zxbcdt = buf.get("ssm_zxbcdt", T, geo.d_in_proj)
    be.linear(M.in_proj, xn, zxbcdt)
    y = buf.get("ssm_y", T, geo.d_inner)
    state.scan_rows(zxbcdt, geo.d_inner, geo.d_inner + geo.channels, pos, M, y)
    # (no grouped norm, Falcon-H1's: y * silu(z) alone)
    S.gate_norm(y, zxbcdt, geo.d_in_proj, 0, None if M.norm is None else S.const(M.norm), geo.n_group, eps)
    return y


def mamba_mixer(model: Any, L: Any, state: Any, xn: Any, pos: np.ndarray) -> Any:
    """``MambaModel.mixer`` on the GPU: ``y * silu(z)`` [T, d_inner] (a buffer) before ``ssm_out``."""
    be, buf = model.be, model.buf
    T, di, ds, r = xn.shape[0], model.d_inner, model.d_state, model.dt_rank
    xz = buf.get("mamba_xz", T, 2 * di)
    be.linear(L.in_proj, xn, xz)
    xc = state.conv_rows(xz, pos, L)
    dbc = buf.get("mamba_dbc", T, r + 2 * ds)
    be.linear(L.x_proj, xc, dbc)
    eps = model.cfg.norm_eps
    spans = ((0, r, L.dt_norm), (r, ds, L.b_norm), (r + ds, ds, L.c_norm))
    if model.dt_b_c_rms:  # (Falcon-Mamba's norms of dt, B and C, no weight)
        for col0, n, _ in spans:
            S.rms_cols(dbc, col0, n, None, eps)
    if L.dt_norm is not None:  # (Jamba's and PLaMo 2's, each with its weight)
        for col0, n, w in spans:
            S.rms_cols(dbc, col0, n, S.const(w), eps)
    dt = buf.get("mamba_dt_raw", T, r)
    S.copy_cols(dbc, 0, dt)
    dts = buf.get("mamba_dt", T, di)
    be.linear(L.dt_proj, dt, dts)
    y = buf.get("mamba_y", T, di)
    state.scan_rows(xc, dts, dbc, r, pos, L, y)
    S.gate_norm(y, xz, 2 * di, di, None, 1, eps)
    return y
