"""MiMo-V2.5's audio side (llama.cpp's audio projector type "mimo_audio"), as libmtmd computes it: the MiMo audio
tokenizer's encoder and residual vector quantizer, the codes looked up in the text side's code tables, and the
input-local transformer and projection into a ``mimo2`` text model (tools/mtmd/models/mimo-audio.cpp's
``clip_graph_mimo_audio``, tools/mtmd/mtmd-audio.cpp's ``mtmd_audio_preprocessor_mimo_audio``), read from an audio
mmproj file:

    16 kHz mono samples
    -> resampled to 24 kHz as libmtmd's WAV decoding does it (miniaudio's linear resampler: the rates reduced to 2:3,
       each output the straight line between the two input samples it falls between, one sample late, then a
       4th-order Butterworth low-pass of two biquads in float32; floor(1.5 n) samples, :func:`resample`)
    -> 480 samples reflected each end, frames of 960 every 240 (n / 240 + 1), a periodic 960-sample Hann window,
       |FFT| (magnitude, not power), the HTK mel bank (no area norm) of clip.audio.num_mel_bins bins, the natural log
       floored at 1e-7; no clamping, no 30 s chunks: one spectrogram for the clip
    -> ``a.conv1d.1`` (kernel 3, stride 1) + bias, GELU(erf), ``a.conv1d.2`` (stride 2) + bias, GELU(erf): T frames
    -> pre-LayerNorm blocks (Whisper's shape: biased Q, V, output, no K bias, a biased GELU(erf) MLP) with ggml's
       neox rope (theta 10000, positions 0..T-1) on Q and K, each layer causal: ``clip.audio.wa_pattern_mode`` -1
       over all earlier frames, 0 over the ``clip.audio.window_size`` frames before and itself
    -> plus layer 2's state after its attention and before its MLP (the tokenizer's encoder_skip_layer_id 3), then
       ``a.post_ln``
    -> ``a.downsample.conv`` (kernel 2, stride 2, no bias), GELU(erf), LayerNorm ``a.downsample.norm``: T // 2 rows
    -> the residual vector quantizer: quantizer q (its first clip.audio.rvq.codebook_size[q] codewords of
       ``a.rvq.codebook``) picks the codeword of the largest 2 r.c - |c|^2, the residual r loses it
    -> the codes' rows of ``mm.a.code_embd`` (one table a quantizer) summed
    -> zero rows to a whole number of groups of clip.audio.local_group_size, the input-local transformer
       (``mm.a.local_blk.N``: RMSNorm, biased Q/K/V, neox rope theta 640000 at positions within the group, attention
       within the group, the padding rows included, output; RMSNorm, a gated SiLU MLP), RMSNorm ``mm.a.local_norm``
    -> each group's rows side by side, ``mm.a.mlp.1``, GELU(erf), ``mm.a.mlp.2``: one row a group

mtmd.cpp puts ``<|mimo_audio_start|>`` and ``<|mimo_audio_end|>`` around a clip's rows (runtime/audio.py's
AUDIO_MARKERS), and the mimo2 text model (models/mimo2.py) takes them at plain positions.  The forward
(:func:`_forward`) is written once against models/vit_ops.py's ops (the layout steps and the quantizer as ``ops.xp``
array code), so beside a text model on ``--device gpu`` it runs on the GPU (models/vit_device.py), rows within
float32 noise of the CPU's (tests/test_audio_mimo.py).  The quantizer's choices are discrete: where two codewords
score within float32 noise of each other the devices (or llama.cpp) may pick differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numba
import numpy as np

from ..loaders.errors import GGUFError, KvrunError
from ..loaders.gguf_file import GGUFFile
from ..loaders.quants import dequantize
from ..ops.backend import Backend
from .common import TENSOR_NAMES, WeightLoader
from .deepseekocr2_image import rope_table
from .granite_speech_audio import htk_mel_filters
from .vit_ops import ops_of
from .whisper_audio import SAMPLE_RATE, _f16, check_audio_mmproj, need_audio_key, need_audio_tensors, unfold3

PROJECTOR = "mimo_audio"
RATE, N_FFT, HOP, MEL_FLOOR = 24000, 960, 240, 1e-7  # (clip.cpp's settings for the preprocessor)
THETA, LOCAL_THETA = 10000.0, 640000.0  # (the encoder's rope, the input-local transformer's: mimo-audio.cpp)
SKIP_LAYER = 2  # (encoder_skip_layer_id 3, 1-indexed: the skip taken in layer index 2)
LPF_ORDER = 4  # (miniaudio's MA_DEFAULT_RESAMPLER_LPF_ORDER, as ma_decoder_config_init leaves it)
MASKED = np.finfo(np.float32).min  # (clip.cpp's masks: the lowest float)
#: the input-local transformer's matrices (clip-impl.h's names after "mm.a.local_blk.N."), as loader roles "mal_<name>"
LOCAL = ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_gate", "ffn_up", "ffn_down")
TENSOR_NAMES.update({f"mal_{n}": f"mm.a.local_blk.{{i}}.{n}.weight" for n in LOCAL})


@dataclass(frozen=True)
class MimoAudioConfig:
    """The audio side's hyperparameters, as clip.cpp reads them (``clip.audio.*``; the rest from the tensors)."""

    projector_type: str
    n_mel: int
    n_embd: int
    n_layer: int
    n_head: int
    eps: float
    modes: tuple[int, ...]  # per layer: -1 causal over all frames, else causal within ``window``
    window: int
    bins: tuple[int, ...]  # each quantizer's codewords
    n_local: int  # the input-local transformer's layers
    group: int  # its groups of rows (one text row a group)
    n_text_embd: int

    @property
    def rows_per_chunk(self) -> int:
        """Rows 30 s of audio become (how runtime/audio.py states a clip's cost)."""
        return n_rows(SAMPLE_RATE * 30, self.group)


def resampled_len(n: int, rate_in: int = SAMPLE_RATE, rate_out: int = RATE) -> int:
    """The samples libmtmd's decoder makes of ``n`` (ma_calculate_frame_count_after_resampling, as it is)."""
    if n == 0 or rate_in == rate_out:
        return n
    out = n * rate_out // rate_in
    pre = out * (rate_in % rate_out) + (out * (rate_in // rate_out)) // rate_out
    return out + 1 if pre <= n else out


def n_frames(n_samples: int) -> int:
    """The spectrogram's frames of a clip of ``n_samples`` at 16 kHz: its 24 kHz samples / 240 + 1."""
    return resampled_len(n_samples) // HOP + 1


def n_rows(n_samples: int, group: int) -> int:
    """Rows a clip of ``n_samples`` becomes (clip.cpp's n_patches): the frames halved by the stride-2 conv and by the
    downsampling conv, one row a started group."""
    t = (n_frames(n_samples) - 1) // 2 + 1
    return -(-((t - 2) // 2 + 1) // group)


def load_mimo_audio_config(g: GGUFFile) -> MimoAudioConfig:
    """The config of an opened "mimo_audio" mmproj file, or a one-line error."""
    check_audio_mmproj(g)

    def need(key: str) -> int:
        return int(need_audio_key(g, key))

    def ints(key: str) -> tuple[int, ...]:
        v = g.get(key)
        if v is None:
            raise GGUFError(f"{g.path}: {key} is missing; the projector file is incomplete")
        return tuple(int(x) for x in np.asarray(v, np.int64).reshape(-1))

    need_audio_tensors(g, ("a.conv1d.1.weight", "a.downsample.conv.weight", "a.rvq.codebook.weight", "mm.a.code_embd.weight",
                           "mm.a.mlp.2.weight"))
    E = need("embedding_length")
    cfg = MimoAudioConfig(
        projector_type=PROJECTOR,
        n_mel=need("num_mel_bins"),
        n_embd=E,
        n_layer=need("block_count"),
        n_head=need("attention.head_count"),
        eps=float(need_audio_key(g, "attention.layer_norm_epsilon")),
        modes=ints("clip.audio.wa_pattern_mode"),
        window=need("window_size"),
        bins=ints("clip.audio.rvq.codebook_size"),
        n_local=need("local_block_count"),
        group=need("local_group_size"),
        n_text_embd=0,
    )
    hidden = g.tensors["mm.a.mlp.1.weight"].n_elements // max(1, E * cfg.group) if "mm.a.mlp.1.weight" in g.tensors else 0
    cfg = replace(cfg, n_text_embd=g.tensors["mm.a.mlp.2.weight"].n_elements // max(1, hidden))
    n_q = need("rvq.num_quantizers")
    bad = (not 4 <= cfg.n_mel <= 256 or cfg.n_head <= 0 or E % cfg.n_head or len(cfg.modes) != cfg.n_layer
           or cfg.n_layer <= SKIP_LAYER or cfg.window <= 0 or cfg.group <= 0 or len(cfg.bins) != n_q or n_q <= 0
           or min(cfg.bins) <= 0)  # fmt: skip
    if bad:
        raise GGUFError(f"{g.path}: inconsistent audio hyperparameters (mel bins {cfg.n_mel}, width {E}, heads {cfg.n_head}, "
                        f"{cfg.n_layer} layers, window modes {list(cfg.modes)}, window {cfg.window}, codebooks {list(cfg.bins)} "
                        f"of {n_q}, groups of {cfg.group})")  # fmt: skip
    return cfg


# --- the resampler and the spectrogram ---------------------------------------------------------------------------


@numba.njit(cache=True)
def _linear_resample(x: np.ndarray, r_in: int, r_out: int, n_out: int, coef: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    out = np.zeros(n_out, np.float32)
    n_sec = coef.shape[0]
    r1, r2 = np.zeros(n_sec, np.float32), np.zeros(n_sec, np.float32)
    x0, x1 = np.float32(0.0), np.float32(0.0)
    t_int, t_frac, i = 1, 0, 0
    adv_int, adv_frac = r_in // r_out, r_in % r_out
    den = np.float32(r_out)
    for k in range(n_out):
        while t_int > 0 and i < x.size:
            x0, x1 = x1, x[i]
            i += 1
            t_int -= 1
        if t_int > 0:
            break
        a = np.float32(t_frac) / den
        s = x0 + (x1 - x0) * a
        for j in range(n_sec):
            y = coef[j, 0] * s + r1[j]
            r1[j] = coef[j, 1] * s - coef[j, 3] * y + r2[j]
            r2[j] = coef[j, 2] * s - coef[j, 4] * y
            s = y
        out[k] = s
        t_int += adv_int
        t_frac += adv_frac
        if t_frac >= r_out:
            t_frac -= r_out
            t_int += 1
    return out


def lowpass_biquads(r_in: int, r_out: int, order: int = LPF_ORDER) -> np.ndarray:
    """miniaudio's resampling low-pass (ma_lpf of an even ``order``: order / 2 Butterworth biquads, cut at half the
    lower rate of the reduced pair, sampled at the higher): float32 [order / 2, (b0, b1, b2, a1, a2)] over a0."""
    fs, fc = max(r_in, r_out), min(r_in, r_out) * 0.5
    rows = []
    for i in range(order // 2):
        q = 1.0 / (2.0 * math.cos((1 + 2 * i) * (math.pi / (order * 2))))
        w = 2.0 * math.pi * fc / fs
        s, c = math.sin(w), math.cos(w)
        a = s / (2.0 * q)
        a0 = 1.0 + a
        rows.append([(1.0 - c) / 2.0 / a0, (1.0 - c) / a0, (1.0 - c) / 2.0 / a0, -2.0 * c / a0, (1.0 - a) / a0])
    return np.asarray(rows, np.float32)


def resample(samples: np.ndarray, rate_in: int = SAMPLE_RATE, rate_out: int = RATE) -> np.ndarray:
    """``samples`` at ``rate_in`` -> at ``rate_out``, as libmtmd's miniaudio decoder makes them (ma_linear_resampler,
    float32 throughout): float32 [:func:`resampled_len`]."""
    x = np.ascontiguousarray(samples, np.float32).reshape(-1)
    if rate_in == rate_out:
        return x
    gcf = math.gcd(rate_in, rate_out)
    r_in, r_out = rate_in // gcf, rate_out // gcf
    return _linear_resample(x, r_in, r_out, resampled_len(x.size, rate_in, rate_out), lowpass_biquads(r_in, r_out))


def log_mel(samples: np.ndarray, n_mel: int) -> np.ndarray:
    """24 kHz mono float32 samples -> the clip's log-mel spectrogram, float32 [n_mel, n / 240 + 1], as
    mtmd_audio_preprocessor_mimo_audio::preprocess makes it (torchaudio's MelSpectrogram(power=1, center=True), then
    the natural log)."""
    x = np.asarray(samples, np.float32).reshape(-1)
    n = x.size
    if n < 2:
        raise KvrunError(f"the audio is {n} samples long; MiMo's audio encoder takes at least 2")
    pad = N_FFT // 2
    i = np.arange(pad)
    head = np.where(pad - i < n, x[np.minimum(pad - i, n - 1)], 0.0)  # (reflected; zeros past a short clip, as there)
    tail = np.where(n - 2 - i >= 0, x[np.maximum(n - 2 - i, 0)], 0.0)
    padded = np.concatenate([head, x, tail]).astype(np.float32)
    n_len = n // HOP + 1
    win = (0.5 * (1.0 - np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT))).astype(np.float32)  # (periodic)
    filt = htk_mel_filters(n_mel, N_FFT, RATE).astype(np.float64)
    mel = np.empty((n_mel, n_len), np.float32)
    for s in range(0, n_len, 2048):
        idx = (np.arange(s, min(s + 2048, n_len)) * HOP)[:, None] + np.arange(N_FFT)
        spec = np.fft.rfft((padded[idx] * win).astype(np.float64), axis=-1)
        mag = np.sqrt((spec.real**2 + spec.imag**2).astype(np.float32))
        mel[:, s : s + idx.shape[0]] = np.log(np.maximum(mag.astype(np.float64) @ filt.T, MEL_FLOOR)).astype(np.float32).T
    return mel


# --- the encoder -------------------------------------------------------------------------------------------------


class MimoAudioEncoder:
    """MiMo-V2.5's audio tokenizer encoder, quantizer and input-local transformer from an mmproj file: :meth:`encode`
    a clip into rows."""

    def __init__(self, g: GGUFFile, cfg: MimoAudioConfig, backend: Backend) -> None:
        self.cfg, self.be, self.path = cfg, backend, g.path
        E = cfg.n_embd

        def host(name: str, n: int | None = None) -> np.ndarray:
            t = g.tensors.get(name)
            if t is None:
                raise GGUFError(f"{g.path}: tensor {name!r} is missing; the projector file is incomplete")
            if n is not None and t.n_elements != n:
                raise KvrunError(f"{g.path}: {name} has shape {t.shape}, expected {n} values: not a MiMo audio projector")
            return dequantize(t.data, t.qtype, t.shape).reshape(-1).astype(np.float32)

        ld = WeightLoader(g, backend)

        def kernel(name: str, c_in: int, k: int) -> np.ndarray:  # [c_out, c_in * k] over (channel, tap), in F16 (im2col's)
            w = host(name)
            if w.size != E * c_in * k:
                raise KvrunError(f"{g.path}: {name} has {w.size} values, expected [{E}, {c_in}, {k}]: not a MiMo audio projector")
            return _f16(w.reshape(E, c_in * k))

        self.conv = [(kernel("a.conv1d.1.weight", cfg.n_mel, 3), host("a.conv1d.1.bias", E)),
                     (kernel("a.conv1d.2.weight", E, 3), host("a.conv1d.2.bias", E))]  # fmt: skip
        self.layers = []
        for i in range(cfg.n_layer):
            L = {r: ld.host_vector(f"a_{r}", i) for r in ("ln1", "ln1_b", "ln2", "ln2_b")}
            for r in ("q", "k", "v", "o", "up", "down"):
                L[r], L[r + "_b"] = ld.matrix(f"a_{r}", i), ld.host_vector(f"a_{r}_b", i, required=False)
            self.layers.append(L)
        self.post_ln, self.post_ln_b = host("a.post_ln.weight", E), host("a.post_ln.bias", E)
        self.down = kernel("a.downsample.conv.weight", E, 2)
        self.down_norm, self.down_norm_b = host("a.downsample.norm.weight", E), host("a.downsample.norm.bias", E)
        cb, ce = g.tensor("a.rvq.codebook.weight"), g.tensor("mm.a.code_embd.weight")
        n_q = len(cfg.bins)
        if cb.n_elements % (n_q * E) or ce.n_elements % (n_q * E):
            raise KvrunError(f"{g.path}: a.rvq.codebook / mm.a.code_embd have shapes {cb.shape} / {ce.shape}, expected [{n_q}, n, {E}]")
        book, table = host(cb.name).reshape(n_q, -1, E), host(ce.name).reshape(n_q, -1, E)
        if max(cfg.bins) > min(book.shape[1], table.shape[1]):  # (clip.cpp's bound on clip.audio.rvq.codebook_size)
            raise KvrunError(f"{g.path}: clip.audio.rvq.codebook_size {list(cfg.bins)} is out of range for the codebooks "
                             f"({book.shape[1]}) and code tables ({table.shape[1]})")  # fmt: skip
        self.books = [np.ascontiguousarray(book[q, :b]) for q, b in enumerate(cfg.bins)]
        self.book_norms = [(b * b).sum(axis=1, dtype=np.float32) for b in self.books]
        self.tables = [np.ascontiguousarray(table[q]) for q in range(n_q)]
        self.local = []
        for i in range(cfg.n_local):
            b = f"mm.a.local_blk.{i}."
            P: dict[str, Any] = {"ln1": host(b + "ln1.weight", E), "ln2": host(b + "ln2.weight", E)}
            for r in LOCAL:
                P[r] = ld.matrix(f"mal_{r}", i)
            for r in ("attn_q", "attn_k", "attn_v"):
                P[r + "_b"] = host(b + r + ".bias", E)
            self.local.append(P)
        self.local_norm = host("mm.a.local_norm.weight", E)
        self.mlp1, self.mlp2 = ld.matrix("mm_a_mlp1"), ld.matrix("mm_a_mlp2")
        if self.mlp1.n_cols != E * cfg.group or self.mlp2.n_cols != self.mlp1.n_rows or self.mlp2.n_rows != cfg.n_text_embd:
            raise KvrunError(f"{g.path}: the projection's shapes do not fit groups of {cfg.group} rows of {E}")

    def n_rows(self, n_samples: int) -> int:
        """Rows a clip of ``n_samples`` (16 kHz) becomes."""
        return n_rows(n_samples, self.cfg.group)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz mono samples -> the clip's rows, float32 [n_rows, n_text_embd] (resampled to 24 kHz first)."""
        x = resample(samples)
        if x.size < 2 * HOP:
            raise KvrunError(f"the audio is {np.asarray(samples).size} samples long; MiMo's audio encoder takes at least 20 ms")
        return self.encode_mel(log_mel(x, self.cfg.n_mel))

    def encode_mel(self, mel: np.ndarray) -> np.ndarray:
        """A spectrogram [n_mel, frames] -> its rows (:func:`_forward` on the encoder's device)."""
        if mel.ndim != 2 or mel.shape[0] != self.cfg.n_mel or mel.shape[1] < 3:
            raise KvrunError(f"the audio encoder takes a spectrogram [{self.cfg.n_mel}, frames >= 3], got {list(mel.shape)}")
        return _forward(ops_of(self), self, mel)


def causal_masks(T: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """clip.cpp's full and window masks [T, T]: 0 where query q sees key k (k <= q; and q - k <= window), else the
    lowest float."""
    d = np.arange(T)[:, None] - np.arange(T)[None, :]
    full = np.where(d >= 0, 0.0, MASKED).astype(np.float32)
    return full, np.where((d >= 0) & (d <= window), 0.0, MASKED).astype(np.float32)


def _forward(ops: Any, enc: MimoAudioEncoder, mel: np.ndarray) -> np.ndarray:
    """:meth:`MimoAudioEncoder.encode_mel` past its checks on either device's ``ops`` (models/vit_ops.py; on the GPU
    the spectrogram goes up once and the rows come down once)."""
    xp = ops.xp
    x = _encoder(ops, enc, mel)
    x = _downsample(ops, enc, x)
    codes = quantize(ops, enc, x)
    e = ops.const(enc.tables[0])[codes[0]]
    for q in range(1, len(codes)):
        e = e + ops.const(enc.tables[q])[codes[q]]
    return ops.to_host(xp.ascontiguousarray(_local(ops, enc, xp.ascontiguousarray(e, np.float32)), np.float32))


def _encoder(ops: Any, enc: MimoAudioEncoder, mel: np.ndarray) -> Any:
    """The convolutions and the causal blocks, the skip from layer 2's middle, the post LayerNorm: [T, n_embd]."""
    c, xp = enc.cfg, ops.xp
    x = ops.vector(np.ascontiguousarray(mel.T))
    for (w, b), stride in zip(enc.conv, (1, 2)):
        x = ops.act(ops.product_f16(unfold3(xp, x, stride), w, b), "gelu_erf")
    T, H = x.shape[0], c.n_head
    D = c.n_embd // H
    cos, sin = (ops.vector(t) for t in rope_table(T, D, THETA))
    full, win = (ops.vector(m) for m in causal_masks(T, c.window))
    scale = np.float32(1.0 / math.sqrt(D))
    skip = None
    for i, L in enumerate(enc.layers):
        h = ops.layer_norm(x, L["ln1"], L["ln1_b"], c.eps)
        q, k, v = (ops.linear(L[r], h, L[r + "_b"]).reshape(T, H, D) for r in ("q", "k", "v"))
        q, k = ops.rope_neox(q, k, cos, sin)
        x = x + ops.linear(L["o"], ops.attend_masked(q, k, v, full if c.modes[i] == -1 else win, scale), L["o_b"])
        if i == SKIP_LAYER:  # (build_vit's callback_layer_out: after the attention's residual, before the MLP)
            skip = x
        h = ops.layer_norm(x, L["ln2"], L["ln2_b"], c.eps)
        x = x + ops.linear(L["down"], ops.act(ops.linear(L["up"], h, L["up_b"]), "gelu_erf"), L["down_b"])
    return ops.layer_norm(x + skip, enc.post_ln, enc.post_ln_b, c.eps)


def _downsample(ops: Any, enc: MimoAudioEncoder, x: Any) -> Any:
    """ggml_conv_1d (kernel 2, stride 2, no padding, F16 im2col), GELU(erf), LayerNorm: [T, E] -> [T // 2, E]."""
    xp = ops.xp
    n = x.shape[0] // 2
    cols = xp.ascontiguousarray(xp.stack([x[0 : 2 * n : 2], x[1 : 2 * n : 2]], axis=-1).reshape(n, -1))
    y = ops.act(ops.product_f16(cols, enc.down, None), "gelu_erf")
    return ops.layer_norm(y, enc.down_norm, enc.down_norm_b, enc.cfg.eps)


def quantize(ops: Any, enc: MimoAudioEncoder, x: Any) -> list[Any]:
    """The residual vector quantizer's codes of the rows ``x`` [n, E], one index array a quantizer: each picks the
    codeword of the largest 2 r.c - |c|^2 (the nearest) and takes it off the residual r."""
    xp = ops.xp
    r, codes = x, []
    for book, norm in zip(enc.books, enc.book_norms):
        b = ops.const(book)
        idx = xp.argmax(xp.float32(2.0) * (r @ b.T) - ops.const(norm), axis=1)
        codes.append(idx)
        r = xp.ascontiguousarray(r - b[idx], np.float32)
    return codes


def _local(ops: Any, enc: MimoAudioEncoder, e: Any) -> Any:
    """The input-local transformer over groups of ``group`` rows (zero rows pad the last, attended to as the others),
    its RMSNorm, each group's rows side by side through the projection: [n, E] -> [groups, n_text_embd]."""
    c, xp = enc.cfg, ops.xp
    n, E = e.shape
    G, H = -(-n // c.group), c.n_head
    D = E // H
    if G * c.group > n:
        e = xp.ascontiguousarray(xp.concatenate([e, xp.zeros((G * c.group - n, E), np.float32)]))
    T = G * c.group
    cos, sin = rope_table(c.group, D, LOCAL_THETA)
    pos = np.arange(T) % c.group
    cos, sin = ops.vector(cos[pos]), ops.vector(sin[pos])
    scale = np.float32(1.0 / math.sqrt(D))
    x = e
    for P in enc.local:
        h = ops.rms_norm(x, P["ln1"], c.eps)
        q, k, v = (ops.linear(P[r], h, P[r + "_b"]).reshape(T, H, D) for r in ("attn_q", "attn_k", "attn_v"))
        q, k = ops.rope_neox(q, k, cos, sin)
        a = ops.attend_batched(*(t.reshape(G, c.group, H, D) for t in (q, k, v)), scale)
        x = x + ops.linear(P["attn_out"], a)
        h = ops.rms_norm(x, P["ln2"], c.eps)
        g = ops.act(ops.linear(P["ffn_gate"], h), "silu") * ops.linear(P["ffn_up"], h)
        x = x + ops.linear(P["ffn_down"], xp.ascontiguousarray(g, np.float32))
    x = xp.ascontiguousarray(ops.rms_norm(x, enc.local_norm, c.eps).reshape(G, c.group * E))
    return ops.linear(enc.mlp2, ops.act(ops.linear(enc.mlp1, x), "gelu_erf"))
