"""Qwen3-Omni's audio tower (llama.cpp's audio projector type "qwen3a"), as libmtmd computes it: its own chunking of
the log-mel spectrogram (tools/mtmd/mtmd-audio.cpp's ``mtmd_audio_preprocessor_qwen3a``), three conv2d
downsamplings per 100-frame chunk, a Whisper-like encoder over a window of chunks and a two-layer GELU projector
(tools/mtmd/models/qwen3a.cpp's ``clip_graph_qwen3a``), read from an audio mmproj file.

It differs from models/whisper_audio.py's encoders at every step but the blocks, hence a file of its own:

    16 kHz mono samples
    -> 200 samples reflected at each end (WhisperFeatureExtractor's center=True; no 30 s of zeros after the clip)
    -> Whisper's frames (400 samples every 160, periodic Hann, |FFT|^2, Slaney mel bank, log10), n / 160 + 1 of them,
       clamped at the whole clip's max - 8, (x + 4) / 4
    -> windows of 800 frames (8 s, ``n_window_infer``), each zero-padded (0, not the spectrogram's silence) to a
       whole number of 100-frame chunks: the clip's rows are every window's, in order, one block
    -> per chunk [n_mel, 100] as a one-channel picture: 3 x (conv2d 3x3 stride 2 padding 1 + bias, GELU(erf))
       -> [C, n_mel / 8, 13] -> each time step's (channel, frequency) features through ``a.conv_out`` (no bias)
       -> + positions 0..12 (every chunk restarts them)
    -> the window's chunks' rows together (full attention within the window, none across windows) through
       models/siglip.py's pre-norm blocks (LayerNorm with bias, Q/K/V/out biases, GELU(erf) MLP), ``a.post_ln``
    -> ``mm.a.mlp.1`` + bias, GELU(erf), ``mm.a.mlp.2`` + bias -> [13 a chunk, n_text_embd]

mtmd.cpp puts ``<|audio_start|>`` and ``<|audio_end|>`` around the whole clip (runtime/audio.py's AUDIO_MARKERS),
and its M-RoPE thinker (``qwen3vl``/``qwen3vlmoe`` without DeepStack levels: libmtmd refuses a text model whose
``n_embd_inp`` is wider than the tower's rows) turns row i of a clip fed at p by (p+i, p+i, p+i, p+i) (:func:`audio_rope`).
The convolutions run as ggml_conv_2d does, on an F16 im2col when the kernel is F16 (converters store it so).  The
forward (:func:`_forward`) is written once against models/vit_ops.py's ops, so beside a text model on ``--device gpu``
it runs on the GPU (models/vit_device.py), rows within float32 noise of the CPU's (tests/test_audio_qwen3a.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ContextManager

import numpy as np

from ..loaders.errors import GGUFError, KvrunError, UnsupportedModelError
from ..loaders.gguf_file import GGUFFile
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .deepseekocr_image import Kernel
from .siglip import vit_block
from .vit_ops import ops_of
from .whisper_audio import HOP, N_FFT, SAMPLE_RATE, AudioTowerConfig, audio_tower_keys, check_audio_mmproj, mel_filters, need_audio_tensors

PROJECTOR = "qwen3a"
F16 = 1  # ggml's type id of float16
CHUNK, WINDOW = 100, 800  # mel frames a conv chunk (n_window * 2) and an attention window (n_window_infer) take
PAD = N_FFT // 2  # samples reflected at each end
TENSOR_NAMES["a_conv_out"] = "a.conv_out.weight"  # (the flattened convolution features to the encoder's width)


def conv_len(n: int) -> int:
    """Steps left of ``n`` after the three stride-2, padding-1 convolutions (100 frames -> 13 rows, 128 mel bins -> 16)."""
    for _ in range(3):
        n = (n - 1) // 2 + 1
    return n


ROWS_PER_CHUNK = conv_len(CHUNK)


@dataclass(frozen=True)
class Qwen3AudioConfig(AudioTowerConfig):
    """The audio tower's hyperparameters, as clip.cpp reads them (``clip.audio.*``; the conv channels from the kernel)."""

    eps: float
    n_down: int  # the convolutions' channels (downsample_hidden_size)
    n_text_embd: int

    @property
    def rows_per_chunk(self) -> int:
        """Rows 30 s of audio become (how runtime/audio.py states a clip's cost)."""
        return n_rows(SAMPLE_RATE * 30)


def n_rows(n_samples: int) -> int:
    """Rows a clip of ``n_samples`` becomes: its frames cut into 800-frame windows, each a whole number of chunks of 13."""
    n_eff = n_samples // HOP + 1
    full, rest = divmod(n_eff, WINDOW)
    return (full * (WINDOW // CHUNK) + -(-rest // CHUNK)) * ROWS_PER_CHUNK


def is_qwen3a(g: GGUFFile) -> bool:
    """Whether an opened audio mmproj file is Qwen3-Omni's audio tower."""
    return (g.get("clip.audio.projector_type") or g.get("clip.projector_type")) == PROJECTOR


def load_qwen3a_config(g: GGUFFile) -> Qwen3AudioConfig:
    """The config of an opened "qwen3a" mmproj file, or a one-line error."""
    check_audio_mmproj(g)
    need_audio_tensors(g, ("a.conv2d.1.weight", "a.conv_out.weight", "mm.a.mlp.2.weight", "a.position_embd.weight"))
    tower = audio_tower_keys(g)
    cfg = Qwen3AudioConfig(
        projector_type=PROJECTOR,
        **tower,
        n_down=int(g.tensors["a.conv2d.1.weight"].n_elements // 9),  # ([C, 1, 3, 3])
        n_text_embd=int(g.tensors["mm.a.mlp.2.weight"].n_elements // tower["n_embd"]),
    )
    if not 8 <= cfg.n_mel <= 256 or cfg.n_head <= 0 or cfg.n_embd % cfg.n_head:
        raise GGUFError(f"{g.path}: inconsistent audio hyperparameters (mel bins {cfg.n_mel}, width {cfg.n_embd}, heads {cfg.n_head})")
    return cfg


# --- the spectrogram ---------------------------------------------------------------------------------------------


def log_mel_windows(samples: np.ndarray, n_mel: int) -> list[np.ndarray]:
    """16 kHz mono float32 samples -> the spectrogram's windows, each float32 [n_mel, frames] (frames a multiple of
    100, zeros past the clip), as mtmd_audio_preprocessor_qwen3a::preprocess makes them."""
    x = np.asarray(samples, np.float32).reshape(-1)
    n = x.size
    if n == 0:
        raise KvrunError("the audio is empty")
    padded = np.zeros(n + 2 * PAD, np.float32)
    padded[PAD : PAD + n] = x
    i = np.arange(PAD)
    head, tail = PAD - i, n - 2 - i  # (reflections; libmtmd reads 0 where a short clip has no sample there)
    padded[:PAD] = np.where(head < n, x[np.minimum(head, n - 1)], 0.0)
    padded[PAD + n :] = np.where(tail >= 0, x[np.maximum(tail, 0)], 0.0)
    n_len = (padded.size - N_FFT) // HOP + 1
    hann = (0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT))).astype(np.float32)  # periodic
    filt = mel_filters(n_mel).astype(np.float64)
    mel = np.empty((n_mel, n_len), np.float32)
    for s in range(0, n_len, 2048):
        idx = (np.arange(s, min(s + 2048, n_len)) * HOP)[:, None] + np.arange(N_FFT)
        spec = np.fft.rfft((padded[idx] * hann).astype(np.float64), axis=-1)
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        mel[:, s : s + idx.shape[0]] = np.log10(np.maximum(power @ filt.T, 1e-10)).T
    floor = float(mel.max()) - 8.0  # (the clamp and scaling in double, as there)
    mel = ((np.maximum(mel.astype(np.float64), floor) + 4.0) / 4.0).astype(np.float32)
    n_eff = min(n_len, n // HOP + 1)
    out = []
    for off in range(0, n_eff, WINDOW):
        m = min(WINDOW, n_eff - off)
        w = np.zeros((n_mel, -(-m // CHUNK) * CHUNK), np.float32)
        w[:, :m] = mel[:, off : off + m]
        out.append(w)
    return out


# --- the encoder -------------------------------------------------------------------------------------------------


class Qwen3AudioEncoder:
    """Qwen3-Omni's audio tower and projector from an mmproj file: :meth:`encode` a clip into rows."""

    def __init__(self, g: GGUFFile, cfg: Qwen3AudioConfig, backend: Backend) -> None:
        if backend.name not in ("cpu", "gpu"):
            raise UnsupportedModelError(f"{g.path}: the audio encoder runs on the CPU or the GPU, not on {backend.name!r}")
        self.cfg, self.be, self.path = cfg, backend, g.path
        E, C = cfg.n_embd, cfg.n_down
        self.conv = [self._conv(g, n, 1 if n == 1 else C) for n in (1, 2, 3)]
        ld = WeightLoader(g, backend)

        def matrix(role: str, n_in: int, n_out: int) -> Any:
            t = g.tensor(TENSOR_NAMES[role])
            if t.n_elements != n_in * n_out:
                raise KvrunError(f"{g.path}: {t.name} has shape {t.shape}, expected [{n_out}, {n_in}]: not a Qwen3-Omni audio projector")
            return ld.matrix(role)

        self.conv_out = matrix("a_conv_out", C * conv_len(cfg.n_mel), E)
        pos = g.tensor("a.position_embd.weight")
        if pos.n_elements % E or pos.n_elements // E < ROWS_PER_CHUNK:
            raise KvrunError(f"{g.path}: a.position_embd.weight has shape {pos.shape}; the encoder needs {ROWS_PER_CHUNK} positions of {E}")
        self.pos_embd = dequantize(pos.data, pos.qtype, pos.shape).reshape(-1, E)[:ROWS_PER_CHUNK].astype(np.float32)
        self.layers = []
        for i in range(cfg.n_layer):
            L = {r: ld.host_vector(f"a_{r}", i) for r in ("ln1", "ln1_b", "ln2", "ln2_b")}
            for r in ("q", "k", "v", "o", "up", "down"):
                L[r], L[r + "_b"] = ld.matrix(f"a_{r}", i), ld.host_vector(f"a_{r}_b", i, required=r in ("q", "k", "v", "o"))
            self.layers.append(L)
        self.post_ln, self.post_ln_b = ld.host_vector("a_post_ln", required=False), ld.host_vector("a_post_ln_b", required=False)
        self.mlp1, self.mlp2 = matrix("mm_a_mlp1", E, E), matrix("mm_a_mlp2", E, cfg.n_text_embd)
        self.mlp1_b, self.mlp2_b = ld.host_vector("mm_a_mlp1_b", required=False), ld.host_vector("mm_a_mlp2_b", required=False)

    @staticmethod
    def _conv(g: GGUFFile, n: int, c_in: int) -> tuple[Kernel, np.ndarray]:
        """Convolution ``n``'s kernel [c_out, c_in, 3, 3] (F16 patches where the file stores it in F16, as
        ggml_conv_2d's im2col takes the kernel's type) and its bias [c_out, 1, 1]."""
        name = f"a.conv2d.{n}"
        if name + ".weight" not in g.tensors or name + ".bias" not in g.tensors:
            raise GGUFError(f"{g.path}: tensor {name + '.weight'!r} or its bias is missing; the projector file is incomplete")
        t, b = g.tensor(name + ".weight"), g.tensor(name + ".bias")
        if t.n_elements % (c_in * 9):
            raise KvrunError(f"{g.path}: {name}.weight has shape {t.shape}, expected [c_out, {c_in}, 3, 3]")
        w = dequantize(t.data, t.qtype, t.shape).reshape(-1, c_in, 3, 3).astype(np.float32)
        bias = dequantize(b.data, b.qtype, b.shape).reshape(-1, 1, 1).astype(np.float32)
        if bias.shape[0] != w.shape[0]:
            raise KvrunError(f"{g.path}: {name}.bias has {bias.shape[0]} values for {w.shape[0]} channels")
        return Kernel(w, t.qtype == F16), bias

    def n_rows(self, n_samples: int) -> int:
        """Rows a clip of ``n_samples`` becomes."""
        return n_rows(n_samples)

    def feed_context(self, model: Any) -> ContextManager[None]:
        """The block the clip's rows are fed in (runtime/audio.py): :func:`audio_rope`'s positions for them."""
        return audio_rope(model)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz mono samples -> the clip's rows, every window's in order, float32 [n, n_text_embd]."""
        return self.encode_mels(log_mel_windows(samples, self.cfg.n_mel))

    def encode_mels(self, windows: list[np.ndarray]) -> np.ndarray:
        """Spectrogram windows [n_mel, 100 k] -> their rows in order (:func:`_forward` on the encoder's device)."""
        for w in windows:
            if w.ndim != 2 or w.shape[0] != self.cfg.n_mel or w.shape[1] % CHUNK or not w.shape[1]:
                raise KvrunError(f"the audio encoder takes windows [{self.cfg.n_mel}, a multiple of {CHUNK}], got {list(w.shape)}")
        return _forward(ops_of(self), self, windows)


def _forward(ops: Any, enc: Qwen3AudioEncoder, windows: list[np.ndarray]) -> np.ndarray:
    """:meth:`Qwen3AudioEncoder.encode_mels` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU
    each window's mel goes up once and the clip's rows come down once)."""
    xp = ops.xp
    rows = [_project(ops, enc, _window(ops, enc, w)) for w in windows]
    return ops.to_host(xp.ascontiguousarray(rows[0] if len(rows) == 1 else xp.concatenate(rows), np.float32))


def _window(ops: Any, enc: Qwen3AudioEncoder, mel: np.ndarray) -> Any:
    """One window [n_mel, 100 k] -> the encoder's rows after its post LayerNorm [13 k, n_embd]: each chunk through
    the convolutions, ``a.conv_out`` and the positions, then the blocks over them all."""
    c, xp = enc.cfg, ops.xp
    m = ops.vector(mel)
    chunks = []
    for s in range(0, mel.shape[1], CHUNK):
        x = m[None, :, s : s + CHUNK]  # [1 channel, n_mel, 100 frames]
        for kern, b in enc.conv:
            x = ops.act(ops.conv2d(x, kern, 2, 1) + ops.const(b), "gelu_erf")
        C, F, T = x.shape  # (clip.cpp: permute to [T, C, F] and flatten, the frequency fastest)
        x = xp.ascontiguousarray(x.transpose(2, 0, 1).reshape(T, C * F))
        chunks.append(ops.linear(enc.conv_out, x) + ops.const(enc.pos_embd))  # (T is 13: every chunk is whole)
    x = chunks[0] if len(chunks) == 1 else xp.concatenate(chunks)
    for L in enc.layers:
        x = vit_block(ops, enc, L, x, "gelu_erf")
    if enc.post_ln is not None:
        x = ops.layer_norm(x, enc.post_ln, enc.post_ln_b, c.eps)
    return x


def _project(ops: Any, enc: Qwen3AudioEncoder, x: Any) -> Any:
    """The projector: ``mm.a.mlp.1`` + bias, GELU(erf), ``mm.a.mlp.2`` + bias."""
    return ops.linear(enc.mlp2, ops.act(ops.linear(enc.mlp1, x, enc.mlp1_b), "gelu_erf"), enc.mlp2_b)


# --- the rows in an M-RoPE text model ---------------------------------------------------------------------------


@contextmanager
def audio_rope(model: Any) -> Iterator[None]:
    """Within the block, rows fed to an interleaved M-RoPE text model (Qwen3-VL's, models/qwen3vl.py: Qwen3-Omni's
    thinker) turn as llama.cpp 0.3.36's libmtmd turns a clip's: ``set_position_mrope_1d`` gives row i at position p
    all four positions (p, p, p, p), the extra one too, so every rope pair turns by p, the plain neox table's row p
    (text gets (p, p, p, 0): the pairs past the sections unturned; measured on the tiny pair: the logits 2.2 off
    libmtmd's with text's positions, 1e-3 with these): the model's ``plain_rows`` (models/qwen3vl.py).  A model without
    it is left as it is, and so are rows after pictures (their M-RoPE positions, the forward's own)."""
    if not hasattr(model, "plain_rows"):
        yield
        return
    model.plain_rows = True
    try:
        yield
    finally:
        model.plain_rows = False
