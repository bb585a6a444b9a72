"""Launchers for ``mla.cu``: multi-head latent attention's cuts and head layouts on the device (``GPUBackend.mla_latent_norm``
/ ``mla_qk``), the kernels that stand for the CPU's numpy slices in ``models/deepseek2.py`` so a decode step is all kernels
(a CUDA graph captures it; a host slice between launches would not be replayed); and, device-only, :func:`rope_key_norm`
(dots.note's norm of the shared rope key inside ``attn_kv_a_mqa``'s rows, models/dots3note.py)."""

from __future__ import annotations

from typing import Any

from . import kernels as K
from .arrays import device_out, to_device


def latent_norm(kva: Any, w: Any, eps: float, kvc: Any) -> None:
    """``kvc[t] = RMSNorm(kva[t, :rank]) * w``, ``rank`` = ``kvc``'s width.   kva: [T, rank + n_rot]; kvc: [T, rank]."""
    T, stride = kva.shape
    rank = kvc.shape[1]
    if tuple(kvc.shape) != (T, rank) or rank > stride or w.shape[-1] != rank:
        raise ValueError(f"mla latent norm: kva {tuple(kva.shape)}, w {tuple(w.shape)}, kvc {tuple(kvc.shape)} do not match")
    with device_out(kvc) as od:
        K.launch("mla_latent_norm_f32", (T,), (256,), to_device(kva), to_device(w), od, rank, stride, eps)


def qk(q_raw: Any, k_nope: Any, kva: Any, q: Any, k: Any) -> None:
    """q's heads ``[q_rope, q_nope]`` from q_raw's ``[q_nope, q_rope]``; k's heads ``[k_rope, k_nope]``, ``k_rope`` =
    ``kva[t, -n_rot:]`` every head's.   q_raw, q, k: [T, H, D]; k_nope: [T, H, nope]; kva: [T, rank + n_rot]."""
    T, H, D = q.shape
    nope = k_nope.shape[2]
    n_rot = D - nope
    if tuple(q_raw.shape) != (T, H, D) or tuple(k.shape) != (T, H, D) or tuple(k_nope.shape[:2]) != (T, H) or not 0 < n_rot <= kva.shape[1]:
        raise ValueError(f"mla qk: q_raw {tuple(q_raw.shape)}, k_nope {tuple(k_nope.shape)}, kva {tuple(kva.shape)}, q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)} do not match")  # fmt: skip
    n = T * H * D
    grid = K.ew_grid(n)
    with device_out(q) as qd, device_out(k) as kd:
        K.launch("mla_qk_f32", grid, (K.EW_BLOCK,), to_device(q_raw), to_device(k_nope), to_device(kva), qd, kd, T, H, nope, n_rot, kva.shape[1])


def rope_key_norm(kva: Any, w: Any, eps: float) -> None:
    """``kva[t, -n_rot:] = RMSNorm(kva[t, -n_rot:]) * w`` in place, ``n_rot`` = ``w``'s size: the shared rope key normed
    where it lies, the latent beside it untouched.   kva: [T, rank + n_rot]; w: [n_rot]."""
    T, stride = kva.shape
    n_rot = w.shape[-1]
    if w.ndim != 1 or not 0 < n_rot <= stride:
        raise ValueError(f"mla rope key norm: kva {tuple(kva.shape)}, w {tuple(w.shape)} do not match")
    with device_out(kva) as kd:
        K.launch("mla_rope_norm_f32", (K.cdiv(T, 4),), (128,), kd, to_device(w), T, n_rot, stride, eps)
