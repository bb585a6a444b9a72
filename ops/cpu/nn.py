"""Element-wise and normalisation kernels (Numba, CPU).

Every kernel writes into an ``out`` array the caller allocated once, so the
per-token loop allocates nothing.  Rows are independent; the loops are long and
unit-stride so LLVM vectorises them.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from .parallel import each_shared, numpy_threads

_JIT = dict(cache=True, fastmath=True, nogil=True)


@nb.njit(**_JIT)
def rms_norm(x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray) -> None:
    """out[t] = x[t] / rms(x[t]) * w.    x, out: [T, n]; w: [n] float32."""
    T, n = x.shape
    for t in range(T):
        ss = np.float32(0.0)
        for i in range(n):
            ss += x[t, i] * x[t, i]
        inv = np.float32(1.0 / math.sqrt(ss / n + eps))
        for i in range(n):
            out[t, i] = x[t, i] * inv * w[i]


@nb.njit(**_JIT)
def rms_norm_heads(x: np.ndarray, w: np.ndarray, eps: float) -> None:
    """In-place per-head RMSNorm (Gemma 3 QK-norm).   x: [T, n_head, head_dim]; w: [head_dim]."""
    T, H, D = x.shape
    for t in range(T):
        for h in range(H):
            ss = np.float32(0.0)
            for i in range(D):
                ss += x[t, h, i] * x[t, h, i]
            inv = np.float32(1.0 / math.sqrt(ss / D + eps))
            for i in range(D):
                x[t, h, i] = x[t, h, i] * inv * w[i]


@nb.njit(**_JIT)
def rope(x: np.ndarray, pos: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> None:
    """Rotary position embedding, in place.

    x: [T, n_head, head_dim]; pos: [T] int; cos, sin: [n_pos, n_rot/2] tables
    (already holding YaRN/linear scaling and mscale).  ``neox`` rotates
    (x[i], x[i + n_rot/2]); the normal layout rotates (x[2i], x[2i+1]).
    Dimensions past n_rot pass through unchanged.
    """
    T, H, _ = x.shape
    half = cos.shape[1]
    for t in range(T):
        p = pos[t]
        for h in range(H):
            if neox:
                for i in range(half):
                    c = cos[p, i]
                    s = sin[p, i]
                    a = x[t, h, i]
                    b = x[t, h, i + half]
                    x[t, h, i] = a * c - b * s
                    x[t, h, i + half] = a * s + b * c
            else:
                for i in range(half):
                    c = cos[p, i]
                    s = sin[p, i]
                    a = x[t, h, 2 * i]
                    b = x[t, h, 2 * i + 1]
                    x[t, h, 2 * i] = a * c - b * s
                    x[t, h, 2 * i + 1] = a * s + b * c


@nb.njit(**_JIT)
def rope_qk(q: np.ndarray, k: np.ndarray, pos: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> None:
    """:func:`rope` on q and k in one call (a decode step's dispatch is a good share of the work)."""
    rope(q, pos, cos, sin, neox)
    rope(k, pos, cos, sin, neox)


@nb.njit(**_JIT)
def norm_rope_qk(q: np.ndarray, k: np.ndarray, q_norm: np.ndarray, k_norm: np.ndarray, eps: float, pos: np.ndarray,
                 cos: np.ndarray, sin: np.ndarray, neox: bool) -> None:  # fmt: skip
    """Per-head RMSNorm of q and k (Gemma 3's QK-norm), then :func:`rope` on both, in one call."""
    rms_norm_heads(q, q_norm, eps)
    rms_norm_heads(k, k_norm, eps)
    rope(q, pos, cos, sin, neox)
    rope(k, pos, cos, sin, neox)


@nb.njit(**_JIT)
def rms_norm_add(y: np.ndarray, w: np.ndarray, eps: float, x: np.ndarray) -> None:
    """``y = rms_norm(y) * w`` in place, then ``x += y`` (a post-norm into the residual stream).    [T, n]."""
    rms_norm(y, w, eps, y)
    add_inplace(x, y)


@nb.njit(**_JIT)
def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float, out: np.ndarray) -> None:
    """out[t] = (x[t] - mean) / sqrt(var + eps) * w + b (Phi-2's, StableLM's norms).    x, out: [T, n]
    (out may be x); w, b: [n] float32, b of length 0 for none.  The sums in float64, as ggml_norm's."""
    T, n = x.shape
    has_b = b.shape[0] > 0
    for t in range(T):
        s = 0.0
        for i in range(n):
            s += x[t, i]
        mean = np.float32(s / n)
        ss = 0.0
        for i in range(n):
            d = x[t, i] - mean
            ss += d * d
        inv = np.float32(1.0 / math.sqrt(np.float32(ss / n) + eps))
        for i in range(n):
            y = (x[t, i] - mean) * inv * w[i]
            out[t, i] = y + b[i] if has_b else y


@nb.njit(**_JIT)
def layer_norm_heads(x: np.ndarray, w: np.ndarray, eps: float) -> None:
    """In-place per-head LayerNorm without bias, each head its own weights (StableLM 2 12B's QK-norm).
    x: [T, n_head, head_dim]; w: [n_head, head_dim]."""
    T, H, D = x.shape
    none = np.empty(0, np.float32)
    for t in range(T):
        for h in range(H):
            layer_norm(x[t, h : h + 1], w[h], none, eps, x[t, h : h + 1])


def silu_mul(gate: np.ndarray, up: np.ndarray, out: np.ndarray) -> None:
    """out = silu(gate) * up  (SwiGLU).    all [T, n_ff]; out may be gate.

    silu(g) = g / (1 + exp(-g)).  See :func:`_gated` for how it runs.
    """
    if gate.shape[0] < WIDE_ROWS:
        _silu_mul_loop(gate, up, out)
    else:
        _gated(gate, up, out, np.negative)


def gelu_mul(gate: np.ndarray, up: np.ndarray, out: np.ndarray) -> None:
    """out = gelu_tanh(gate) * up  (GeGLU, as ggml_gelu).    all [T, n_ff]; out may be gate.

    gelu_tanh(g) = g * (1 + tanh(u)) / 2 with u = sqrt(2/pi) (g + 0.044715 g^3),
    computed as g / (1 + exp(-2u)) (the same function): exp is several times
    cheaper than tanh.  See :func:`_gated` for how it runs.
    """
    if gate.shape[0] < WIDE_ROWS:
        _gelu_mul_loop(gate, up, out)
    else:
        _gated(gate, up, out, _gelu_exponent)


def _gelu_exponent(g: np.ndarray) -> np.ndarray:
    """-2u of gelu_tanh, as a new array."""
    t = np.multiply(g, g)
    t *= np.float32(0.044715)
    t += np.float32(1.0)
    t *= g
    t *= np.float32(-2.0 * math.sqrt(2.0 / math.pi))
    return t


def _gated(gate: np.ndarray, up: np.ndarray, out: np.ndarray, exponent) -> None:
    """out = gate / (1 + exp(exponent(gate))) * up for a prefill chunk.

    Decode's few tokens take the Numba loops (nothing allocated); a chunk takes
    numpy's SIMD exp, ~3x faster than a loop's scalar exp, :data:`WIDE_ROWS`
    rows at a time (the scratch stays small), the row blocks shared among threads
    as attention's query blocks are (``parallel.each_shared``).
    """

    def rows(r: int) -> None:
        g = gate[r : r + WIDE_ROWS]
        t = exponent(g)
        with np.errstate(over="ignore"):  # exp -> inf gives g / inf = 0, the right limit
            np.exp(t, out=t)
        t += np.float32(1.0)
        np.divide(g, t, out=t)
        np.multiply(t, up[r : r + WIDE_ROWS], out=out[r : r + WIDE_ROWS])

    each_shared(rows, range(0, gate.shape[0], WIDE_ROWS), numpy_threads())  # numpy's ufuncs release the GIL


def gelu(x: np.ndarray, out: np.ndarray) -> None:
    """out = gelu_tanh(x) (Phi-2's FFN: GELU, no gate).    [T, n]; out may be x."""
    if x.shape[0] < WIDE_ROWS:
        _gelu_loop(x, out)
    else:
        def rows(r: int) -> None:
            g = x[r : r + WIDE_ROWS]
            t = _gelu_exponent(g)
            with np.errstate(over="ignore"):  # exp -> inf gives g / inf = 0, the right limit
                np.exp(t, out=t)
            t += np.float32(1.0)
            np.divide(g, t, out=out[r : r + WIDE_ROWS])

        each_shared(rows, range(0, x.shape[0], WIDE_ROWS), numpy_threads())


@nb.njit(**_JIT)
def relu_sqr(x: np.ndarray, out: np.ndarray) -> None:
    """out = max(x, 0)^2 (Arcee's FFN: squared ReLU, no gate; ggml's relu then sqr).    [T, n]; out may be x.

    No exp here, so one loop serves decode and prefill alike."""
    T, n = x.shape
    for t in range(T):
        for i in range(n):
            r = x[t, i] if x[t, i] > np.float32(0.0) else np.float32(0.0)
            out[t, i] = r * r


def softplus(x: float) -> float:
    """log(1 + e^x) in float32, as ggml's ``ggml_compute_softplus_f32`` (x itself past 20)."""
    x = np.float32(x)
    return float(x if x > 20 else np.log1p(np.exp(x)))


def xielu(x: np.ndarray, out: np.ndarray, alpha_n: float, alpha_p: float, beta: float, eps: float) -> None:
    """out = xIELU(x) (Apertus's FFN: no gate), its parameters as the model stores them (before their constraints).

    As ggml's ``ggml_xielu``: with a_p = softplus(alpha_p), a_n = beta + softplus(alpha_n),
    ``a_p x^2 + beta x`` for x > 0, ``a_n (expm1(min(x, eps)) - x) + beta x`` otherwise.    [T, n]; out may be x.

    numpy in :data:`WIDE_ROWS`-row steps (its SIMD expm1), shared among threads as :func:`gelu`'s."""
    a_p, a_n = np.float32(softplus(alpha_p)), np.float32(np.float32(beta) + np.float32(softplus(alpha_n)))
    b, e = np.float32(beta), np.float32(eps)

    def rows(r: int) -> None:
        g, o = x[r : r + WIDE_ROWS], out[r : r + WIDE_ROWS]
        neg = np.minimum(g, e)
        np.expm1(neg, out=neg)
        neg -= g
        neg *= a_n
        pos = g * g
        pos *= a_p
        bx = g * b
        np.copyto(neg, pos, where=g > 0)  # (before o is written: o may be g)
        np.add(neg, bx, out=o)

    each_shared(rows, range(0, x.shape[0], WIDE_ROWS), numpy_threads())


#: rows from which the gated activations run as numpy (SIMD exp) instead of a loop, and rows per numpy step
WIDE_ROWS = 64


@nb.njit(**_JIT)
def _silu_mul_loop(gate: np.ndarray, up: np.ndarray, out: np.ndarray) -> None:
    T, n = gate.shape
    for t in range(T):
        for i in range(n):
            g = gate[t, i]
            out[t, i] = g / (np.float32(1.0) + np.exp(-g)) * up[t, i]


@nb.njit(**_JIT)
def _gelu_mul_loop(gate: np.ndarray, up: np.ndarray, out: np.ndarray) -> None:
    T, n = gate.shape
    c2 = np.float32(-2.0 * math.sqrt(2.0 / math.pi))
    for t in range(T):
        for i in range(n):
            g = gate[t, i]
            out[t, i] = g / (np.float32(1.0) + np.exp(c2 * (g + np.float32(0.044715) * g * g * g))) * up[t, i]


@nb.njit(**_JIT)
def _gelu_loop(x: np.ndarray, out: np.ndarray) -> None:
    T, n = x.shape
    c2 = np.float32(-2.0 * math.sqrt(2.0 / math.pi))
    for t in range(T):
        for i in range(n):
            g = x[t, i]
            out[t, i] = g / (np.float32(1.0) + np.exp(c2 * (g + np.float32(0.044715) * g * g * g)))


@nb.njit(**_JIT)
def add_inplace(x: np.ndarray, y: np.ndarray) -> None:
    """x += y.    [T, n]."""
    T, n = x.shape
    for t in range(T):
        for i in range(n):
            x[t, i] += y[t, i]


@nb.njit(**_JIT)
def scale_inplace(x: np.ndarray, s: float) -> None:
    """x *= s.    [T, n]."""
    T, n = x.shape
    s32 = np.float32(s)
    for t in range(T):
        for i in range(n):
            x[t, i] *= s32


@nb.njit(**_JIT)
def softcap_inplace(x: np.ndarray, cap: float) -> None:
    """x = cap * tanh(x / cap)  (Gemma 2-style logit soft-capping).    [T, n]."""
    T, n = x.shape
    c = np.float32(cap)
    for t in range(T):
        for i in range(n):
            x[t, i] = c * np.tanh(x[t, i] / c)


def rope_tables(
    n_pos: int,
    n_rot: int,
    theta: float,
    scaling: str = "none",
    factor: float = 1.0,
    orig_ctx: int = 0,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    attn_factor: float = 1.0,
    freq_factors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables ``[n_pos, n_rot/2]`` float32, as ggml's ``rope_yarn`` computes them.

    ``scaling`` is ``none``, ``linear`` (positions divided by ``factor``) or
    ``yarn`` (NTK-by-parts interpolation, https://arxiv.org/abs/2309.00071).
    ``freq_factors`` ``[n_rot/2]``: each frequency divided by its factor (the file's
    ``rope_freqs.weight``: Llama 3.1+'s long-context scaling, which llama.cpp's converter
    bakes into a tensor rather than metadata).
    """
    half = n_rot // 2
    i = np.arange(half, dtype=np.float64)
    # ggml: theta_scale = base^(-2/n_dims), accumulated in float32
    theta_scale = np.float32(theta) ** np.float32(-2.0 / n_rot)
    inv_freq = np.cumprod(np.concatenate([[1.0], np.full(half - 1, theta_scale, np.float32)]).astype(np.float32))
    pos = np.arange(n_pos, dtype=np.float32)
    theta_extrap = pos[:, None] * inv_freq[None, :]
    if freq_factors is not None:
        ff = np.asarray(freq_factors, np.float32).reshape(-1)
        if ff.size != half:
            raise ValueError(f"rope_freqs has {ff.size} factors, expected {half} (n_rot / 2)")
        theta_extrap = theta_extrap / ff[None, :]
    freq_scale = 1.0 / factor if scaling in ("linear", "yarn") and factor > 0 else 1.0
    theta_interp = theta_extrap * np.float32(freq_scale)
    mscale = attn_factor
    if scaling == "yarn":
        n_ctx_orig = orig_ctx or n_pos

        def corr_dim(n_rot_: float) -> float:
            return n_rot * math.log(n_ctx_orig / (n_rot_ * 2 * math.pi)) / (2 * math.log(theta))

        low = max(0.0, math.floor(corr_dim(beta_fast)))
        high = min(n_rot - 1.0, math.ceil(corr_dim(beta_slow)))
        y = (i - low) / max(0.001, high - low)
        ramp_mix = 1.0 - np.clip(y, 0.0, 1.0)
        th = theta_interp * (1 - ramp_mix) + theta_extrap * ramp_mix
        mscale *= 1.0 + 0.1 * math.log(1.0 / freq_scale)
    else:
        th = theta_interp
    cos = (np.cos(th) * mscale).astype(np.float32)
    sin = (np.sin(th) * mscale).astype(np.float32)
    return cos, sin
