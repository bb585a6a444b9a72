"""The GPU backend: CUDA kernels (CuPy RawModule) behind the :class:`~kvrun.ops.backend.Backend` interface.

Orchestration only: shapes are checked, launch geometry is chosen, and the
kernels of ``qmatmul.cu`` / ``nn.cu`` do the work.  Weights are uploaded once
in their GGUF block format (a uint8 device array ``[n_rows, row_bytes]``) and
never dequantized as a whole.

Arrays are CuPy arrays; host (numpy) arguments are accepted and moved for the
call (see ``arrays.py``), so a model that still allocates on the host runs,
only slower.

Decode is launch-bound on small models: every kernel costs host time before
the GPU sees it.  So the projections of one input go out as one launch
(``linear_many``: Q/K/V, gate/up), the RMSNorm before them rides in that
launch (``norm_linear_many``), residual adds ride in the output matvecs
(``linear_add``) and post-norms (``rms_norm_add``), q and k are normalised
and rotated together (``rope_qk``, ``norm_rope_qk``), and a step's positions
go up once (``arrays.positions``): a decode token is 213 launches on SmolLM2
(7 a layer) and 184 on Gemma 3 270M (10 a layer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..backend import Weight
from ..host import whole_runs
from . import kernels as K
from . import mla as gpu_mla
from . import mla_latent as gpu_mla_latent
from . import moe as gpu_moe
from .moe2 import MoEVariantOps
from .gemma import GemmaOps
from .arrays import ConstCache, device_out, is_device, positions, to_device

MATVEC_MAX_TOKENS = 4  # up to this many tokens, one warp per weight row per token (decode)


_ACT = {"silu": 1, "gelu": 2}  # ACT_SILU, ACT_GELU in qmatmul.cu
_ACT_NORM = 3  # matvec reads RMSNorm(x) * up


class GPUBackend(GemmaOps, MoEVariantOps):  # (GemmaOps: Gemma 3n's and Gemma 4's own steps, gemma.cu; MoEVariantOps: moe2.cu)
    """CUDA kernels on device arrays; ``linear`` picks matvec for a few tokens, tiled matmul for more."""

    name = "gpu"

    def __init__(self) -> None:
        self.rt = K.runtime()
        self.xp = self.rt.xp
        self._tables = ConstCache()  # rope cos/sin handed in as host arrays

    # ------------------------------------------------------------------ memory
    def upload(self, data: np.ndarray, qtype: int, shape: tuple[int, int]) -> Weight:
        qtype = int(qtype)
        if qtype not in K.QTYPE_SUFFIX:
            name = GGMLQuantizationType(qtype).name if qtype in GGMLQuantizationType._value2member_map_ else qtype
            raise ValueError(f"no GPU kernel for tensor type {name}")
        n_rows, n_cols = int(shape[0]), int(shape[1])
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
        if n_cols % block:
            raise ValueError(f"a row of {n_cols} weights is not a whole number of {block}-weight blocks")
        rows = np.ascontiguousarray(np.asarray(data).reshape(n_rows, -1))
        if rows.dtype != np.uint8:
            rows = rows.view(np.uint8).reshape(n_rows, -1)
        if rows.shape[1] != n_cols // block * type_size:
            raise ValueError(f"weight rows hold {rows.shape[1]} bytes, expected {n_cols // block * type_size}")
        return Weight(self.xp.array(rows, dtype=np.uint8), qtype, (n_rows, n_cols))

    def vector(self, a: np.ndarray) -> Any:
        return self.xp.array(np.ascontiguousarray(a, dtype=np.float32))

    def zeros(self, shape: tuple[int, ...], dtype: Any = np.float32) -> Any:
        return self.xp.zeros(shape, dtype)

    def to_host(self, x: Any) -> np.ndarray:
        return self.rt.asnumpy(x) if is_device(x) else np.asarray(x)

    # ------------------------------------------------------------------ weights
    def linear(self, w: Weight, x: Any, out: Any, accumulate: bool = False) -> None:
        """out[T, n_rows] = x[T, n_cols] @ W.T  (``accumulate``: out += ...)"""
        T, n_cols = x.shape
        if n_cols != w.n_cols or tuple(out.shape) != (T, w.n_rows):
            raise ValueError(f"linear: W {w.shape}, x {tuple(x.shape)}, out {tuple(out.shape)} do not match")
        self._matvec_or_matmul(w, x, out, accumulate)

    def _matvec_or_matmul(self, w: Weight, x: Any, out: Any, accumulate: bool, up: Any = None, act: str | None = None) -> None:
        """The one launch site of the weight products: matvec for a few tokens (where ``act`` makes
        x = act(x) * up as it is read), tiled matmul for more (the activation a launch of its own)."""
        T, n_cols = x.shape
        sfx = K.QTYPE_SUFFIX[w.qtype]
        xd = to_device(x)
        with device_out(out) as od:
            if T <= MATVEC_MAX_TOKENS:
                self._matvec(w, xd, xd if act is None else to_device(up), od, int(accumulate), _ACT.get(act, 0))
                return
            if act is not None:  # in place: the caller's gate is scratch
                self._glu(f"{act}_mul_f32", xd, up, xd)
            row_bytes = w.data.shape[1]
            if accumulate:  # prefill: the add is one more launch among hundreds of tokens' work
                y = self.xp.empty((T, w.n_rows), np.float32)
                K.launch(f"matmul_{sfx}", (K.cdiv(w.n_rows, 64), K.cdiv(T, 64)), (256,), w.data, xd, y, w.n_rows, n_cols, T, row_bytes)
                self.add(od, y)
            else:
                K.launch(f"matmul_{sfx}", (K.cdiv(w.n_rows, 64), K.cdiv(T, 64)), (256,), w.data, xd, od, w.n_rows, n_cols, T, row_bytes)

    @staticmethod
    def _matvec(w: Weight, xd: Any, up: Any, od: Any, acc: int, act: int, xn: Any = None, eps: float = 0.0) -> None:
        """One matvec launch on device arrays; ``xn`` (with ACT_NORM) also receives the normalised x."""
        T, n_cols = xd.shape
        K.launch(
            f"matvec_{K.QTYPE_SUFFIX[w.qtype]}", (K.cdiv(w.n_rows, 4), T), (128,),
            w.data, xd, up, od, od if xn is None else xn, w.n_rows, n_cols, w.data.shape[1], acc, act, int(xn is not None), eps,
        )  # fmt: skip

    def linear_glu(self, w: Weight, gate: Any, up: Any, out: Any, act: str, accumulate: bool = False) -> None:
        """out (+)= (act(gate) * up) @ W.T; in decode the activation is computed as the matvec reads x (no launch of its own)."""
        T, n_cols = gate.shape
        if n_cols != w.n_cols or tuple(up.shape) != (T, n_cols) or tuple(out.shape) != (T, w.n_rows):
            raise ValueError(f"linear_glu: W {w.shape}, gate {tuple(gate.shape)}, up {tuple(up.shape)}, out {tuple(out.shape)} do not match")
        self._matvec_or_matmul(w, gate, out, accumulate, up, act)

    def linear_add(self, w: Weight, x: Any, out: Any) -> None:
        """out += x @ W.T: in decode the add rides in the matvec (one launch fewer per projection)."""
        self.linear(w, x, out, accumulate=True)

    def linear_many(self, ws: Sequence[Weight], x: Any, outs: Sequence[Any]) -> None:
        """outs[i] = x @ ws[i].T; in decode, up to three matrices of one type in one launch (matvec3_)."""
        if not self._matvec3_fits(ws, x, outs):
            for w, out in zip(ws, outs, strict=True):
                self.linear(w, x, out)
            return
        self._matvec3(ws, to_device(x), outs)

    def norm_linear_many(self, x: Any, norm_w: Any, eps: float, xn: Any, ws: Sequence[Weight], outs: Sequence[Any]) -> None:
        """xn = RMSNorm(x) * norm_w, outs[i] = xn @ ws[i].T: in decode the norm rides in the matvecs
        (ACT_NORM: each warp normalises x itself), so it costs no launch of its own."""
        T, n_cols = x.shape
        if T > MATVEC_MAX_TOKENS or x is xn or any(w.n_cols != n_cols for w in ws):
            self.rms_norm(x, norm_w, eps, xn)
            self.linear_many(ws, xn, outs)
            return
        xd, nwd = to_device(x), to_device(norm_w)
        with device_out(xn) as xnd:
            if self._matvec3_fits(ws, x, outs):
                self._matvec3(ws, xd, outs, nwd, xnd, eps)
                return
            for i, (w, out) in enumerate(zip(ws, outs, strict=True)):  # mixed types: one matvec each, all normalising
                if tuple(out.shape) != (T, w.n_rows):
                    raise ValueError(f"norm_linear_many: W {w.shape}, out {tuple(out.shape)} do not match")
                with device_out(out) as od:
                    self._matvec(w, xd, nwd, od, 0, _ACT_NORM, xnd if i == 0 else None, eps)

    @staticmethod
    def _matvec3_fits(ws: Sequence[Weight], x: Any, outs: Sequence[Any]) -> bool:
        T = x.shape[0]
        w0 = ws[0]
        if T > MATVEC_MAX_TOKENS or not 2 <= len(ws) <= 3 or any(w.qtype != w0.qtype or w.n_cols != w0.n_cols for w in ws):
            return False
        if x.shape[1] != w0.n_cols or any(tuple(o.shape) != (T, w.n_rows) for w, o in zip(ws, outs, strict=True)):
            raise ValueError(f"linear_many: W {[w.shape for w in ws]}, x {tuple(x.shape)}, outs {[tuple(o.shape) for o in outs]} do not match")
        return True

    @staticmethod
    def _matvec3(ws: Sequence[Weight], xd: Any, outs: Sequence[Any], nw: Any = None, xn: Any = None, eps: float = 0.0) -> None:
        """One matvec3_ launch; with ``nw`` the matrices read RMSNorm(x) * nw and ``xn`` receives it."""
        outs_d = [device_out(o) for o in outs]
        ys = [o.d for o in outs_d]
        n = [w.n_rows for w in ws]
        if len(ws) == 2:  # the third run is empty
            ws, ys, n = [*ws, ws[1]], [*ys, ys[1]], [*n, 0]
        blocks = sum(K.cdiv(r, 4) for r in n)
        K.launch(
            f"matvec3_{K.QTYPE_SUFFIX[ws[0].qtype]}", (blocks, xd.shape[0]), (128,),
            ws[0].data, ws[1].data, ws[2].data, xd, ys[0], ys[1], ys[2], xd if nw is None else nw, ys[0] if xn is None else xn,
            n[0], n[1], n[2], ws[0].n_cols, ws[0].data.shape[1], 0 if nw is None else 2, eps,
        )  # fmt: skip
        for o in outs_d:
            o.close()

    def get_rows(self, w: Weight, ids: Any, out: Any) -> None:
        """out[i] = row ids[i] of W, decoded.   out: [len(ids), n_cols] float32."""
        if isinstance(ids, (np.ndarray, list, tuple)):  # host ids: cheap to check, and a bad one would fault
            h = np.asarray(ids)  # (checked apart: ids itself may be a device buffer a captured step reads)
            if h.size and (h.min() < 0 or h.max() >= w.n_rows):
                raise IndexError(f"row id out of range [0, {w.n_rows})")
        idd = to_device(ids, np.int32)
        with device_out(out) as od:
            K.launch(f"get_rows_{K.QTYPE_SUFFIX[w.qtype]}", (idd.size,), (128,), w.data, idd, od, w.n_cols, w.data.shape[1])

    # ------------------------------------------------------------------ nn
    def rms_norm(self, x: Any, w: Any, eps: float, out: Any) -> None:
        """out[t] = x[t] / rms(x[t]) * w.    x, out: [T, n]; out may be x."""
        self._rms_norm(x, w, eps, out, 0)

    def rms_norm_add(self, y: Any, w: Any, eps: float, x: Any) -> None:
        """x += RMSNorm(y) * w in one launch (Gemma's post-norms into the residual stream)."""
        self._rms_norm(y, w, eps, x, 1)

    def _rms_norm(self, x: Any, w: Any, eps: float, out: Any, acc: int) -> None:
        T, n = x.shape
        xd = to_device(x)
        with device_out(out) as od:
            K.launch("rms_norm_f32", (T,), (256,), xd, to_device(w), od, n, eps, acc)

    def rms_norm_heads(self, x: Any, w: Any, eps: float) -> None:
        """In place, per head.   x: [T, n_head, head_dim]; w: [head_dim]."""
        T, H, D = x.shape
        with device_out(x) as xd:
            K.launch("rms_norm_heads_f32", (K.cdiv(T * H, 4),), (128,), xd, to_device(w), T * H, D, eps)

    def layer_norm(self, x: Any, w: Any, b: Any, eps: float, out: Any) -> None:
        """out[t] = (x[t] - mean) / sqrt(var + eps) * w + b (b None: none).    x, out: [T, n]; out may be x."""
        T, n = x.shape
        xd, wd = to_device(x), to_device(w)
        with device_out(out) as od:
            K.launch("layer_norm_f32", (T,), (256,), xd, wd, wd if b is None else to_device(b), od, n, eps, int(b is not None))

    def layer_norm_heads(self, x: Any, w: Any, eps: float) -> None:
        """In place, per head, each its own weights.   x: [T, n_head, head_dim]; w: [n_head, head_dim]."""
        T, H, D = x.shape
        with device_out(x) as xd:
            K.launch("layer_norm_heads_f32", (K.cdiv(T * H, 4),), (128,), xd, to_device(w), T * H, H, D, eps)

    def rope(self, x: Any, pos: Any, cos: Any, sin: Any, neox: bool) -> None:
        """In place.   x: [T, n_head, head_dim]; pos: [T]; cos, sin: [n_pos, n_rot/2]."""
        T, H, D = x.shape
        half = cos.shape[1]
        cd, sd = self._tables.get(cos), self._tables.get(sin)
        pd = positions(pos)
        with device_out(x) as xd:
            K.launch("rope_f32", K.ew_grid(T * H * half), (K.EW_BLOCK,), xd, pd, cd, sd, T, H, D, half, int(bool(neox)))

    def shift_positions(self, pos: Any, shift: int, out: Any) -> None:
        """``out`` = ``pos`` + ``shift`` on the device (ops/gpu/mrope.cu): from the step's served positions in a capture."""
        T = len(out)
        with device_out(out, np.int32) as od:
            K.launch("mrope_shift_positions", K.ew_grid(T), (K.EW_BLOCK,), positions(pos), od, int(shift), T)

    def rope_qk(self, q: Any, k: Any, pos: Any, cos: Any, sin: Any, neox: bool) -> None:
        """:meth:`rope` of q [T, n_head, D] and k [T, n_head_kv, D] in one launch."""
        self._rope_qk(q, k, pos, cos, sin, neox)

    def norm_rope_qk(self, q: Any, k: Any, q_norm: Any, k_norm: Any, eps: float, pos: Any, cos: Any, sin: Any, neox: bool) -> None:
        """Per-head RMSNorm of q and k (Gemma 3's QK-norm), then :meth:`rope_qk`: one launch, not three."""
        self._rope_qk(q, k, pos, cos, sin, neox, (q_norm, k_norm, eps))

    def _rope_qk(self, q: Any, k: Any, pos: Any, cos: Any, sin: Any, neox: bool, norm: tuple[Any, Any, float] | None = None) -> None:
        if q.shape[2] != k.shape[2]:  # (no model has it; the kernels take one head size)
            if norm is not None:
                self.rms_norm_heads(q, norm[0], norm[2])
                self.rms_norm_heads(k, norm[1], norm[2])
            self.rope(q, pos, cos, sin, neox)
            self.rope(k, pos, cos, sin, neox)
            return
        T, Hq, D = q.shape
        Hk, half = k.shape[1], cos.shape[1]
        cd, sd = self._tables.get(cos), self._tables.get(sin)
        pd = positions(pos)
        with device_out(q) as qd, device_out(k) as kd:
            if norm is None:  # one thread per rotated pair
                K.launch("rope_qk_f32", K.ew_grid(T * (Hq + Hk) * half), (K.EW_BLOCK,), qd, kd, pd, cd, sd, T, Hq, Hk, D, half, int(bool(neox)))
                return
            K.launch(  # one warp per head row: the norm is a reduction over it
                "rope_qk_norm_f32", (K.cdiv(T * (Hq + Hk), 4),), (128,),
                qd, kd, to_device(norm[0]), to_device(norm[1]), pd, cd, sd, T, Hq, Hk, D, half, int(bool(neox)), norm[2],
            )  # fmt: skip

    def silu_mul(self, gate: Any, up: Any, out: Any) -> None:
        self._glu("silu_mul_f32", gate, up, out)

    def gelu_mul(self, gate: Any, up: Any, out: Any) -> None:
        self._glu("gelu_mul_f32", gate, up, out)

    def gelu(self, x: Any, out: Any) -> None:
        n = math.prod(x.shape)
        xd = to_device(x)
        with device_out(out) as od:
            K.launch("gelu_f32", K.ew_grid(n), (K.EW_BLOCK,), xd, od, n)

    def relu_sqr(self, x: Any, out: Any) -> None:
        n = math.prod(x.shape)
        xd = to_device(x)
        with device_out(out) as od:
            K.launch("relu_sqr_f32", K.ew_grid(n), (K.EW_BLOCK,), xd, od, n)

    def xielu(self, x: Any, out: Any, alpha_n: float, alpha_p: float, beta: float, eps: float) -> None:
        # the constraints on the host, as the CPU's ops/cpu/nn.xielu: softplus(a) = a above 20, else log1p(exp(a))
        def softplus(a: float) -> np.float32:
            a = np.float32(a)
            return np.float32(a if a > 20 else np.log1p(np.exp(a)))

        a_p, a_n = softplus(alpha_p), np.float32(np.float32(beta) + softplus(alpha_n))
        n = math.prod(x.shape)
        xd = to_device(x)
        with device_out(out) as od:
            K.launch("xielu_f32", K.ew_grid(n), (K.EW_BLOCK,), xd, od, n, a_p, a_n, beta, eps)

    def _glu(self, kernel: str, gate: Any, up: Any, out: Any) -> None:
        n = math.prod(gate.shape)
        gd, ud = to_device(gate), to_device(up)
        with device_out(out) as od:
            K.launch(kernel, K.ew_grid(n), (K.EW_BLOCK,), gd, ud, od, n)

    def add(self, x: Any, y: Any) -> None:
        n = math.prod(x.shape)
        yd = to_device(y)
        with device_out(x) as xd:
            K.launch("add_f32", K.ew_grid(n), (K.EW_BLOCK,), xd, yd, n)

    def add_bias(self, x: Any, b: Any) -> None:
        """x[t, :] += b.   x: [T, n]; b: [n]."""
        n = x.shape[-1]
        total = math.prod(x.shape)
        bd = to_device(b)
        with device_out(x) as xd:
            K.launch("add_bias_f32", K.ew_grid(total), (K.EW_BLOCK,), xd, bd, total, n)

    def scale(self, x: Any, s: float) -> None:
        n = math.prod(x.shape)
        with device_out(x) as xd:
            K.launch("scale_f32", K.ew_grid(n), (K.EW_BLOCK,), xd, s, n)

    def moe_token(self, gate: Weight, up: Weight, down: Weight, n_ff: int, experts: Any, wts: Any, xn: Any, x: Any,
                  biases: Any = None, act: str = "silu") -> bool:  # fmt: skip
        return False  # (host-routed experts: the GPU routes in kernels instead, moe_route and moe_experts)

    def moe_route(self, logits: Any, k: int, gating: str, norm_weights: bool, scale: float, bias: Any, router_b: Any,
                  groups: tuple[int, int], ids: Any, wts: Any) -> bool:  # fmt: skip
        """The k experts of each token and their weights, chosen in moe.cu (one warp a token): see Backend.moe_route."""
        tables = self._tables  # (the biases are host arrays, uploaded once: a captured step uploads nothing)
        gpu_moe.route(logits, k, gating, norm_weights, scale, None if bias is None else tables.get(bias),
                      None if router_b is None else tables.get(router_b), groups, ids, wts)  # fmt: skip
        return True

    def moe_experts(self, gate: Weight, up: Weight, down: Weight, n_ff: int, ids: Any, wts: Any, xn: Any, x: Any, h: Any,
                    biases: Any = None, act: str = "silu", accumulate: bool = True) -> None:  # fmt: skip
        """The chosen experts' products reading the ids moe_route wrote (moe.cu): see Backend.moe_experts."""
        b = tuple(self._tables.get(v) for v in biases) if biases is not None else None
        gpu_moe.experts(gate, up, down, n_ff, ids, wts, xn, x, h, b, act, accumulate)

    def mla_latent_norm(self, kva: Any, w: Any, eps: float, kvc: Any) -> None:
        """Multi-head latent attention's latent cut and RMSNormed in one launch (ops/gpu/mla.cu)."""
        gpu_mla.latent_norm(kva, w, eps, kvc)

    def mla_qk(self, q_raw: Any, k_nope: Any, kva: Any, q: Any, k: Any) -> None:
        """Multi-head latent attention's query and key heads laid out in one launch (ops/gpu/mla.cu)."""
        gpu_mla.qk(q_raw, k_nope, kva, q, k)

    def mla_latent_kv(self, kva: Any, w: Any, eps: float, k: Any, v: Any) -> None:
        """MLA's absorbed form: the cache's latent rows in one launch (ops/gpu/mla_latent.cu)."""
        gpu_mla_latent.latent_kv(kva, w, eps, k, v)

    def mla_absorb_q(self, q_raw: Any, wk: Any, q: Any) -> None:
        """MLA's absorbed form: the queries in the latent's space in one launch (ops/gpu/mla_latent.cu)."""
        gpu_mla_latent.absorb_q(q_raw, wk, q)

    def mla_heads_out(self, att: Any, wv: Any, out: Any) -> None:
        """MLA's absorbed form: the heads' outputs from their attended latents in one launch (ops/gpu/mla_latent.cu)."""
        gpu_mla_latent.heads_out(att, wv, out)

    def sigmoid_gated_add(self, x: Any, y: Any, s: Any) -> None:
        """x[t] += sigmoid(s[t]) * y[t] in one launch (a captured step must not bring s to the host)."""
        gpu_moe.gated_add(x, y, s)

    def softplus_mul(self, x: Any, s: Any) -> None:
        """``x *= softplus(s)`` in one launch, laid out as ``sigmoid_mul`` (Laguna's attention gate: a captured decode
        step must not bring the gate to the host)."""
        n, m = whole_runs("softplus_mul", x, s)
        sd = to_device(s)
        with device_out(x) as xd:
            K.launch("softplus_mul_f32", K.ew_grid(n), (K.EW_BLOCK,), xd, sd, n // m, n)

    def copy(self, src: Any, dst: Any) -> None:
        """``dst[...] = src`` in one launch (nn.cu's ``copy_f32``: a captured step records it, an array assignment it
        would not); the same shapes, else the CPU's one-line ValueError."""
        if tuple(src.shape) != tuple(dst.shape):
            raise ValueError(f"copy: {tuple(src.shape)} into {tuple(dst.shape)}")
        n = math.prod(src.shape)
        sd = to_device(src)
        with device_out(dst) as dd:
            K.launch("copy_f32", K.ew_grid(n), (K.EW_BLOCK,), sd, dd, n)

    def mul(self, x: Any, w: Any) -> None:
        """``x *= w`` in one launch, ``w`` over each run of ``w.size`` values of ``x`` (nn.cu's ``mul_vec_f32``)."""
        n, m = whole_runs("mul", x, w, "w")
        wd = to_device(w)
        with device_out(x) as xd:
            K.launch("mul_vec_f32", K.ew_grid(n), (K.EW_BLOCK,), xd, wd, xd, m, n)

    def clamp(self, x: Any, limit: float) -> None:
        n = math.prod(x.shape)
        with device_out(x) as xd:
            K.launch("clamp_f32", K.ew_grid(n), (K.EW_BLOCK,), xd, limit, n)

    def softcap(self, x: Any, cap: float) -> None:
        n = math.prod(x.shape)
        with device_out(x) as xd:
            K.launch("softcap_f32", K.ew_grid(n), (K.EW_BLOCK,), xd, cap, n)
