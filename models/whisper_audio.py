"""Ultravox's audio side: the log-mel spectrogram, the Whisper encoder and Ultravox's projector, as llama.cpp's libmtmd
computes them (tools/mtmd/mtmd-audio.cpp's Whisper preprocessor, clip.cpp's ``clip_graph_whisper_enc`` for
PROJECTOR_TYPE_ULTRAVOX), read from an audio mmproj file (``clip.has_audio_encoder``, projector type "ultravox").

A clip becomes rows of the text model's width, which the text model reads in place of token embeddings (Ultravox
puts no marker tokens around them; runtime/audio.py lays the prompt out):

    16 kHz mono samples (a WAV file's, :func:`load_wav`)
    -> 200 samples reflected at the start, 200 + 30 s of zeros at the end (whisper.cpp's padding, so the last
       chunk is always whole and silence follows the speech)
    -> frames of 400 samples every 160, a periodic Hann window, |FFT|^2 of its 201 bins, a Slaney mel filter bank
       (librosa's, area-normalised), log10 of max(., 2^-24), clamped at the whole spectrogram's max - 8, (x + 4) / 4
    -> cut into chunks of 3000 frames (30 s); the last partial chunk (always padding) dropped
    -> per chunk: conv1d k3 s1 + GELU(erf), conv1d k3 s2 + GELU(erf) -> 1500 rows, + learned positions
    -> n_layer pre-norm blocks (LayerNorm with bias, attention with Q/V biases and no K bias, GELU(erf) MLP)
    -> post LayerNorm
    -> the rows stacked ``stack_factor`` at a time (zeros pad the last), RMSNorm * mm.a.norm_pre, mm.a.mlp.1,
       SwiGLU with the gate in the second half, RMSNorm * mm.a.norm_mid, mm.a.mlp.2 -> [n_rows, n_text_embd]

Qwen2-Audio ("qwen2a") and Voxtral ("voxtral") take the same spectrogram and encoder with clip.cpp's average pooling
(kernel 2, stride 2) between the last block and the post LayerNorm (1500 rows -> 750), then qwen2a one linear layer
``mm.a.fc`` (750 rows a chunk) and voxtral the rows stacked ``stack_factor`` at a time through ``mm.a.mlp.1``,
GELU(erf), ``mm.a.mlp.2`` (no norms; 750 / stack rows: the pooling is why Voxtral's count is half what the stack
factor alone says).  Their marker tokens are runtime/audio.py's.

GLM-ASR ("glma") runs the encoder unpooled, then its adapter: a LayerNorm with bias (``mm.a.norm_pre``, the encoder's
eps) on the 1500 rows, the rows stacked ``stack_factor`` (its merge factor, 4) at a time, ``mm.a.mlp.1``, GELU(erf),
``mm.a.mlp.2`` (biases), and the learned rows ``v.boi`` / ``v.eoi`` put before and after each chunk's (clip.cpp's
ggml_concat: 375 + 2 rows a chunk, no marker tokens).  Music Flamingo ("musicflamingo", Audio Flamingo 3's family)
pools as qwen2a and runs Voxtral's GELU(erf) MLP unstacked with its biases (750 rows a chunk, after ``<sound>``); its
converter keeps the conv kernels F32; they are rounded to F16 here as the others (on the tiny file libmtmd's rows
are met within 2e-6 with or without that rounding, so the fixture does not tell).

The chunks' rows follow each other in one block.  What ggml's CPU does to the numbers is reproduced where it shows:
the convolutions run as ggml_conv_1d does, on an F16 im2col of their input and an F16 kernel; a product with an
F16 weight rounds its input to F16.  Attention is float32 softmax(QK^T)V, llama.cpp's path without flash attention.
The padding is llama.cpp 0.3.36's (newer sources pad a clip to 31 s first and count frames of the unpadded clip,
which changes how many chunks a clip past 30 s makes).  The spectrogram matches libmtmd's to the 6 decimals its debug
dump prints (its FFT is a float32 radix-2 with a DFT
at the odd 25-point leaves, numpy's a float64 one: ~1e-7 apart after the log).

Beside a text model on ``--device gpu`` the encoder is built with the GPU's backend and everything past the
spectrogram runs there: the forward (:func:`_forward`) is written once against models/vit_ops.py's ops, the host's
(the CPU's arithmetic above) or the device's (models/vit_device.py: a chunk's mel up once, the convolutions as
products of their F16 kernels over the unfolded frames, the blocks, pooling and projector, the clip's rows down once;
on 2 vCPUs the host convolutions of a Whisper-large chunk take 1.5 s, under 1% of its 32 blocks' work but most of what
a GPU would spend), the rows the CPU's within float32 noise (tests/test_gpu_audio.py).
"""

from __future__ import annotations

import io
import math
import os
import wave
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from ..loaders.errors import GGUFError, KvrunError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .siglip import vit_block
from .vit_ops import ops_of

F16 = 1  # ggml's type id of float16
SAMPLE_RATE, N_FFT, HOP, CHUNK_FRAMES = 16000, 400, 160, 3000  # clip.cpp's Whisper preprocessing (30 s chunks)
#: audio projector types kvrun runs (qwen2a and voxtral: models/whisper_audio.py's encoder with clip.cpp's average
#: pooling before the post LayerNorm, then their own projectors; see :meth:`WhisperAudioEncoder.project`)
AUDIO_PROJECTORS = ("ultravox", "qwen2a", "voxtral", "qwen2.5o")
AUDIO_PROJECTORS += ("glma", "musicflamingo")  # (GLM-ASR's adapter and Music Flamingo's MLP: :func:`_project`)
POOLED = ("qwen2a", "voxtral")  # clip_model::audio_has_avgpool: AvgPool1d(2, 2) on the encoder's rows
POOLED += ("musicflamingo",)
STACKED = ("ultravox", "voxtral")  # clip_model::audio_has_stack_frames
STACKED += ("glma",)  # (its stack factor required as theirs; GLM-ASR stacks after its LayerNorm: :func:`_project`)
GELU_MLP = ("voxtral", "musicflamingo")  # mm.a.mlp.1, GELU(erf), mm.a.mlp.2 (Music Flamingo: with biases, no stack)

TENSOR_NAMES.update({  # the audio encoder's names (clip.cpp's TN_*, prefix "a")
    "a_ln1": "a.blk.{i}.ln1.weight", "a_ln1_b": "a.blk.{i}.ln1.bias",
    "a_ln2": "a.blk.{i}.ln2.weight", "a_ln2_b": "a.blk.{i}.ln2.bias",
    "a_q": "a.blk.{i}.attn_q.weight", "a_q_b": "a.blk.{i}.attn_q.bias",
    "a_k": "a.blk.{i}.attn_k.weight", "a_k_b": "a.blk.{i}.attn_k.bias",
    "a_v": "a.blk.{i}.attn_v.weight", "a_v_b": "a.blk.{i}.attn_v.bias",
    "a_o": "a.blk.{i}.attn_out.weight", "a_o_b": "a.blk.{i}.attn_out.bias",
    "a_up": "a.blk.{i}.ffn_up.weight", "a_up_b": "a.blk.{i}.ffn_up.bias",
    "a_down": "a.blk.{i}.ffn_down.weight", "a_down_b": "a.blk.{i}.ffn_down.bias",
    "a_post_ln": "a.post_ln.weight", "a_post_ln_b": "a.post_ln.bias",
    "mm_a_norm_pre": "mm.a.norm_pre.weight", "mm_a_norm_mid": "mm.a.norm_mid.weight",
    "mm_a_mlp1": "mm.a.mlp.1.weight", "mm_a_mlp2": "mm.a.mlp.2.weight",
    "mm_a_mlp1_b": "mm.a.mlp.1.bias", "mm_a_mlp2_b": "mm.a.mlp.2.bias",
    "mm_a_fc": "mm.a.fc.weight", "mm_a_fc_b": "mm.a.fc.bias",  # (Qwen2-Audio's projector)
    "mm_a_norm_pre_b": "mm.a.norm_pre.bias",  # (GLM-ASR's adapter LayerNorm)
})  # fmt: skip


@dataclass(frozen=True)
class AudioTowerConfig:
    """What every audio encoder's config holds first, as clip.cpp reads it (``clip.audio.*``, :func:`audio_tower_shape`):
    the projector type and the encoder's shape.  Each tower's config adds its own fields after these."""

    projector_type: str
    n_mel: int  # mel bins the encoder takes (Whisper large: 128)
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int


@dataclass(frozen=True)
class AudioConfig(AudioTowerConfig):
    """An audio encoder's and projector's hyperparameters, as clip.cpp reads them (``clip.audio.*``)."""

    eps: float  # the encoder's LayerNorms' epsilon
    stack_factor: int  # encoder rows stacked into one projector row (Ultravox: 8)
    n_text_embd: int  # the projector's output width: the text model's n_embd

    @property
    def rows_per_chunk(self) -> int:
        """Embedding rows one 30 s chunk becomes (the graph's: 1500 encoder rows, stacked, the last padded).  With
        Ultravox's real factor 8 that is 188, HF's StackAudioFrames' count; llama.cpp 0.3.36's token count says 187
        (3000 / 8 / 2) and clip_encode aborts on the mismatch, so only factors dividing 1500 are held to it."""
        rows = CHUNK_FRAMES // 2 // (2 if self.projector_type in POOLED else 1)  # (qwen2a, voxtral: pooled to 750)
        return -(-rows // self.stack_factor) + (2 if self.projector_type == "glma" else 0)  # (GLM-ASR: + its boi, eoi rows)


def is_audio_mmproj(g: GGUFFile) -> bool:
    """Whether an opened projector file holds an audio encoder and no vision one (kvrun reads those here)."""
    return bool(g.get("clip.has_audio_encoder", False)) and not g.get("clip.has_vision_encoder", False)


def check_audio_mmproj(g: GGUFFile, takes: str = "") -> None:
    """A one-line error unless the opened file is a projector ("clip") with an audio encoder (``takes``: what the
    error says ``--audio`` takes, after "an audio mmproj")."""
    if g.get("general.architecture") != "clip":
        raise GGUFError(f"{g.path}: general.architecture is {g.get('general.architecture')!r}, not 'clip': not a multimodal projector")
    if not g.get("clip.has_audio_encoder", False):
        raise UnsupportedModelError(f"{g.path}: the projector has no audio encoder; --audio takes an audio mmproj{takes}")


def need_audio_key(g: GGUFFile, key: str) -> int | float:
    """The opened projector's ``clip.audio.<key>``, or a one-line error that the file is incomplete."""
    v = g.get(f"clip.audio.{key}")
    if v is None:
        raise GGUFError(f"{g.path}: clip.audio.{key} is missing; the projector file is incomplete")
    return v


def need_audio_tensors(g: GGUFFile, names: tuple[str, ...]) -> None:
    """A one-line error unless the opened projector holds every tensor of ``names`` (those a config is read from)."""
    for name in names:
        if name not in g.tensors:
            raise GGUFError(f"{g.path}: tensor {name!r} is missing; the projector file is incomplete")


def audio_tower_shape(g: GGUFFile, ff_optional: bool = False) -> dict[str, int]:
    """The encoder's shape every audio config holds (:class:`AudioTowerConfig`'s fields after the projector type), as
    clip.cpp reads it (``clip.audio.*``): ``n_mel``, ``n_embd``, ``n_ff`` (0 where ``ff_optional`` and the file has
    none: the FastConformers' loaders never read it), ``n_layer``, ``n_head``."""

    def need(key: str) -> int:
        return int(need_audio_key(g, key))

    return dict(n_mel=need("num_mel_bins"), n_embd=need("embedding_length"),
                n_ff=int(g.get("clip.audio.feed_forward_length", 0)) if ff_optional else need("feed_forward_length"),
                n_layer=need("block_count"), n_head=need("attention.head_count"))  # fmt: skip


def audio_tower_keys(g: GGUFFile, ff_optional: bool = False) -> dict[str, Any]:
    """:func:`audio_tower_shape` and the LayerNorms' ``eps`` (``clip.audio.attention.layer_norm_epsilon``, 1e-6 unless
    told), as clip.cpp reads them."""
    return dict(audio_tower_shape(g, ff_optional), eps=float(g.get("clip.audio.attention.layer_norm_epsilon", 1e-6)))


def load_audio_config(g: GGUFFile) -> AudioConfig:
    """The config of an opened audio mmproj file, or a one-line error."""
    from .audio_towers import OTHER_TOWERS  # (every audio projector type kvrun reads, for the errors)

    known = ", ".join(AUDIO_PROJECTORS + OTHER_TOWERS)
    check_audio_mmproj(g, f" ({known})")
    ptype = g.get("clip.audio.projector_type") or g.get("clip.projector_type")
    if ptype == "qwen2.5o":  # (Qwen2.5-Omni: clip.cpp reads the audio side of its projector as qwen2a)
        ptype = "qwen2a"
    if ptype not in AUDIO_PROJECTORS:
        raise UnsupportedModelError(f"{g.path}: audio projector type {ptype!r} is not supported; kvrun reads {known}")
    out_name = "mm.a.fc.weight" if ptype == "qwen2a" else "mm.a.mlp.2.weight"  # (the projector's last matrix)
    mlp2 = g.tensors.get(out_name)
    if mlp2 is None:
        raise GGUFError(f"{g.path}: tensor {out_name!r} is missing; the projector file is incomplete")
    cfg = AudioConfig(
        projector_type=str(ptype),
        **audio_tower_keys(g),
        stack_factor=int(need_audio_key(g, "projector.stack_factor")) if ptype in STACKED else 1,
        n_text_embd=int(mlp2.shape[0]),
    )
    if not 1 <= cfg.n_mel <= 256 or cfg.stack_factor <= 0 or cfg.n_head <= 0 or cfg.n_embd % cfg.n_head:
        raise GGUFError(f"{g.path}: inconsistent audio hyperparameters (mel bins {cfg.n_mel}, stack factor {cfg.stack_factor}, "
                        f"width {cfg.n_embd}, heads {cfg.n_head})")  # fmt: skip
    return cfg


# --- the spectrogram ---------------------------------------------------------------------------------------------


def mel_filters(n_mel: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """mtmd-audio.cpp's ``fill_mel_filterbank_matrix`` with its defaults (librosa's Slaney scale and area norm,
    0 Hz to Nyquist): float32 [n_mel, n_fft/2 + 1], built in float64 as there."""
    lin_slope, min_log_hz = 3 / 200.0, 1000.0
    min_log_mel, log_step = min_log_hz * lin_slope, math.log(6.4) / 27.0

    def hz_to_mel(f: float) -> float:
        return f * lin_slope if f < min_log_hz else min_log_mel + math.log(f / min_log_hz) / log_step

    def mel_to_hz(m: float) -> float:
        return m / lin_slope if m < min_log_mel else min_log_hz * math.exp((m - min_log_mel) * log_step)

    lo, hi = hz_to_mel(0.0), hz_to_mel(0.5 * sample_rate)
    hz = np.array([mel_to_hz(lo + (hi - lo) * i / (n_mel + 1)) for i in range(n_mel + 2)])
    f = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    out = np.zeros((n_mel, f.size))
    for m in range(n_mel):
        left, center, right = hz[m], hz[m + 1], hz[m + 2]
        up = (f - left) / max(1e-30, center - left)
        down = (right - f) / max(1e-30, right - center)
        w = np.where((f >= left) & (f <= center), up, np.where((f > center) & (f <= right), down, 0.0))
        out[m] = w * (2.0 / max(1e-30, right - left))
    return out.astype(np.float32)


def log_mel(samples: np.ndarray, n_mel: int) -> np.ndarray:
    """16 kHz mono float32 samples -> the log-mel spectrogram's 30 s chunks, float32 [n_chunks, n_mel, 3000]
    (mtmd_audio_preprocessor_whisper::preprocess as llama.cpp 0.3.36 runs it)."""
    x = np.asarray(samples, np.float32).reshape(-1)
    n, half = x.size, N_FFT // 2
    if n <= half:  # (libmtmd's reflection needs 201 samples; it fails the clip below that)
        raise KvrunError(f"the audio is {n} samples long; it takes at least {half + 1} (~13 ms at 16 kHz)")
    padded = np.zeros(n + SAMPLE_RATE * 30 + 2 * half, np.float32)
    padded[half : half + n] = x
    padded[:half] = x[1 : half + 1][::-1]
    n_len = (padded.size - N_FFT) // HOP + 1
    hann = (0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT))).astype(np.float32)  # periodic
    filt = mel_filters(n_mel).astype(np.float64)
    out = np.empty((n_mel, n_len), np.float32)
    for s in range(0, n_len, 2048):  # (a block of frames at a time: 30 s is 3000 frames of 400)
        idx = (np.arange(s, min(s + 2048, n_len)) * HOP)[:, None] + np.arange(N_FFT)
        spec = np.fft.rfft((padded[idx] * hann).astype(np.float64), axis=-1)
        power = (spec.real**2 + spec.imag**2).astype(np.float32)  # (float32 as mtmd keeps it)
        out[:, s : s + idx.shape[0]] = np.log10(np.maximum(power @ filt.T, 5.960464477539063e-08)).T
    out = (np.maximum(out, out.max() - 8.0) + 4.0) / 4.0
    n_chunks = n_len // CHUNK_FRAMES  # (a partial last chunk is padding: mtmd drops it)
    return np.ascontiguousarray(out[:, : n_chunks * CHUNK_FRAMES].reshape(n_mel, n_chunks, CHUNK_FRAMES).transpose(1, 0, 2))


def load_wav(src: str | os.PathLike | bytes) -> np.ndarray:
    """A PCM WAV file (its path or bytes) as 16 kHz mono float32 samples, converted as miniaudio converts them
    (8-bit (x - 128) / 128, 16-bit x / 32768, 24-bit x / 2^23, 32-bit x / 2^31; channels averaged).  Other sample
    rates, and files that are not PCM WAV, are refused in one line."""
    name = "the audio" if isinstance(src, bytes) else str(src)
    try:
        with wave.open(io.BytesIO(src) if isinstance(src, bytes) else os.fspath(src), "rb") as f:
            ch, width, rate, n = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            raw = f.readframes(n)
    except FileNotFoundError:
        raise KvrunError(f"{name}: no such file") from None
    except (wave.Error, EOFError, OSError) as e:
        raise KvrunError(f"{name}: not a PCM WAV file ({e}); kvrun reads 16 kHz WAV audio") from None
    if rate != SAMPLE_RATE:
        raise KvrunError(f"{name}: sampled at {rate} Hz; kvrun takes 16000 Hz WAV (resample it first, e.g. ffmpeg -ar 16000)")
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / 8388608.0
    else:
        x = (np.frombuffer(raw, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    x = x[: (x.size // ch) * ch].reshape(-1, ch)
    return x[:, 0].copy() if ch == 1 else x.mean(axis=1, dtype=np.float32)


# --- the encoder -------------------------------------------------------------------------------------------------


@numba.njit(cache=True)
def _gelu_erf(x: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    out = np.empty_like(x)
    flat, o = x.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        v = flat[i]
        o[i] = np.float32(0.5) * v * (np.float32(1.0) + np.float32(math.erf(v * 0.7071067811865476)))
    return out


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """ggml_gelu_erf on float32: 0.5 x (1 + erf(x / sqrt 2))."""
    return _gelu_erf(np.ascontiguousarray(x, np.float32))


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


class WhisperAudioEncoder:
    """Ultravox's audio encoder and projector from an mmproj file: :meth:`encode_chunk` a mel chunk into rows."""

    def __init__(self, g: GGUFFile, cfg: AudioConfig, backend: Backend) -> None:
        if backend.name not in ("cpu", "gpu"):  # (on the GPU: models/vit_ops.py, models/vit_device.py)
            raise UnsupportedModelError(f"{g.path}: the audio encoder runs on the CPU or the GPU, not on {backend.name!r}")
        self.cfg, self.be, self.path = cfg, backend, g.path
        ld = WeightLoader(g, backend)
        E = cfg.n_embd
        self.conv = [self._kernel(g, 1, cfg.n_mel), self._kernel(g, 2, E)]
        pos = g.tensor("a.position_embd.weight")
        n_pos = pos.n_elements // E
        if pos.n_elements % E or n_pos < CHUNK_FRAMES // 2:
            raise KvrunError(f"{g.path}: a.position_embd.weight has shape {pos.shape}; the encoder needs {CHUNK_FRAMES // 2} positions of {E}")
        self.pos_embd = dequantize(pos.data, pos.qtype, pos.shape).reshape(n_pos, E)[: CHUNK_FRAMES // 2].astype(np.float32)
        self.layers = []
        for i in range(cfg.n_layer):
            L = {r: ld.host_vector(f"a_{r}", i, required=r in ("ln1", "ln2")) for r in ("ln1", "ln1_b", "ln2", "ln2_b")}
            for r in ("q", "k", "v", "o", "up", "down"):
                L[r], L[r + "_b"] = ld.matrix(f"a_{r}", i), ld.host_vector(f"a_{r}_b", i, required=False)
            self.layers.append(L)
        self.post_ln, self.post_ln_b = ld.host_vector("a_post_ln", required=False), ld.host_vector("a_post_ln_b", required=False)
        if cfg.projector_type == "qwen2a":  # (one linear layer with a bias)
            self.fc, self.fc_b = ld.matrix("mm_a_fc"), ld.host_vector("mm_a_fc_b", required=False)
            return
        if cfg.projector_type == "glma":  # (LayerNorm, stacked rows through a GELU(erf) MLP, the learned boi / eoi rows)
            self._load_glma(g, ld)
            return
        if cfg.projector_type in GELU_MLP:  # (stacked rows through a GELU(erf) MLP, biases where the file has them)
            self.mlp1, self.mlp2 = ld.matrix("mm_a_mlp1"), ld.matrix("mm_a_mlp2")
            self.mlp1_b, self.mlp2_b = ld.host_vector("mm_a_mlp1_b", required=False), ld.host_vector("mm_a_mlp2_b", required=False)
            if self.mlp1.n_cols != E * cfg.stack_factor:
                raise KvrunError(f"{g.path}: the projector's shapes do not fit a stack of {cfg.stack_factor} rows of {E}")
            return
        self.norm_pre, self.norm_mid = ld.host_vector("mm_a_norm_pre"), ld.host_vector("mm_a_norm_mid")
        self.mlp1, self.mlp2 = ld.matrix("mm_a_mlp1"), ld.matrix("mm_a_mlp2")
        if self.norm_pre.size != E * cfg.stack_factor or self.mlp1.n_rows != 2 * self.norm_mid.size:
            raise KvrunError(f"{g.path}: the projector's shapes do not fit a stack of {cfg.stack_factor} rows of {E}")

    def _load_glma(self, g: GGUFFile, ld: WeightLoader) -> None:
        """GLM-ASR's adapter (clip.cpp's PROJECTOR_TYPE_GLMA tensors): ``mm.a.norm_pre`` with its bias, ``mm.a.mlp.1``
        and ``.2`` with theirs, and ``v.boi`` / ``v.eoi``, the rows put before and after each chunk's."""
        c = self.cfg
        self.norm_pre, self.norm_pre_b = ld.host_vector("mm_a_norm_pre"), ld.host_vector("mm_a_norm_pre_b")
        self.mlp1, self.mlp2 = ld.matrix("mm_a_mlp1"), ld.matrix("mm_a_mlp2")
        self.mlp1_b, self.mlp2_b = ld.host_vector("mm_a_mlp1_b"), ld.host_vector("mm_a_mlp2_b")
        if self.mlp1.n_cols != c.n_embd * c.stack_factor:
            raise KvrunError(f"{g.path}: the projector's shapes do not fit a stack of {c.stack_factor} rows of {c.n_embd}")
        ends = []
        for name in ("v.boi", "v.eoi"):
            if name not in g.tensors:
                raise GGUFError(f"{g.path}: tensor {name!r} is missing; the projector file is incomplete")
            t = g.tensor(name)
            if t.n_elements != c.n_text_embd:
                raise KvrunError(f"{g.path}: {name} has shape {t.shape}; the projector's rows are {c.n_text_embd} wide")
            ends.append(dequantize(t.data, t.qtype, t.shape).reshape(1, -1).astype(np.float32))
        self.boi, self.eoi = ends

    @staticmethod
    def _kernel(g: GGUFFile, n: int, c_in: int) -> tuple[np.ndarray, np.ndarray]:
        """Convolution ``n``'s kernel as a matrix [c_out, c_in * 3] over (channel, tap), in F16 (ggml_conv_1d's
        im2col is F16, and the kernel meets it as F16 whatever it is stored as), and its bias [c_out]."""
        t, b = g.tensor(f"a.conv1d.{n}.weight"), g.tensor(f"a.conv1d.{n}.bias")
        if t.n_elements % (c_in * 3):
            raise KvrunError(f"{g.path}: a.conv1d.{n}.weight has shape {t.shape}, expected [c_out, {c_in}, 3]")
        w = dequantize(t.data, t.qtype, t.shape).reshape(-1, c_in * 3)
        return _f16(w), dequantize(b.data, b.qtype, b.shape).reshape(-1).astype(np.float32)

    @classmethod
    def load(cls, path: str | os.PathLike, backend: Backend) -> WhisperAudioEncoder:
        g = GGUFFile(path)
        try:
            return cls(g, load_audio_config(g), backend)
        except Exception:
            g.close()
            raise

    def n_rows(self, n_samples: int) -> int:
        """Rows a clip of ``n_samples`` becomes: libmtmd's 30 s of padding after the clip, whole 3000-frame chunks
        (the partial last one dropped), ``rows_per_chunk`` each."""
        return ((n_samples + SAMPLE_RATE * 30) // HOP + 1) // CHUNK_FRAMES * self.cfg.rows_per_chunk

    def encode_chunk(self, mel: np.ndarray) -> np.ndarray:
        """One mel chunk [n_mel, 3000] -> its embedding rows [rows_per_chunk, n_text_embd]."""
        return self.encode_mels(mel[None])

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz mono samples -> the clip's rows, every 30 s chunk's in order, float32 [n, n_text_embd]."""
        return self.encode_mels(log_mel(samples, self.cfg.n_mel))

    def encode_mels(self, mels: np.ndarray) -> np.ndarray:
        """Mel chunks [n_chunks, n_mel, 3000] -> their rows in order (:func:`_forward` on the encoder's device)."""
        for m in mels:
            if m.shape != (self.cfg.n_mel, CHUNK_FRAMES):
                raise KvrunError(f"the audio encoder takes a mel chunk [{self.cfg.n_mel}, {CHUNK_FRAMES}], got {list(m.shape)}")
        return _forward(ops_of(self), self, mels)


def unfold3(xp: Any, x: Any, stride: int) -> Any:
    """ggml_conv_1d_ph's im2col on either device's rows: ``x`` [T, C] (time-major) zero-padded by one row each side
    -> [T_out, C * 3], each row a window's (channel, tap) columns in the order of the kernel [c_out, C, 3]."""
    T, C = x.shape
    t_out = (T + 2 - 3) // stride + 1
    p = xp.zeros((T + 2, C), np.float32)
    p[1:-1] = x
    cols = xp.stack([p[k : k + stride * (t_out - 1) + 1 : stride] for k in range(3)], axis=-1)  # [t_out, C, 3]
    return xp.ascontiguousarray(cols.reshape(t_out, C * 3))


def _forward(ops: Any, enc: WhisperAudioEncoder, mels: np.ndarray) -> np.ndarray:
    """:meth:`WhisperAudioEncoder.encode_mels` past its checks on either device's ``ops`` (models/vit_ops.py; on the
    GPU each chunk's mel goes up once and the clip's rows come down once)."""
    xp = ops.xp
    rows = [_project(ops, enc, _rows(ops, enc, m)) for m in mels]
    return ops.to_host(xp.ascontiguousarray(rows[0] if len(rows) == 1 else xp.concatenate(rows), np.float32))


def _rows(ops: Any, enc: WhisperAudioEncoder, mel: np.ndarray) -> Any:
    """One mel chunk [n_mel, 3000] -> the encoder's rows after its post LayerNorm, [1500 (750 pooled), n_embd]: both
    convolutions as products of their F16 kernels over the unfolded frames, rounded to F16 as ggml's im2col
    (``ops.product_f16``), GELU(erf), the positions, models/siglip.py's pre-norm blocks with Whisper's exact GELU (no
    mask, no rope: every frame sees the whole chunk), clip.cpp's average pooling (qwen2a, voxtral), the post LayerNorm."""
    c, xp = enc.cfg, ops.xp
    x = ops.vector(mel.T)
    for (w, b), stride in zip(enc.conv, (1, 2)):
        x = ops.act(ops.product_f16(unfold3(xp, x, stride), w, b), "gelu_erf")
    x = x + ops.const(enc.pos_embd)
    for L in enc.layers:
        x = vit_block(ops, enc, L, x, "gelu_erf")
    if c.projector_type in POOLED:  # (build_vit's ggml_pool_1d AVG k2 s2, before the post LayerNorm)
        x = xp.ascontiguousarray((x[0::2] + x[1::2]) / np.float32(2.0))
    if enc.post_ln is not None:
        x = ops.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    return x


def _project(ops: Any, enc: WhisperAudioEncoder, x: Any) -> Any:
    """The projector on the encoder's rows [T, n_embd]: Qwen2-Audio's ``mm.a.fc``; the rows stacked ``stack_factor``
    at a time (StackAudioFrames: zeros pad the last), then Voxtral's GELU(erf) MLP or Ultravox's RMSNorm, SwiGLU (the
    gate in the second half: ggml_swiglu_swapped), RMSNorm, ``mm.a.mlp.2`` -> [ceil(T / stack), n_text_embd]."""
    c, xp = enc.cfg, ops.xp
    if c.projector_type == "qwen2a":  # (whisper-enc.cpp: mm_fc_w x + mm_fc_b, no stacking)
        return ops.linear(enc.fc, x, enc.fc_b)
    if c.projector_type == "glma":  # (whisper-enc.cpp: ggml_norm with the encoder's eps first, the stack after it)
        x = ops.layer_norm(x, enc.norm_pre, enc.norm_pre_b, c.eps)
    s, E, T = c.stack_factor, c.n_embd, x.shape[0]
    n = -(-T // s)
    if n * s != T:
        x = xp.concatenate([x, xp.zeros((n * s - T, E), np.float32)])
    x = xp.ascontiguousarray(x.reshape(n, s * E))
    if c.projector_type in GELU_MLP:  # (build_ffn: mm.a.mlp.1, GELU(erf), mm.a.mlp.2)
        return ops.linear(enc.mlp2, ops.act(ops.linear(enc.mlp1, x, enc.mlp1_b), "gelu_erf"), enc.mlp2_b)
    if c.projector_type == "glma":  # (build_ffn GELU(erf), then ggml_concat of boi, the rows, eoi)
        h = ops.linear(enc.mlp2, ops.act(ops.linear(enc.mlp1, x, enc.mlp1_b), "gelu_erf"), enc.mlp2_b)
        return xp.concatenate([ops.const(enc.boi), h, ops.const(enc.eoi)])
    h = ops.linear(enc.mlp1, ops.rms_norm(x, enc.norm_pre, 1e-6))
    half = h.shape[1] // 2
    h = ops.act(h[:, half:], "silu") * h[:, :half]
    return ops.linear(enc.mlp2, ops.rms_norm(h, enc.norm_mid, 1e-6))
