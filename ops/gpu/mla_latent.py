"""Launchers for ``mla_latent.cu``: multi-head latent attention's absorbed form on the device (``GPUBackend.mla_latent_kv``,
``mla_absorb_q``, ``mla_heads_out``; models/mla.py), the cache's latent rows and the products on the queries' and the
outputs' side that stand for the expansion of the latent into every head's K and V."""

from __future__ import annotations

from typing import Any

from . import kernels as K
from .arrays import device_out, to_device


def latent_kv(kva: Any, w: Any, eps: float, k: Any, v: Any) -> None:
    """``v[t] = RMSNorm(kva[t, :rank]) * w``, ``k[t] = [kva[t, rank:], v[t]]``.   kva: [T, rank + n_rot]; k: [T, 1, n_rot +
    rank]; v: [T, 1, rank]."""
    T, stride = kva.shape
    rank = v.shape[-1]
    if tuple(k.shape) != (T, 1, stride) or tuple(v.shape) != (T, 1, rank) or w.shape[-1] != rank or rank >= stride:
        raise ValueError(f"mla latent kv: kva {tuple(kva.shape)}, w {tuple(w.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
    with device_out(k) as kd, device_out(v) as vd:
        K.launch("mla_latent_kv_f32", (T,), (256,), to_device(kva), to_device(w), kd, vd, rank, stride - rank, eps)


def absorb_q(q_raw: Any, wk: Any, q: Any) -> None:
    """``q[t, h] = [q_raw[t, h, nope:], wk[h].T @ q_raw[t, h, :nope]]``.   q_raw: [T, H, nope + n_rot]; wk: [H, nope, rank];
    q: [T, H, n_rot + rank]."""
    T, H, Dr = q_raw.shape
    _, nope, rank = wk.shape
    n_rot = Dr - nope
    if tuple(wk.shape) != (H, nope, rank) or tuple(q.shape) != (T, H, n_rot + rank) or n_rot <= 0:
        raise ValueError(f"mla absorb q: q_raw {tuple(q_raw.shape)}, wk {tuple(wk.shape)}, q {tuple(q.shape)} do not match")
    with device_out(q) as qd:
        K.launch("mla_absorb_q_f32", K.ew_grid(T * H * (n_rot + rank)), (K.EW_BLOCK,), to_device(q_raw), to_device(wk), qd, T, H, nope, n_rot, rank)


def heads_out(att: Any, wv: Any, out: Any) -> None:
    """``out[t, h] = wv[h].T @ att[t, h]``.   att: [T, H, rank]; wv: [H, rank, dv]; out: [T, H, dv]."""
    T, H, rank = att.shape
    dv = wv.shape[2]
    if tuple(wv.shape) != (H, rank, dv) or tuple(out.shape) != (T, H, dv):
        raise ValueError(f"mla heads out: att {tuple(att.shape)}, wv {tuple(wv.shape)}, out {tuple(out.shape)} do not match")
    with device_out(out) as od:
        K.launch("mla_heads_out_f32", K.ew_grid(T * H * dv), (K.EW_BLOCK,), to_device(att), to_device(wv), od, T, H, rank, dv)
