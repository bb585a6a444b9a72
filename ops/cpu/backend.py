"""The CPU backend: Numba kernels behind the :class:`~kvrun.ops.backend.Backend` interface."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backend import Weight
from ..host import sigmoid, softplus, whole_runs
from . import fused, nn, qmatmul
from .blas import one_thread_beside_the_gemm

_NO_BIAS = np.empty(0, np.float32)  # (nn.layer_norm's "no bias": a Numba kernel takes an array, not None)


class CPUBackend:
    """Numba kernels on host arrays; ``linear`` picks matvec for one token, matmul for many."""

    name = "cpu"

    def __init__(self) -> None:
        self._scratch: dict[tuple[int, ...], np.ndarray] = {}  # linear_add's product, per shape

    @staticmethod
    def prefill_products() -> str:
        """How prefill's block-quantized weight products run on this host (``kvrun bench`` says it)."""
        if not qmatmul.HAVE_VNNI:
            return "float tiles + BLAS"
        from . import qgemm

        return f"int8 GEMM, {'AVX-512 VNNI' if qgemm.LANES == 16 else 'AVX-VNNI'}"

    @staticmethod
    def prefill() -> contextlib.AbstractContextManager:
        """Held around a forward pass of several tokens: BLAS at one thread where prefill's products run
        on the VNNI GEMM (:func:`.blas.one_thread_beside_the_gemm`)."""
        return one_thread_beside_the_gemm()

    def upload(self, data: np.ndarray, qtype: int, shape: tuple[int, int]) -> Weight:
        qmatmul.kernel_kind(qtype)  # a type without kernels fails here, at load, not mid-answer
        return Weight(data.reshape(shape[0], -1), int(qtype), (int(shape[0]), int(shape[1])))

    def vector(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=np.float32)

    def zeros(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        return np.zeros(shape, dtype)

    def linear(self, w: Weight, x: np.ndarray, out: np.ndarray) -> None:
        """out[T, n_rows] = x[T, n_cols] @ W.T"""
        if x.shape[0] == 1:
            qmatmul.matvec(w.data, w.qtype, x[0], out[0])
        else:
            qmatmul.matmul(w.data, w.qtype, x, out)

    def linear_many(self, ws: Sequence[Weight], x: np.ndarray, outs: Sequence[np.ndarray]) -> None:
        if x.shape[0] == 1 and fused.matvecs(fused.NONE, x, None, None, 0.0, x, ws, outs):
            return  # decode: x quantized once, the products in one parallel region
        for w, out in zip(ws, outs, strict=True):
            self.linear(w, x, out)

    # A decode token (x [1, n]) takes the fused kernels (ops/cpu/fused.py): one Numba call each
    # instead of two or three; they decline (False) where they do not apply.
    def norm_linear_many(self, x, norm_w, eps, xn, ws: Sequence[Weight], outs: Sequence[np.ndarray]) -> None:
        if x.shape[0] == 1 and fused.matvecs(fused.NORM, x, None, norm_w, eps, xn, ws, outs):
            return
        nn.rms_norm(x, norm_w, eps, xn)
        self.linear_many(ws, xn, outs)

    def _tmp(self, shape: tuple[int, ...]) -> np.ndarray:
        tmp = self._scratch.get(shape)
        if tmp is None:
            tmp = self._scratch[shape] = np.empty(shape, np.float32)
        return tmp

    def linear_add(self, w: Weight, x: np.ndarray, out: np.ndarray) -> None:
        tmp = self._tmp(out.shape)
        if x.shape[0] == 1 and fused.matvecs(fused.NONE, x, None, None, 0.0, x, (w,), (tmp,), out):
            return
        self.linear(w, x, tmp)
        self.add(out, tmp)

    def linear_glu(self, w: Weight, gate: np.ndarray, up: np.ndarray, out: np.ndarray, act: str, accumulate: bool = False) -> None:
        if gate.shape[0] == 1:
            pre = fused.SILU if act == "silu" else fused.GELU
            res = self._tmp(out.shape) if accumulate else out
            if fused.matvecs(pre, gate, up, None, 0.0, gate, (w,), (res,), out if accumulate else None):
                return
        (nn.silu_mul if act == "silu" else nn.gelu_mul)(gate, up, gate)
        (self.linear_add if accumulate else self.linear)(w, gate, out)

    def get_rows(self, w: Weight, ids: np.ndarray, out: np.ndarray) -> None:
        qmatmul.get_rows(w.data, w.qtype, ids, out)

    def rms_norm(self, x, w, eps, out) -> None:
        nn.rms_norm(x, w, eps, out)

    def rms_norm_add(self, y, w, eps, x) -> None:
        nn.rms_norm_add(y, w, eps, x)

    def rms_norm_heads(self, x, w, eps) -> None:
        nn.rms_norm_heads(x, w, eps)

    def layer_norm(self, x, w, b, eps, out) -> None:
        nn.layer_norm(x, w, _NO_BIAS if b is None else b, eps, out)

    def layer_norm_heads(self, x, w, eps) -> None:
        nn.layer_norm_heads(x, w, eps)

    def rope(self, x, pos, cos, sin, neox) -> None:
        nn.rope(x, pos, cos, sin, neox)

    def rope_qk(self, q, k, pos, cos, sin, neox) -> None:
        nn.rope_qk(q, k, pos, cos, sin, neox)

    def norm_rope_qk(self, q, k, q_norm, k_norm, eps, pos, cos, sin, neox) -> None:
        nn.norm_rope_qk(q, k, q_norm, k_norm, eps, pos, cos, sin, neox)

    def shift_positions(self, pos, shift, out) -> None:
        out[...] = np.asarray(pos, np.int32) + np.int32(shift)

    def gelu(self, x, out) -> None:
        nn.gelu(x, out)

    def relu_sqr(self, x, out) -> None:
        nn.relu_sqr(x, out)

    def xielu(self, x, out, alpha_n, alpha_p, beta, eps) -> None:
        nn.xielu(x, out, alpha_n, alpha_p, beta, eps)

    def clamp(self, x, limit) -> None:
        np.clip(x, -limit, limit, out=x)

    def silu_mul(self, gate, up, out) -> None:
        nn.silu_mul(gate, up, out)

    def gelu_mul(self, gate, up, out) -> None:
        nn.gelu_mul(gate, up, out)

    def add(self, x, y) -> None:
        nn.add_inplace(x, y)

    def add_bias(self, x, b) -> None:
        x += b

    def scale(self, x, s) -> None:
        nn.scale_inplace(x, s)

    def moe_token(self, gate, up, down, n_ff, experts, wts, xn, x, biases=None, act="silu") -> bool:
        from .moe import moe_token

        return moe_token(gate.data, gate.qtype, up.data, up.qtype, down.data, down.qtype, n_ff, experts, wts, xn[0], x[0], biases, act)

    def moe_route(self, logits, k, gating, norm_weights, scale, bias, router_b, groups, ids, wts) -> bool:
        return False  # routing is host work here (models/moe.py route)

    def mla_latent_norm(self, kva, w, eps, kvc) -> None:
        kvc[...] = kva[:, : kvc.shape[1]]
        nn.rms_norm(kvc, w, eps, kvc)

    def mla_qk(self, q_raw, k_nope, kva, q, k) -> None:
        nope = k_nope.shape[2]
        R = q.shape[2] - nope
        q[:, :, :R] = q_raw[:, :, nope:]  # heads laid out [rope, nope]
        q[:, :, R:] = q_raw[:, :, :nope]
        k[:, :, :R] = kva[:, None, kva.shape[1] - R :]  # the one rope key every head shares
        k[:, :, R:] = k_nope

    def mla_latent_kv(self, kva, w, eps, k, v) -> None:
        rank = v.shape[-1]
        v2 = v.reshape(v.shape[0], rank)
        v2[...] = kva[:, :rank]
        nn.rms_norm(v2, w, eps, v2)
        k[:, 0, : k.shape[2] - rank] = kva[:, rank:]  # the rope key first (the rope kernels turn a head's leading dimensions)
        k[:, 0, k.shape[2] - rank :] = v2

    def mla_absorb_q(self, q_raw, wk, q) -> None:
        nope, rank = wk.shape[1], wk.shape[2]
        q[:, :, : q.shape[2] - rank] = q_raw[:, :, nope:]
        q[:, :, q.shape[2] - rank :] = np.matmul(q_raw[:, :, :nope].transpose(1, 0, 2), wk).transpose(1, 0, 2)  # (per head)

    def mla_heads_out(self, att, wv, out) -> None:
        out[...] = np.matmul(att.transpose(1, 0, 2), wv).transpose(1, 0, 2)

    def sigmoid_gated_add(self, x, y, s) -> None:
        y *= sigmoid(s)
        x += y

    def sigmoid_mul(self, x, s) -> None:
        n, m = whole_runs("sigmoid_mul", x, s)
        _times(x, sigmoid(s.reshape(m, 1)), (m, n // m))  # (each row one s value's run of x)

    def softplus_mul(self, x, s) -> None:
        n, m = whole_runs("softplus_mul", x, s)
        _times(x, softplus(s.reshape(m, 1)), (m, n // m))

    def copy(self, src, dst) -> None:
        if src.shape != dst.shape:
            raise ValueError(f"copy: {tuple(src.shape)} into {tuple(dst.shape)}")
        np.copyto(dst, src)

    def mul(self, x, w) -> None:
        n, m = whole_runs("mul", x, w, "w")
        _times(x, w.reshape(m), (n // m, m))  # (each row one run of m values, times w)

    def softcap(self, x, cap) -> None:
        nn.softcap_inplace(x, cap)

    def to_host(self, x) -> np.ndarray:
        return x

    def kernels_cached(self) -> bool:
        """False when the first forward will compile the kernels (a cold Numba cache)."""
        from .jitcache import kernels_cached

        return kernels_cached()


def _times(x: np.ndarray, f: np.ndarray, shape: tuple[int, int]) -> None:
    """``x *= f``, ``x`` seen as ``shape`` (``f`` broadcast over it): through a view where ``x`` is contiguous, else
    (a reshape would copy) the product written back."""
    if x.flags.c_contiguous:
        xv = x.reshape(shape)
        xv *= f
    else:
        x[...] = (x.reshape(shape) * f).reshape(x.shape)
