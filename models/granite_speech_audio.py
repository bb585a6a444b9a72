"""Granite Speech's audio encoder (llama.cpp's audio projector type "granite_speech"), as libmtmd computes it: the
stacked log-mel features (tools/mtmd/mtmd-audio.cpp's ``mtmd_audio_preprocessor_granite_speech``), a conformer with
Shaw relative positions over blocks of frames, a CTC branch half way, and a windowed Q-Former into a Granite text model
(tools/mtmd/models/granite-speech.cpp's ``clip_graph_granite_speech``), read from an audio mmproj file.

It shares no step with models/lfm2a_audio.py's FastConformer past the macaron block's outline (no subsampling, no
Transformer-XL attention, no depthwise bias), hence a file of its own:

    16 kHz mono samples
    -> 256 samples reflected each end, frames of 512 samples every 160 (n / 160 + 1 of them), a periodic 400-sample
       Hann window centred in them, |FFT|^2, the HTK mel bank (no area norm) of clip.audio.num_mel_bins / 2 bins,
       log10 (floored at 1e-10); every value clamped to at least the clip's largest - 8, then (x + 4) / 4
    -> an odd last frame dropped and the frames stacked in pairs: [2 n_mel, frames / 2], the even frame's bins first.
       One spectrogram for the whole clip: no 30 s chunks
    -> ``a.input_projection`` + bias, then blocks (macaron): x += FFN(LN(x)) / 2; x += Attn(LN(x)); x += Conv(LN(x));
       x += FFN(LN(x)) / 2; x = LN(x).  FFN: up + bias, SiLU, down + bias.  Attn: the frames cut in blocks of
       clip.audio.chunk_size (the last zero-padded, its padding masked as keys), each attending within itself, Q/K/V
       without bias, the score q.k plus q.R[clamp(i - j, -C, C) + max_pos_emb] (Shaw's, ``attn_rel_pos_emb``), both
       times 1/sqrt(d_head), softmax, out + bias.  Conv: pointwise to 2E + bias, GLU, depthwise over time
       (clip.audio.conv_kernel_size, zeros a side, no bias), the folded batch norm, SiLU, pointwise + bias
    -> after block n_layer / 2 the CTC branch: x += mid(softmax(out(x) + bias)) + bias
    -> (Granite Speech Plus, ``clip.audio.feature_layer``: the outputs of those layers, 0 the input projection's, each
       before the CTC branch, concatenated with the last layer's along the features)
    -> the Q-Former: the frames cut in windows of clip.audio.projector.window_size (the last zero-padded, unmasked);
       its queries (``a.proj_query`` under LayerNorm ``a.proj_norm``, eps 1e-12) per window through two layers of
       self-attention, cross-attention to the window, GELU FFN, each added and post-LayerNormed (eps 1e-12);
       ``a.proj_linear`` + bias: window / downsample_rate rows a window

mtmd.cpp puts no text around a clip for Granite Speech (runtime/audio.py's AUDIO_MARKERS), and the Granite text model
takes the rows at plain positions.  The forward (:func:`_forward`) is written once against models/vit_ops.py's ops (the
layout steps as ``ops.xp`` array code), so beside a text model on ``--device gpu`` it runs on the GPU
(models/vit_device.py), rows within float32 noise of the CPU's (tests/test_audio_granite.py).
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
from .lfm2a_audio import host_values
from .vit_ops import ops_of
from .whisper_audio import HOP, SAMPLE_RATE, check_audio_mmproj, need_audio_key, need_audio_tensors

PROJECTOR = "granite_speech"
N_FFT, WINDOW, MEL_FLOOR = 512, 400, 1e-10  # (clip.cpp's settings for the preprocessor)
EPS_QF = 1e-12  # the Q-Former's LayerNorms (granite-speech.cpp's proj_eps)
N_QF_LAYERS = 2  # (clip.cpp loads two Q-Former layers, whatever the file holds)
#: the conformer block's matrices (clip-impl.h's names after "a.blk.N."), as loader roles "gsp_<name>"
BLOCK = ("ffn_up", "ffn_down", "ffn_up_1", "ffn_down_1", "attn_q", "attn_k", "attn_v", "attn_out", "conv_pw1", "conv_pw2")
TENSOR_NAMES.update({f"gsp_{n}": f"a.blk.{{i}}.{n}.weight" for n in BLOCK})
#: the Q-Former layer's matrices (after "a.proj_blk.N.")
QF = ("self_attn_q", "self_attn_k", "self_attn_v", "self_attn_out", "cross_attn_q", "cross_attn_k", "cross_attn_v",
      "cross_attn_out", "ffn_up", "ffn_down")  # fmt: skip
TENSOR_NAMES.update({f"gsq_{n}": f"a.proj_blk.{{i}}.{n}.weight" for n in QF})
TENSOR_NAMES.update({f"gs_{n}": f"a.{n}.weight" for n in ("input_projection", "enc_ctc_out", "enc_ctc_out_mid", "proj_linear")})


@dataclass(frozen=True)
class GraniteSpeechConfig:
    """The audio encoder's hyperparameters, as clip.cpp reads them (``clip.audio.*``; the rest from the tensors)."""

    projector_type: str
    n_mel: int  # the mel bins of one frame (clip.audio.num_mel_bins is two stacked frames')
    n_embd: int
    n_layer: int
    n_head: int
    eps: float
    chunk: int  # the attention's blocks of frames (clip.audio.chunk_size)
    kernel: int  # the convolution module's depthwise kernel
    max_pos: int  # clip.audio.max_pos_emb: attn_rel_pos_emb has 2 max_pos + 1 rows
    window: int  # the Q-Former's window of frames
    downsample: int  # frames a row: window / downsample queries a window
    qf_head: int
    feature_layers: tuple[int, ...]  # (Granite Speech Plus: the layers concatenated before the Q-Former)
    n_text_embd: int

    @property
    def rows_per_chunk(self) -> int:
        """Rows 30 s of audio become (how runtime/audio.py states a clip's cost)."""
        return n_rows(SAMPLE_RATE * 30, self.window, self.downsample)


def n_frames(n_samples: int) -> int:
    """The stacked frames of ``n_samples``: n / 160 + 1 spectrogram frames, an odd one dropped, in pairs."""
    return (n_samples // HOP + 1) // 2


def n_rows(n_samples: int, window: int, downsample: int) -> int:
    """Rows a clip of ``n_samples`` becomes: window / downsample a started window of its stacked frames (clip.cpp's
    n_patches)."""
    return -(-n_frames(n_samples) // window) * (window // downsample)


def load_granite_speech_config(g: GGUFFile) -> GraniteSpeechConfig:
    """The config of an opened "granite_speech" mmproj file, or a one-line error."""
    check_audio_mmproj(g)

    def need(key: str) -> int:
        return int(need_audio_key(g, key))

    need_audio_tensors(g, ("a.input_projection.weight", "a.enc_ctc_out.weight", "a.proj_query", "a.proj_linear.weight"))
    E = need("embedding_length")
    cfg = GraniteSpeechConfig(
        projector_type=PROJECTOR,
        n_mel=need("num_mel_bins") // 2,
        n_embd=E,
        n_layer=need("block_count"),
        n_head=need("attention.head_count"),
        eps=float(need_audio_key(g, "attention.layer_norm_epsilon")),
        chunk=need("chunk_size"),
        kernel=need("conv_kernel_size"),
        max_pos=need("max_pos_emb"),
        window=need("projector.window_size"),
        downsample=need("projector.downsample_rate"),
        qf_head=need("projector.head_count"),
        feature_layers=tuple(int(v) for v in np.asarray(g.get("clip.audio.feature_layer", ()), np.int64).reshape(-1)),
        n_text_embd=int(g.tensors["a.proj_linear.weight"].n_elements // E),
    )
    bad = (not 4 <= cfg.n_mel <= 256 or cfg.n_head <= 0 or E % cfg.n_head or cfg.qf_head <= 0 or E % cfg.qf_head
           or not 0 < cfg.chunk <= 8192 or cfg.kernel % 2 == 0 or cfg.window <= 0 or not 0 < cfg.downsample <= cfg.window
           or any(not 0 <= v <= cfg.n_layer for v in cfg.feature_layers))  # fmt: skip
    if bad:
        raise GGUFError(f"{g.path}: inconsistent audio hyperparameters (mel bins {cfg.n_mel}, width {E}, heads {cfg.n_head}, "
                        f"blocks of {cfg.chunk}, kernel {cfg.kernel}, window {cfg.window} / {cfg.downsample}, "
                        f"feature layers {list(cfg.feature_layers)})")  # fmt: skip
    return cfg


# --- the spectrogram ---------------------------------------------------------------------------------------------


def htk_mel_filters(n_mel: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """mtmd-audio.cpp's ``fill_mel_filterbank_matrix`` as the Granite preprocessor calls it (the HTK scale, no area
    norm, 0 Hz to Nyquist): float32 [n_mel, n_fft/2 + 1], built in float64 as there."""
    hi = 2595.0 * math.log10(1.0 + 0.5 * sample_rate / 700.0)
    hz = 700.0 * (10.0 ** ((hi * np.arange(n_mel + 2) / (n_mel + 1)) / 2595.0) - 1.0)
    f = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    left, centre, right = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (f - left) / np.maximum(1e-30, centre - left)
    down = (right - f) / np.maximum(1e-30, right - centre)
    w = np.where((f >= left) & (f <= centre), up, np.where((f > centre) & (f <= right), down, 0.0))
    return w.astype(np.float32)


def hann_window(periodic: bool = True) -> np.ndarray:
    """The 400 taps of 0.5 (1 - cos(2 pi i / period)): Granite's is the periodic window (period 400; LFM2-Audio's the
    symmetric one, 399)."""
    period = WINDOW if periodic else WINDOW - 1
    return (0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(WINDOW) / period))).astype(np.float32)


def log_mel(samples: np.ndarray, n_mel: int) -> np.ndarray:
    """16 kHz mono float32 samples -> the clip's stacked log-mel spectrogram, float32 [2 n_mel, (n / 160 + 1) // 2],
    as mtmd_audio_preprocessor_granite_speech::preprocess makes it."""
    x = np.asarray(samples, np.float32).reshape(-1)
    n = x.size
    if n < HOP:  # (libmtmd would make a spectrogram of no frames)
        raise KvrunError(f"the audio is {n} samples long; Granite Speech's encoder takes at least {HOP} (10 ms at 16 kHz)")
    pad = N_FFT // 2
    src = np.minimum(np.arange(1, pad + 1), n - 1)  # (reflected, clamped to the clip as there)
    padded = np.concatenate([x[src[::-1]], x, x[np.maximum(n - 2 - np.arange(pad), 0)]])
    n_len = n // HOP + 1
    win = np.zeros(N_FFT, np.float32)  # (the 400-sample window in the middle of the 512)
    off = (N_FFT - WINDOW) // 2
    win[off : off + WINDOW] = hann_window()
    filt = htk_mel_filters(n_mel).astype(np.float64)
    mel = np.empty((n_mel, n_len), np.float32)
    for s in range(0, n_len, 2048):
        idx = (np.arange(s, min(s + 2048, n_len)) * HOP)[:, None] + np.arange(N_FFT)
        spec = np.fft.rfft((padded[idx] * win).astype(np.float64), axis=-1)
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        mel[:, s : s + idx.shape[0]] = np.log10(np.maximum(power @ filt.T, MEL_FLOOR)).astype(np.float32).T
    mel = ((np.maximum(mel.astype(np.float64), float(mel.max()) - 8.0) + 4.0) / 4.0).astype(np.float32)
    T = n_len // 2
    return np.ascontiguousarray(np.concatenate([mel[:, 0 : 2 * T : 2], mel[:, 1 : 2 * T : 2]]))


# --- the encoder -------------------------------------------------------------------------------------------------


class GraniteSpeechEncoder:
    """Granite Speech's conformer and Q-Former from an mmproj file: :meth:`encode` a clip into rows."""

    def __init__(self, g: GGUFFile, cfg: GraniteSpeechConfig, backend: Backend) -> None:
        self.cfg, self.be, self.path = cfg, backend, g.path
        E, H, C = cfg.n_embd, cfg.n_head, cfg.chunk
        d = E // H

        def host(name: str, n: int) -> np.ndarray:
            return host_values(g, name, n, "a Granite Speech")

        ld = WeightLoader(g, backend)

        def matrix(role: str, n_in: int, n_out: int | None = None, i: int | None = None) -> Any:
            t = g.tensor(TENSOR_NAMES[role].format(i=i))
            if t.shape[-1] != n_in or (n_out is not None and t.n_elements != n_in * n_out):
                want = f"[{n_out}, {n_in}]" if n_out is not None else f"[..., {n_in}]"
                raise KvrunError(f"{g.path}: {t.name} has shape {list(t.shape)}, expected {want}: not a Granite Speech projector")
            return ld.matrix(role, i)

        def vec(name: str, n: int) -> np.ndarray:
            return host(name, n)

        self.inp, self.inp_b = matrix("gs_input_projection", 2 * cfg.n_mel, E), vec("a.input_projection.bias", E)
        # (Shaw's table: query i and key j of a block read R[clamp(i - j, -C, C) + max_pos], |i - j| < C, so only
        # the 2C + 1 rows about max_pos are kept, [2C + 1, d_head]; Granite's blocks of 200 frames read 401 of 1025)
        if cfg.max_pos < C:
            raise KvrunError(f"{g.path}: clip.audio.max_pos_emb {cfg.max_pos} is under the blocks' {C} frames: not a Granite Speech projector")
        self.layers = []
        for i in range(cfg.n_layer):
            b = f"a.blk.{i}."
            L: dict[str, Any] = {}
            for r in ("ffn_norm", "ffn_norm_1", "ln1", "norm_conv", "ln2", "conv_norm"):
                L[r], L[r + "_b"] = vec(b + r + ".weight", E), vec(b + r + ".bias", E)
            ff = g.tensor(f"{b}ffn_up.weight").n_elements // E
            for r, n_in, n_out in (("ffn_up", E, ff), ("ffn_down", ff, E), ("ffn_up_1", E, ff), ("ffn_down_1", ff, E), ("attn_q", E, E),
                                   ("attn_k", E, E), ("attn_v", E, E), ("attn_out", E, E), ("conv_pw1", E, 2 * E), ("conv_pw2", E, E)):  # fmt: skip
                L[r] = matrix(f"gsp_{r}", n_in, n_out, i)
                if r not in ("attn_q", "attn_k", "attn_v"):  # (clip.cpp's graph adds no Q/K/V bias)
                    L[r + "_b"] = vec(b + r + ".bias", n_out)
            rel = host(b + "attn_rel_pos_emb", (2 * cfg.max_pos + 1) * d).reshape(2 * cfg.max_pos + 1, d)
            L["rel"] = np.ascontiguousarray(rel[cfg.max_pos - C : cfg.max_pos + C + 1])
            L["conv_dw"] = np.ascontiguousarray(host(b + "conv_dw.weight", E * cfg.kernel).reshape(E, cfg.kernel).T)
            self.layers.append(L)
        n_ctc = g.tensor("a.enc_ctc_out.weight").n_elements // E
        self.ctc, self.ctc_b = matrix("gs_enc_ctc_out", E, n_ctc), vec("a.enc_ctc_out.bias", n_ctc)
        self.ctc_mid, self.ctc_mid_b = matrix("gs_enc_ctc_out_mid", n_ctc, E), vec("a.enc_ctc_out_mid.bias", E)
        nq = cfg.window // cfg.downsample
        self.query = host("a.proj_query", nq * E).reshape(nq, E)
        self.query_norm, self.query_norm_b = vec("a.proj_norm.weight", E), vec("a.proj_norm.bias", E)
        kv = E * (len(cfg.feature_layers) + 1)  # (clip.cpp's proj_input_dim: the concatenated layers' width)
        self.qf = []
        for i in range(N_QF_LAYERS):
            b = f"a.proj_blk.{i}."
            P: dict[str, Any] = {}
            ff = g.tensor(f"{b}ffn_up.weight").n_elements // E
            for r, n_in, n_out in (("self_attn_q", E, E), ("self_attn_k", E, E), ("self_attn_v", E, E), ("self_attn_out", E, E),
                                   ("cross_attn_q", E, E), ("cross_attn_k", kv, E), ("cross_attn_v", kv, E), ("cross_attn_out", E, E),
                                   ("ffn_up", E, ff), ("ffn_down", ff, E)):  # fmt: skip
                P[r], P[r + "_b"] = matrix(f"gsq_{r}", n_in, n_out, i), vec(f"{b}{r}.bias", n_out)
            for r in ("self_attn_norm", "cross_attn_norm", "ffn_norm"):
                P[r], P[r + "_b"] = vec(f"{b}{r}.weight", E), vec(f"{b}{r}.bias", E)
            self.qf.append(P)
        self.out, self.out_b = matrix("gs_proj_linear", E, cfg.n_text_embd), vec("a.proj_linear.bias", cfg.n_text_embd)

    def n_rows(self, n_samples: int) -> int:
        """Rows a clip of ``n_samples`` becomes."""
        return n_rows(n_samples, self.cfg.window, self.cfg.downsample)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz mono samples -> the clip's rows, float32 [n_rows, n_text_embd]."""
        return self.encode_mel(log_mel(samples, self.cfg.n_mel))

    def encode_mel(self, mel: np.ndarray) -> np.ndarray:
        """A stacked spectrogram [2 n_mel, frames] -> its rows (:func:`_forward` on the encoder's device)."""
        if mel.ndim != 2 or mel.shape[0] != 2 * self.cfg.n_mel or mel.shape[1] < 1:
            raise KvrunError(f"the audio encoder takes a stacked spectrogram [{2 * self.cfg.n_mel}, frames], got {list(mel.shape)}")
        return _forward(ops_of(self), self, mel)


def _forward(ops: Any, enc: GraniteSpeechEncoder, mel: np.ndarray) -> np.ndarray:
    """:meth:`GraniteSpeechEncoder.encode_mel` past its checks on either device's ``ops`` (models/vit_ops.py; on the
    GPU the spectrogram goes up once and the rows come down once)."""
    xp, cfg = ops.xp, enc.cfg
    x = ops.linear(enc.inp, ops.vector(np.ascontiguousarray(mel.T)), enc.inp_b)
    feats = [x] if 0 in cfg.feature_layers else []
    for i, L in enumerate(enc.layers):
        x = _block(ops, enc, L, x)
        if i + 1 in cfg.feature_layers:  # (Granite Speech Plus: taken before the CTC branch)
            feats.append(x)
        if i + 1 == cfg.n_layer // 2:
            x = x + ctc_branch(ops, enc, x)
    if cfg.feature_layers:
        x = xp.ascontiguousarray(xp.concatenate(feats + [x], axis=1), np.float32)
    return ops.to_host(xp.ascontiguousarray(_qformer(ops, enc, x), np.float32))


def ctc_branch(ops: Any, enc: GraniteSpeechEncoder, x: Any) -> Any:
    """The CTC head's softmax over its classes, brought back to the encoder's width (added to layer n_layer / 2's
    output)."""
    xp = ops.xp
    p = ops.linear(enc.ctc, x, enc.ctc_b)
    p = xp.exp(p - p.max(axis=-1, keepdims=True))
    p = xp.ascontiguousarray(p / p.sum(axis=-1, keepdims=True), np.float32)
    return ops.linear(enc.ctc_mid, p, enc.ctc_mid_b)


def _ffn(ops: Any, L: dict[str, Any], x: Any, sfx: str) -> Any:
    """up + bias, SiLU, down + bias (clip.cpp's build_ffn with FFN_SILU and no gate)."""
    return ops.linear(L[f"ffn_down{sfx}"], ops.act(ops.linear(L[f"ffn_up{sfx}"], x, L[f"ffn_up{sfx}_b"]), "silu"), L[f"ffn_down{sfx}_b"])


def _block(ops: Any, enc: GraniteSpeechEncoder, L: dict[str, Any], x: Any) -> Any:
    """One macaron block: half FFN, block attention with Shaw's positions, the convolution module, half FFN, LayerNorm."""
    half, eps = np.float32(0.5), enc.cfg.eps
    x = x + _ffn(ops, L, ops.layer_norm(x, L["ffn_norm"], L["ffn_norm_b"], eps), "") * half
    x = x + _attention(ops, enc, L, ops.layer_norm(x, L["ln1"], L["ln1_b"], eps))
    x = x + _conv_module(ops, enc, L, ops.layer_norm(x, L["norm_conv"], L["norm_conv_b"], eps))
    x = x + _ffn(ops, L, ops.layer_norm(x, L["ffn_norm_1"], L["ffn_norm_1_b"], eps), "_1") * half
    return ops.layer_norm(x, L["ln2"], L["ln2_b"], eps)


def shaw_scores(xp: Any, q: Any, rel: Any) -> Any:
    """Shaw's relative-position scores of the blocks' queries q [B, C, H, d] against the table's rows rel [2C + 1, d]
    for distances -C .. C: [B, H, C, C], query i and key j scoring q_i . rel[i - j + C] (clip.cpp's get_rows of
    ``attn_dists``, then the product with Q)."""
    B, C, H, d = q.shape
    qr = xp.einsum("bihd,pd->bhip", q, rel)  # [B, H, C, 2C + 1]: each query against every distance
    idx = xp.arange(C)[:, None] - xp.arange(C)[None, :] + C
    return xp.take_along_axis(qr, xp.broadcast_to(idx[None, None], (B, H, C, C)), axis=3)


def _attention(ops: Any, enc: GraniteSpeechEncoder, L: dict[str, Any], x: Any) -> Any:
    """Self-attention within blocks of ``chunk`` frames, Shaw's relative positions added to the scores: [T, E] ->
    [T, E]."""
    xp = ops.xp
    T, E = x.shape
    C, H = enc.cfg.chunk, enc.cfg.n_head
    d, B = E // H, -(-T // C)
    if B * C > T:  # (the last block zero-padded, as ggml_pad)
        x = xp.ascontiguousarray(xp.concatenate([x, xp.zeros((B * C - T, E), np.float32)]))
    q, k, v = (ops.linear(L[r], x).reshape(B, C, H, d) for r in ("attn_q", "attn_k", "attn_v"))
    s = (xp.einsum("bihd,bjhd->bhij", q, k) + shaw_scores(xp, q, ops.const(L["rel"]))) * np.float32(1.0 / math.sqrt(d))
    if B * C > T:  # (the padding masked as keys; its own queries' rows are dropped below)
        s[-1, :, :, T - (B - 1) * C :] = -np.inf
    s = xp.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    a = xp.ascontiguousarray(xp.einsum("bhij,bjhd->bihd", s, v).reshape(B * C, E)[:T], np.float32)
    return ops.linear(L["attn_out"], a, L["attn_out_b"])


def _conv_module(ops: Any, enc: GraniteSpeechEncoder, L: dict[str, Any], x: Any) -> Any:
    """Pointwise to 2E, GLU, depthwise over time (zeros kernel / 2 a side: ggml_ssm_conv on the padded rows, no bias),
    the folded batch norm, SiLU, pointwise back."""
    xp = ops.xp
    T, E = x.shape
    K = enc.cfg.kernel
    y = ops.linear(L["conv_pw1"], x, L["conv_pw1_b"])
    y = y[:, :E] * (1.0 / (1.0 + xp.exp(-y[:, E:])))
    p = xp.pad(y, ((K // 2, K // 2), (0, 0)))
    w = ops.const(L["conv_dw"])  # [K, E]
    z = xp.zeros((T, E), np.float32)
    for k in range(K):
        z += p[k : k + T] * w[k]
    z = z * ops.const(L["conv_norm"]) + ops.const(L["conv_norm_b"])
    z = xp.ascontiguousarray(ops.act(xp.ascontiguousarray(z, np.float32), "silu"), np.float32)
    return ops.linear(L["conv_pw2"], z, L["conv_pw2_b"])


def _attend(xp: Any, q: Any, k: Any, v: Any, heads: int) -> Any:
    """Attention of each window's queries q [W, Q, E] to its keys and values [W, S, E], ``heads`` heads, no mask:
    [W * Q, E] (clip.cpp's build_attn without flash attention)."""
    W, nq, E = q.shape
    d = E // heads
    q, k, v = q.reshape(W, nq, heads, d), k.reshape(W, -1, heads, d), v.reshape(W, -1, heads, d)
    s = xp.einsum("wihd,wjhd->whij", q, k) * np.float32(1.0 / math.sqrt(d))
    s = xp.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    return xp.ascontiguousarray(xp.einsum("whij,wjhd->wihd", s, v).reshape(W * nq, E), np.float32)


def _qformer(ops: Any, enc: GraniteSpeechEncoder, x: Any) -> Any:
    """The windowed Q-Former: each window of frames read by the learned queries through two post-norm layers, then
    ``a.proj_linear``: [T, kv] -> [windows * queries, n_text_embd]."""
    xp, cfg = ops.xp, enc.cfg
    T, kv = x.shape
    Wn, E, nq = -(-T // cfg.window), cfg.n_embd, cfg.window // cfg.downsample
    if Wn * cfg.window > T:  # (zero frames, unmasked: their keys are the biases)
        x = xp.ascontiguousarray(xp.concatenate([x, xp.zeros((Wn * cfg.window - T, kv), np.float32)]))
    query = ops.layer_norm(ops.const(enc.query), enc.query_norm, enc.query_norm_b, EPS_QF)
    h = xp.ascontiguousarray(xp.broadcast_to(query[None], (Wn, nq, E)).reshape(Wn * nq, E), np.float32)
    for P in enc.qf:
        q, k, v = (ops.linear(P[f"self_attn_{r}"], h, P[f"self_attn_{r}_b"]) for r in "qkv")
        a = _attend(xp, q.reshape(Wn, nq, E), k.reshape(Wn, nq, E), v.reshape(Wn, nq, E), cfg.qf_head)
        h = ops.layer_norm(ops.linear(P["self_attn_out"], a, P["self_attn_out_b"]) + h, P["self_attn_norm"], P["self_attn_norm_b"], EPS_QF)
        q = ops.linear(P["cross_attn_q"], h, P["cross_attn_q_b"])
        k, v = (ops.linear(P[f"cross_attn_{r}"], x, P[f"cross_attn_{r}_b"]) for r in "kv")
        a = _attend(xp, q.reshape(Wn, nq, E), k.reshape(Wn, cfg.window, E), v.reshape(Wn, cfg.window, E), cfg.qf_head)
        h = ops.layer_norm(ops.linear(P["cross_attn_out"], a, P["cross_attn_out_b"]) + h, P["cross_attn_norm"], P["cross_attn_norm_b"], EPS_QF)
        f = ops.linear(P["ffn_down"], ops.act(ops.linear(P["ffn_up"], h, P["ffn_up_b"]), "gelu"), P["ffn_down_b"])
        h = ops.layer_norm(f + h, P["ffn_norm"], P["ffn_norm_b"], EPS_QF)
    return ops.linear(enc.out, h, enc.out_b)
