"""LFM2-Audio's audio encoder (llama.cpp's audio projector type "lfm2a"), as libmtmd computes it: NeMo's log-mel
features (tools/mtmd/mtmd-audio.cpp's ``mtmd_audio_preprocessor_conformer``), a FastConformer (tools/mtmd/models/
conformer.cpp's ``clip_graph_conformer``) and the adapter MLP into an LFM2 text model, read from an audio mmproj file.

It shares nothing with models/whisper_audio.py's encoders past the 16 kHz samples, hence a file of its own:

    16 kHz mono samples
    -> 256 zeros each end (center padding), pre-emphasis x[i] - 0.97 x[i-1] (the clip's first sample kept)
    -> frames of 512 samples every 160, a symmetric 400-sample Hann window centred in them, |FFT|^2, the Slaney mel
       bank for a 512-point FFT, natural log (floored at 2^-24), n / 160 + 1 frames
    -> each mel bin normalised over the clip's first n / 160 frames (mean, unbiased variance + 1e-5); the last frame
       zero.  One spectrogram for the whole clip: no 30 s chunks, no windows
    -> the spectrogram as a one-channel picture, time its height and mel its width (clip.cpp transposes it):
       conv 3x3 stride 2 + bias (ggml_conv_2d: F16 patches times the kernel rounded to F16), ReLU, then twice
       (depthwise 3x3 stride 2 + bias, pointwise + bias, ReLU; float32, ggml's direct convolutions)
       -> [C, T, n_mel / 8], T = three halvings (rounded up) of the frames
       -> each time step's (channel, frequency) features, the frequency fastest, through ``a.pre_encode.out``
    -> blocks (macaron): x += FFN(LN(x)) / 2; x += RelPosMHA(LN(x)); x += ConvModule(LN(x)); x += FFN(LN(x)) / 2;
       x = LN(x).  FFN: up + bias, SiLU, down + bias.  RelPosMHA (Transformer-XL's): (q + pos_bias_u) k^T plus the
       relative-shifted (q + pos_bias_v) p^T, scaled by 1/sqrt(d_head), softmax, times v, out + bias; p the
       ``linear_pos`` (no bias) of 2T-1 interleaved sin/cos rows of relative positions T-1 .. -(T-1), 512 wide
       whatever the encoder's width.  ConvModule: pointwise to 2E + bias, GLU (first half times the sigmoid of the
       second), depthwise over time (kernel 9, zeros 4 a side) + bias, the batch norm as the converter folds it
       (x * conv_norm + conv_norm.bias), SiLU, pointwise + bias.  Every LayerNorm's epsilon is 1e-5 (clip.cpp's).
    -> the adapter: LayerNorm ``mm.a.mlp.0``, ``mm.a.mlp.1`` + bias, GELU(erf), ``mm.a.mlp.3`` + bias

mtmd.cpp puts no text around a clip for LFM2-Audio (runtime/audio.py's AUDIO_MARKERS), and the LFM2 text model takes
the rows at plain positions.  The forward (:func:`_forward`) is written once against models/vit_ops.py's ops (the
layout steps as ``ops.xp`` array code), so beside a text model on ``--device gpu`` it runs on the GPU
(models/vit_device.py), rows within float32 noise of the CPU's (tests/test_audio_lfm2a.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import GGUFError, KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .deepseekocr_image import Kernel
from .vit_ops import ops_of
from .whisper_audio import HOP, SAMPLE_RATE, AudioTowerConfig, audio_tower_shape, check_audio_mmproj, mel_filters, need_audio_tensors

PROJECTOR = "lfm2a"
N_FFT, WINDOW, PREEMPH, MEL_FLOOR = 512, 400, np.float32(0.97), 5.960464477539063e-08  # (the preprocessor's settings)
D_POS, K_DW, EPS = 512, 9, 1e-5  # clip.cpp's relative-position width, depthwise kernel and LayerNorm epsilon
SUB = (0, 2, 3, 5, 6)  # the subsampling's weighted layers (1, 4, 7 are its ReLUs)
#: per-block tensors (clip-impl.h's names after "a.blk.N.") as loader roles "lfa_<name>" and "lfa_<name>_b"
BLOCK = ("ffn_norm", "ffn_up", "ffn_down", "ln1", "attn_q", "attn_k", "attn_v", "attn_out", "linear_pos", "norm_conv",
         "conv_pw1", "conv_dw", "conv_norm", "conv_pw2", "ffn_norm_1", "ffn_up_1", "ffn_down_1", "ln2")  # fmt: skip
TENSOR_NAMES.update({f"lfa_{n}": f"a.blk.{{i}}.{n}.weight" for n in BLOCK})
TENSOR_NAMES.update({f"lfa_{n}_b": f"a.blk.{{i}}.{n}.bias" for n in BLOCK})
TENSOR_NAMES.update({"lfa_pre_out": "a.pre_encode.out.weight", "lfa_pre_out_b": "a.pre_encode.out.bias"})
TENSOR_NAMES.update({f"lfa_mlp{k}{s}": f"mm.a.mlp.{k}.{w}" for k in (0, 1, 3) for s, w in (("", "weight"), ("_b", "bias"))})


def conv_len(n: int) -> int:
    """Rows left of ``n`` frames after the three stride-2, padding-1 convolutions (clip.cpp's n_output_tokens)."""
    for _ in range(3):
        n = (n + 1) // 2
    return n


@dataclass(frozen=True)
class Lfm2AudioConfig(AudioTowerConfig):
    """The audio encoder's hyperparameters, as clip.cpp reads them (``clip.audio.*``; the rest from the tensors)."""

    n_sub: int  # the subsampling's channels
    n_text_embd: int

    @property
    def rows_per_chunk(self) -> int:
        """Rows 30 s of audio become (how runtime/audio.py states a clip's cost)."""
        return n_rows(SAMPLE_RATE * 30)


def n_rows(n_samples: int) -> int:
    """Rows a clip of ``n_samples`` becomes: its n / 160 + 1 frames halved three times."""
    return conv_len(n_samples // HOP + 1)


def is_lfm2a(g: GGUFFile) -> bool:
    """Whether an opened audio mmproj file is LFM2-Audio's encoder."""
    return (g.get("clip.audio.projector_type") or g.get("clip.projector_type")) == PROJECTOR


def load_lfm2a_config(g: GGUFFile) -> Lfm2AudioConfig:
    """The config of an opened "lfm2a" mmproj file, or a one-line error."""
    check_audio_mmproj(g)
    need_audio_tensors(g, ("a.conv1d.0.weight", "a.pre_encode.out.weight", "mm.a.mlp.1.weight", "mm.a.mlp.3.weight"))
    shape = audio_tower_shape(g, ff_optional=True)
    E = shape["n_embd"]
    cfg = Lfm2AudioConfig(
        projector_type=PROJECTOR,
        **shape,
        n_sub=int(g.tensors["a.conv1d.0.weight"].n_elements // 9),  # ([C, 1, 3, 3])
        n_text_embd=int(g.tensors["mm.a.mlp.3.weight"].n_elements // (g.tensors["mm.a.mlp.1.weight"].n_elements // E)),
    )
    if not 8 <= cfg.n_mel <= 256 or cfg.n_head <= 0 or E % cfg.n_head:
        raise GGUFError(f"{g.path}: inconsistent audio hyperparameters (mel bins {cfg.n_mel}, width {E}, heads {cfg.n_head})")
    return cfg


# --- the spectrogram ---------------------------------------------------------------------------------------------


def log_mel(samples: np.ndarray, n_mel: int) -> np.ndarray:
    """16 kHz mono float32 samples -> the clip's normalised log-mel spectrogram, float32 [n_mel, n / 160 + 1], as
    mtmd_audio_preprocessor_conformer::preprocess makes it."""
    x = np.asarray(samples, np.float32).reshape(-1)
    n = x.size
    if n // HOP < 2:  # (libmtmd asserts two frames for the variance)
        raise KvrunError(f"the audio is {n} samples long; LFM2-Audio's encoder takes at least {2 * HOP} (20 ms at 16 kHz)")
    pad = N_FFT // 2
    padded = np.zeros(n + 2 * pad, np.float32)
    padded[pad] = x[0]
    padded[pad + 1 : pad + n] = x[1:] - PREEMPH * x[:-1]
    n_len = n // HOP + 1
    hann = np.zeros(N_FFT, np.float32)  # (the 400-sample window in the middle of the 512)
    off = (N_FFT - WINDOW) // 2
    hann[off : off + WINDOW] = hann_window(WINDOW - 1)
    filt = mel_filters(n_mel, N_FFT).astype(np.float64)
    mel = np.empty((n_mel, n_len), np.float64)
    for s in range(0, n_len, 2048):
        idx = (np.arange(s, min(s + 2048, n_len)) * HOP)[:, None] + np.arange(N_FFT)
        spec = np.fft.rfft((padded[idx] * hann).astype(np.float64), axis=-1)
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        mel[:, s : s + idx.shape[0]] = np.log(np.maximum(power @ filt.T, MEL_FLOOR)).astype(np.float32).T
    eff = n // HOP  # (the frames of the clip: the statistics' and the values kept)
    mean = mel[:, :eff].mean(axis=1, keepdims=True)
    std = np.sqrt(((mel[:, :eff] - mean) ** 2).sum(axis=1, keepdims=True) / (eff - 1) + 1e-5)
    out = np.zeros((n_mel, n_len), np.float32)
    out[:, :eff] = (mel[:, :eff] - mean) / std
    return out


def hann_window(period: int) -> np.ndarray:
    """The 400 taps of 0.5 (1 - cos(2 pi i / period)): libmtmd's is the symmetric window, period 399 (measured: the
    periodic one, period 400, puts the tiny pair's spectrogram 3e-2 off libmtmd's, 1.5e-3 on average; this 1.4e-3,
    2.6e-5 on average)."""
    return (0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(WINDOW) / period))).astype(np.float32)


def rel_pos_table(T: int) -> np.ndarray:
    """clip.cpp's ``pos_emb`` input for T rows: [2T - 1, 512], row p the relative position T - 1 - p, its pairs
    (sin, cos) of the position times 10000^(-2i/512) (the angle a float, as there)."""
    i = np.arange(D_POS // 2, dtype=np.float64)
    inv = np.exp(-(math.log(10000.0) / D_POS) * (2.0 * i))
    ang = ((T - 1 - np.arange(2 * T - 1, dtype=np.float64))[:, None] * inv[None, :]).astype(np.float32)
    out = np.empty((2 * T - 1, D_POS), np.float32)
    out[:, 0::2], out[:, 1::2] = np.sin(ang), np.cos(ang)
    return out


def host_values(g: GGUFFile, name: str, n: int | None, what: str) -> np.ndarray:
    """The projector tensor ``name`` as ``n`` float32 values (any count where ``n`` is None), dequantized on the host:
    a missing tensor a GGUFError, another count a KvrunError saying the file is not ``what`` ("an LFM2-Audio")
    projector.  (The audio towers' small tensors: kernels, biases, tables, a bank or a window.)"""
    t = g.tensors.get(name)
    if t is None:
        raise GGUFError(f"{g.path}: tensor {name!r} is missing; the projector file is incomplete")
    if n is not None and t.n_elements != n:
        raise KvrunError(f"{g.path}: {name} has shape {t.shape}, expected {n} values: not {what} projector")
    return dequantize(t.data, t.qtype, t.shape).reshape(-1).astype(np.float32)


def check_mel(mel: np.ndarray, n_mel: int, min_frames: int) -> None:
    """A one-line error unless ``mel`` is a spectrogram [n_mel, frames] of ``min_frames`` frames or more (the audio
    towers' :meth:`encode_mel`)."""
    if mel.ndim != 2 or mel.shape[0] != n_mel or mel.shape[1] < min_frames:
        raise KvrunError(f"the audio encoder takes a spectrogram [{n_mel}, frames], got {list(mel.shape)}")


# --- the encoder -------------------------------------------------------------------------------------------------


class Lfm2AudioEncoder:
    """LFM2-Audio's FastConformer and adapter from an mmproj file: :meth:`encode` a clip into rows."""

    def __init__(self, g: GGUFFile, cfg: Lfm2AudioConfig, backend: Backend) -> None:
        self.cfg, self.be, self.path = cfg, backend, g.path
        E, C, H = cfg.n_embd, cfg.n_sub, cfg.n_head

        def host(name: str, n: int) -> np.ndarray:
            return host_values(g, name, n, "an LFM2-Audio")

        # (ggml_conv_2d runs on F16 patches times the kernel rounded to F16, whatever type the file stores it in:
        # measured on the tiny pair with an F32 kernel, the rows 2e-3 off libmtmd's in float32, 2e-6 so)
        self.conv0 = Kernel(host("a.conv1d.0.weight", C * 9).reshape(C, 1, 3, 3).astype(np.float16).astype(np.float32), True)
        # (each layer's kernel, [C, 3, 3] for the first and the depthwise ones, [C_out, C_in] the pointwise, and bias)
        shapes = {i: (C, 3, 3) if i in (0, 2, 5) else (C, C) for i in SUB}
        self.sub = {i: (host(f"a.conv1d.{i}.weight", int(np.prod(shapes[i]))).reshape(shapes[i]), host(f"a.conv1d.{i}.bias", C).reshape(C, 1, 1))
                    for i in SUB}  # fmt: skip
        ld = WeightLoader(g, backend)

        def matrix(role: str, n_in: int, n_out: int, i: int | None = None) -> Any:
            t = g.tensor(TENSOR_NAMES[role].format(i=i))
            if t.n_elements != n_in * n_out:
                raise KvrunError(f"{g.path}: {t.name} has shape {t.shape}, expected [{n_out}, {n_in}]: not an LFM2-Audio projector")
            return ld.matrix(role, i)

        n_feat = C * conv_len(cfg.n_mel)
        self.pre_out, self.pre_out_b = matrix("lfa_pre_out", n_feat, E), ld.host_vector("lfa_pre_out_b")
        d = E // H
        self.layers = []
        for i in range(cfg.n_layer):
            L: dict[str, Any] = {}
            for r in ("ffn_norm", "ffn_norm_1", "ln1", "norm_conv", "ln2", "conv_norm"):
                L[r], L[r + "_b"] = ld.host_vector(f"lfa_{r}", i), ld.host_vector(f"lfa_{r}_b", i)
            ff = g.tensor(TENSOR_NAMES["lfa_ffn_up"].format(i=i)).n_elements // E
            for r, n_in, n_out in (("ffn_up", E, ff), ("ffn_down", ff, E), ("ffn_up_1", E, ff), ("ffn_down_1", ff, E), ("attn_q", E, E),
                                   ("attn_k", E, E), ("attn_v", E, E), ("attn_out", E, E), ("conv_pw1", E, 2 * E), ("conv_pw2", E, E)):  # fmt: skip
                L[r], L[r + "_b"] = matrix(f"lfa_{r}", n_in, n_out, i), ld.host_vector(f"lfa_{r}_b", i)
            L["linear_pos"] = matrix("lfa_linear_pos", D_POS, E, i)
            L["pos_bias_u"] = host(f"a.blk.{i}.pos_bias_u", E).reshape(H, d)
            L["pos_bias_v"] = host(f"a.blk.{i}.pos_bias_v", E).reshape(H, d)
            L["conv_dw"] = host(f"a.blk.{i}.conv_dw.weight", E * K_DW).reshape(E, K_DW)
            L["conv_dw_b"] = ld.host_vector("lfa_conv_dw_b", i)
            self.layers.append(L)
        self.mlp0, self.mlp0_b = ld.host_vector("lfa_mlp0"), ld.host_vector("lfa_mlp0_b")
        n_hid = g.tensor("mm.a.mlp.1.weight").n_elements // E
        self.mlp1, self.mlp1_b = matrix("lfa_mlp1", E, n_hid), ld.host_vector("lfa_mlp1_b")
        self.mlp3, self.mlp3_b = matrix("lfa_mlp3", n_hid, cfg.n_text_embd), ld.host_vector("lfa_mlp3_b")

    def n_rows(self, n_samples: int) -> int:
        """Rows a clip of ``n_samples`` becomes."""
        return n_rows(n_samples)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz mono samples -> the clip's rows, float32 [n_rows, n_text_embd]."""
        return self.encode_mel(log_mel(samples, self.cfg.n_mel))

    def encode_mel(self, mel: np.ndarray) -> np.ndarray:
        """A spectrogram [n_mel, frames] -> its rows (:func:`_forward` on the encoder's device)."""
        check_mel(mel, self.cfg.n_mel, 2)
        return _forward(ops_of(self), self, mel)


def _forward(ops: Any, enc: Lfm2AudioEncoder, mel: np.ndarray) -> np.ndarray:
    """:meth:`Lfm2AudioEncoder.encode_mel` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU
    the spectrogram and the relative-position table go up once and the rows come down once)."""
    xp = ops.xp
    x = _subsample(ops, enc, mel)
    T = x.shape[0]
    pos = ops.vector(rel_pos_table(T))
    for L in enc.layers:
        x = _block(ops, enc, L, x, pos)
    x = ops.layer_norm(x, enc.mlp0, enc.mlp0_b, EPS)
    x = ops.linear(enc.mlp3, ops.act(ops.linear(enc.mlp1, x, enc.mlp1_b), "gelu_erf"), enc.mlp3_b)
    return ops.to_host(xp.ascontiguousarray(x, np.float32))


def _subsample(ops: Any, enc: Lfm2AudioEncoder, mel: np.ndarray) -> Any:
    """The spectrogram through clip.cpp's conv subsampling and ``a.pre_encode.out``: [T, n_embd]."""
    xp = ops.xp
    x = ops.vector(np.ascontiguousarray(mel.T))[None]  # [1, frames, n_mel]: time the picture's height
    x = xp.maximum(ops.conv2d(x, enc.conv0, 2, 1) + ops.const(enc.sub[0][1]), 0)
    pw_f16 = getattr(enc, "pw_kernels", None)  # (Parakeet's pointwise convs: ggml_conv_2d, F16 patches and kernel)
    for dw, pw in ((2, 3), (5, 6)):
        x = _dw3(xp, x, ops.const(enc.sub[dw][0]), 2) + ops.const(enc.sub[dw][1])
        if pw_f16:
            x = ops.conv2d(x, pw_f16[pw], 1, 0) + ops.const(enc.sub[pw][1])
        else:
            x = xp.einsum("oc,chw->ohw", ops.const(enc.sub[pw][0]), x) + ops.const(enc.sub[pw][1])  # (the pointwise conv)
        x = xp.maximum(x, 0)
    C, T, F = x.shape  # (clip.cpp: permute to [T, C, F] and flatten, the frequency fastest)
    x = xp.ascontiguousarray(x.transpose(1, 0, 2).reshape(T, C * F), np.float32)
    return ops.linear(enc.pre_out, x, enc.pre_out_b)


def _dw3(xp: Any, x: Any, w: Any, stride: int) -> Any:
    """ggml_conv_2d_dw_direct of ``x`` [C, H, W] by ``w`` [C, 3, 3], zeros 1 a side, at ``stride`` (float32 sums over
    the taps in ggml's order)."""
    C, H, W = x.shape
    p = xp.pad(x, ((0, 0), (1, 1), (1, 1)))
    ho, wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    out = xp.zeros((C, ho, wo), np.float32)
    for ky in range(3):
        for kx in range(3):
            out += p[:, ky : ky + stride * (ho - 1) + 1 : stride, kx : kx + stride * (wo - 1) + 1 : stride] * w[:, ky, kx, None, None]
    return out


def _ffn(ops: Any, L: dict[str, Any], x: Any, sfx: str) -> Any:
    """up + bias, SiLU, down + bias (clip.cpp's build_ffn with FFN_SILU and no gate)."""
    return ops.linear(L[f"ffn_down{sfx}"], ops.act(ops.linear(L[f"ffn_up{sfx}"], x, L[f"ffn_up{sfx}_b"]), "silu"), L[f"ffn_down{sfx}_b"])


def _block(ops: Any, enc: Lfm2AudioEncoder, L: dict[str, Any], x: Any, pos: Any) -> Any:
    """One macaron block: half FFN, relative-position attention, the convolution module, half FFN, LayerNorm."""
    half, eps = np.float32(0.5), getattr(enc.cfg, "eps", EPS)  # (Parakeet's epsilon is its file's)
    x = x + _ffn(ops, L, ops.layer_norm(x, L["ffn_norm"], L["ffn_norm_b"], eps), "") * half
    x = x + _attention(ops, enc, L, ops.layer_norm(x, L["ln1"], L["ln1_b"], eps), pos)
    x = x + _conv_module(ops, L, ops.layer_norm(x, L["norm_conv"], L["norm_conv_b"], eps))
    x = x + _ffn(ops, L, ops.layer_norm(x, L["ffn_norm_1"], L["ffn_norm_1_b"], eps), "_1") * half
    return ops.layer_norm(x, L["ln2"], L["ln2_b"], eps)


def rel_shift(xp: Any, bd: Any) -> Any:
    """conformer.cpp's rel shift of the position scores [H, T, 2T - 1] (pad a zero column in front, view the rows
    T long and skip the first, view them 2T - 1 long again) and its first T columns: [H, T, T], query i and key j
    reading column j - i + T - 1 (relative position i - j)."""
    H, T, P = bd.shape
    idx = xp.arange(T)[None, :] - xp.arange(T)[:, None] + (T - 1)
    return xp.take_along_axis(bd, xp.broadcast_to(idx[None], (H, T, T)), axis=2)


def _attention(ops: Any, enc: Lfm2AudioEncoder, L: dict[str, Any], x: Any, pos: Any) -> Any:
    """Transformer-XL's relative-position self-attention over all the clip's rows: [T, E] -> [T, E]."""
    xp = ops.xp
    T, E = x.shape
    H = enc.cfg.n_head
    d = E // H
    q = ops.linear(L["attn_q"], x, L["attn_q_b"]).reshape(T, H, d)
    k = ops.linear(L["attn_k"], x, L["attn_k_b"]).reshape(T, H, d)
    v = ops.linear(L["attn_v"], x, L["attn_v_b"]).reshape(T, H, d)
    p = ops.linear(L["linear_pos"], pos).reshape(2 * T - 1, H, d)
    ac = xp.einsum("ihd,jhd->hij", q + ops.const(L["pos_bias_u"]), k)
    bd = rel_shift(xp, xp.einsum("ihd,phd->hip", q + ops.const(L["pos_bias_v"]), p))
    s = (ac + bd) * np.float32(1.0 / math.sqrt(d))
    s = xp.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    a = xp.ascontiguousarray(xp.einsum("hij,jhd->ihd", s, v).reshape(T, E), np.float32)
    return ops.linear(L["attn_out"], a, L["attn_out_b"])


def _conv_module(ops: Any, L: dict[str, Any], x: Any) -> Any:
    """Pointwise to 2E, GLU, depthwise over time (kernel 9, zero padding 4: ggml_ssm_conv on the padded rows), the
    folded batch norm, SiLU, pointwise back."""
    xp = ops.xp
    T, E = x.shape
    y = ops.linear(L["conv_pw1"], x, L["conv_pw1_b"])
    y = y[:, :E] * (1.0 / (1.0 + xp.exp(-y[:, E:])))
    K = L["conv_dw"].shape[-1]  # (K_DW; Parakeet's is its file's clip.audio.conv_kernel_size)
    p = xp.pad(y, ((K // 2, K // 2), (0, 0)))
    w = ops.const(L["conv_dw"])
    z = xp.zeros((T, E), np.float32)
    for k in range(K):
        z += p[k : k + T] * w[:, k]
    z = (z + ops.const(L["conv_dw_b"])) * ops.const(L["conv_norm"]) + ops.const(L["conv_norm_b"])
    z = xp.ascontiguousarray(ops.act(xp.ascontiguousarray(z, np.float32), "silu"), np.float32)
    return ops.linear(L["conv_pw2"], z, L["conv_pw2_b"])
