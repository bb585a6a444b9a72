"""RWKV-6 "Finch" (the RWKV-6 World models, 1.6B/3B/7B/14B: ``rwkv6``), as llama.cpp's graph of that name: RWKV-7's
trunk (models/rwkv7.py: LN0, then per layer a time mix and a channel mix of LayerNormed, token-shifted inputs, both
residual) with RWKV-6's two mixes.  What sets it apart:

* the data-dependent token shift ("ddlerp"): the time mix lerps its input with the previous token's once by a fixed
  ``mu_x`` (``time_mix_lerp_x``), feeds that through a LoRA (``time_mix_w2[j] tanh(time_mix_w1 x)``, five outputs),
  and lerps again for each of w, k, v, r, g by its fixed ``mu`` (``time_mix_lerp_fused``, or ``time_mix_lerp_w`` ...
  apart in older files) plus that LoRA's output: ``x + (x_prev - x) (mu + lora_j)``;
* the data-dependent decay: ``w = exp(-exp(time_decay + W2 tanh(W1 xw)))`` (``time_mix_decay``, ``_w1``, ``_w2``);
* the WKV-6 recurrence per head (``ops/cpu/wkv6.py``): ``y = r (S + u k v)``, ``S = w S + k v``, ``u`` the bonus
  (``time_mix_first``), which the model adds here (``v (r . u k)`` per head: no state in it);
* after it: a group norm per head (``time_mix_ln``, eps 64e-5), the gate ``silu(W_g xg)``, the output projection;
* the channel mix with a receptance: ``sigmoid(W_r xr) * W_v relu(W_k xk)^2``, xk and xr lerped by their own mus;
* ``rescale_every_n_layers`` (6 in the World models): llama.cpp halves the residual after every N-th layer, as
  RWKV's fp16 inference does; the converter divides ``time_mix_output`` and ``channel_mix_value`` of layer i by
  ``2 ** (i // N)`` to match, so both are needed (the LayerNorms make the scale itself invisible).

The cache is RWKV-7's (``cache/rwkv.py``) with WKV-6 inside; on the GPU ``cache/gpu_recurrent.py``
(models/gpu_recurrent.py).  llama.cpp's ``rwkv6qwen2`` (RWKV-6's time mix in a Qwen 2 trunk, gated linear attention
in place of WKV-6) is models/rwkv6qwen2.py, through the hooks here (load_time_mix's ``load_wkv_extras``, time_mix's
``recurrence`` and ``gate_act``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import GGUFError
from ..ops.backend import Weight
from ..ops.cpu.nn import layer_norm_heads
from ..ops.host import sigmoid
from .common import TENSOR_NAMES, WeightLoader
from .rwkv7 import GROUP_NORM_EPS, RWKV7Model

TENSOR_NAMES.update({  # llama.cpp's LLM_TENSOR_TIME_MIX_* and CHANNEL_MIX_* of RWKV-6 (RWKV-7's in models/rwkv7.py)
    **{f"time_mix_{n}": f"blk.{{i}}.time_mix_{n}.weight" for n in ("lerp_x", "lerp_w", "lerp_k", "lerp_v", "lerp_r",
                                                                   "lerp_g", "first", "decay", "decay_w1", "decay_w2",
                                                                   "gate")},
    "channel_mix_lerp_r": "blk.{i}.channel_mix_lerp_r.weight",
    "channel_mix_receptance": "blk.{i}.channel_mix_receptance.weight",
    # (the r/k/v biases RWKV6-Qwen2 may have, Qwen 2's attention biases; llama.cpp's shared time mix adds them)
    **{f"time_mix_{n}_b": f"blk.{{i}}.time_mix_{n}.bias" for n in ("receptance", "key", "value")},
})  # fmt: skip

#: the order of the ddlerp's five outputs and mus (the converter's: ``time_mix_lerp_fused`` stacks them so)
LERPS = "wkvrg"


def silu(x: np.ndarray) -> np.ndarray:
    """The time mix's gate: ``x sigmoid(x)``."""
    return x * sigmoid(x)


@dataclass
class RWKV6Layer:
    """A layer's weights (the vectors float32 on the host, as the elementwise work reads them)."""

    attn_norm: Any  # [n_embd] (and its bias): the time mix's input norm
    attn_norm_b: Any
    ffn_norm: Any  # [n_embd]: llama.cpp's attn_norm_2, the channel mix's input norm
    ffn_norm_b: Any
    lerp_x: np.ndarray  # [n_embd]: the first, fixed lerp, the ddlerp LoRA's input
    w1: Weight  # [5 * time_mix_extra_dim, n_embd]: the ddlerp LoRA's down projection (tanh after it)
    w2: list[Weight]  # 5 x [n_embd, time_mix_extra_dim]: its up projections, one per lerp (w, k, v, r, g)
    lerp: np.ndarray  # [5, n_embd]: the fixed mus, w, k, v, r, g
    wr: Weight  # [n_embd, n_embd]
    wk: Weight  # [kv, n_embd]: kv n_embd, or fewer heads' (head_count_kv: RWKV6-Qwen2's GQA, repeated)
    wv: Weight
    wg: Weight
    wo: Weight
    u: np.ndarray | None  # [n_embd]: the bonus (time_mix_first), per head (RWKV6-Qwen2: none)
    decay: np.ndarray  # [n_embd]: the decay's base (time_mix_decay)
    decay_w1: Weight  # [time_decay_extra_dim, n_embd], decay_w2 [n_embd, time_decay_extra_dim]: the decay's LoRA
    decay_w2: Weight
    ln: np.ndarray | None  # [n_embd] and its bias: the group norm's (RWKV6-Qwen2: none)
    ln_b: np.ndarray | None
    cm_lerp: np.ndarray | None  # [n_embd]: the channel mix's token shift of its key's input (RWKV6-Qwen2: no channel mix)
    cm_lerp_r: np.ndarray | None  # [n_embd]: and of its receptance's
    cm_key: Weight | None  # [n_ff, n_embd]
    cm_value: Weight | None  # [n_embd, n_ff]
    cm_receptance: Weight | None  # [n_embd, n_embd]
    halve: bool = False  # the residual halved after this layer (rescale_every_n_layers)
    br: np.ndarray | None = None  # the r/k/v biases, where the file has them (RWKV6-Qwen2's)
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None


class RWKV6Model(RWKV7Model):
    archs = ("rwkv6",)
    wkv_version = 6
    layer_type: type = RWKV6Layer
    lerps_apart = True  # (the five mus may come apart, from before the converter fused them; RWKV6-Qwen2's: fused only)

    def load_layer(self, w: WeightLoader, i: int) -> RWKV6Layer:
        c, g = self.cfg, w.g
        if i == 0:  # (llama.cpp requires both; they size the LoRAs, which the shapes below are held to)
            self.extra = int(g.arch_get("time_mix_extra_dim", 0) or 0)
            self.decay_extra = int(g.arch_get("time_decay_extra_dim", 0) or 0)
            if self.extra <= 0 or self.decay_extra <= 0:
                raise GGUFError(f"{g.path}: {g.architecture}.time_mix_extra_dim/time_decay_extra_dim are missing; the file is not a supported model")
            # the key and value heads: llama.cpp's attn_key_value_size, n_embd unless head_count_kv states fewer
            # (RWKV6-Qwen2's GQA; RWKV-6 states head_count_kv 0), each read by n_head / n_head_kv query heads
            H, kvh = c.n_embd // self.head_size, c.n_head_kv
            self.kv_heads = H if kvh in (0, H) else kvh
            if H % self.kv_heads:
                raise GGUFError(f"{g.path}: {g.architecture}.attention.head_count_kv {kvh} does not divide the {H} heads")
        return self.layer_type(**self.load_time_mix(w, i), **self.load_ffn(w, i))

    def load_time_mix(self, w: WeightLoader, i: int) -> dict[str, Any]:
        """Layer i's time mix (RWKV6Layer's fields by name): the ddlerp, the projections, the decay, and what
        ``load_wkv_extras`` reads (RWKV-6's bonus and group norm)."""
        n, path = self.cfg.n_embd, w.g.path
        kv = self.kv_heads * self.head_size

        def shaped(t: Any, role: str, shape: tuple[int, ...]) -> Any:
            if tuple(t.shape) != shape:
                raise GGUFError(f"{path}: {TENSOR_NAMES[role].format(i=i)} has shape {tuple(t.shape)}, expected {shape}; "
                                "the file is not a supported model")  # fmt: skip
            return t

        def host(role: str, size: int = n) -> np.ndarray:
            return shaped(w.host_vector(role, i), role, (size,))

        def mat(role: str, rows: int = n, cols: int = n) -> Weight:
            return shaped(w.matrix(role, i), role, (rows, cols))

        if w.has("time_mix_lerp_fused", i) or not self.lerps_apart:
            lerp = host("time_mix_lerp_fused", 5 * n).reshape(5, n)
        else:  # (files from before the converter fused them)
            lerp = np.stack([host(f"time_mix_lerp_{x}") for x in LERPS])
        w.experts("time_mix_w2", i, 5, n, self.extra)  # (its shape checked: [5, n_embd, extra], the five up projections)
        w2 = w.matrix_rows("time_mix_w2", i, (n,) * 5)
        bias = {f: shaped(b, role, (size,)) if (b := w.host_vector(role, i, required=False)) is not None else None
                for f, role, size in (("br", "time_mix_receptance_b", n), ("bk", "time_mix_key_b", kv), ("bv", "time_mix_value_b", kv))}
        return dict(
            lerp_x=host("time_mix_lerp_x"), w1=mat("time_mix_w1", 5 * self.extra), w2=w2, lerp=lerp,
            wr=mat("time_mix_receptance"), wk=mat("time_mix_key", kv), wv=mat("time_mix_value", kv), wg=mat("time_mix_gate"),
            wo=mat("time_mix_output"), decay=host("time_mix_decay"),
            decay_w1=mat("time_mix_decay_w1", self.decay_extra), decay_w2=mat("time_mix_decay_w2", n, self.decay_extra),
            **bias, **self.load_wkv_extras(w, i),
        )  # fmt: skip

    def load_wkv_extras(self, w: WeightLoader, i: int) -> dict[str, Any]:
        """Layer i's bonus (``time_mix_first``) and the group norm after the recurrence."""
        n = self.cfg.n_embd
        return dict(u=self.host(w, "time_mix_first", i, n), ln=self.host(w, "time_mix_ln", i, n), ln_b=self.host(w, "time_mix_ln_b", i, n))

    def load_ffn(self, w: WeightLoader, i: int) -> dict[str, Any]:
        """Layer i's two LayerNorms and its channel mix; whether the residual is halved after it."""
        c, n = self.cfg, self.cfg.n_embd

        def mat(role: str, rows: int, cols: int) -> Weight:
            m = w.matrix(role, i)
            if tuple(m.shape) != (rows, cols):
                raise GGUFError(f"{w.g.path}: {TENSOR_NAMES[role].format(i=i)} has shape {tuple(m.shape)}, expected {(rows, cols)}; "
                                "the file is not a supported model")  # fmt: skip
            return m

        every = int(w.g.arch_get("rescale_every_n_layers", 0) or 0)
        return dict(
            attn_norm=w.vector("attn_norm", i), attn_norm_b=w.vector("attn_norm_b", i),
            ffn_norm=w.vector("attn_norm_2", i), ffn_norm_b=w.vector("attn_norm_2_b", i),
            cm_lerp=self.host(w, "channel_mix_lerp_k", i, n), cm_lerp_r=self.host(w, "channel_mix_lerp_r", i, n),
            cm_key=mat("channel_mix_key", c.n_ff, n), cm_value=mat("channel_mix_value", n, c.n_ff),
            cm_receptance=mat("channel_mix_receptance", n, n), halve=every > 0 and (i + 1) % every == 0,
        )  # fmt: skip

    def time_mix(self, L: RWKV6Layer, state: Any, xn: np.ndarray, pos: np.ndarray, v_first: Any) -> tuple[np.ndarray, None]:
        """The time mix of the normed input ``xn`` [T, n_embd]: its output before ``time_mix_output`` (a buffer), and
        no value for later layers (RWKV-7's value residual: none here).  ``state``: the layer's cache (cache/rwkv.py)."""
        if self.be.name == "gpu":  # (the same steps as kernels on device buffers: models/gpu_recurrent.py)
            from .gpu_recurrent import rwkv6_time_mix

            return rwkv6_time_mix(self, L, state, xn, pos)
        be, buf = self.be, self.buf
        T, n = xn.shape
        H, N = n // self.head_size, self.head_size
        sx = state.token_shift(xn, pos, 0) - xn
        # the ddlerp: a LoRA of the fixed lerp gives each of w, k, v, r, g its own data-dependent mu
        h = buf.get("rwkv6_ddlerp", T, 5 * self.extra)
        be.linear(L.w1, xn + sx * L.lerp_x, h)
        h3 = np.tanh(h).reshape(T, 5, self.extra)
        mix = np.empty((5, T, n), np.float32)
        for j in range(5):
            be.linear(L.w2[j], np.ascontiguousarray(h3[:, j]), mix[j])
        mix += L.lerp[:, None, :]
        mix *= sx
        mix += xn
        xw, xk, xv, xr, xg = mix
        r, k, v = self.rkv(L, xr, xk, xv)
        if k.shape[1] != n:  # (fewer K/V heads: each read by n_head / n_head_kv consecutive heads, as ggml_repeat lays them)
            k, v = (np.repeat(a.reshape(T, self.kv_heads, N), H // self.kv_heads, axis=1).reshape(T, n) for a in (k, v))
        w = np.exp(-np.exp(self.lora(L.decay_w1, L.decay_w2, xw, np.tanh, "w") + L.decay))
        y = self.recurrence(L, state, pos, r, w, k, v)
        gate = buf.get("rwkv_g", T, n)
        be.linear(L.wg, xg, gate)
        y *= self.gate_act(gate)
        return y, None

    def rkv(self, L: RWKV6Layer, xr: Any, xk: Any, xv: Any, const: Callable[[np.ndarray], Any] = lambda b: b) -> tuple[Any, Any, Any]:
        """The receptance [T, n_embd], key and value [T, kv_heads * head_size] (buffers) of the lerped rows, the
        biases (RWKV6-Qwen2's) added; ``const``: a bias as the backend takes it (the GPU's: its cached device copy)."""
        be, buf = self.be, self.buf
        T, n = xr.shape
        kv = self.kv_heads * self.head_size
        r, k, v = buf.get("rwkv_r", T, n), buf.get("rwkv_k", T, kv), buf.get("rwkv_v", T, kv)
        be.linear(L.wr, xr, r)
        be.linear(L.wk, xk, k)
        be.linear(L.wv, xv, v)
        for part, b in ((r, L.br), (k, L.bk), (v, L.bv)):
            if b is not None:
                be.add_bias(part, const(b))
        return r, k, v

    def gate_act(self, g: np.ndarray) -> np.ndarray:
        """The time mix's output gate: SiLU (RWKV6-Qwen2's: sigmoid)."""
        return silu(g)

    def recurrence(self, L: RWKV6Layer, state: Any, pos: np.ndarray, r: np.ndarray, w: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The heads' output [T, n_embd] (a buffer) for the receptance, decay, key and value [T, n_embd] each: WKV-6
        (the cache's, ``state``) with its bonus, then the group norm."""
        T, n = r.shape
        H, N = n // self.head_size, self.head_size
        y = self.wkv(state, pos, r, w, k, v)
        y3 = y.reshape(T, H, N)
        bonus = np.einsum("thn,thn,hn->th", r.reshape(T, H, N), k.reshape(T, H, N), L.u.reshape(H, N))
        y3 += v.reshape(T, H, N) * bonus[:, :, None]
        layer_norm_heads(y3, L.ln.reshape(H, N), GROUP_NORM_EPS)  # group norm: each head's output normed alone
        y += L.ln_b
        return y

    def wkv(self, state: Any, pos: np.ndarray, r: np.ndarray, w: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The WKV-6 kernel's output [T, n_embd] (a buffer; no bonus) through the layer's cache, which keeps the
        inputs r, w, k, v of each position to replay after going back."""
        T, n = r.shape
        x4 = self.buf.get("rwkv_x4", T, 4 * n)
        for j, part in enumerate((r, w, k, v)):
            x4[:, j * n : (j + 1) * n] = part
        y = self.buf.get("rwkv_y", T, n)
        state.wkv(x4, pos, y)
        return y

    def channel_mix(self, L: RWKV6Layer, state: Any, xn: np.ndarray, pos: np.ndarray, x: np.ndarray) -> None:
        """The channel mix of the normed input ``xn`` [T, n_embd], added to the residual ``x``; then the residual
        halved where the layer ends a group of rescale_every_n_layers."""
        if self.be.name == "gpu":
            from .gpu_recurrent import rwkv6_channel_mix

            return rwkv6_channel_mix(self, L, state, xn, pos, x)
        be, buf = self.be, self.buf
        T = xn.shape[0]
        sx = state.token_shift(xn, pos, 1) - xn
        h = buf.get("rwkv_cm", T, self.cfg.n_ff)
        be.linear(L.cm_key, xn + sx * L.cm_lerp, h)
        be.relu_sqr(h, h)
        kv, r = buf.get("rwkv_cm_kv", T, self.cfg.n_embd), buf.get("rwkv_cm_r", T, self.cfg.n_embd)
        be.linear(L.cm_value, h, kv)
        be.linear(L.cm_receptance, xn + sx * L.cm_lerp_r, r)
        x += sigmoid(r) * kv
        if L.halve:
            x *= np.float32(0.5)

