"""NVIDIA's Parakeet audio encoder (llama.cpp's audio projector type "parakeet"), as libmtmd computes it: the NeMo
log-mel features of tools/mtmd/mtmd-audio.cpp's ``mtmd_audio_preprocessor_parakeet`` (the mel bank and the window read
from the file), the FastConformer of tools/mtmd/models/parakeet.cpp's ``clip_graph_parakeet`` and its projector into
a Nemotron-H text model (NVIDIA Nemotron Nano VL's ``sound_encoder`` and ``sound_projection``: conversion/nemotron.py),
read from an audio mmproj file.

The encoder is models/lfm2a_audio.py's FastConformer (the same subsampling, macaron block, Transformer-XL attention and
its shift, convolution module), whose functions this module calls; what differs is here:

    16 kHz mono samples
    -> pre-emphasis x[i] - 0.97 x[i-1] (the first sample kept), 256 zeros each end
    -> frames of 512 samples every 160, the file's 400-tap ``a.window`` centred in them, |FFT|^2, the file's
       ``a.mel_filters`` [n_mel, 257], natural log of the sum plus 2^-24 (not floored: added), n / 160 + 1 frames
    -> each mel bin normalised by the mean and the unbiased standard deviation of the clip's first n / 160 frames,
       (x - mean) / (std + 1e-5), every frame, the last one too (LFM2-Audio's is zeroed, its epsilon under the root)
    -> the subsampling: conv 3x3 stride 2 + bias, ReLU, twice (depthwise 3x3 stride 2 + bias, pointwise + bias,
       ReLU), every non-depthwise convolution ggml_conv_2d's (F16 patches times the kernel rounded to F16: LFM2-Audio's
       pointwise ones are float32), flattened, ``a.pre_encode.out`` + bias
    -> the blocks as LFM2-Audio's but no bias on any product (FFN, Q/K/V/out, the pointwise and depthwise convs); the
       relative sinusoids the encoder's width (pairs (sin, cos) of the position times 10000^(-2i/E), float32 as
       clip.cpp's ``pos_freqs`` and ``rel_positions`` make them); the batch norm unfolded: (x - conv_norm_mean) /
       sqrt(conv_norm_var) * conv_norm + bias, no epsilon; every LayerNorm's epsilon the file's
    -> the projector: RMSNorm (eps 1e-6) times ``mm.a.norm_pre``, ``mm.a.mlp.1``, squared ReLU, ``mm.a.mlp.2``, no
       biases (clip.cpp loads none)

mtmd.cpp puts no text around a Parakeet clip (runtime/audio.py's AUDIO_MARKERS) and the text model takes the rows at
plain positions.  Past 8192 rows (655 s of audio) parakeet.cpp switches to attention within +-128 rows, a path
llama.cpp 0.3.36 cannot run (measured on the tiny pair: 8188 rows encode, 8201 abort in GGML_ASSERT(ggml_can_mul_mat)
while the graph is built), so kvrun encodes up to 8192 rows and refuses longer clips in one line.  The forward (:func:`_forward`) is written once against
models/vit_ops.py's ops, so beside a text model on ``--device gpu`` it runs on the GPU (models/vit_device.py), rows
within float32 noise of the CPU's (tests/test_audio_parakeet.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import GGUFError, KvrunError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from . import lfm2a_audio as C  # (the FastConformer's functions; importing it names the "lfa_*" tensor roles)
from .common import TENSOR_NAMES, WeightLoader
from .deepseekocr_image import Kernel
from .vit_ops import ops_of
from .whisper_audio import HOP, SAMPLE_RATE, AudioTowerConfig, audio_tower_keys, check_audio_mmproj, need_audio_key, need_audio_tensors

PROJECTOR = "parakeet"
N_FFT, WINDOW, PREEMPH, LOG_EPS, STD_EPS = 512, 400, np.float32(0.97), 5.960464477539063e-08, 1e-5  # (the preprocessor's)
RMS_EPS = 1e-6  # the projector's RMSNorm (parakeet.cpp's)
MAX_ROWS = 8192  # (parakeet.cpp's PARAKEET_LOCAL_ATTN_THRESHOLD: past it, windowed attention llama.cpp cannot build)
TENSOR_NAMES.update({"pk_norm_pre": "mm.a.norm_pre.weight", "pk_mlp2": "mm.a.mlp.2.weight"})


@dataclass(frozen=True)
class ParakeetConfig(AudioTowerConfig):
    """The audio encoder's hyperparameters, as clip.cpp reads them (``clip.audio.*``; the rest from the tensors)."""

    eps: float  # the LayerNorms' (clip.audio.attention.layer_norm_epsilon; clip.cpp's 1e-6 unless told)
    kernel: int  # the convolution module's depthwise kernel (clip.audio.conv_kernel_size)
    n_sub: int  # the subsampling's channels
    n_text_embd: int

    @property
    def rows_per_chunk(self) -> int:
        """Rows 30 s of audio become (how runtime/audio.py states a clip's cost)."""
        return n_rows(SAMPLE_RATE * 30)


def n_rows(n_samples: int) -> int:
    """Rows a clip of ``n_samples`` becomes: its n / 160 + 1 frames over 8, rounded up (clip.cpp's n_patches)."""
    return C.conv_len(n_samples // HOP + 1)


def load_parakeet_config(g: GGUFFile) -> ParakeetConfig:
    """The config of an opened "parakeet" mmproj file, or a one-line error."""
    check_audio_mmproj(g)

    def need(key: str) -> int:
        return int(need_audio_key(g, key))

    need_audio_tensors(g, ("a.mel_filters", "a.window", "a.conv1d.0.weight", "a.pre_encode.out.weight", "mm.a.norm_pre.weight",
                           "mm.a.mlp.1.weight", "mm.a.mlp.2.weight"))  # fmt: skip
    if need("subsampling_factor") != 8:  # (clip.cpp asserts it: the graph's three stride-2 convolutions)
        raise GGUFError(f"{g.path}: clip.audio.subsampling_factor is {need('subsampling_factor')}; Parakeet's encoder subsamples by 8")
    tower = audio_tower_keys(g, ff_optional=True)
    E = tower["n_embd"]
    n_hid = g.tensors["mm.a.mlp.1.weight"].n_elements // E
    cfg = ParakeetConfig(
        projector_type=PROJECTOR,
        **tower,
        kernel=need("conv_kernel_size"),
        n_sub=int(g.tensors["a.conv1d.0.weight"].n_elements // 9),  # ([C, 1, 3, 3])
        n_text_embd=int(g.tensors["mm.a.mlp.2.weight"].n_elements // max(n_hid, 1)),
    )
    if not 8 <= cfg.n_mel <= 256 or cfg.n_head <= 0 or E % cfg.n_head or E % 2 or cfg.kernel <= 0 or cfg.kernel % 2 == 0 or n_hid <= 0:
        raise GGUFError(f"{g.path}: inconsistent audio hyperparameters (mel bins {cfg.n_mel}, width {E}, heads {cfg.n_head}, "
                        f"depthwise kernel {cfg.kernel})")  # fmt: skip
    return cfg


# --- the spectrogram ---------------------------------------------------------------------------------------------


def log_mel(samples: np.ndarray, filters: np.ndarray, window: np.ndarray) -> np.ndarray:
    """16 kHz mono float32 samples -> the clip's normalised log-mel spectrogram, float32 [n_mel, n / 160 + 1], as
    mtmd_audio_preprocessor_parakeet::preprocess makes it with the file's mel bank ``filters`` [n_mel, 257] and
    ``window`` (400 taps)."""
    x = np.asarray(samples, np.float32).reshape(-1)
    n = x.size
    if n // HOP < 2:  # (the unbiased variance needs two frames)
        raise KvrunError(f"the audio is {n} samples long; Parakeet's encoder takes at least {2 * HOP} (20 ms at 16 kHz)")
    pad = N_FFT // 2
    padded = np.zeros(n + 2 * pad, np.float32)
    padded[pad] = x[0]
    padded[pad + 1 : pad + n] = x[1:] - PREEMPH * x[:-1]
    n_len = n // HOP + 1
    win = np.zeros(N_FFT, np.float32)  # (the window in the middle of the 512 samples, zeros either side)
    off = (N_FFT - WINDOW) // 2
    win[off : off + WINDOW] = window
    filt = filters.astype(np.float64)
    mel = np.empty((filters.shape[0], n_len), np.float64)
    for s in range(0, n_len, 2048):
        idx = (np.arange(s, min(s + 2048, n_len)) * HOP)[:, None] + np.arange(N_FFT)
        spec = np.fft.rfft((padded[idx] * win).astype(np.float64), axis=-1)
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        mel[:, s : s + idx.shape[0]] = np.log(power @ filt.T + LOG_EPS).astype(np.float32).T
    valid = n // HOP  # (the frames of the clip: the statistics'; every frame is normalised by them)
    mean = mel[:, :valid].mean(axis=1, keepdims=True)
    std = np.sqrt(((mel[:, :valid] - mean) ** 2).sum(axis=1, keepdims=True) / (valid - 1))
    return ((mel - mean) / (std + STD_EPS)).astype(np.float32)


def pos_table(T: int, width: int) -> np.ndarray:
    """clip.cpp's ``pos_emb`` for T rows: [2T - 1, width], row p the relative position T - 1 - p, its pairs (sin, cos)
    of the position times exp(-2i ln(10000) / width), both factors and the product float32 as there."""
    freqs = np.exp(-(np.arange(0, width, 2, dtype=np.float32) * np.float32(math.log(10000.0)) / np.float32(width)), dtype=np.float32)
    theta = (T - 1 - np.arange(2 * T - 1, dtype=np.float32))[:, None] * freqs[None, :]
    out = np.empty((2 * T - 1, width), np.float32)
    out[:, 0::2], out[:, 1::2] = np.sin(theta), np.cos(theta)
    return out


# --- the encoder -------------------------------------------------------------------------------------------------


class ParakeetEncoder:
    """Parakeet's FastConformer and projector from an mmproj file: :meth:`encode` a clip into rows."""

    def __init__(self, g: GGUFFile, cfg: ParakeetConfig, backend: Backend) -> None:
        self.cfg, self.be, self.path = cfg, backend, g.path
        E, Cs, H, K = cfg.n_embd, cfg.n_sub, cfg.n_head, cfg.kernel

        def host(name: str, n: int) -> np.ndarray:
            return C.host_values(g, name, n, "a Parakeet")

        self.filters = host("a.mel_filters", cfg.n_mel * (N_FFT // 2 + 1)).reshape(cfg.n_mel, N_FFT // 2 + 1)
        self.window = host("a.window", WINDOW)

        def f16(a: np.ndarray) -> np.ndarray:
            return a.astype(np.float16).astype(np.float32)

        # (ggml_conv_2d: F16 patches times the kernel rounded to F16, whatever type the file stores it in; here the
        # first convolution and, unlike LFM2-Audio's, the two pointwise ones)
        self.conv0 = Kernel(f16(host("a.conv1d.0.weight", Cs * 9).reshape(Cs, 1, 3, 3)), True)
        shapes = {i: (Cs, 3, 3) if i in (0, 2, 5) else (Cs, Cs) for i in C.SUB}
        self.sub = {i: (host(f"a.conv1d.{i}.weight", int(np.prod(shapes[i]))).reshape(shapes[i]), host(f"a.conv1d.{i}.bias", Cs).reshape(Cs, 1, 1))
                    for i in C.SUB}  # fmt: skip
        self.pw_kernels = {i: Kernel(f16(self.sub[i][0]).reshape(Cs, Cs, 1, 1), True) for i in (3, 6)}
        ld = WeightLoader(g, backend)

        def matrix(role: str, n_in: int, n_out: int, i: int | None = None) -> Any:
            t = g.tensor(TENSOR_NAMES[role].format(i=i))
            if t.n_elements != n_in * n_out:
                raise KvrunError(f"{g.path}: {t.name} has shape {t.shape}, expected [{n_out}, {n_in}]: not a Parakeet projector")
            return ld.matrix(role, i)

        self.pre_out, self.pre_out_b = matrix("lfa_pre_out", Cs * C.conv_len(cfg.n_mel), E), ld.host_vector("lfa_pre_out_b")
        d = E // H
        self.layers = []
        for i in range(cfg.n_layer):
            L: dict[str, Any] = {}
            for r in ("ffn_norm", "ffn_norm_1", "ln1", "norm_conv", "ln2"):
                L[r], L[r + "_b"] = ld.host_vector(f"lfa_{r}", i), ld.host_vector(f"lfa_{r}_b", i)
            ff = g.tensor(TENSOR_NAMES["lfa_ffn_up"].format(i=i)).n_elements // E
            for r, n_in, n_out in (("ffn_up", E, ff), ("ffn_down", ff, E), ("ffn_up_1", E, ff), ("ffn_down_1", ff, E), ("attn_q", E, E),
                                   ("attn_k", E, E), ("attn_v", E, E), ("attn_out", E, E), ("conv_pw1", E, 2 * E), ("conv_pw2", E, E),
                                   ("linear_pos", E, E)):  # fmt: skip
                L[r], L[r + "_b"] = matrix(f"lfa_{r}", n_in, n_out, i), None  # (parakeet.cpp adds no bias to any product)
            L["pos_bias_u"] = host(f"a.blk.{i}.pos_bias_u", E).reshape(H, d)
            L["pos_bias_v"] = host(f"a.blk.{i}.pos_bias_v", E).reshape(H, d)
            L["conv_dw"] = host(f"a.blk.{i}.conv_dw.weight", E * K).reshape(E, K)
            # (the batch norm as LFM2-Audio's folded one computes it, (x + conv_dw_b) * conv_norm + conv_norm_b: the
            # mean in the depthwise bias's place, the scale over the running deviation; clip.cpp: no epsilon)
            mean, var = host(f"a.blk.{i}.conv_norm_mean", E), host(f"a.blk.{i}.conv_norm_var", E)
            if (var <= 0).any():
                raise KvrunError(f"{g.path}: a.blk.{i}.conv_norm_var holds values <= 0: not a Parakeet projector")
            L["conv_dw_b"] = -mean
            L["conv_norm"] = host(f"a.blk.{i}.conv_norm.weight", E) / np.sqrt(var)
            L["conv_norm_b"] = host(f"a.blk.{i}.conv_norm.bias", E)
            self.layers.append(L)
        n_hid = g.tensor("mm.a.mlp.1.weight").n_elements // E
        self.norm_pre = ld.host_vector("pk_norm_pre")
        self.mlp1, self.mlp2 = matrix("lfa_mlp1", E, n_hid), matrix("pk_mlp2", n_hid, cfg.n_text_embd)

    def n_rows(self, n_samples: int) -> int:
        """Rows a clip of ``n_samples`` becomes."""
        return n_rows(n_samples)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz mono samples -> the clip's rows, float32 [n_rows, n_text_embd]."""
        n = np.asarray(samples).size
        if n_rows(n) > MAX_ROWS:
            raise KvrunError(f"the audio is {n / SAMPLE_RATE:.0f} s long ({n_rows(n)} rows); kvrun's Parakeet encoder takes up to "
                             f"{MAX_ROWS} rows ({MAX_ROWS * 8 * HOP // SAMPLE_RATE} s); split the clip")  # fmt: skip
        return self.encode_mel(log_mel(samples, self.filters, self.window))

    def encode_mel(self, mel: np.ndarray) -> np.ndarray:
        """A spectrogram [n_mel, frames] -> its rows (:func:`_forward` on the encoder's device)."""
        C.check_mel(mel, self.cfg.n_mel, 2)
        return _forward(ops_of(self), self, mel)


def _forward(ops: Any, enc: ParakeetEncoder, mel: np.ndarray) -> np.ndarray:
    """:meth:`ParakeetEncoder.encode_mel` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU
    the spectrogram and the relative-position table go up once and the rows come down once)."""
    xp = ops.xp
    x = C._subsample(ops, enc, mel)
    pos = ops.vector(pos_table(x.shape[0], enc.cfg.n_embd))
    for L in enc.layers:
        x = C._block(ops, enc, L, x, pos)
    x = ops.rms_norm(xp.ascontiguousarray(x, np.float32), enc.norm_pre, RMS_EPS)
    h = xp.maximum(ops.linear(enc.mlp1, x), 0)
    x = ops.linear(enc.mlp2, xp.ascontiguousarray(h * h, np.float32))  # (squared ReLU)
    return ops.to_host(xp.ascontiguousarray(x, np.float32))
