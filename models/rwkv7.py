"""RWKV-7 "Goose" (RWKV7-G1 0.1B ... 2.9B, the RWKV-7 World models: ``rwkv7``), as llama.cpp's graph of that name:
an attention-free RNN, every layer a time mix (the WKV-7 recurrence) then a channel mix, both residual::

    x = layer_norm(embedding, token_embd_norm)                     (LN0, before the first layer)
    x = x + time_mix(layer_norm(x, attn_norm), its previous row)
    x = x + channel_mix(layer_norm(x, attn_norm_2), its previous row)

Every norm is a LayerNorm with bias.  What sets it apart:

* token shift: each mix reads its normed input lerped with the previous token's (``x + (x_prev - x) * mu``, a
  ``mu`` per channel and per use: the time mix's six, ``time_mix_lerp_fused``, for r, w, k, v, a and g);
* the time mix's projections: ``r``, ``k``, ``v`` (full matrices) and four LoRAs: the decay ``w = exp(-e^-0.5
  sigmoid(w0 + W2 tanh(W1 x)))``, the in-context learning rate ``a = sigmoid(a0 + A2 A1 x)``, the output gate
  ``g = G2 sigmoid(G1 x)``, and (from layer 1 on) the value residual: ``v += (v_first - v) sigmoid(v0 + V2 V1 x)``,
  ``v_first`` layer 0's value;
* the WKV-7 recurrence per head (``ops/cpu/wkv7.py``): a generalised delta rule over a ``[head_size, head_size]``
  state, with the removal key ``kk = l2_norm(k * k_k)`` per head (``a = -kk``, ``b = kk * iclr``) and the key
  ``k (1 + (iclr - 1) k_a)``;
* after it: a group norm per head (``time_mix_ln``, eps 64e-5), the bonus ``v * sum(r * k * r_k)`` per head, the
  gate, the output projection;
* the channel mix: ``W_v relu(W_k x)^2`` of its own token-shifted input.

The WKV state and the token shift's last rows live in the cache, one per layer (``cache/rwkv.py``); on the GPU
``cache/gpu_recurrent.py`` and ``ops/gpu/recurrent.cu`` (``models/gpu_recurrent.py``).
ARWKV-7 (models/arwkv7.py) is this time mix in a Qwen 2.5 trunk; RWKV-6 (models/rwkv6.py) is this model with its own
time mix and channel mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from ..ops.cpu.nn import layer_norm_heads
from ..ops.host import sigmoid
from .common import TENSOR_NAMES, Model, WeightLoader

TENSOR_NAMES.update({  # llama.cpp's LLM_TENSOR_TOKEN_EMBD_NORM, ATTN_NORM_2, TIME_MIX_*, CHANNEL_MIX_*
    "tok_norm": "token_embd_norm.weight",
    "tok_norm_b": "token_embd_norm.bias",
    "attn_norm_2": "blk.{i}.attn_norm_2.weight",
    "attn_norm_2_b": "blk.{i}.attn_norm_2.bias",
    "time_mix_lerp_fused": "blk.{i}.time_mix_lerp_fused.weight",
    **{f"time_mix_{n}": f"blk.{{i}}.time_mix_{n}.weight" for n in ("w0", "w1", "w2", "a0", "a1", "a2", "v0", "v1", "v2",
                                                                   "g1", "g2", "k_k", "k_a", "r_k", "key", "value",
                                                                   "receptance", "ln", "output")},
    "time_mix_ln_b": "blk.{i}.time_mix_ln.bias",
    "channel_mix_lerp_k": "blk.{i}.channel_mix_lerp_k.weight",
    "channel_mix_key": "blk.{i}.channel_mix_key.weight",
    "channel_mix_value": "blk.{i}.channel_mix_value.weight",
})  # fmt: skip

#: the decay's scale: w = exp(-sigmoid(.) / sqrt(e)), so every channel keeps at least e^-0.607 = 0.545 of its state a token
DECAY_SCALE = np.float32(-0.606531)
#: llama.cpp's group norm eps after the recurrence (fixed, not the file's)
GROUP_NORM_EPS = 64e-5


@dataclass
class RWKV7Layer:
    """A layer's weights (the vectors float32 on the host, as the elementwise work reads them)."""

    attn_norm: Any  # [n_embd] (and its bias): the time mix's input norm
    attn_norm_b: Any
    ffn_norm: Any  # [n_embd]: llama.cpp's attn_norm_2, the channel mix's input norm
    ffn_norm_b: Any
    lerp: np.ndarray  # [6, n_embd]: the token shift's mu for r, w, k, v, a, g
    wr: Weight  # [n_embd, n_embd]
    wk: Weight
    wv: Weight
    wo: Weight
    w0: np.ndarray  # [n_embd]; w1 [decay_rank, n_embd], w2 [n_embd, decay_rank]: the decay's LoRA
    w1: Weight
    w2: Weight
    a0: np.ndarray  # the in-context learning rate's LoRA
    a1: Weight
    a2: Weight
    k_k: np.ndarray  # [n_embd]: the removal key's scale
    k_a: np.ndarray  # [n_embd]: how much the learning rate scales the key
    r_k: np.ndarray  # [n_embd]: the bonus's weights
    cm_lerp: np.ndarray  # [n_embd]: the channel mix's token shift
    cm_key: Weight  # [n_ff, n_embd]
    cm_value: Weight  # [n_embd, n_ff]
    v0: np.ndarray | None = None  # the value residual's LoRA (None: layer 0, whose value is v_first)
    v1: Weight | None = None
    v2: Weight | None = None
    g1: Weight | None = None  # the output gate's LoRA (llama.cpp runs without one where a file has none)
    g2: Weight | None = None
    ln: np.ndarray | None = None  # [n_embd] and its bias: the group norm's (llama.cpp skips it where a file has none)
    ln_b: np.ndarray | None = None


class RWKV7Model(Model):
    archs = ("rwkv7",)
    wkv_version = 7  # (the cache's recurrence: cache/rwkv.py)
    #: llama.cpp's token_shift_count: the token-shift rows a layer keeps, one for each mix (ARWKV-7: the time mix's only)
    token_shift_count = 2
    #: the rows of ``time_mix_lerp_fused`` in a layer without the gate's LoRA (ARWKV-7's converter drops the gate's mu)
    ungated_lerp_rows = 6
    layer_type: type = RWKV7Layer  # (what load_layer makes: load_ffn's fields differ in ARWKV-7's)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.head_size = int(g.arch_get("wkv.head_size", 0) or 0)
        if self.head_size <= 0 or cfg.n_embd % self.head_size:
            raise GGUFError(f"{g.path}: {g.architecture}.wkv.head_size {self.head_size} does not divide embedding_length {cfg.n_embd} into heads")
        if int(g.arch_get("token_shift_count", 2)) != self.token_shift_count:  # (llama.cpp asserts it: its state's size)
            raise UnsupportedModelError(f"{g.path}: {g.architecture}.token_shift_count {g.arch_get('token_shift_count', 2)} "
                                        f"is not {self.token_shift_count}")  # fmt: skip
        w = WeightLoader(g, backend)
        self.load_ends(w)
        self.layers = [self.load_layer(w, i) for i in range(cfg.n_layer)]

    def load_ends(self, w: WeightLoader) -> None:
        """The embeddings, LN0, the output norm and the output head."""
        self.tok_embd = w.matrix("tok_embd")
        self.tok_norm, self.tok_norm_b = w.vector("tok_norm"), w.vector("tok_norm_b")
        self.output = w.matrix("output")
        self.output_norm, self.output_norm_b = w.vector("output_norm"), w.vector("output_norm_b")

    def host(self, w: WeightLoader, role: str, i: int, size: int, required: bool = True) -> np.ndarray | None:
        """Layer i's vector ``role`` on the host, of ``size`` values (None: absent and not ``required``)."""
        v = w.host_vector(role, i, required)
        if v is not None and v.size != size:
            raise GGUFError(f"{w.g.path}: {TENSOR_NAMES[role].format(i=i)} has {v.size} values, expected {size}; the file is not a supported model")
        return v

    def load_ffn(self, w: WeightLoader, i: int) -> dict[str, Any]:
        """Layer i's norms and what follows the time mix, the channel mix (RWKV7Layer's fields by name)."""
        c, n = self.cfg, self.cfg.n_embd
        cm_key, cm_value = w.matrix("channel_mix_key", i), w.matrix("channel_mix_value", i)
        if tuple(cm_key.shape) != (c.n_ff, n) or tuple(cm_value.shape) != (n, c.n_ff):
            raise GGUFError(f"{w.g.path}: blk.{i}.channel_mix_key/value have shapes {tuple(cm_key.shape)}/{tuple(cm_value.shape)}, "
                            f"expected {(c.n_ff, n)}/{(n, c.n_ff)}; the file is not a supported model")  # fmt: skip
        return dict(attn_norm=w.vector("attn_norm", i), attn_norm_b=w.vector("attn_norm_b", i),
                    ffn_norm=w.vector("attn_norm_2", i), ffn_norm_b=w.vector("attn_norm_2_b", i),
                    cm_lerp=self.host(w, "channel_mix_lerp_k", i, n), cm_key=cm_key, cm_value=cm_value)  # fmt: skip

    def load_layer(self, w: WeightLoader, i: int) -> RWKV7Layer:
        c, path = self.cfg, w.g.path
        n = c.n_embd

        def host(role: str, size: int, required: bool = True) -> np.ndarray | None:
            return self.host(w, role, i, size, required)

        def lora(role: str, required: bool = True) -> tuple[Any, Any]:
            """The two matrices of a LoRA (``role`` 1 and 2), the first ``[rank, n_embd]``, the second ``[n_embd, rank]``."""
            m1, m2 = w.matrix(f"time_mix_{role}1", i, required), w.matrix(f"time_mix_{role}2", i, required)
            if m1 is not None and (m1.shape[1] != n or tuple(m2.shape) != (n, m1.shape[0])):
                raise GGUFError(f"{path}: blk.{i}.time_mix_{role}1/{role}2 have shapes {tuple(m1.shape)}/{tuple(m2.shape)}, "
                                f"not [rank, {n}]/[{n}, rank]; the file is not a supported model")  # fmt: skip
            return m1, m2

        mats = {r: w.matrix(r, i) for r in ("time_mix_receptance", "time_mix_key", "time_mix_value", "time_mix_output")}
        for r, m in mats.items():
            if tuple(m.shape) != (n, n):
                raise GGUFError(f"{path}: {TENSOR_NAMES[r].format(i=i)} has shape {tuple(m.shape)}, expected {(n, n)}; the file is not a supported model")
        g1, g2 = lora("g", required=False)
        rows = 6 if g1 is not None else self.ungated_lerp_rows  # (the gate's mu last)
        L = self.layer_type(
            **self.load_ffn(w, i),
            lerp=host("time_mix_lerp_fused", rows * n).reshape(rows, n), g1=g1, g2=g2,
            wr=mats["time_mix_receptance"], wk=mats["time_mix_key"], wv=mats["time_mix_value"], wo=mats["time_mix_output"],
            w0=host("time_mix_w0", n), w1=lora("w")[0], w2=lora("w")[1],
            a0=host("time_mix_a0", n), a1=lora("a")[0], a2=lora("a")[1],
            k_k=host("time_mix_k_k", n), k_a=host("time_mix_k_a", n), r_k=host("time_mix_r_k", n),
        )  # fmt: skip
        if i > 0:  # (layer 0's v0/v1/v2 are dummies the converter writes for llama.cpp's loader: unused)
            L.v0, (L.v1, L.v2) = host("time_mix_v0", n), lora("v")
        L.ln, L.ln_b = host("time_mix_ln", n, required=False), host("time_mix_ln_b", n, required=False)
        return L

    def layer_specs(self) -> list[LayerSpec]:
        return [LayerSpec(1, 1, 1, 1, rwkv=(self.cfg.n_embd, self.head_size, self.wkv_version))] * self.cfg.n_layer

    def norm(self, x: Any, weight: Any, bias: Any, out: Any) -> None:
        """Every norm of the trunk: LayerNorm with its bias (ARWKV-7's: RMSNorm)."""
        self.be.layer_norm(x, weight, bias, self.cfg.norm_eps, out)

    def final_norm(self, x: Any, out: Any) -> None:
        self.norm(x, self.output_norm, self.output_norm_b, out)

    def lora(self, m1: Weight, m2: Weight, x: np.ndarray, act: Any, name: str) -> np.ndarray:
        """``m2 act(m1 x)`` for the rows x [T, n_embd] (act None: none): [T, n_embd], a buffer."""
        T = x.shape[0]
        h = self.buf.get(f"lora_{name}", T, m1.shape[0])
        self.be.linear(m1, x, h)
        out = self.buf.get(f"lora_{name}_out", T, self.cfg.n_embd)
        self.be.linear(m2, act(h) if act is not None else h, out)
        return out

    def time_mix(self, L: RWKV7Layer, state: Any, xn: np.ndarray, pos: np.ndarray, v_first: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The time mix of the normed input ``xn`` [T, n_embd]: its output before ``time_mix_output`` (a buffer), and
        the layer's value (``v_first`` for the layers after layer 0).  ``state``: the layer's cache (cache/rwkv.py)."""
        if self.be.name == "gpu":  # (the same steps as kernels on device buffers: models/gpu_recurrent.py)
            from .gpu_recurrent import rwkv7_time_mix

            return rwkv7_time_mix(self, L, state, xn, pos, v_first)
        be, buf = self.be, self.buf
        T, n = xn.shape
        H, N = n // self.head_size, self.head_size
        prev = state.token_shift(xn, pos, 0)
        xx = (prev - xn) * L.lerp[:, None, :] + xn  # [6 (5), T, n_embd]: the lerped input of each use, each contiguous
        xr, xw, xk, xv, xa = xx[:5]  # (and the gate's, where the layer has one)
        x6 = buf.get("rwkv_x6", T, 6 * n)  # the recurrence's inputs r, w, k, v, a, b (what the cache keeps)
        r, w, k, v = (buf.get(f"rwkv_{name}", T, n) for name in "rwkv")
        be.linear(L.wr, xr, r)
        be.linear(L.wk, xk, k)
        be.linear(L.wv, xv, v)
        w[...] = np.exp(DECAY_SCALE * sigmoid(self.lora(L.w1, L.w2, xw, np.tanh, "w") + L.w0))
        if L.v1 is None:
            v_first = v.copy()
        else:  # the value residual: toward layer 0's value, as far as its own LoRA says
            v += (v_first - v) * sigmoid(self.lora(L.v1, L.v2, xv, None, "v") + L.v0)
        iclr = sigmoid(self.lora(L.a1, L.a2, xa, None, "a") + L.a0)
        kk = (k * L.k_k).reshape(T, H, N)
        kk /= np.maximum(np.sqrt(np.einsum("thn,thn->th", kk, kk)), np.float32(1e-12))[:, :, None]  # (ggml_l2_norm)
        kk = kk.reshape(T, n)
        k *= 1.0 + (iclr - 1.0) * L.k_a
        for j, part in enumerate((r, w, k, v, -kk, kk * iclr)):
            x6[:, j * n : (j + 1) * n] = part
        y = buf.get("rwkv_y", T, n)
        state.wkv(x6, pos, y)
        y3 = y.reshape(T, H, N)
        if L.ln is not None:  # group norm: each head's output normed alone
            layer_norm_heads(y3, L.ln.reshape(H, N), GROUP_NORM_EPS)
            y += L.ln_b
        bonus = np.einsum("thn,thn,hn->th", r.reshape(T, H, N), k.reshape(T, H, N), L.r_k.reshape(H, N))
        y3 += v.reshape(T, H, N) * bonus[:, :, None]
        if L.g1 is not None:
            y *= self.lora(L.g1, L.g2, xx[5], sigmoid, "g")
        return y, v_first

    def channel_mix(self, L: RWKV7Layer, state: Any, xn: np.ndarray, pos: np.ndarray, x: np.ndarray) -> None:
        """The channel mix of the normed input ``xn`` [T, n_embd] (overwritten), added to the residual ``x``."""
        if self.be.name == "gpu":
            from .gpu_recurrent import rwkv7_channel_mix

            return rwkv7_channel_mix(self, L, state, xn, pos, x)
        prev = state.token_shift(xn, pos, 1)
        xn += (prev - xn) * L.cm_lerp
        h = self.buf.get("rwkv_cm", xn.shape[0], self.cfg.n_ff)
        self.be.linear(L.cm_key, xn, h)
        self.be.relu_sqr(h, h)
        self.be.linear_add(L.cm_value, h, x)

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn = buf.get("x", T, c.n_embd), buf.get("xn", T, c.n_embd)
        be.get_rows(self.tok_embd, tokens, x)
        if self.tok_norm is not None:
            self.norm(x, self.tok_norm, self.tok_norm_b, x)
        v_first = None
        for il, L in enumerate(self.layers):
            self.norm(x, L.attn_norm, L.attn_norm_b, xn)
            self.trace("attn_norm", il, xn)
            y, v_first = self.time_mix(L, cache[il], xn, pos, v_first)
            be.linear_add(L.wo, y, x)
            self.trace("ffn_inp", il, x)
            self.norm(x, L.ffn_norm, L.ffn_norm_b, xn)
            self.channel_mix(L, cache[il], xn, pos, x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
