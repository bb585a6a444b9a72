"""The basis keys are stored in: rotation, centering and query-aware smoothing, all exact for attention.

A compressed layer stores each key of KV head ``h`` as ``k_c = k @ Kin_h - mu_h``
and turns the queries of that head's GQA group into ``q_c = q @ Qin_h``, with::

    Kin_h = diag(t_h) @ R        Qin_h = diag(1 / t_h) @ R        R: Hadamard (or I)

so that ``q_c . k_c = q . k - q_c . mu_h``: the same constant for every slot
a query sees, which the softmax cannot see.  Three things make 2-bit keys
usable, none of which changes what attention computes:

* ``R`` spreads outlier channels over the head (QuaRot, RotateKV);
* ``mu_h``, the keys' mean: real models' keys share a large offset
  (mean^2 / variance ~ 1-2 per channel on SmolLM2 and Gemma 3), which
  per-token groups would otherwise spend their range on;
* ``t_h``, a per-channel scale chosen from the queries: what quantization
  error costs is ``q . e``; with an error spread evenly by ``R`` over the scaled
  channels, ``E[(q.e)^2] ~ (sum_c a_c t_c^2)(sum_c b_c / t_c^2)`` for key
  variances ``a_c`` and query energies ``b_c``, least at ``t_c = (b_c / a_c)^(1/4)``
  (Cauchy-Schwarz), where it is ``(sum_c sqrt(a_c b_c))^2``: measured on both
  models the ideal gain is about 2x in logit error variance.  This is
  SmoothAttention (QServe, https://arxiv.org/abs/2405.04532) with the
  exponent derived instead of tuned.

The statistics come from the first window: queries are accumulated until the
first key is quantized, then :meth:`KeyBasis.calibrate` fixes ``mu`` and ``t``
once (the fp16 keys already stored are re-expressed in the new basis).
Centering is skipped under logit soft-capping (not shift-invariant); the
scaling is exact there too.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ..ops.cpu.parallel import EXACT_JIT
from .insert import fwht_copy, fwht_rows

T_CLIP = 8.0  # largest ratio of a channel's scale to the geometric mean


class KeyBasis:
    """Per-head key/query transforms of one layer; see the module docstring.

    Parameters
    ----------
    n_kv, D : int
        KV heads and head size.
    rot : ndarray or None
        ``[D, D]`` orthonormal rotation (None: identity).
    center, smooth : bool
        Whether :meth:`calibrate` subtracts the mean / scales the channels.
    """

    def __init__(self, n_kv: int, D: int, rot: np.ndarray | None, center: bool, smooth: bool) -> None:
        self.n_kv, self.D = n_kv, D
        self.rot = rot  # [D, D] or None
        self.center, self.smooth = center, smooth
        self.kin: np.ndarray | None = None if rot is None else np.broadcast_to(rot, (n_kv, D, D)).copy()  # [n_kv, D, D]
        self.qin: np.ndarray | None = self.kin  # [n_kv, D, D] (the same matrices until smoothing)
        self.mu: np.ndarray | None = None  # [n_kv, D] float32, cache basis
        self.t: np.ndarray | None = None  # [n_kv, D] float32 channel scales
        self.q2 = np.zeros((n_kv, D), np.float64)  # sum of q^2 per channel, original basis
        self.calibrated = False
        self.version = 0  # bumped when the transforms change (the GPU mirror re-sends them)

    @property
    def wants_queries(self) -> bool:
        return self.smooth and not self.calibrated

    # ------------------------------------------------------------ transforms
    def keys(self, k: np.ndarray) -> np.ndarray:
        """Original -> cache basis.  k: [..., n_kv, D] float32.

        ``(k * t) @ R - mu`` with ``R`` applied as the butterflies of
        :func:`.insert.fwht`: bitwise what the one-call steps store, so a
        token's fp16 row does not depend on which path put it in.
        """
        out = np.ascontiguousarray(k, np.float32)
        if self.t is not None:
            out = out * self.t
        if self.rot is not None:
            out = fwht_copy(out)  # (a copy: out may be the caller's k)
        if self.mu is not None:
            out = out - self.mu
        return out

    def queries(self, q: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Original -> cache basis: ``(q / t) @ R``.  q: [T, n_head, D] (heads grouped by KV head).

        Butterflies, as the one-call steps turn them (bitwise the same), and no BLAS: a
        decode step's small GEMM woke OpenBLAS's threads, which then fought Numba's for
        the cores (Gemma 3's first spill took 170-370 ms instead of ~20)."""
        T, H, D = q.shape
        x = np.ascontiguousarray(q, np.float32)
        if self.t is not None:
            x = (x.reshape(T, self.n_kv, H // self.n_kv, D) / self.t[:, None, :]).reshape(T, H, D)
        if out is None:
            out = np.empty((T, H, D), np.float32)
        if self.rot is not None:
            fwht_rows(x, out)
        else:
            out[:] = x
        return out

    def to_original(self, kc: np.ndarray) -> np.ndarray:
        """Cache -> original basis: ``(kc + mu) @ R^T / t``, R symmetric (its own inverse).  kc: [n_kv, n, D].

        In float64 (the butterflies, no BLAS), rounded once at the end: the result sets the
        calibration's statistics and is rounded to fp16 again, so it should add no float32
        rounding of its own (Gemma 3, GPL-3, ctx 1024, 2 bits: KL 0.066 with float32
        butterflies here, 0.060 in float64)."""
        x = kc.astype(np.float64) if self.mu is None else kc.astype(np.float64) + self.mu[:, None]
        if self.rot is not None:
            x = fwht_copy(x)
        if self.t is not None:
            x = x / self.t[:, None]
        return x.astype(np.float32)

    # ------------------------------------------------------------ statistics
    def observe(self, q: np.ndarray) -> None:
        """Accumulate query energy per channel.  q: [T, n_head, D] original basis."""
        _add_q2(np.ascontiguousarray(q, np.float32), self.q2)

    def calibrate(self, k: np.ndarray) -> None:
        """Fix mean and scales from the window's keys.  k: [n_kv, n, D] original basis."""
        self.calibrated = True
        if not (self.center or self.smooth) or k.shape[1] == 0:
            return
        D = self.D
        mu = k.mean(axis=1) if self.center else np.zeros((self.n_kv, D), np.float32)  # [n_kv, D]
        rot = self.rot if self.rot is not None else np.eye(D, dtype=np.float32)
        t = np.ones((self.n_kv, D), np.float32)
        if self.smooth and self.q2.any():
            a = ((k - mu[:, None]) ** 2).mean(axis=1) + 1e-12  # key variance per channel
            b = self.q2 + 1e-12
            a = np.maximum(a, 1e-3 * a.mean(axis=1, keepdims=True))
            b = np.maximum(b, 1e-3 * b.mean(axis=1, keepdims=True))
            t = (b / a) ** 0.25
            t = t / np.exp(np.log(t).mean(axis=1, keepdims=True))  # geometric mean 1: codes keep their range
            t = np.clip(t, 1.0 / T_CLIP, T_CLIP).astype(np.float32)
            self.t = t
        self.kin = (t[:, :, None] * rot[None]).astype(np.float32)  # diag(t) @ R
        self.qin = ((1.0 / t)[:, :, None] * rot[None]).astype(np.float32)  # diag(1/t) @ R
        self.mu = np.einsum("hd,hde->he", mu, self.kin).astype(np.float32) if self.center else None
        self.version += 1


@nb.njit(**EXACT_JIT)
def _add_q2(q: np.ndarray, q2: np.ndarray) -> None:
    """``q2[h, d] += sum of q[t, i, d]^2`` over the T queries and the query heads i of KV head h,
    in float64.  q: [T, n_head, D] float32; q2: [n_kv, D].  (In numpy, ~20 us a decode step.)"""
    T, H, D = q.shape
    g = H // q2.shape[0]
    for t in range(T):
        for i in range(H):
            r = q2[i // g]
            for d in range(D):
                x = np.float64(q[t, i, d])
                r[d] += x * x
