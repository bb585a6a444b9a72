"""Mamba-2 (state-spaces' mamba2-130m ... 2.7b, Mamba-Codestral), as llama.cpp's ``mamba2`` graph, and
the state-space mixer the hybrids share (Granite 4.0-H: ``granitehybrid.py``; Falcon-H1: ``falcon_h1.py``;
Nemotron-H: ``nemotron_h.py``).

Every layer is pre-norm (RMSNorm) with a Mamba-2 mixer after it and no FFN, as llama.cpp's
``build_mamba2_layer``: one in-projection gives ``z`` [d_inner], ``xBC`` (``x`` [d_inner], ``B`` and
``C`` [n_group, d_state]) and ``dt`` [n_head]; ``xBC`` goes through a causal depthwise convolution of
``d_conv`` positions (+ bias, SiLU), then the selective scan: each head's state
``[head_dim, d_state]`` decays by ``exp(softplus(dt + dt_bias) * A)`` and takes in ``x dt B``, and
``y = C . state + D x``; ``y * silu(z)`` is RMS-normalised over each of ``n_group`` slices
(``ssm_norm``) and projected back (``ssm_out``).  The heads are llama.cpp's ``ssm.time_step_rank``.

The convolution's last inputs and the scan's state live in the cache beside any attention layers' K/V
(``cache/ssm.py``); the convolution and the scan run in Numba (``ops/cpu/ssm.py``), or
on the GPU ``cache/gpu_ssm.py`` and ``ops/gpu/ssm.cu`` (``models/gpu_ssm.py``).
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
from ..ops.cpu.ssm import gated_group_norm
from .common import TENSOR_NAMES, Buffers, Model, WeightLoader

TENSOR_NAMES.update({  # llama.cpp's LLM_TENSOR_SSM_* (ssm_a and ssm_d have no ".weight")
    "ssm_in": "blk.{i}.ssm_in.weight",
    "ssm_conv1d": "blk.{i}.ssm_conv1d.weight",
    "ssm_conv1d_b": "blk.{i}.ssm_conv1d.bias",
    "ssm_dt_b": "blk.{i}.ssm_dt.bias",
    "ssm_a": "blk.{i}.ssm_a",
    "ssm_d": "blk.{i}.ssm_d",
    "ssm_norm": "blk.{i}.ssm_norm.weight",
    "ssm_out": "blk.{i}.ssm_out.weight",
})  # fmt: skip


@dataclass(frozen=True)
class SSMGeometry:
    """A Mamba-2 mixer's sizes, from the file's ``ssm.*`` hyperparameters."""

    d_conv: int
    d_inner: int
    d_state: int
    n_head: int  # (the file's ssm.time_step_rank)
    n_group: int
    n_embd: int

    @property
    def head_dim(self) -> int:
        return self.d_inner // self.n_head

    @property
    def channels(self) -> int:  # the convolution's: x, B, C
        return self.d_inner + 2 * self.n_group * self.d_state

    @property
    def d_in_proj(self) -> int:  # z, xBC, dt
        return self.d_inner + self.channels + self.n_head

    def spec(self) -> LayerSpec:
        return LayerSpec(1, 1, 1, 1, ssm=(self.d_conv, self.n_head, self.head_dim, self.n_group, self.d_state))

    @classmethod
    def of(cls, cfg: ModelConfig, path: str) -> SSMGeometry:
        geo = cls(cfg.ssm_d_conv, cfg.ssm_d_inner, cfg.ssm_d_state, cfg.ssm_dt_rank, max(cfg.ssm_n_group, 1), cfg.n_embd)
        if min(geo.d_conv, geo.d_inner, geo.d_state, geo.n_head) <= 0:
            raise GGUFError(f"{path}: {cfg.arch}.ssm.conv_kernel, inner_size, state_size and time_step_rank must all be stated and > 0")
        if geo.d_inner % geo.n_head or geo.n_head % geo.n_group:
            raise GGUFError(f"{path}: ssm.inner_size {geo.d_inner}, time_step_rank {geo.n_head} and group_count {geo.n_group} "
                            "do not divide into heads and groups; the file is not a supported model")  # fmt: skip
        return geo


@dataclass
class SSMMixer:
    """A layer's Mamba-2 weights (the small ones float32 on the host, as the kernels read them)."""

    in_proj: Weight  # [d_in_proj, n_embd]: z, x, B, C, dt rows
    conv: np.ndarray  # [d_conv, channels]: each channel's kernel, oldest position first
    conv_b: np.ndarray  # [channels] (zeros where the file has none)
    dt_b: np.ndarray  # [n_head]
    A: np.ndarray  # [n_head]: -exp(A_log), as the converter stores it
    D: np.ndarray  # [n_head]
    norm: np.ndarray | None  # [d_inner]: the grouped RMSNorm's weight (None: Falcon-H1's, the gate alone)
    out_proj: Weight  # [n_embd, d_inner]


def load_mixer(w: WeightLoader, i: int, geo: SSMGeometry, norm_required: bool = True) -> SSMMixer:
    """Layer i's Mamba-2 mixer, its shapes checked against ``geo``; ``norm_required`` False: the grouped norm
    only where the file has it (llama.cpp's Falcon-H1: its converter writes one where ``mamba_rms_norm`` says)."""
    path = w.g.path

    def host(role: str, n: int, required: bool = True) -> np.ndarray | None:
        v = w.host_vector(role, i, required)
        if v is not None and v.size != n:
            raise GGUFError(f"{path}: {TENSOR_NAMES[role].format(i=i)} has {v.size} values, expected {n}; the file is not a supported model")
        return v

    in_proj, out_proj = w.matrix("ssm_in", i), w.matrix("ssm_out", i)
    for m, shape, role in ((in_proj, (geo.d_in_proj, geo.n_embd), "ssm_in"), (out_proj, (geo.n_embd, geo.d_inner), "ssm_out")):
        if tuple(m.shape) != shape:
            raise GGUFError(f"{path}: blk.{i}.{role}.weight has shape {tuple(m.shape)}, expected {shape}; the file is not a supported model")
    conv = host("ssm_conv1d", geo.channels * geo.d_conv).reshape(geo.channels, geo.d_conv)
    conv_b = host("ssm_conv1d_b", geo.channels, required=False)
    return SSMMixer(
        in_proj=in_proj,
        conv=np.ascontiguousarray(conv.T),
        conv_b=conv_b if conv_b is not None else np.zeros(geo.channels, np.float32),
        dt_b=host("ssm_dt_b", geo.n_head),
        A=host("ssm_a", geo.n_head),
        D=host("ssm_d", geo.n_head),
        norm=host("ssm_norm", geo.d_inner, required=norm_required),
        out_proj=out_proj,
    )


def mixer_y(be: Backend, buf: Buffers, geo: SSMGeometry, M: SSMMixer, state: Any, xn: np.ndarray, pos: np.ndarray, eps: float) -> np.ndarray:
    """The mixer's output before ``ssm_out`` for the normed input ``xn`` [T, n_embd]: gated and normed
    ``y`` [T, d_inner] (a buffer).  ``state``: the layer's cache (cache/ssm.py), which runs the
    convolution and the scan and keeps what they leave."""
    if be.name == "gpu":  # (the same steps as kernels on device buffers, the state in the GPU cache: models/gpu_ssm.py)
        from .gpu_ssm import mamba2_mixer_y

        return mamba2_mixer_y(be, buf, geo, M, state, xn, pos, eps)
    T = xn.shape[0]
    zxbcdt = buf.get("ssm_zxbcdt", T, geo.d_in_proj)
    be.linear(M.in_proj, xn, zxbcdt)
    z = zxbcdt[:, : geo.d_inner]
    xbc = zxbcdt[:, geo.d_inner : geo.d_inner + geo.channels]
    dt = zxbcdt[:, geo.d_inner + geo.channels :]
    y = buf.get("ssm_y", T, geo.d_inner)
    state.scan(xbc, dt, pos, M, y)
    if M.norm is None:  # (no grouped norm: y * silu(z), as llama.cpp's swiglu before its optional norm)
        y *= z / (1.0 + np.exp(-z))
    else:
        gated_group_norm(y, z, M.norm, geo.n_group, eps)
    return y


@dataclass
class Mamba2Layer:
    attn_norm: Any  # [n_embd]: the norm before the mixer (llama.cpp's name)
    ssm: SSMMixer


class Mamba2Model(Model):
    archs = ("mamba2",)

    def __init__(self, g: GGUFFile, cfg: ModelConfig, backend: Backend, n_ctx: int, n_batch: int) -> None:
        super().__init__(g, cfg, backend, n_ctx, n_batch)
        self.geo = SSMGeometry.of(cfg, g.path)
        w = WeightLoader(g, backend)
        self.tok_embd = w.matrix("tok_embd")
        self.output = w.matrix("output", required=False) or self.tok_embd
        self.output_norm = w.vector("output_norm")
        self.layers = [Mamba2Layer(w.vector("attn_norm", i), load_mixer(w, i, self.geo)) for i in range(cfg.n_layer)]

    def layer_specs(self) -> list[LayerSpec]:
        return [self.geo.spec()] * self.cfg.n_layer

    def forward(self, tokens, pos, cache: KVCache, out_rows, logits) -> None:
        c, be, buf = self.cfg, self.be, self.buf
        T = len(tokens)
        x, xn = buf.get("x", T, c.n_embd), buf.get("xn", T, c.n_embd)
        be.get_rows(self.tok_embd, tokens, x)
        for il, L in enumerate(self.layers):
            be.rms_norm(x, L.attn_norm, c.norm_eps, xn)
            y = mixer_y(be, buf, self.geo, L.ssm, cache[il], xn, pos, c.norm_eps)
            be.linear_add(L.ssm.out_proj, y, x)
            self.trace("l_out", il, x)
        self.output_head(x, out_rows, logits)
