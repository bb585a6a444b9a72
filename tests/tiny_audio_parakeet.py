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
from gguf import GGMLQuantizationType

from tiny_audio import audio_mmproj_writer, float32_tensors, write_conv_subsampling, write_fastconformer_blocks
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
    w = audio_mmproj_writer(path, "tiny-parakeet-mmproj", "parakeet", n_text_embd, N_MEL, A_EMBD, A_FF, A_LAYER, A_HEAD,
                            type_key="clip.audio.projector_type")  # fmt: skip
    w.add_uint32("clip.audio.subsampling_factor", 8)
    w.add_uint32("clip.audio.conv_kernel_size", K_DW)
    mat, vec = _random_tensors(w, rng, qtype)
    arr = float32_tensors(w, rng)

    w.add_tensor("a.mel_filters", mel_filters(N_MEL, N_FFT).astype(np.float32))
    # (NeMo's featurizer window: torch.hann_window(400, periodic=False), the symmetric one)
    w.add_tensor("a.window", (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WINDOW) / (WINDOW - 1))).astype(np.float32))
    write_conv_subsampling(arr, mat, vec, C_SUB, F_OUT, A_EMBD)
    # (linear_pos reads encoder-wide sinusoids; no biases on the products; the batch norm's running statistics)
    write_fastconformer_blocks(w, rng, mat, vec, arr, A_LAYER, A_EMBD, A_FF, A_HEAD, K_DW, A_EMBD, biases=False, running_stats=True)
    vec("mm.a.norm_pre.weight", A_EMBD)
    mat("mm.a.mlp.1.weight", N_HID, A_EMBD, 0.15)
    mat("mm.a.mlp.2.weight", n_text_embd, N_HID, 0.2)
    for k in (0, 1, 3):  # (placeholders: clip.cpp's parakeet loader asks for the vision projector's, never used)
        w.add_tensor(f"mm.model.mlp.{k}.weight", np.zeros((1, 4), np.float32))
    return _finish(w, path)


def write_tiny_parakeet_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """A random ``nemotron_h`` text model 64 wide (tinymodel's: Mamba-2, attention and squared-ReLU FFN layers)."""
    return write_tiny_model(path, "nemotron_h", qtype, seed)
