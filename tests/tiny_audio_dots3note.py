"""A tiny random dots.note audio projector ("dots3note_a"), for tests held to llama.cpp's libmtmd: an audio projector
file (mmproj, ``general.architecture`` "clip", projector type "dots3note_a", an audio encoder and no vision one) and
dots.note's own text model (``dots3note``, tests/tiny_dots3note.py: latent attention with window layers, 64 wide, the
projector's output width).

The projector is laid out as llama.cpp's converter writes dots.note's audio side (conversion/dots3.py
``Dots3NoteMmprojModel``): ``a.conv2d.{1,2,3}`` three 3x3 stride-2 convolutions of ``C_CONV`` channels with biases
(float32, as the converter forces them), ``a.conv_out`` from the flattened (channel, frequency) features to the
encoder's width without a bias, ``a.blk.N.*`` pre-RMSNorm blocks (``ln1``/``ln2`` weights only; Q, V and output with
biases, K without, Whisper's; the SwiGLU ``ffn_gate``/``ffn_up`` the converter splits from ``fc1``, and ``ffn_down``,
all biased), and the adapter ``mm.a.norm_pre`` (a LayerNorm) -> ``mm.a.mlp.1`` -> GELU -> ``mm.a.mlp.3``.
``clip.use_silu`` as the converter sets it (its SwiGLU).  Toy sizes: 16 mel bins (2 frequency rows after the
three convolutions), 8 channels, a 32-wide encoder of 2 layers and 2 heads (16 a head, rotary on the first 8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_audio import audio_mmproj_writer, float32_tensors
from tinymodel import _finish, _random_tensors, write_tiny_model

Q = GGMLQuantizationType

N_MEL, C_CONV, A_EMBD, A_FF, A_LAYER, A_HEAD, ADAPT, N_TEXT = 16, 8, 32, 48, 2, 2, 48, 64
F_OUT = 2  # frequency rows after three stride-2 convolutions of 16 bins: 16 -> 8 -> 4 -> 2


def write_tiny_dots3note_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT) -> Path:
    """A random dots.note audio projector; its matrices stored as ``qtype`` (the convolutions and ``a.conv_out``
    float32, as the converter forces them)."""
    rng = np.random.default_rng(seed)
    w = audio_mmproj_writer(path, "tiny-dots3note-audio-mmproj", "dots3note_a", n_text_embd, N_MEL, A_EMBD, A_FF, A_LAYER, A_HEAD, 1e-6)
    w.add_bool("clip.use_silu", True)
    mat, vec = _random_tensors(w, rng, qtype)
    arr = float32_tensors(w, rng)
    E = A_EMBD
    c_in = 1
    for i in (1, 2, 3):
        arr(f"a.conv2d.{i}.weight", (C_CONV, c_in, 3, 3), 0.5 if i == 1 else 0.3)
        arr(f"a.conv2d.{i}.bias", (C_CONV,), 0.1)
        c_in = C_CONV
    mat("a.conv_out.weight", E, C_CONV * F_OUT, 0.4, f32=True)
    for i in range(A_LAYER):
        b = f"a.blk.{i}."
        vec(b + "ln1.weight", E)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            mat(b + t + ".weight", E, E, 0.3)
            if t != "attn_k":
                vec(b + t + ".bias", E, 0.0)
        vec(b + "ln2.weight", E)
        for t in ("ffn_gate", "ffn_up"):
            mat(b + t + ".weight", A_FF, E, 0.3)
            vec(b + t + ".bias", A_FF, 0.0)
        mat(b + "ffn_down.weight", E, A_FF, 0.3)
        vec(b + "ffn_down.bias", E, 0.0)
    vec("mm.a.norm_pre.weight", E)
    vec("mm.a.norm_pre.bias", E, 0.0)
    mat("mm.a.mlp.1.weight", ADAPT, E, 0.3)
    vec("mm.a.mlp.1.bias", ADAPT, 0.0)
    mat("mm.a.mlp.3.weight", n_text_embd, ADAPT, 0.3)
    vec("mm.a.mlp.3.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_dots3note_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """A random ``dots3note`` text model 64 wide (tests/tiny_dots3note.py)."""
    return write_tiny_model(path, "dots3note", qtype, seed)
