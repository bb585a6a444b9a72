"""Mamba 1 (state-spaces' mamba-130m ... mamba-2.8b, TII's Falcon-Mamba-7B), as llama.cpp's ``mamba`` graph
(``build_mamba_layer``).

Every layer is pre-norm (RMSNorm) with a Mamba mixer after it and no FFN, as Mamba-2 (``models/mamba2.py``), but the
mixer is Mamba 1's selective scan, which has no heads:

* the in-projection gives only ``x`` and ``z`` [d_inner each]; ``x`` alone goes through the causal depthwise
  convolution (``d_conv`` positions, + bias, SiLU);
* the scan's inputs come from the convolution's output, not from the in-projection: ``ssm_x`` gives ``dt``
  [dt_rank], ``B`` and ``C`` [d_state]; ``ssm_dt`` (+ its bias) widens ``dt`` to a time step per channel;
* ``A`` is ``[d_inner, d_state]``: each channel's state decays by ``exp(dt A)`` elementwise (``ops/cpu/mamba.py``),
  not by one factor a head;
* ``y = C . s + D x`` is gated by ``silu(z)`` and projected back (``ssm_out``) with no norm between.

Falcon-Mamba (``ssm.dt_b_c_rms``) RMS-normalises ``dt``, ``B`` and ``C`` (no weight) before the time step's
projection and the scan.  The convolution's last inputs and the scan's state live in the cache (``cache/mamba.py``,
Mamba-2's machinery), on the GPU ``cache/gpu_ssm.py`` and ``ops/gpu/ssm.cu`` (``models/gpu_ssm.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache, LayerSpec
from ..loaders.config import ModelConfig
from ..loaders.errors import GGUFError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend, Weight
from .common import Model, WeightLoader
from .mamba2 import TENSOR_NAMES  # (with Mamba-2's roles: ssm_in, ssm_conv1d(_b), ssm_dt_b, ssm_a, ssm_d, ssm_out)

TENSOR_NAMES.update({  # llama.cpp's LLM_TENSOR_SSM_X and SSM_DT, Mamba 1's
    "ssm_x": "blk.{i}.ssm_x.weight",
    "ssm_dt": "blk.{i}.ssm_dt.weight",
})  # fmt: skip


@dataclass
class MambaLayer:
    """A layer's weights (the small ones float32 on the host, as the kernels read them)."""

    attn_norm: Any  # [n_embd]: the norm before the mixer (llama.cpp's name)
    in_proj: Weight  # [2 * d_inner, n_embd]: x, then z
    conv: np.ndarray  # [d_conv, d_inner]: each channel's kernel, oldest position first
    conv_b: np.ndarray  # [d_inner]
    x_proj: Weight  # [dt_rank + 2 * d_state, d_inner]: dt, B, C from the convolution's output
    dt_proj: Weight  # [d_inner, dt_rank]: the time step per channel
    dt_b: np.ndarray  # [d_inner]
    A: np.ndarray  # [d_inner, d_state]: -exp(A_log), as the converter stores it
    D: np.ndarray  # [d_inner]
    out_proj: Weight  # [n_embd, d_inner]
    #: Jamba's and PLaMo 2's RMS norms of dt, B and C with weights ([dt_rank], [d_state] each; None: none, or Falcon-Mamba's
    #: unweighted ones), as llama.cpp's build_mamba_layer applies them where the layer has all three (models/jamba.py)
    dt_norm: np.ndarray | None = None
    b_norm: np.ndarray | None = None
    c_norm: np.ndarray | None = None


def _rms(x: np.ndarray, eps: float) -> np.ndarray:
    """Each row RMS-normalised, no weight (Falcon-Mamba's norms of dt, B and C)."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps))


class MambaModel(Model):
    archs = ("mamba",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.d_conv, self.d_inner, self.d_state, self.dt_rank = cfg.ssm_d_conv, cfg.ssm_d_inner, cfg.ssm_d_state, cfg.ssm_dt_rank
        if min(self.d_conv, self.d_inner, self.d_state, self.dt_rank) <= 0:
            raise GGUFError(f"{g.path}: mamba.ssm.conv_kernel, inner_size, state_size and time_step_rank must all be stated and > 0")
        self.dt_b_c_rms = bool(g.arch_get("ssm.dt_b_c_rms", False))  # (Falcon-Mamba's)
        w = WeightLoader(g, backend)
        self.tok_embd = w.matrix("tok_embd")
        self.output = w.matrix("output", required=False) or self.tok_embd
        self.output_norm = w.vector("output_norm")
        self.layers = [self.load_layer(w, i) for i in range(cfg.n_layer)]

    def load_layer(self, w: WeightLoader, i: int) -> MambaLayer:
        """Layer i's weights, their shapes held to the file's ``ssm.*`` sizes."""
        n, di, ds, path = self.cfg.n_embd, self.d_inner, self.d_state, w.g.path

        def shaped(t: Any, role: str, shape: tuple[int, ...]) -> Any:
            if tuple(t.shape) != shape:
                raise GGUFError(f"{path}: {TENSOR_NAMES[role].format(i=i)} has shape {tuple(t.shape)}, expected {shape}; "
                                "the file is not a supported model")  # fmt: skip
            return t

        def host(role: str, size: int) -> np.ndarray:
            return shaped(w.host_vector(role, i), role, (size,))

        return MambaLayer(
            attn_norm=w.vector("attn_norm", i),
            in_proj=shaped(w.matrix("ssm_in", i), "ssm_in", (2 * di, n)),
            conv=np.ascontiguousarray(host("ssm_conv1d", di * self.d_conv).reshape(di, self.d_conv).T),
            conv_b=host("ssm_conv1d_b", di),
            x_proj=shaped(w.matrix("ssm_x", i), "ssm_x", (self.dt_rank + 2 * ds, di)),
            dt_proj=shaped(w.matrix("ssm_dt", i), "ssm_dt", (di, self.dt_rank)),
            dt_b=host("ssm_dt_b", di),
            A=np.ascontiguousarray(host("ssm_a", di * ds).reshape(di, ds)),
            D=host("ssm_d", di),
            out_proj=shaped(w.matrix("ssm_out", i), "ssm_out", (n, di)),
        )  # fmt: skip

    def layer_specs(self) -> list[LayerSpec]:
        return [LayerSpec(1, 1, 1, 1, mamba=(self.d_conv, self.d_inner, self.d_state))] * self.cfg.n_layer

    def mixer(self, L: MambaLayer, state: Any, xn: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """The mixer's output before ``ssm_out`` for the normed input ``xn`` [T, n_embd]: ``y * silu(z)`` [T, d_inner].
        ``state``: the layer's cache (cache/mamba.py), which runs the convolution and the scan and keeps their inputs."""
        if self.be.name == "gpu":  # (the same steps as kernels on device buffers, the state in the GPU cache: models/gpu_ssm.py)
            from .gpu_ssm import mamba_mixer

            return mamba_mixer(self, L, state, xn, pos)
        be, buf = self.be, self.buf
        T, di, ds, r = xn.shape[0], self.d_inner, self.d_state, self.dt_rank
        xz = buf.get("mamba_xz", T, 2 * di)
        be.linear(L.in_proj, xn, xz)
        xc = state.conv(np.ascontiguousarray(xz[:, :di]), pos, L)
        dbc = buf.get("mamba_dbc", T, r + 2 * ds)
        be.linear(L.x_proj, xc, dbc)
        dt, B, C = dbc[:, :r], dbc[:, r : r + ds], dbc[:, r + ds :]
        if self.dt_b_c_rms:
            eps = self.cfg.norm_eps
            dt, B, C = _rms(dt, eps), _rms(B, eps), _rms(C, eps)
        if L.dt_norm is not None:  # (Jamba, PLaMo 2: each norm with its weight)
            eps = self.cfg.norm_eps
            dt, B, C = _rms(dt, eps) * L.dt_norm, _rms(B, eps) * L.b_norm, _rms(C, eps) * L.c_norm
        dts = buf.get("mamba_dt", T, di)
        be.linear(L.dt_proj, np.ascontiguousarray(dt), dts)
        dts += L.dt_b
        y = buf.get("mamba_y", T, di)
        state.scan(xc, dts, np.ascontiguousarray(B), np.ascontiguousarray(C), pos, L, y)
        z = xz[:, di:]
        y *= z / (1.0 + np.exp(-z))
        return y

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn = buf.get("x", T, c.n_embd), buf.get("xn", T, c.n_embd)
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            be.rms_norm(x, L.attn_norm, c.norm_eps, xn)
            be.linear_add(L.out_proj, self.mixer(L, cache[il], xn, pos), x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
