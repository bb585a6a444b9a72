"""dots.note's audio encoder (rednote-hilab's dots3-note; llama.cpp's audio projector type "dots3note_a"), as libmtmd
computes it: the per-60 s-chunk log-mel (tools/mtmd/mtmd-audio.cpp's ``mtmd_audio_preprocessor_dots3note``), a
three-convolution stem, a rotary RMSNorm ViT and an MLP adapter (tools/mtmd/models/dots3note.cpp's
``clip_graph_dots3note_a``), read from an audio mmproj file.  Its rows feed the "dots3note" text model (a DeepSeek-V2
style MLA mixture with sparse attention; see the caveat at the end).

It shares Whisper's spectrogram arithmetic (models/whisper_audio.py's Slaney filters, the periodic 400-tap window, the
2^-24 floor, log10, max - 8, (x + 4) / 4) but cuts and pads its own way, and nothing of Whisper's encoder, hence a file
of its own:

    16 kHz mono samples
    -> cut in 60 s chunks (clip.cpp: audio_chunk_len 60); a chunk of n samples keeps n / 160 frames (none: skipped)
    -> each chunk: 200 samples reflected before it (x[200] .. x[1], zeros past its end), zeros after it (a full 60 s
       chunk reflects its own tail instead: x[n-2] ..), frames of 400 every 160, |FFT|^2, Slaney mel, log10 floored
       at 2^-24; the chunk's own max - 8 clamp and (x + 4) / 4 over its n / 160 frames alone
    -> each chunk encoded on its own (one graph a mel), the rows concatenated:
       three 3x3 stride-2 padding-1 convolutions (ggml_conv_2d: F16 patches times the kernel rounded to F16) + bias,
       each GELU(erf); features (channel, frequency) flattened per frame; ``a.conv_out`` (no bias): ceil(T / 8) rows
    -> build_vit: blocks of x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x)) (clip.audio.attention.layer_norm_epsilon),
       Q/K/V with the biases the file has, NEOX rope on the first half of each head (base 10000, positions 0..),
       softmax(q.k / sqrt(d_head)), out + bias; the FFN silu(gate + b) * (up + b) -> down + b
       (``clip.use_silu``); ``a.pre_ln`` / ``a.post_ln`` where the file has them
    -> the adapter: LayerNorm ``mm.a.norm_pre`` (eps 1e-5), ``mm.a.mlp.1`` + bias, GELU(erf), ``mm.a.mlp.3`` + bias

mtmd.cpp puts ``<|audio_comp_start|>`` and ``<|audio_comp_end|>`` around a clip (runtime/audio.py's AUDIO_MARKERS).
The forward (:func:`_forward`) is written once against models/vit_ops.py's ops (the layout steps as ``ops.xp`` array
code), so beside a text model on ``--device gpu`` it runs on the GPU (models/vit_device.py), rows within float32 noise
of the CPU's (tests/test_audio_dots3note.py).

Its tests run it beside dots.note's own text model (models/dots3note.py, which takes the rows through
``Model.input_embd``), on either device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import GGUFError, KvrunError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .deepseekocr_image import Kernel
from .lfm2a_audio import check_mel, host_values
from .vit_ops import ops_of
from .whisper_audio import HOP, N_FFT, SAMPLE_RATE, check_audio_mmproj, mel_filters, need_audio_key, need_audio_tensors

PROJECTOR = "dots3note_a"
CHUNK_SAMPLES = 60 * SAMPLE_RATE  # (clip.cpp's audio_chunk_len 60 s: each chunk its own spectrogram and graph)
MEL_FLOOR = 5.960464477539063e-08  # (filter_params' default mel_floor, 2^-24)
ROPE_BASE = 10000.0  # (clip.cpp sets hparams.rope_theta for dots3note_a)
EPS_ADAPTER = 1e-5  # (dots3note.cpp's build_norm of mm.a.norm_pre)
#: the blocks' matrices (clip-impl.h's names after "a.blk.N."), as loader roles "d3a_<name>"
BLOCK = ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_gate", "ffn_up", "ffn_down")
TENSOR_NAMES.update({f"d3a_{n}": f"a.blk.{{i}}.{n}.weight" for n in BLOCK})
TENSOR_NAMES.update({"d3a_conv_out": "a.conv_out.weight", "d3a_mlp_1": "mm.a.mlp.1.weight", "d3a_mlp_3": "mm.a.mlp.3.weight"})


@dataclass(frozen=True)
class Dots3NoteAudioConfig:
    """The audio encoder's hyperparameters, as clip.cpp reads them (``clip.audio.*``; the rest from the tensors)."""

    projector_type: str
    n_mel: int
    n_conv: int  # the stem's channels
    n_embd: int
    n_layer: int
    n_head: int
    eps: float
    n_text_embd: int

    @property
    def rows_per_chunk(self) -> int:
        """Rows 30 s of audio become (how runtime/audio.py states a clip's cost)."""
        return n_rows(SAMPLE_RATE * 30)


def conv_len(n: int) -> int:
    """What three 3x3 stride-2 padding-1 convolutions leave of ``n``: ceil(n / 8) (clip.cpp's n_patches)."""
    for _ in range(3):
        n = (n - 1) // 2 + 1
    return n


def n_rows(n_samples: int) -> int:
    """Rows a clip of ``n_samples`` becomes: each 60 s chunk's n / 160 frames, an eighth of them rounded up."""
    return sum(conv_len(min(CHUNK_SAMPLES, n_samples - s) // HOP) for s in range(0, n_samples, CHUNK_SAMPLES))


def load_dots3note_audio_config(g: GGUFFile) -> Dots3NoteAudioConfig:
    """The config of an opened "dots3note_a" mmproj file, or a one-line error."""
    check_audio_mmproj(g)
    need_audio_tensors(g, ("a.conv2d.1.weight", "a.conv2d.3.weight", "a.conv_out.weight", "mm.a.norm_pre.weight", "mm.a.mlp.3.weight"))
    E = int(need_audio_key(g, "embedding_length"))
    n_mel = int(need_audio_key(g, "num_mel_bins"))
    n_conv = int(g.tensors["a.conv2d.1.weight"].n_elements // 9)  # ([C, 1, 3, 3])
    cfg = Dots3NoteAudioConfig(
        projector_type=PROJECTOR,
        n_mel=n_mel,
        n_conv=n_conv,
        n_embd=E,
        n_layer=int(need_audio_key(g, "block_count")),
        n_head=int(need_audio_key(g, "attention.head_count")),
        eps=float(need_audio_key(g, "attention.layer_norm_epsilon")),
        n_text_embd=int(g.tensors["mm.a.mlp.3.weight"].n_elements // (g.tensors["mm.a.mlp.1.weight"].n_elements // E)),
    )
    d = E // max(cfg.n_head, 1)
    if not 8 <= n_mel <= 256 or n_conv <= 0 or cfg.n_head <= 0 or E % cfg.n_head or d % 4 or cfg.n_layer <= 0:
        raise GGUFError(f"{g.path}: inconsistent audio hyperparameters (mel bins {n_mel}, stem channels {n_conv}, width {E}, "
                        f"heads {cfg.n_head}, layers {cfg.n_layer})")  # fmt: skip
    return cfg


# --- the spectrogram ---------------------------------------------------------------------------------------------


def log_mel(samples: np.ndarray, n_mel: int) -> list[np.ndarray]:
    """16 kHz mono float32 samples -> each 60 s chunk's log-mel spectrogram, float32 [n_mel, n / 160], as
    mtmd_audio_preprocessor_dots3note::preprocess makes them."""
    x = np.asarray(samples, np.float32).reshape(-1)
    if x.size < HOP:  # (libmtmd makes no spectrogram and fails the clip)
        raise KvrunError(f"the audio is {x.size} samples long; dots.note's encoder takes at least {HOP} (10 ms at 16 kHz)")
    pad = N_FFT // 2
    hann = (0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT))).astype(np.float32)  # periodic
    filt = mel_filters(n_mel).astype(np.float64)
    out = []
    for start in range(0, x.size, CHUNK_SAMPLES):
        c = x[start : start + CHUNK_SAMPLES]
        n, n_valid = c.size, c.size // HOP
        if n_valid == 0:  # (a sub-hop tail: no frames)
            continue
        padded = np.zeros(n + 2 * pad, np.float32)
        src = pad - np.arange(pad)
        padded[:pad] = np.where(src < n, c[np.minimum(src, n - 1)], 0.0)
        padded[pad : pad + n] = c
        if n == CHUNK_SAMPLES:  # (a full chunk reflects its own tail; a partial one sees the reference's zero padding)
            tail = n - 2 - np.arange(pad)
            padded[n + pad :] = np.where(tail >= 0, c[np.maximum(tail, 0)], 0.0)
        mel = np.empty((n_mel, n_valid), np.float32)
        for s in range(0, n_valid, 2048):
            idx = (np.arange(s, min(s + 2048, n_valid)) * HOP)[:, None] + np.arange(N_FFT)
            spec = np.fft.rfft((padded[idx] * hann).astype(np.float64), axis=-1)
            power = (spec.real**2 + spec.imag**2).astype(np.float32)  # (float32 as mtmd keeps it)
            mel[:, s : s + idx.shape[0]] = np.log10(np.maximum(power @ filt.T, MEL_FLOOR)).astype(np.float32).T
        out.append(((np.maximum(mel.astype(np.float64), float(mel.max()) - 8.0) + 4.0) / 4.0).astype(np.float32))
    return out


# --- the encoder -------------------------------------------------------------------------------------------------


class Dots3NoteAudioEncoder:
    """dots.note's audio encoder and adapter from an mmproj file: :meth:`encode` a clip into rows."""

    def __init__(self, g: GGUFFile, cfg: Dots3NoteAudioConfig, backend: Backend) -> None:
        self.cfg, self.be, self.path = cfg, backend, g.path
        E, C = cfg.n_embd, cfg.n_conv

        def host(name: str, n: int, required: bool = True) -> np.ndarray | None:
            return None if not required and name not in g.tensors else host_values(g, name, n, "a dots.note audio")

        ld = WeightLoader(g, backend)

        def matrix(role: str, n_in: int, n_out: int, i: int | None = None) -> Any:
            t = g.tensor(TENSOR_NAMES[role].format(i=i))
            if t.n_elements != n_in * n_out or t.shape[-1] != n_in:
                raise KvrunError(f"{g.path}: {t.name} has shape {list(t.shape)}, expected [{n_out}, {n_in}]: not a dots.note audio projector")
            return ld.matrix(role, i)

        # (ggml_conv_2d multiplies F16 patches by the kernel rounded to F16, whatever type the file stores)
        self.convs = []
        for i, c_in in ((1, 1), (2, C), (3, C)):
            w = host(f"a.conv2d.{i}.weight", C * c_in * 9).reshape(C, c_in, 3, 3)
            self.convs.append((Kernel(w.astype(np.float16).astype(np.float32), True), host(f"a.conv2d.{i}.bias", C).reshape(C, 1, 1)))
        self.conv_out = matrix("d3a_conv_out", C * conv_len(cfg.n_mel), E)
        self.pre_ln, self.post_ln = host("a.pre_ln.weight", E, False), host("a.post_ln.weight", E, False)
        self.pre_ln_b, self.post_ln_b = host("a.pre_ln.bias", E, False), host("a.post_ln.bias", E, False)
        self.layers = []
        for i in range(cfg.n_layer):
            b = f"a.blk.{i}."
            ff = g.tensor(f"{b}ffn_up.weight").n_elements // E
            L: dict[str, Any] = {"ln1": host(b + "ln1.weight", E), "ln2": host(b + "ln2.weight", E)}
            L["ln1_b"], L["ln2_b"] = host(b + "ln1.bias", E, False), host(b + "ln2.bias", E, False)
            for r, n_in, n_out in (("attn_q", E, E), ("attn_k", E, E), ("attn_v", E, E), ("attn_out", E, E),
                                   ("ffn_gate", E, ff), ("ffn_up", E, ff), ("ffn_down", ff, E)):  # fmt: skip
                L[r], L[r + "_b"] = matrix(f"d3a_{r}", n_in, n_out, i), host(f"{b}{r}.bias", n_out, False)
            self.layers.append(L)
        self.norm_pre, self.norm_pre_b = host("mm.a.norm_pre.weight", E), host("mm.a.norm_pre.bias", E)
        hidden = g.tensor("mm.a.mlp.1.weight").n_elements // E
        self.mlp1, self.mlp1_b = matrix("d3a_mlp_1", E, hidden), host("mm.a.mlp.1.bias", hidden)
        self.mlp3, self.mlp3_b = matrix("d3a_mlp_3", hidden, cfg.n_text_embd), host("mm.a.mlp.3.bias", cfg.n_text_embd)

    def n_rows(self, n_samples: int) -> int:
        """Rows a clip of ``n_samples`` becomes."""
        return n_rows(n_samples)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz mono samples -> the clip's rows, float32 [n_rows, n_text_embd]: each 60 s chunk's, in turn."""
        return np.concatenate([self.encode_mel(m) for m in log_mel(samples, self.cfg.n_mel)])

    def encode_mel(self, mel: np.ndarray) -> np.ndarray:
        """One chunk's spectrogram [n_mel, frames] -> its rows (:func:`_forward` on the encoder's device)."""
        check_mel(mel, self.cfg.n_mel, 1)
        return _forward(ops_of(self), self, mel)


def rope_table(T: int, n_rot: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [T, n_rot / 2] of ggml's NEOX rope over ``n_rot`` dimensions at positions 0 .. T - 1, base 10000,
    the angles as ggml_rope_cache_init makes them: float32, the position times powf(base, -2 / n_rot) again and
    again."""
    scale = np.float32(np.float32(ROPE_BASE) ** np.float32(-2.0 / n_rot))
    theta = np.empty((T, n_rot // 2), np.float32)
    theta[:, 0] = np.arange(T, dtype=np.float32)
    for i in range(1, n_rot // 2):
        theta[:, i] = theta[:, i - 1] * scale
    return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


def _forward(ops: Any, enc: Dots3NoteAudioEncoder, mel: np.ndarray) -> np.ndarray:
    """:meth:`Dots3NoteAudioEncoder.encode_mel` past its checks on either device's ``ops`` (models/vit_ops.py; on the
    GPU the spectrogram goes up once and the rows come down once)."""
    xp, cfg = ops.xp, enc.cfg
    x = ops.vector(np.ascontiguousarray(mel[None], np.float32))  # [1, n_mel, T]: ggml's [W = frames, H = mel bins]
    for kern, b in enc.convs:
        x = xp.ascontiguousarray(ops.conv2d(x, kern, 2, 1) + ops.const(b), np.float32)
        C, F, T = x.shape
        x = xp.ascontiguousarray(ops.act(x.reshape(C * F, T), "gelu_erf"), np.float32).reshape(C, F, T)
    C, F, T = x.shape
    x = ops.linear(enc.conv_out, xp.ascontiguousarray(x.reshape(C * F, T).T, np.float32))  # (feature f + F c, as permuted)
    if enc.pre_ln is not None:
        x = ops.rms_norm(x, enc.pre_ln, cfg.eps, enc.pre_ln_b)
    d = cfg.n_embd // cfg.n_head
    cos, sin = (ops.vector(t) for t in rope_table(T, d // 2))
    for L in enc.layers:
        x = _block(ops, enc, L, x, cos, sin)
    if enc.post_ln is not None:
        x = ops.rms_norm(x, enc.post_ln, cfg.eps, enc.post_ln_b)
    x = ops.layer_norm(x, enc.norm_pre, enc.norm_pre_b, EPS_ADAPTER)
    x = xp.ascontiguousarray(ops.act(ops.linear(enc.mlp1, x, enc.mlp1_b), "gelu_erf"), np.float32)
    return ops.to_host(xp.ascontiguousarray(ops.linear(enc.mlp3, x, enc.mlp3_b), np.float32))


def partial_rope(ops: Any, q: Any, k: Any, cos: Any, sin: Any) -> tuple[Any, Any]:
    """ggml_rope_ext NEOX over the first half of each head ([T, H, d]: dimensions i and i + d/4 turned together, the
    second half left as it is)."""
    xp = ops.xp
    n = 2 * cos.shape[-1]
    qr, kr = ops.rope_neox(xp.ascontiguousarray(q[..., :n]), xp.ascontiguousarray(k[..., :n]), cos, sin)
    return (xp.ascontiguousarray(xp.concatenate([qr, q[..., n:]], axis=-1), np.float32),
            xp.ascontiguousarray(xp.concatenate([kr, k[..., n:]], axis=-1), np.float32))  # fmt: skip


def _block(ops: Any, enc: Dots3NoteAudioEncoder, L: dict[str, Any], x: Any, cos: Any, sin: Any) -> Any:
    """One build_vit block: RMSNorm, Q/K/V, partial NEOX rope, attention, out (+ bias) added; RMSNorm, SwiGLU added."""
    cfg = enc.cfg
    T, H = x.shape[0], cfg.n_head
    d = cfg.n_embd // H
    h = ops.rms_norm(x, L["ln1"], cfg.eps, L["ln1_b"])
    q, k, v = (ops.linear(L[r], h, L[r + "_b"]).reshape(T, H, d) for r in ("attn_q", "attn_k", "attn_v"))
    q, k = partial_rope(ops, q, k, cos, sin)
    x = x + ops.linear(L["attn_out"], ops.attend(q, k, v, np.float32(1.0 / math.sqrt(d))), L["attn_out_b"])
    h = ops.rms_norm(x, L["ln2"], cfg.eps, L["ln2_b"])
    gate = ops.act(ops.linear(L["ffn_gate"], h, L["ffn_gate_b"]), "silu")
    f = ops.xp.ascontiguousarray(gate * ops.linear(L["ffn_up"], h, L["ffn_up_b"]), np.float32)
    return x + ops.linear(L["ffn_down"], f, L["ffn_down_b"])
