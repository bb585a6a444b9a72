"""A tiny random Ultravox pair, for tests held to llama.cpp's libmtmd: an audio projector file (mmproj,
``general.architecture`` "clip", projector type "ultravox", an audio encoder and no vision one) and a llama text
model whose width is the projector's output; and the test WAV files.

The projector is laid out as llama.cpp's converter writes Ultravox's (``a.conv1d.{1,2}``, ``a.position_embd``,
``a.blk.N.*`` without a K bias, ``a.post_ln``, ``mm.a.norm_pre``, ``mm.a.mlp.1``, ``mm.a.norm_mid``, ``mm.a.mlp.2``)
at toy widths: 16 mel bins, a 32-wide Whisper encoder of 2 layers, its rows stacked 4 at a time into a SwiGLU MLP.
The positions are Whisper's 1500 (a 30 s chunk of 3000 mel frames, halved by the second convolution), so the
encoder runs at the real length.  The text model is tiny_vision's llama (byte vocabulary, no audio tokens: libmtmd
puts none around Ultravox's rows).

The pieces every tower's tiny projector begins with or shares are here once (tests/tiny_audio_<tower>.py write the
rest): :func:`audio_mmproj_writer`'s header and ``clip.audio.*`` keys, :func:`float32_tensors`, the FastConformer's
subsampling and blocks (LFM2-Audio's and Parakeet's) and the conformers' macaron FFNs (those two's and Granite
Speech's).  Each draws from the writer's generator in the order it always did, so the files stay the bytes the
fixtures' digests name.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tiny_vision import write_vl_text
from tinymodel import ARCH_GEOMETRY, _finish, _random_tensors

Q = GGMLQuantizationType

N_MEL, A_EMBD, A_FF, A_LAYER, A_HEAD, N_POS = 16, 32, 48, 2, 2, 1500
# rows stacked per projector row (Ultravox's real factor is 8, but 1500 rows / 8 is 187.5: clip.cpp's graph pads to
# 188 and its token count says 187, so llama.cpp 0.3.36 aborts a stack of 8; 4 divides 1500), the projector's width
STACK, PROJ_HIDDEN = 4, 48


def write_whisper_encoder(w: GGUFWriter, rng: np.random.Generator, mat: Any, vec: Any) -> None:
    """The tiny Whisper encoder every audio projector here carries (its tensors in clip.cpp's names, drawn from ``rng``
    in this order): two F16 conv kernels with biases, positions, A_LAYER pre-norm blocks, the post-norm."""

    def conv(name: str, c_out: int, c_in: int) -> None:  # [c_out, c_in, 3] kernel (F16, as clip.cpp's im2col wants), its bias
        w.add_tensor(name + ".weight", (rng.standard_normal((c_out, c_in, 3)) * 0.3).astype(np.float16))
        w.add_tensor(name + ".bias", (rng.standard_normal((c_out, 1)) * 0.1).astype(np.float32))

    conv("a.conv1d.1", A_EMBD, N_MEL)
    conv("a.conv1d.2", A_EMBD, A_EMBD)
    w.add_tensor("a.position_embd.weight", (rng.standard_normal((N_POS, A_EMBD)) * 0.5).astype(np.float32))
    write_audio_blocks(mat, vec, k_bias=False)  # (Whisper's K has no bias; clip.cpp asserts so)


def write_audio_blocks(mat: Any, vec: Any, n_embd: int = A_EMBD, n_ff: int = A_FF, n_layer: int = A_LAYER, k_bias: bool = False) -> None:
    """An audio encoder's ``n_layer`` pre-norm blocks (``a.blk.N.*``: LayerNorms, Q, K, V and output with biases, K's
    only where ``k_bias``, a biased MLP) and its post-norm ``a.post_ln``, drawn in this order."""
    for i in range(n_layer):
        b = f"a.blk.{i}."
        vec(b + "ln1.weight", n_embd)
        vec(b + "ln1.bias", n_embd, 0.0)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            mat(b + t + ".weight", n_embd, n_embd, 0.3)
            if t != "attn_k" or k_bias:
                vec(b + t + ".bias", n_embd, 0.0)
        vec(b + "ln2.weight", n_embd)
        vec(b + "ln2.bias", n_embd, 0.0)
        mat(b + "ffn_up.weight", n_ff, n_embd, 0.3)
        vec(b + "ffn_up.bias", n_ff, 0.0)
        mat(b + "ffn_down.weight", n_embd, n_ff, 0.3)
        vec(b + "ffn_down.bias", n_embd, 0.0)
    vec("a.post_ln.weight", n_embd)
    vec("a.post_ln.bias", n_embd, 0.0)


def audio_mmproj_writer(path: Path, name: str, projector_type: str, n_text_embd: int, n_mel: int = N_MEL, n_embd: int = A_EMBD,
                        n_ff: int = A_FF, n_layer: int = A_LAYER, n_head: int = A_HEAD, eps: float = 1e-5,
                        type_key: str = "clip.projector_type") -> GGUFWriter:  # fmt: skip
    """A projector file's writer as the converters begin an audio-only mmproj (an audio encoder, no vision one): its
    name, ``projector_type`` (under ``type_key``: Nemotron VL's converter writes ``clip.audio.projector_type``) and the
    audio encoder's keys (:func:`add_audio_keys`), in their order."""
    w = GGUFWriter(str(path), "clip")
    w.add_name(name)
    w.add_bool("clip.has_vision_encoder", False)
    w.add_bool("clip.has_audio_encoder", True)
    w.add_string(type_key, projector_type)
    add_audio_keys(w, n_text_embd, n_mel, n_embd, n_ff, n_layer, n_head, eps)
    return w


def add_audio_keys(w: GGUFWriter, n_text_embd: int, n_mel: int = N_MEL, n_embd: int = A_EMBD, n_ff: int = A_FF,
                   n_layer: int = A_LAYER, n_head: int = A_HEAD, eps: float = 1e-5) -> None:  # fmt: skip
    """The audio encoder's ``clip.audio.*`` keys in the converters' order (LayerNorm epsilon ``eps``); the rows it
    makes ``n_text_embd`` wide."""
    w.add_uint32("clip.audio.num_mel_bins", n_mel)
    w.add_uint32("clip.audio.embedding_length", n_embd)
    w.add_uint32("clip.audio.feed_forward_length", n_ff)
    w.add_uint32("clip.audio.projection_dim", n_text_embd)
    w.add_uint32("clip.audio.block_count", n_layer)
    w.add_uint32("clip.audio.attention.head_count", n_head)
    w.add_float32("clip.audio.attention.layer_norm_epsilon", eps)


def float32_tensors(w: GGUFWriter, rng: np.random.Generator) -> Callable[[str, tuple[int, ...], float], None]:
    """``arr(name, shape, scale)``: a float32 tensor of any shape ~ N(0, scale²), drawn from ``rng`` in call order
    beside _random_tensors' ``mat`` and ``vec`` (the kernels and tables a converter stores float32 whatever the
    matrices' type)."""

    def arr(name: str, shape: tuple[int, ...], scale: float) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    return arr


def write_conv_subsampling(arr: Any, mat: Any, vec: Any, c_sub: int, f_out: int, n_embd: int) -> None:
    """A FastConformer's subsampling as the converters write LFM2-Audio's and Parakeet's, drawn in this order:
    ``a.conv1d.{0,2,3,5,6}`` (a 3x3 stride-2 convolution of ``c_sub`` channels, then twice a depthwise 3x3 stride-2
    and a pointwise one, each with its bias, all float32) and ``a.pre_encode.out`` from the flattened (channel,
    ``f_out`` frequency rows) features to the encoder's width."""
    arr("a.conv1d.0.weight", (c_sub, 1, 3, 3), 0.5)
    arr("a.conv1d.0.bias", (c_sub, 1, 1), 0.1)
    for dw, pw in ((2, 3), (5, 6)):
        arr(f"a.conv1d.{dw}.weight", (c_sub, 1, 3, 3), 0.4)
        arr(f"a.conv1d.{dw}.bias", (c_sub, 1, 1), 0.1)
        arr(f"a.conv1d.{pw}.weight", (c_sub, c_sub, 1, 1), 0.4)
        arr(f"a.conv1d.{pw}.bias", (c_sub, 1, 1), 0.1)
    mat("a.pre_encode.out.weight", n_embd, c_sub * f_out, 0.3)
    vec("a.pre_encode.out.bias", n_embd, 0.0)


def write_macaron_ffns(mat: Any, vec: Any, prefix: str, n_embd: int, n_ff: int, biases: bool = True) -> None:
    """A conformer block's two half-step FFNs at ``prefix`` (``a.blk.N.``), drawn in this order: ``ffn_norm``,
    ``ffn_up``, ``ffn_down`` and their ``_1`` twins (the LayerNorms with biases, the products only where ``biases``),
    then the attention's LayerNorm ``ln1``."""
    for sfx in ("", "_1"):
        vec(prefix + f"ffn_norm{sfx}.weight", n_embd)
        vec(prefix + f"ffn_norm{sfx}.bias", n_embd, 0.0)
        mat(prefix + f"ffn_up{sfx}.weight", n_ff, n_embd, 0.3)
        if biases:
            vec(prefix + f"ffn_up{sfx}.bias", n_ff, 0.0)
        mat(prefix + f"ffn_down{sfx}.weight", n_embd, n_ff, 0.3)
        if biases:
            vec(prefix + f"ffn_down{sfx}.bias", n_embd, 0.0)
    vec(prefix + "ln1.weight", n_embd)
    vec(prefix + "ln1.bias", n_embd, 0.0)


def write_fastconformer_blocks(w: GGUFWriter, rng: np.random.Generator, mat: Any, vec: Any, arr: Any, n_layer: int, n_embd: int,
                               n_ff: int, n_head: int, kernel: int, d_pos: int, biases: bool = True,
                               running_stats: bool = False) -> None:  # fmt: skip
    """LFM2-Audio's FastConformer blocks ``a.blk.N.*`` as the converters write them, drawn in this order: the macaron
    FFNs and ``ln1`` (:func:`write_macaron_ffns`), Q/K/V/out, ``linear_pos`` from the ``d_pos``-wide relative
    sinusoids, ``pos_bias_u``/``pos_bias_v``, the convolution module ``norm_conv``/``conv_pw1``/``conv_dw`` (``kernel``
    taps)/``conv_norm``/``conv_pw2``, ``ln2``.  Parakeet's: ``biases`` off (the products without), ``running_stats``
    (the batch norm unfolded: ``conv_norm`` with its running ``conv_norm_mean`` and ``conv_norm_var``)."""
    d = n_embd // n_head
    for i in range(n_layer):
        b = f"a.blk.{i}."
        write_macaron_ffns(mat, vec, b, n_embd, n_ff, biases)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            mat(b + t + ".weight", n_embd, n_embd, 0.3)
            if biases:
                vec(b + t + ".bias", n_embd, 0.0)
        mat(b + "linear_pos.weight", n_embd, d_pos, 0.3)
        arr(b + "pos_bias_u", (n_head, d), 0.5)
        arr(b + "pos_bias_v", (n_head, d), 0.5)
        vec(b + "norm_conv.weight", n_embd)
        vec(b + "norm_conv.bias", n_embd, 0.0)
        mat(b + "conv_pw1.weight", 2 * n_embd, n_embd, 0.3)
        if biases:
            vec(b + "conv_pw1.bias", 2 * n_embd, 0.0)
        arr(b + "conv_dw.weight", (n_embd, kernel), 0.3)
        if biases:
            vec(b + "conv_dw.bias", n_embd, 0.0)
        vec(b + "conv_norm.weight", n_embd)
        vec(b + "conv_norm.bias", n_embd, 0.0)
        if running_stats:
            vec(b + "conv_norm_mean", n_embd, 0.0, 0.2)
            w.add_tensor(b + "conv_norm_var", rng.uniform(0.3, 2.0, n_embd).astype(np.float32))
        mat(b + "conv_pw2.weight", n_embd, n_embd, 0.3)
        if biases:
            vec(b + "conv_pw2.bias", n_embd, 0.0)
        vec(b + "ln2.weight", n_embd)
        vec(b + "ln2.bias", n_embd, 0.0)


def write_tiny_ultravox_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = ARCH_GEOMETRY["llama"][0]) -> Path:
    """A random Ultravox projector; its matrices (the conv kernels always F16, as converters store them) as ``qtype``."""
    rng = np.random.default_rng(seed)
    w = audio_mmproj_writer(path, "tiny-ultravox-mmproj", "ultravox", n_text_embd)
    w.add_uint32("clip.audio.projector.stack_factor", STACK)
    mat, vec = _random_tensors(w, rng, qtype)

    write_whisper_encoder(w, rng, mat, vec)
    vec("mm.a.norm_pre.weight", A_EMBD * STACK)
    mat("mm.a.mlp.1.weight", 2 * PROJ_HIDDEN, A_EMBD * STACK, 0.2)
    vec("mm.a.norm_mid.weight", PROJ_HIDDEN)
    mat("mm.a.mlp.2.weight", n_text_embd, PROJ_HIDDEN, 0.05)  # (rows of a token embedding's size, ~1)
    return _finish(w, path)


def write_tiny_ultravox_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random llama text model (tinymodel's geometry) for the tiny projector (the fixture's has no chat template)."""
    return write_vl_text(path, "llama", "tiny-ultravox", ARCH_GEOMETRY["llama"], [], [], 1e-5, 10000.0, qtype, seed, chat_template)


def sample_audio(seconds: float = 1.3, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A mono test signal in [-1, 1] (float32): a chirp under an envelope, a tone and noise (every mel bin sees some)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.5 * np.sin(2 * np.pi * (200 * t + 1500 * t * t)) * np.exp(-((t - seconds / 2) ** 2))
    x += 0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.shape)
    return np.clip(x, -1, 1).astype(np.float32)


def wav_bytes(x: np.ndarray, rate: int = 16000, channels: int = 1, width: int = 2) -> bytes:
    """``x`` (float32 in [-1, 1], [n] or [n, channels]) as a PCM WAV file of ``width`` bytes a sample."""
    x = x.reshape(len(x), -1) if x.ndim == 1 else x
    if x.shape[1] != channels:
        x = np.repeat(x[:, :1], channels, axis=1)
    if width == 2:
        data = np.round(x * 32767).astype("<i2").tobytes()
    elif width == 1:
        data = np.round(x * 127 + 128).astype(np.uint8).tobytes()
    else:
        data = np.round(x * (2**31 - 1)).astype("<i4").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(data)
    return buf.getvalue()
