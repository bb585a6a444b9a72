"""A tiny random Parakeet pair ("parakeet"), for tests held to llama.cpp's libmtmd: an audio projector file (mmproj,
``general.architecture`` "clip", projector type "parakeet", an audio encoder and no vision one) and a ``nemotron_h``
text model (NVIDIA's Nemotron Nano VL puts its Parakeet FastConformer before a Nemotron-H: conversion/nemotron.py
``NemotronNanoV2VLModel``) whose width is the projector's output.

The projector is laid out as llama.cpp's converter writes the ``sound_encoder`` / ``sound_projection``: the
preprocessor's own ``a.mel_filters`` [n_mel, 257] and ``a.window`` (400 taps), both float32 (libmtmd reads them from
the file rather than building them); the subsampling ``a.conv1d.{0,2,3,5,6}`` (a 3x3 stride-2 convolution, twice a
depthwise 3x3 stride-2 and a pointwise one, each with its bias), ``a.pre_encode.out`` to the encoder's width;
``a.blk.N.*`` macaron blocks without biases on their products (``ffn_norm``/``ffn_up``/``ffn_down``, ``ln1``, Q/K/V/out,
``linear_pos`` from the encoder-wide relative sinusoids, ``pos_bias_u``/``pos_bias_v``, the convolution module
``norm_conv``/``conv_pw1``/``conv_dw`` (kernel ``clip.audio.conv_kernel_size``)/the batch norm unfolded:
``conv_norm`` scale and shift with its running ``conv_norm_mean`` and ``conv_norm_var``/``conv_pw2``,
``ffn_norm_1``/``ffn_up_1``/``ffn_down_1``, ``ln2``); the projector ``mm.a.norm_pre`` (RMSNorm), ``mm.a.mlp.1``,
squared ReLU, ``mm.a.mlp.2``.  ``mm.model.mlp.{0,1,3}.weight`` are placeholders: clip.cpp's parakeet loader
requires the Nemotron VL vision projector's tensors (a file of both encoders holds them) and its graph never reads
them.  Toy sizes: 16 mel bins (2 frequency rows after the subsampling), 8 channels, a 32-wide
encoder of 2 layers and 2 heads, a depthwise kernel of 9 (Parakeet's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tinymodel import _finish, _random_tensors, write_tiny_model

Q = GGMLQuantizationType

N_MEL, C_SUB, A_EMBD, A_FF, A_LAYER, A_HEAD, N_HID, N_TEXT, K_DW = 16, 8, 32, 64, 2, 2, 48, 64, 9
F_OUT = 2  # frequency rows left after three stride-2 convolutions (16 -> 8 -> 4 -> 2)
N_FFT, WINDOW = 512, 400


def write_tiny_parakeet_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT) -> Path:
    """A random Parakeet projector; its matrices stored as ``qtype`` (the subsampling's kernels, the depthwise kernel,
    the norms and the preprocessor's tables float32, as the converter forces them)."""
    from kvrun.models.whisper_audio import mel_filters  # (the Slaney bank NeMo's featurizer stores)

    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "clip")
    w.add_name("tiny-parakeet-mmproj")
    w.add_bool("clip.has_vision_encoder", False)
    w.add_bool("clip.has_audio_encoder", True)
    w.add_string("clip.audio.projector_type", "parakeet")
    w.add_uint32("clip.audio.num_mel_bins", N_MEL)
    w.add_uint32("clip.audio.embedding_length", A_EMBD)
    w.add_uint32("clip.audio.feed_forward_length", A_FF)
    w.add_uint32("clip.audio.projection_dim", n_text_embd)
    w.add_uint32("clip.audio.block_count", A_LAYER)
    w.add_uint32("clip.audio.attention.head_count", A_HEAD)
    w.add_float32("clip.audio.attention.layer_norm_epsilon", 1e-5)
    w.add_uint32("clip.audio.subsampling_factor", 8)
    w.add_uint32("clip.audio.conv_kernel_size", K_DW)
    mat, vec = _random_tensors(w, rng, qtype)

    def arr(name: str, shape: tuple[int, ...], scale: float) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    w.add_tensor("a.mel_filters", mel_filters(N_MEL, N_FFT).astype(np.float32))
    # (NeMo's featurizer window: torch.hann_window(400, periodic=False), the symmetric one)
    w.add_tensor("a.window", (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WINDOW) / (WINDOW - 1))).astype(np.float32))
    arr("a.conv1d.0.weight", (C_SUB, 1, 3, 3), 0.5)
    arr("a.conv1d.0.bias", (C_SUB, 1, 1), 0.1)
    for dw, pw in ((2, 3), (5, 6)):
        arr(f"a.conv1d.{dw}.weight", (C_SUB, 1, 3, 3), 0.4)
        arr(f"a.conv1d.{dw}.bias", (C_SUB, 1, 1), 0.1)
        arr(f"a.conv1d.{pw}.weight", (C_SUB, C_SUB, 1, 1), 0.4)
        arr(f"a.conv1d.{pw}.bias", (C_SUB, 1, 1), 0.1)
    mat("a.pre_encode.out.weight", A_EMBD, C_SUB * F_OUT, 0.3)
    vec("a.pre_encode.out.bias", A_EMBD, 0.0)
    d = A_EMBD // A_HEAD
    for i in range(A_LAYER):
        b = f"a.blk.{i}."
        for sfx in ("", "_1"):  # (the two half-step FFNs)
            vec(b + f"ffn_norm{sfx}.weight", A_EMBD)
            vec(b + f"ffn_norm{sfx}.bias", A_EMBD, 0.0)
            mat(b + f"ffn_up{sfx}.weight", A_FF, A_EMBD, 0.3)
            mat(b + f"ffn_down{sfx}.weight", A_EMBD, A_FF, 0.3)
        vec(b + "ln1.weight", A_EMBD)
        vec(b + "ln1.bias", A_EMBD, 0.0)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            mat(b + t + ".weight", A_EMBD, A_EMBD, 0.3)
        mat(b + "linear_pos.weight", A_EMBD, A_EMBD, 0.3)
        arr(b + "pos_bias_u", (A_HEAD, d), 0.5)
        arr(b + "pos_bias_v", (A_HEAD, d), 0.5)
        vec(b + "norm_conv.weight", A_EMBD)
        vec(b + "norm_conv.bias", A_EMBD, 0.0)
        mat(b + "conv_pw1.weight", 2 * A_EMBD, A_EMBD, 0.3)
        arr(b + "conv_dw.weight", (A_EMBD, K_DW), 0.3)
        vec(b + "conv_norm.weight", A_EMBD)
        vec(b + "conv_norm.bias", A_EMBD, 0.0)
        vec(b + "conv_norm_mean", A_EMBD, 0.0, 0.2)
        w.add_tensor(b + "conv_norm_var", rng.uniform(0.3, 2.0, A_EMBD).astype(np.float32))
        mat(b + "conv_pw2.weight", A_EMBD, A_EMBD, 0.3)
        vec(b + "ln2.weight", A_EMBD)
        vec(b + "ln2.bias", A_EMBD, 0.0)
    vec("mm.a.norm_pre.weight", A_EMBD)
    mat("mm.a.mlp.1.weight", N_HID, A_EMBD, 0.15)
    mat("mm.a.mlp.2.weight", n_text_embd, N_HID, 0.2)
    for k in (0, 1, 3):  # (placeholders: clip.cpp's parakeet loader asks for the vision projector's, never used)
        w.add_tensor(f"mm.model.mlp.{k}.weight", np.zeros((1, 4), np.float32))
    return _finish(w, path)


def write_tiny_parakeet_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """A random ``nemotron_h`` text model 64 wide (tinymodel's: Mamba-2, attention and squared-ReLU FFN layers)."""
    return write_tiny_model(path, "nemotron_h", qtype, seed)
