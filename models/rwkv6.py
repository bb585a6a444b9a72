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

The cache is RWKV-7's (``cache/rwkv.py``) with WKV-6 inside; the CPU only.  llama.cpp's ``rwkv6qwen2`` (RWKV-6 time
mix in a Qwen 2 trunk) is another architecture, not run here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import GGUFError
from ..ops.backend import Weight
from ..ops.cpu.nn import layer_norm_heads
from .common import TENSOR_NAMES, WeightLoader
from .rwkv7 import GROUP_NORM_EPS, RWKV7Model, _sigmoid

TENSOR_NAMES.update({  # llama.cpp's LLM_TENSOR_TIME_MIX_* and CHANNEL_MIX_* of RWKV-6 (RWKV-7's in models/rwkv7.py)
    **{f"time_mix_{n}": f"blk.{{i}}.time_mix_{n}.weight" for n in ("lerp_x", "lerp_w", "lerp_k", "lerp_v", "lerp_r",
                                                                   "lerp_g", "first", "decay", "decay_w1", "decay_w2",
                                                                   "gate")},
    "channel_mix_lerp_r": "blk.{i}.channel_mix_lerp_r.weight",
    "channel_mix_receptance": "blk.{i}.channel_mix_receptance.weight",
})  # fmt: skip

#: the order of the ddlerp's five outputs and mus (the converter's: ``time_mix_lerp_fused`` stacks them so)
LERPS = "wkvrg"


def silu(x: np.ndarray) -> np.ndarray:
    """The time mix's gate: ``x sigmoid(x)``."""
    return x * _sigmoid(x)


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
    wk: Weight
    wv: Weight
    wg: Weight
    wo: Weight
    u: np.ndarray  # [n_embd]: the bonus (time_mix_first), per head
    decay: np.ndarray  # [n_embd]: the decay's base (time_mix_decay)
    decay_w1: Weight  # [time_decay_extra_dim, n_embd], decay_w2 [n_embd, time_decay_extra_dim]: the decay's LoRA
    decay_w2: Weight
    ln: np.ndarray  # [n_embd] and its bias: the group norm's
    ln_b: np.ndarray
    cm_lerp: np.ndarray  # [n_embd]: the channel mix's token shift of its key's input
    cm_lerp_r: np.ndarray  # [n_embd]: and of its receptance's
    cm_key: Weight  # [n_ff, n_embd]
    cm_value: Weight  # [n_embd, n_ff]
    cm_receptance: Weight  # [n_embd, n_embd]
    halve: bool = False  # the residual halved after this layer (rescale_every_n_layers)


class RWKV6Model(RWKV7Model):
    archs = ("rwkv6",)
    wkv_version = 6

    def load_layer(self, w: WeightLoader, i: int) -> RWKV6Layer:
        c, g = self.cfg, w.g
        n, path = c.n_embd, g.path
        if i == 0:  # (llama.cpp requires both; they size the LoRAs, which the shapes below are held to)
            self.extra = int(g.arch_get("time_mix_extra_dim", 0) or 0)
            self.decay_extra = int(g.arch_get("time_decay_extra_dim", 0) or 0)
            if self.extra <= 0 or self.decay_extra <= 0:
                raise GGUFError(f"{path}: rwkv6.time_mix_extra_dim/time_decay_extra_dim are missing; the file is not a supported model")

        def shaped(t: Any, role: str, shape: tuple[int, ...]) -> Any:
            if tuple(t.shape) != shape:
                raise GGUFError(f"{path}: {TENSOR_NAMES[role].format(i=i)} has shape {tuple(t.shape)}, expected {shape}; "
                                "the file is not a supported model")  # fmt: skip
            return t

        def host(role: str, size: int = n) -> np.ndarray:
            return shaped(w.host_vector(role, i), role, (size,))

        def mat(role: str, rows: int = n, cols: int = n) -> Weight:
            return shaped(w.matrix(role, i), role, (rows, cols))

        if w.has("time_mix_lerp_fused", i):
            lerp = host("time_mix_lerp_fused", 5 * n).reshape(5, n)
        else:  # (files from before the converter fused them)
            lerp = np.stack([host(f"time_mix_lerp_{x}") for x in LERPS])
        w.experts("time_mix_w2", i, 5, n, self.extra)  # (its shape checked: [5, n_embd, extra], the five up projections)
        w2 = w.matrix_rows("time_mix_w2", i, (n,) * 5)
        L = RWKV6Layer(
            attn_norm=w.vector("attn_norm", i), attn_norm_b=w.vector("attn_norm_b", i),
            ffn_norm=w.vector("attn_norm_2", i), ffn_norm_b=w.vector("attn_norm_2_b", i),
            lerp_x=host("time_mix_lerp_x"), w1=mat("time_mix_w1", 5 * self.extra), w2=w2, lerp=lerp,
            wr=mat("time_mix_receptance"), wk=mat("time_mix_key"), wv=mat("time_mix_value"), wg=mat("time_mix_gate"),
            wo=mat("time_mix_output"), u=host("time_mix_first"), decay=host("time_mix_decay"),
            decay_w1=mat("time_mix_decay_w1", self.decay_extra), decay_w2=mat("time_mix_decay_w2", n, self.decay_extra),
            ln=host("time_mix_ln"), ln_b=host("time_mix_ln_b"),
            cm_lerp=host("channel_mix_lerp_k"), cm_lerp_r=host("channel_mix_lerp_r"),
            cm_key=mat("channel_mix_key", c.n_ff), cm_value=mat("channel_mix_value", n, c.n_ff),
            cm_receptance=mat("channel_mix_receptance"),
        )  # fmt: skip
        every = int(g.arch_get("rescale_every_n_layers", 0) or 0)
        L.halve = every > 0 and (i + 1) % every == 0
        return L

    def time_mix(self, L: RWKV6Layer, state: Any, xn: np.ndarray, pos: np.ndarray, v_first: Any) -> tuple[np.ndarray, None]:
        """The time mix of the normed input ``xn`` [T, n_embd]: its output before ``time_mix_output`` (a buffer), and
        no value for later layers (RWKV-7's value residual: none here).  ``state``: the layer's cache (cache/rwkv.py)."""
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
        x4 = buf.get("rwkv_x4", T, 4 * n)  # the recurrence's inputs r, w, k, v (what the cache keeps)
        r, k, v = (buf.get(f"rwkv_{name}", T, n) for name in "rkv")
        be.linear(L.wr, xr, r)
        be.linear(L.wk, xk, k)
        be.linear(L.wv, xv, v)
        w = np.exp(-np.exp(self.lora(L.decay_w1, L.decay_w2, xw, np.tanh, "w") + L.decay))
        for j, part in enumerate((r, w, k, v)):
            x4[:, j * n : (j + 1) * n] = part
        y = buf.get("rwkv_y", T, n)
        state.wkv(x4, pos, y)
        y3 = y.reshape(T, H, N)
        bonus = np.einsum("thn,thn,hn->th", r.reshape(T, H, N), k.reshape(T, H, N), L.u.reshape(H, N))
        y3 += v.reshape(T, H, N) * bonus[:, :, None]
        layer_norm_heads(y3, L.ln.reshape(H, N), GROUP_NORM_EPS)  # group norm: each head's output normed alone
        y += L.ln_b
        gate = buf.get("rwkv_g", T, n)
        be.linear(L.wg, xg, gate)
        y *= silu(gate)
        return y, None

    def channel_mix(self, L: RWKV6Layer, state: Any, xn: np.ndarray, pos: np.ndarray, x: np.ndarray) -> None:
        """The channel mix of the normed input ``xn`` [T, n_embd], added to the residual ``x``; then the residual
        halved where the layer ends a group of rescale_every_n_layers."""
        be, buf = self.be, self.buf
        T = xn.shape[0]
        sx = state.token_shift(xn, pos, 1) - xn
        h = buf.get("rwkv_cm", T, self.cfg.n_ff)
        be.linear(L.cm_key, xn + sx * L.cm_lerp, h)
        be.relu_sqr(h, h)
        kv, r = buf.get("rwkv_cm_kv", T, self.cfg.n_embd), buf.get("rwkv_cm_r", T, self.cfg.n_embd)
        be.linear(L.cm_value, h, kv)
        be.linear(L.cm_receptance, xn + sx * L.cm_lerp_r, r)
        x += _sigmoid(r) * kv
        if L.halve:
            x *= np.float32(0.5)

