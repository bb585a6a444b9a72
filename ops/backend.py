"""The backend interface ``models/`` call, implemented by ``ops/cpu`` and ``ops/gpu``.

A backend is a small object of kernels with the same signatures on every
device; a model never imports a device module itself.  Weights are handed to
``upload`` once, in their GGUF block format, and come back as a
:class:`Weight` the kernels read directly.
"""

from __future__ import annotations

from collections.abc import Sequence

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class Weight:
    """A weight matrix in its GGUF block format.

    data : raw blocks ``[n_rows, row_bytes]`` uint8 (CPU: a view of the memory map)
    qtype : ggml type id
    shape : logical ``(n_rows, n_cols)``; ``y = W @ x`` maps n_cols -> n_rows
    plans : what a backend worked out once for calls on this weight, kept here so that it goes with the weight
        (the CPU's fused decode products: ops/cpu/fused.py)
    """

    data: Any
    qtype: int
    shape: tuple[int, int]
    plans: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def n_cols(self) -> int:
        return self.shape[1]


class Backend(Protocol):
    name: str

    def upload(self, data: np.ndarray, qtype: int, shape: tuple[int, int]) -> Weight: ...
    def vector(self, a: np.ndarray) -> Any: ...
    def zeros(self, shape: tuple[int, ...], dtype: Any = np.float32) -> Any: ...
    def linear(self, w: Weight, x: Any, out: Any) -> None: ...
    def linear_many(self, ws: Sequence[Weight], x: Any, outs: Sequence[Any]) -> None:
        """``outs[i] = x @ ws[i].T`` for projections of one input (Q/K/V, gate/up); a backend may fuse them."""
        ...

    def norm_linear_many(self, x: Any, norm_w: Any, eps: float, xn: Any, ws: Sequence[Weight], outs: Sequence[Any]) -> None:
        """``xn = rms_norm(x) * norm_w``, then :meth:`linear_many` of ``xn`` (a pre-attention or pre-FFN
        norm and its projections; a backend may fuse the norm into them).  ``xn`` must not be ``x``."""
        ...

    def linear_glu(self, w: Weight, gate: Any, up: Any, out: Any, act: str, accumulate: bool = False) -> None:
        """``out (+)= (act(gate) * up) @ w.T``, act "silu" or "gelu" (an FFN's down projection); ``gate`` may be overwritten."""
        ...

    def linear_add(self, w: Weight, x: Any, out: Any) -> None:
        """``out += x @ w.T`` (an output projection into the residual stream); a backend may fuse the add."""
        ...

    def get_rows(self, w: Weight, ids: Any, out: Any) -> None: ...
    def rms_norm(self, x: Any, w: Any, eps: float, out: Any) -> None: ...
    def rms_norm_add(self, y: Any, w: Any, eps: float, x: Any) -> None:
        """``x += rms_norm(y) * w`` (a post-norm into the residual stream); ``y`` may be overwritten."""
        ...

    def rms_norm_heads(self, x: Any, w: Any, eps: float) -> None: ...
    def layer_norm(self, x: Any, w: Any, b: Any, eps: float, out: Any) -> None:
        """``out = (x - mean) / sqrt(var + eps) * w + b`` over each row (``b`` None: no bias); out may be x."""
        ...

    def layer_norm_heads(self, x: Any, w: Any, eps: float) -> None:
        """In place, each head of ``x`` ``[T, n_head, head_dim]`` LayerNormed with its own weights ``w``
        ``[n_head, head_dim]``, no bias (StableLM 2 12B's QK-norm)."""
        ...

    def rope(self, x: Any, pos: Any, cos: Any, sin: Any, neox: bool) -> None: ...
    def rope_qk(self, q: Any, k: Any, pos: Any, cos: Any, sin: Any, neox: bool) -> None:
        """:meth:`rope` of a step's queries and keys (a backend may do both in one kernel)."""
        ...

    def norm_rope_qk(self, q: Any, k: Any, q_norm: Any, k_norm: Any, eps: float, pos: Any, cos: Any, sin: Any, neox: bool) -> None:
        """:meth:`rms_norm_heads` of q and k (QK-norm), then :meth:`rope_qk` (a backend may do it in one kernel)."""
        ...

    def shift_positions(self, pos: Any, shift: int, out: Any) -> None:
        """``out`` [T] int32 = ``pos`` + ``shift``: the rope positions of text after M-RoPE pictures (models/mrope_text.py),
        computed where the positions are (a captured decode step reads its position from a device buffer)."""
        ...

    def silu_mul(self, gate: Any, up: Any, out: Any) -> None: ...
    def gelu_mul(self, gate: Any, up: Any, out: Any) -> None: ...
    def gelu(self, x: Any, out: Any) -> None:
        """``out = gelu_tanh(x)`` (an ungated FFN's activation, Phi-2's); out may be x."""
        ...

    def relu_sqr(self, x: Any, out: Any) -> None:
        """``out = max(x, 0)**2`` (an ungated FFN's squared ReLU, Arcee's); out may be x."""
        ...

    def xielu(self, x: Any, out: Any, alpha_n: float, alpha_p: float, beta: float, eps: float) -> None:
        """``out = xIELU(x)`` (an ungated FFN's activation, Apertus's: ggml's ``ggml_xielu``, the parameters as the
        file states them); out may be x."""
        ...

    def clamp(self, x: Any, limit: float) -> None:
        """In place, ``x = min(max(x, -limit), limit)`` (MPT's ``clip_qkv``)."""
        ...

    def add(self, x: Any, y: Any) -> None: ...
    def add_bias(self, x: Any, b: Any) -> None: ...
    def scale(self, x: Any, s: float) -> None: ...
    def softcap(self, x: Any, cap: float) -> None: ...
    def to_host(self, x: Any) -> np.ndarray: ...
    def moe_token(self, gate: Weight, up: Weight, down: Weight, n_ff: int, experts: np.ndarray, wts: np.ndarray, xn: Any, x: Any,
                  biases: tuple[Any, Any, Any] | None = None, act: str = "silu") -> bool:  # fmt: skip
        """One decode token's mixture-of-experts FFN in one call (``models/moe.py``): ``x[1, n_embd] +=
        sum_j wts[j] down_e(silu(gate_e xn) * up_e xn)``, ``e = experts[j]``, the experts' weights stacked
        (``[n_expert * rows, cols]``); gpt-oss's expert ``biases`` (gate, up, down: ``[n_expert, n]``, host
        arrays) and clamped GLU (``act="swiglu_oai"``).  False, doing nothing, where the backend has no such kernel."""
        ...
    def moe_route(self, logits: Any, k: int, gating: str, norm_weights: bool, scale: float, bias: np.ndarray | None,
                  router_b: np.ndarray | None, groups: tuple[int, int], ids: Any, wts: Any) -> bool:  # fmt: skip
        """Routing in kernels (``models/moe.py`` ``route``, then ``* scale``): router ``logits`` ``[T, n_expert]``
        (plus ``router_b``, gpt-oss's; ``groups``: ``(n_group, n_group_used)``, group-limited routing where
        ``n_group`` > 1) -> the ``k`` chosen experts ``ids`` ``[T, k]`` int32 and their ``wts``
        ``[T, k]``, written on the device for :meth:`moe_experts`.  False, doing nothing: the caller routes on the
        host (the CPU's way)."""
        ...

    def moe_experts(self, gate: Weight, up: Weight, down: Weight, n_ff: int, ids: Any, wts: Any, xn: Any, x: Any, h: Any,
                    biases: tuple[Any, Any, Any] | None = None, act: str = "silu", accumulate: bool = True) -> None:  # fmt: skip
        """``x[T, n_embd] (+)= sum_j wts[t, j] down_e(act(gate_e xn + gb_e, up_e xn + ub_e)) (+ db_e)``, ``e = ids[t, j]``
        as :meth:`moe_route` wrote them (device buffers: nothing comes to the host); ``h`` ``[T, k * n_ff]`` scratch.
        Only a backend whose :meth:`moe_route` routes has it."""
        ...

    def mla_latent_norm(self, kva: Any, w: Any, eps: float, kvc: Any) -> None:
        """Multi-head latent attention (``models/deepseek2.py``): ``kvc[t] = RMSNorm(kva[t, :rank]) * w``, ``rank`` =
        ``kvc``'s width, ``kva`` ``[T, rank + n_rot]`` ``attn_kv_a_mqa``'s output (the latent, then the shared rope key)."""
        ...

    def mla_qk(self, q_raw: Any, k_nope: Any, kva: Any, q: Any, k: Any) -> None:
        """Multi-head latent attention's heads laid out for the rope kernels (which turn a head's leading ``n_rot``
        dimensions): ``q[t, h] = [q_raw[t, h, nope:], q_raw[t, h, :nope]]`` and ``k[t, h] = [kva[t, -n_rot:],
        k_nope[t, h]]`` (the rope key every head shares).  q_raw, q, k ``[T, H, nope + n_rot]``; k_nope ``[T, H, nope]``."""
        ...

    def mla_latent_kv(self, kva: Any, w: Any, eps: float, k: Any, v: Any) -> None:
        """Multi-head latent attention's absorbed form (``models/mla.py``): the cache's rows, ``v[t, 0] = RMSNorm(kva[t,
        :rank]) * w`` and ``k[t, 0] = [kva[t, rank:], v[t, 0]]`` (the rope key first).  k ``[T, 1, n_rot + rank]``; v ``[T,
        1, rank]``."""
        ...

    def mla_absorb_q(self, q_raw: Any, wk: Any, q: Any) -> None:
        """``q[t, h] = [q_raw[t, h, nope:], wk[h].T @ q_raw[t, h, :nope]]``: each head's q_nope absorbed into the latent's
        space.  q_raw ``[T, H, nope + n_rot]``; wk ``[H, nope, rank]`` float32 (:meth:`vector`); q ``[T, H, n_rot + rank]``."""
        ...

    def mla_heads_out(self, att: Any, wv: Any, out: Any) -> None:
        """``out[t, h] = wv[h].T @ att[t, h]``: each head's attended latent expanded to its V width.  att ``[T, H, rank]``;
        wv ``[H, rank, dv]`` float32 (:meth:`vector`); out ``[T, H, dv]``."""
        ...

    def sigmoid_gated_add(self, x: Any, y: Any, s: Any) -> None:
        """``x[t] += sigmoid(s[t]) * y[t]`` (Qwen2-MoE's gated shared expert); ``s`` ``[T, 1]``, ``y`` is scratch."""
        ...

    def sigmoid_mul(self, x: Any, s: Any) -> None:
        """``x *= sigmoid(s)`` in place, each of ``s``'s values over ``x.size / s.size`` consecutive ones of ``x`` (in
        row-major order: an attention gate element by element, or one a head, ``x`` ``[T, H, D]`` and ``s`` ``[T, H]``);
        a ValueError where ``x`` is not a whole number of ``s``."""
        ...

    def softplus_mul(self, x: Any, s: Any) -> None:
        """``x *= softplus(s)`` in place, laid out as :meth:`sigmoid_mul` (Laguna's attention gate, element by element or
        one a head); softplus as ggml's ``ggml_compute_softplus_f32``: ``s`` itself above 20, else ``log1p(exp(s))``."""
        ...

    def copy(self, src: Any, dst: Any) -> None:
        """``dst[...] = src``, ``dst`` perhaps a view; the same shapes, else a one-line ValueError (no broadcast).  The
        CPU's is ``np.copyto``; the GPU's a kernel, so a captured decode step replays it (an assignment to a device
        array would run once, when called)."""
        ...

    def mul(self, x: Any, w: Any) -> None:
        """``x *= w`` in place, ``w`` a vector of ``m`` values over each run of ``m`` consecutive values of ``x`` (``x``
        viewed as ``[-1, m]``: ggml_mul's row broadcast, as Talkie's gain a query head, each repeated over its
        head_dim); a ValueError where ``x`` is not a whole number of ``w``."""
        ...

    # (the GPU backend also has Gemma 3n's and Gemma 4's own steps, AltUp's and the per-layer inputs' gate, which the
    # CPU's models do in host numpy: ops/gpu/gemma.py GemmaOps, called from those models' forward_device only)
    # (and the mixture-of-experts variants' device steps, which the CPU's models do in host numpy: ops/gpu/moe2.py
    # MoEVariantOps, called where ``name != "cpu"`` only: Grok's, Step-3.5's and Llama 4's experts, GroveMoE's chunk
    # experts' routing, the float16-table GELU, the clamped SwiGLU; the sigmoid attention gates are
    # :meth:`sigmoid_mul`, above, on both)
