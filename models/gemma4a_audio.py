"""Gemma 4's audio encoder (llama.cpp's audio projector type "gemma4a", Gemma 4 E2B/E4B), as libmtmd computes it:
its log-mel features (tools/mtmd/mtmd-audio.cpp's ``mtmd_audio_preprocessor_gemma4a``), the conformer
(tools/mtmd/models/gemma4a.cpp's ``clip_graph_gemma4a``) and the embedder into a Gemma 4 text model, read from an
audio mmproj file.

It shares the macaron block shape with LFM2-Audio's FastConformer (models/lfm2a_audio.py) but little arithmetic:
RMSNorms everywhere, chunked local attention instead of full relative attention, a causal convolution, no
subsampling MLP, hence a file of its own:

    16 kHz mono samples, cut into 30 s pieces (each piece its own spectrogram and its own rows, in order)
    -> a piece of n samples: 160 zeros in front, zeros behind up to (f - 1) * 160 + 512 samples, f = (n - 161) / 160
       + 1 frames of 512 samples every 160, the first 320 under a periodic Hann window (the rest zero), |FFT| (the
       magnitude, not the power), an HTK mel bank without area normalisation, natural log floored at 1e-3.  No
       normalisation
    -> the spectrogram as a one-channel picture, time its height and mel its width: twice (conv 3x3 stride 2 padding
       1, ggml_conv_2d's F16 patches; LayerNorm over the channels, epsilon 1e-6, no bias; ReLU)
       -> each time step's (frequency, channel) features, the channel fastest, through ``a.input_projection``
    -> blocks: x += FFN(RMS(x)) / 2 (up, SiLU, down, RMS ``ffn_post_norm``); x += RMS_post(ChunkedAttention(RMS(x)));
       x += ConvModule(RMS(x)); x += FFN_1(RMS(x)) / 2; x = RMS(x).  Every RMSNorm's epsilon is 1e-6
    -> ChunkedAttention: Q scaled by 1/sqrt(d)/ln 2 and ``per_dim_scale``, K by ln(1 + e)/ln 2 and
       ``per_dim_k_scale``; queries in blocks of 12, each block's keys the 24 positions from 12 before it; content
       scores plus Transformer-XL's blocked relative shift of the query's products with ``attn_k_rel`` of 13
       sinusoids (sin half, cos half) of distances 12 .. 0; soft-capped at 50 (tanh), a key seen where it is no later
       than the query and less than 12 before it; softmax, times V, ``attn_out``
    -> ConvModule: ``conv_pw1`` to 2E, GLU, a causal depthwise convolution of 5 taps (4 zeros in front: ggml_ssm_conv),
       RMSNorm, SiLU, ``conv_pw2`` (the norms' tensors swapped in the file, clip.cpp reads ``conv_norm`` before the
       module and ``norm_conv`` inside it)
    -> ``a.pre_encode.out`` + bias, RMSNorm (no weight) times ``mm.a.soft_emb_norm``, ``mm.a.input_projection``.
       Every product is Gemma4ClippableLinear's: input and output clamped where the file has
       ``<weight>.input_min``... scalars (clip.cpp's ``clamp_info_map``)

mtmd.cpp puts ``<|audio>`` before a clip's rows and ``<audio|>`` after (all its pieces between one pair:
runtime/audio.py's AUDIO_MARKERS) and decodes the rows causally (``mtmd_decode_use_non_causal`` is false for
gemma4a), while models/gemma4.py lets rows fed as embeddings see each other both ways (a gemma4v picture's):
:meth:`Gemma4AudioEncoder.feed_context` turns that off while a clip is fed (``causal_rows``).  The forward (:func:`_forward`) is written
once against models/vit_ops.py's ops, so beside a text model on ``--device gpu`` it runs on the GPU
(models/vit_device.py), rows within float32 noise of the CPU's (tests/test_audio_gemma4a.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import GGUFError, KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import WeightLoader
from .deepseekocr_image import Kernel
from .gemma4v_image import CLAMP_KEYS, _HostOps
from .lfm2a_audio import check_mel, host_values
from .vit_ops import ops_of
from .whisper_audio import HOP, SAMPLE_RATE, AudioTowerConfig, audio_tower_shape, check_audio_mmproj, need_audio_key, need_audio_tensors

PROJECTOR = "gemma4a"
N_FFT, WINDOW, MEL_FLOOR = 512, 320, 1e-3  # clip.cpp's gemma4a preprocessing: a 20 ms window in a 512-point FFT
PIECE = 30 * SAMPLE_RATE  # mtmd_audio_preprocessor_gemma4a's pieces (each its own spectrogram and rows)
EPS = 1e-6  # every norm's (clip_graph_gemma4a's norm_eps)
CHUNK, PAST = 12, 12  # the attention's query block and how far back it sees (max_past_horizon)
CONTEXT, N_REL = CHUNK + PAST, PAST + 1  # keys a block sees; relative distances 12 .. 0
SOFTCAP, RES = 50.0, np.float32(0.5)
K_DW = 5  # the convolution module's causal kernel (clip_graph_gemma4a pads 4 in front)
F32 = np.float32


def conv_len(n: int) -> int:
    """Rows left of ``n`` frames after the two stride-2, padding-1 convolutions (clip.cpp's n_output_tokens)."""
    for _ in range(2):
        n = (n - 1) // 2 + 1
    return n


def piece_frames(n: int) -> int:
    """Frames a piece of ``n`` samples becomes (PyTorch's unfold of 321 samples every 160 on the 160-padded piece)."""
    return (n + WINDOW // 2 - (WINDOW + 1)) // HOP + 1


def pieces(n_samples: int) -> list[int]:
    """The 30 s pieces' lengths of a clip of ``n_samples``."""
    return [min(PIECE, n_samples - s) for s in range(0, n_samples, PIECE)]


def n_rows(n_samples: int) -> int:
    """Rows a clip of ``n_samples`` becomes: each piece's frames halved twice."""
    return sum(conv_len(piece_frames(n)) for n in pieces(n_samples))


@dataclass(frozen=True)
class Gemma4AudioConfig(AudioTowerConfig):
    """The audio encoder's hyperparameters, as clip.cpp reads them (``clip.audio.*``; the rest from the tensors)."""

    n_text_embd: int  # (``clip.audio.projection_dim``: clip_n_mmproj_embd's for gemma4a)

    @property
    def rows_per_chunk(self) -> int:
        """Rows 30 s of audio become (how runtime/audio.py states a clip's cost)."""
        return n_rows(PIECE)


def load_gemma4a_config(g: GGUFFile) -> Gemma4AudioConfig:
    """The config of an opened "gemma4a" mmproj file, or a one-line error."""
    check_audio_mmproj(g)
    need_audio_tensors(g, ("a.conv1d.0.weight", "a.conv1d.1.weight", "a.input_projection.weight", "mm.a.input_projection.weight"))
    cfg = Gemma4AudioConfig(projector_type=PROJECTOR, **audio_tower_shape(g), n_text_embd=int(need_audio_key(g, "projection_dim")))
    if not 8 <= cfg.n_mel <= 256 or cfg.n_head <= 0 or cfg.n_embd % cfg.n_head or cfg.n_embd % 2:
        raise GGUFError(f"{g.path}: inconsistent audio hyperparameters (mel bins {cfg.n_mel}, width {cfg.n_embd}, heads {cfg.n_head})")
    return cfg


# --- the spectrogram ---------------------------------------------------------------------------------------------


def htk_mel_filters(n_mel: int) -> np.ndarray:
    """fill_mel_filterbank_matrix with the HTK scale and no area normalisation, 0 .. 8 kHz: [n_mel, N_FFT / 2 + 1]
    (computed in float64, kept as float32 as there)."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    mel = hz_to_mel(np.float64(0.0)) + (hz_to_mel(np.float64(SAMPLE_RATE / 2)) - hz_to_mel(np.float64(0.0))) * (np.arange(n_mel + 2) / (n_mel + 1))
    hz = 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    f = np.arange(N_FFT // 2 + 1) * (SAMPLE_RATE / N_FFT)
    lo, c, hi = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (f >= lo) & (f <= c)
    down = (f > c) & (f <= hi)
    w = np.where(up, (f - lo) / np.maximum(1e-30, c - lo), np.where(down, (hi - f) / np.maximum(1e-30, hi - c), 0.0))
    return w.astype(F32)


def hann_window() -> np.ndarray:
    """The 512 taps of the window: a periodic 320-sample Hann (0.5 - 0.5 cos(2 pi i / 320)), then zeros."""
    out = np.zeros(N_FFT, F32)
    out[:WINDOW] = F32(0.5) - F32(0.5) * np.cos((2.0 * np.pi * np.arange(WINDOW) / WINDOW).astype(F32))
    return out


def log_mel(samples: np.ndarray, n_mel: int) -> list[np.ndarray]:
    """16 kHz mono float32 samples -> each 30 s piece's log-mel spectrogram, float32 [n_mel, frames], as
    mtmd_audio_preprocessor_gemma4a::preprocess makes them."""
    x = np.asarray(samples, np.float32).reshape(-1)
    if x.size == 0 or piece_frames(pieces(x.size)[-1]) < 1:
        raise KvrunError(f"the audio is {x.size} samples long; Gemma 4's audio encoder takes at least {WINDOW + 1} "
                         f"samples a 30 s piece (a clip of 30 s and {pieces(x.size)[-1] if x.size else 0} samples leaves too few)")  # fmt: skip
    filt, hann = htk_mel_filters(n_mel).astype(np.float64), hann_window()
    out = []
    for s, n in zip(range(0, x.size, PIECE), pieces(x.size)):
        f = piece_frames(n)
        padded = np.zeros((f - 1) * HOP + N_FFT, np.float32)  # (160 zeros in front, the rest behind)
        padded[WINDOW // 2 : WINDOW // 2 + n] = x[s : s + n]
        mel = np.empty((n_mel, f), np.float32)
        for b in range(0, f, 2048):
            idx = (np.arange(b, min(b + 2048, f)) * HOP)[:, None] + np.arange(N_FFT)
            spec = np.fft.rfft((padded[idx] * hann).astype(np.float64), axis=-1)
            mag = magnitude((spec.real**2 + spec.imag**2).astype(F32))
            mel[:, b : b + idx.shape[0]] = np.log(np.maximum(mag.astype(np.float64) @ filt.T, MEL_FLOOR)).T
        out.append(mel)
    return out


def magnitude(power: np.ndarray) -> np.ndarray:
    """What the mel bank reads of each FFT bin: gemma4a's preprocessor takes |X| (``use_magnitude``), the square root
    of the power the other preprocessors of libmtmd's read."""
    return np.sqrt(power)


def rel_pos_table(E: int) -> np.ndarray:
    """clip.cpp's ``pos_emb`` input: [13, E], row p the distance 12 - p, its first E/2 values the sines of the
    distance times 10000^(-i/(E/2 - 1)) and the last E/2 the cosines (float arithmetic, as there)."""
    half = E // 2
    inc = F32(math.log(10000.0) / max(half - 1, 1))
    inv = np.exp(-np.arange(half, dtype=F32) * inc).astype(F32)
    ang = (np.arange(PAST, -1, -1, dtype=F32)[:, None] * inv[None, :]).astype(F32)
    return np.concatenate([np.sin(ang), np.cos(ang)], axis=1).astype(F32)


def block_mask(T: int) -> np.ndarray:
    """clip.cpp's ``kq_mask`` [blocks, 12, 24]: 0 where block b's query q sees its context's key k (the key no later
    than the query, less than 12 before it, both inside the clip), -1e9 elsewhere."""
    B = -(-T // CHUNK)
    gq = (np.arange(B)[:, None, None] * CHUNK + np.arange(CHUNK)[None, :, None])
    gk = (np.arange(B)[:, None, None] * CHUNK - PAST + np.arange(CONTEXT)[None, None, :])
    ok = (gq < T) & (gk >= 0) & (gk < T) & (gk <= gq) & (gq - gk < PAST)
    return np.where(ok, F32(0.0), F32(-1e9)).astype(F32)


def shift_index() -> np.ndarray:
    """The blocked relative shift as an index [12, 24] into a query's 13 relative scores and a zero behind them: key k
    of query q reads relative row k - q where 0 <= k - q <= 12 (distance 12 - (k - q)), else the zero (clip.cpp pads
    the rows to 25, views them 24 long)."""
    r = np.arange(CONTEXT)[None, :] - np.arange(CHUNK)[:, None]
    return np.where((r >= 0) & (r < N_REL), r, N_REL)


# --- the encoder -------------------------------------------------------------------------------------------------


class Gemma4AudioEncoder:
    """Gemma 4's audio conformer and embedder from an mmproj file: :meth:`encode` a clip into rows."""

    def __init__(self, g: GGUFFile, cfg: Gemma4AudioConfig, backend: Backend) -> None:
        self.cfg, self.be, self.path = cfg, backend, g.path
        E, H = cfg.n_embd, cfg.n_head
        d = E // H
        ld = WeightLoader(g, backend)
        self.clamps: dict[int, tuple[float, float, float, float]] = {}

        def vec(name: str, n: int | None, required: bool = True) -> np.ndarray | None:
            return None if not required and name not in g.tensors else host_values(g, name, n, "a Gemma 4 audio")

        def mat(name: str, n_in: int, n_out: int | None = None, required: bool = True) -> Any:
            t = g.tensors.get(name)
            if t is None:
                if required:
                    raise GGUFError(f"{g.path}: tensor {name!r} is missing; the projector file is incomplete")
                return None
            if t.shape[-1] != n_in or (n_out is not None and t.n_elements != n_in * n_out):
                raise KvrunError(f"{g.path}: {name} has shape {t.shape}, expected [{n_out or '?'}, {n_in}]: not a Gemma 4 audio projector")
            w = ld._upload(t, t.rows(), t.n_elements // n_in)  # (the loader's checks and upload, by tensor name)
            bounds = [vec(name.replace(".weight", "." + k), 1, False) for k in CLAMP_KEYS]
            if any(b is not None for b in bounds):
                inf = float(np.finfo(np.float32).max)
                dflt = (-inf, inf, -inf, inf)
                self.clamps[id(w)] = tuple(float(b[0]) if b is not None else v for b, v in zip(bounds, dflt))  # type: ignore[assignment]
            return w

        # (ggml_conv_2d runs on F16 patches times the kernel rounded to F16, whatever the file stores: measured on the
        # tiny pair, float32 convolutions put the rows 1.6e-3 off libmtmd's, these 3e-6)
        c0 = g.tensor("a.conv1d.0.weight")
        c1 = g.tensor("a.conv1d.1.weight")
        C0, C1 = int(c0.shape[0]), int(c1.shape[0])
        if c0.n_elements != C0 * 9 or c1.n_elements != C1 * C0 * 9:
            raise KvrunError(f"{g.path}: a.conv1d kernels {c0.shape} and {c1.shape} are not 3x3 from 1 then {C0} channels")
        self.convs = []
        for i, (t, cin) in enumerate(((c0, 1), (c1, C0))):
            w = dequantize(t.data, t.qtype, t.shape).reshape(-1, cin, 3, 3).astype(F32)
            self.convs.append((Kernel(w.astype(np.float16).astype(F32), True), vec(f"a.conv1d.{i}.bias", w.shape[0], False),
                               vec(f"a.conv1d.{i}.norm.weight", w.shape[0], False)))  # fmt: skip
        self.inp_proj = mat("a.input_projection.weight", C1 * conv_len(cfg.n_mel), E)
        self.inp_proj_b = vec("a.input_projection.bias", E, False)
        self.layers = []
        for i in range(cfg.n_layer):
            b = f"a.blk.{i}."
            ff = g.tensor(b + "ffn_up.weight").n_elements // E
            ff1 = g.tensor(b + "ffn_up_1.weight").n_elements // E
            attn_norm = vec(b + "attn_pre_norm.weight", E, False)
            self.layers.append({
                "ffn_norm": vec(b + "ffn_norm.weight", E), "ffn_up": mat(b + "ffn_up.weight", E, ff),
                "ffn_down": mat(b + "ffn_down.weight", ff, E), "ffn_post": vec(b + "ffn_post_norm.weight", E, False),
                "attn_norm": attn_norm if attn_norm is not None else vec(b + "ln1.weight", E, False),
                "q": mat(b + "attn_q.weight", E, E), "k": mat(b + "attn_k.weight", E, E), "v": mat(b + "attn_v.weight", E, E),
                "o": mat(b + "attn_out.weight", E, E), "o_b": vec(b + "attn_out.bias", E, False),
                "q_scale": vec(b + "per_dim_scale.weight", d, False), "k_scale": vec(b + "per_dim_k_scale.weight", d, False),
                "k_rel": mat(b + "attn_k_rel.weight", E, E, False), "attn_post": vec(b + "attn_post_norm.weight", E, False),
                # (the converter's conv_norm is the norm before the module, its norm_conv the one inside: clip.cpp)
                "conv_pre": vec(b + "conv_norm.weight", E), "pw1": mat(b + "conv_pw1.weight", E, 2 * E),
                "dw": vec(b + "conv_dw.weight", E * K_DW).reshape(E, K_DW), "dw_b": vec(b + "conv_dw.bias", E, False),  # type: ignore[union-attr]
                "conv_norm": vec(b + "norm_conv.weight", E, False), "pw2": mat(b + "conv_pw2.weight", E, E),
                "ffn_norm_1": vec(b + "ffn_norm_1.weight", E), "ffn_up_1": mat(b + "ffn_up_1.weight", E, ff1),
                "ffn_down_1": mat(b + "ffn_down_1.weight", ff1, E), "ffn_post_1": vec(b + "ffn_post_norm_1.weight", E, False),
                "ln2": vec(b + "ln2.weight", E, False),
            })  # fmt: skip
        out = g.tensors.get("a.pre_encode.out.weight")
        self.out_proj = mat("a.pre_encode.out.weight", E, None, False)
        n_out = out.n_elements // E if out is not None else E
        self.out_proj_b = vec("a.pre_encode.out.bias", n_out, False)
        self.soft_norm = vec("mm.a.soft_emb_norm.weight", n_out, False)
        self.mm_proj = mat("mm.a.input_projection.weight", n_out, cfg.n_text_embd)
        self.pos = rel_pos_table(E)

    def n_rows(self, n_samples: int) -> int:
        """Rows a clip of ``n_samples`` becomes."""
        return n_rows(n_samples)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz mono samples -> the clip's rows (every 30 s piece's, in order), float32 [n_rows, n_text_embd]."""
        return np.concatenate([self.encode_mel(m) for m in log_mel(samples, self.cfg.n_mel)])

    def encode_mel(self, mel: np.ndarray) -> np.ndarray:
        """One piece's spectrogram [n_mel, frames] -> its rows (:func:`_forward` on the encoder's device)."""
        check_mel(mel, self.cfg.n_mel, 1)
        return _forward(ops_of(self, host=_HostOps), self, mel)

    @contextmanager
    def feed_context(self, model: Any) -> Iterator[None]:
        """While a clip's rows are fed: Gemma 4's text model reading them causally (``causal_rows``, models/gemma4.py),
        as libmtmd decodes gemma4a's; its pictures' rows see each other."""
        if not hasattr(model, "causal_rows"):
            yield
            return
        model.causal_rows = True
        try:
            yield
        finally:
            model.causal_rows = False


def _mm(ops: Any, enc: Gemma4AudioEncoder, w: Any, x: Any) -> Any:
    """clip_graph_gemma4a's ``build_mm``: ``x @ w.T``, its input and output clamped where the file says."""
    b = enc.clamps.get(id(w))
    if b is not None:
        x = ops.xp.clip(x, F32(b[0]), F32(b[1]))
    y = ops.linear(w, ops.xp.ascontiguousarray(x, F32))
    return y if b is None else ops.xp.clip(y, F32(b[2]), F32(b[3]))


def _forward(ops: Any, enc: Gemma4AudioEncoder, mel: np.ndarray) -> np.ndarray:
    """:meth:`Gemma4AudioEncoder.encode_mel` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU
    the spectrogram and the attention's tables go up once and the rows come down once)."""
    xp = ops.xp
    x = _subsample(ops, enc, mel)
    T = x.shape[0]
    mask, shift = ops.vector(block_mask(T)), xp.asarray(shift_index())  # (an index: xp's own, not a float table)
    for L in enc.layers:
        x = _block(ops, enc, L, x, mask, shift)
    if enc.out_proj is not None:
        x = _mm(ops, enc, enc.out_proj, x)
        if enc.out_proj_b is not None:
            x = x + ops.const(enc.out_proj_b)
    x = ops.rms_norm(xp.ascontiguousarray(x, F32), enc.soft_norm, EPS)
    return ops.to_host(xp.ascontiguousarray(_mm(ops, enc, enc.mm_proj, x), F32))


def _subsample(ops: Any, enc: Gemma4AudioEncoder, mel: np.ndarray) -> Any:
    """The spectrogram through clip_graph_gemma4a's two convolutions and ``a.input_projection``: [T, n_embd]."""
    xp = ops.xp
    x = ops.vector(np.ascontiguousarray(mel.T))[None]  # [1, frames, n_mel]: time the picture's height
    for kern, b, norm in enc.convs:
        x = ops.conv2d(x, kern, 2, 1)
        if b is not None:
            x = x + ops.const(b.reshape(-1, 1, 1))
        if norm is not None:  # (nn.LayerNorm over each pixel's channels, no bias)
            C, T, F = x.shape
            y = ops.layer_norm(xp.ascontiguousarray(x.transpose(1, 2, 0).reshape(T * F, C), F32), norm, None, EPS)
            x = xp.ascontiguousarray(y.reshape(T, F, C).transpose(2, 0, 1))
        x = xp.maximum(x, 0)
    C, T, F = x.shape  # (clip.cpp: permute to [T, F, C] and flatten, the channel fastest)
    x = xp.ascontiguousarray(x.transpose(1, 2, 0).reshape(T, F * C), F32)
    x = _mm(ops, enc, enc.inp_proj, x)
    return x + ops.const(enc.inp_proj_b) if enc.inp_proj_b is not None else x


def _norm(ops: Any, x: Any, w: np.ndarray | None) -> Any:
    """build_norm's RMSNorm (epsilon 1e-6) times ``w`` where the file has one."""
    return ops.rms_norm(ops.xp.ascontiguousarray(x, F32), w, EPS) if w is not None else x


def _ffn(ops: Any, enc: Gemma4AudioEncoder, L: dict[str, Any], x: Any, sfx: str) -> Any:
    """A half-step FFN's update: RMSNorm, up, SiLU, down, the post RMSNorm, halved."""
    h = ops.rms_norm(ops.xp.ascontiguousarray(x, F32), L[f"ffn_norm{sfx}"], EPS)
    h = _mm(ops, enc, L[f"ffn_down{sfx}"], ops.act(_mm(ops, enc, L[f"ffn_up{sfx}"], h), "silu"))
    return _norm(ops, h, L[f"ffn_post{sfx}"]) * RES


def _block(ops: Any, enc: Gemma4AudioEncoder, L: dict[str, Any], x: Any, mask: Any, shift: Any) -> Any:
    """One conformer block: half FFN, chunked attention, the convolution module, half FFN, RMSNorm."""
    x = x + _ffn(ops, enc, L, x, "")
    x = x + _norm(ops, attention(ops, enc, L, _norm(ops, x, L["attn_norm"]), mask, shift), L["attn_post"])
    x = x + _conv_module(ops, enc, L, _norm(ops, x, L["conv_pre"]))
    x = x + _ffn(ops, enc, L, x, "_1")
    return _norm(ops, x, L["ln2"])


def attention(ops: Any, enc: Gemma4AudioEncoder, L: dict[str, Any], x: Any, mask: Any, shift: Any) -> Any:
    """clip_graph_gemma4a's chunked local self-attention with relative positions: [T, E] -> [T, E] (before
    ``attn_post_norm``)."""
    xp = ops.xp
    T, E = x.shape
    H = enc.cfg.n_head
    d = E // H
    B = -(-T // CHUNK)
    q = _mm(ops, enc, L["q"], x).reshape(T, H, d) * F32(1.0 / math.sqrt(d) / math.log(2.0))
    if L["q_scale"] is not None:
        q = q * ops.const(L["q_scale"])
    k = _mm(ops, enc, L["k"], x).reshape(T, H, d) * F32(math.log(1.0 + math.e) / math.log(2.0))
    if L["k_scale"] is not None:
        k = k * ops.const(L["k_scale"])
    v = _mm(ops, enc, L["v"], x).reshape(T, H, d)
    qb = xp.zeros((B * CHUNK, H, d), F32)
    qb[:T] = q
    qb = qb.reshape(B, CHUNK, H, d)
    ctx = (xp.arange(B)[:, None] * CHUNK + xp.arange(CONTEXT)[None, :])  # (block b's keys: positions from 12 before it)

    def blocks(t: Any) -> Any:  # [T, H, d] -> [B, 24, H, d], zeros outside the clip (ggml_pad, ggml_roll, the view)
        p = xp.zeros(((B + 1) * CHUNK, H, d), F32)
        p[PAST : PAST + T] = t
        return p[ctx]

    kb, vb = blocks(k), blocks(v)
    s = xp.einsum("bqhd,bkhd->bhqk", qb, kb)
    if L["k_rel"] is not None:
        p = ops.linear(L["k_rel"], ops.vector(enc.pos)).reshape(N_REL, H, d)
        bd = xp.einsum("bqhd,rhd->bhqr", qb, p)
        bd = xp.concatenate([bd, xp.zeros((B, H, CHUNK, 1), F32)], axis=3)
        s = s + xp.take_along_axis(bd, xp.broadcast_to(shift[None, None], (B, H, CHUNK, CONTEXT)), axis=3)
    s = xp.tanh(s * F32(1.0 / SOFTCAP)) * F32(SOFTCAP) + mask[:, None]
    s = xp.exp(s - s.max(axis=-1, keepdims=True))
    s = s / s.sum(axis=-1, keepdims=True)
    a = xp.einsum("bhqk,bkhd->bqhd", s.astype(F32), vb).reshape(B * CHUNK, E)[:T]
    a = _mm(ops, enc, L["o"], xp.ascontiguousarray(a, F32))
    return a + ops.const(L["o_b"]) if L["o_b"] is not None else a


def _conv_module(ops: Any, enc: Gemma4AudioEncoder, L: dict[str, Any], x: Any) -> Any:
    """``conv_pw1`` to 2E, GLU, the causal depthwise convolution (4 zeros in front, 5 taps: ggml_ssm_conv), its
    RMSNorm, SiLU, ``conv_pw2``."""
    xp = ops.xp
    T, E = x.shape
    y = _mm(ops, enc, L["pw1"], x)
    y = y[:, :E] * (1.0 / (1.0 + xp.exp(-y[:, E:])))
    p = xp.pad(y, ((K_DW - 1, 0), (0, 0)))
    w = ops.const(L["dw"])
    z = xp.zeros((T, E), F32)
    for k in range(K_DW):
        z += p[k : k + T] * w[:, k]
    if L["dw_b"] is not None:
        z = z + ops.const(L["dw_b"])
    z = _norm(ops, z, L["conv_norm"])
    z = xp.ascontiguousarray(ops.act(xp.ascontiguousarray(z, F32), "silu"), F32)
    return _mm(ops, enc, L["pw2"], z)
