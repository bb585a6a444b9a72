"""A tiny random LFM2-Audio pair ("lfm2a"), for tests held to llama.cpp's libmtmd: an audio projector file (mmproj,
``general.architecture`` "clip", projector type "lfm2a", an audio encoder and no vision one) and an ``lfm2`` text
model (LFM2-Audio's backbone is LFM2) whose width is the projector's output.

The projector is laid out as llama.cpp's converter writes LFM2-Audio's FastConformer: the subsampling
``a.conv1d.{0,2,3,5,6}`` (a 3x3 stride-2 convolution, then twice a depthwise 3x3 stride-2 and a pointwise one, each
with its bias), ``a.pre_encode.out`` from the flattened (channel, frequency) features to the encoder's width,
``a.blk.N.*`` macaron blocks (``ffn_norm``/``ffn_up``/``ffn_down``, ``ln1`` and Q/K/V/out with biases,
``linear_pos`` from the 512-wide relative sinusoids, ``pos_bias_u``/``pos_bias_v``, the convolution module
``norm_conv``/``conv_pw1``/``conv_dw`` (kernel 9)/``conv_norm`` (batch norm folded into a scale and shift, as the
converter folds it)/``conv_pw2``, ``ffn_norm_1``/``ffn_up_1``/``ffn_down_1``, ``ln2``), and the adapter ``mm.a.mlp.0``
(LayerNorm), ``mm.a.mlp.1``, GELU, ``mm.a.mlp.3``.  ``a.position_embd.weight`` is libmtmd's placeholder: its width
is the projector's output (clip_n_mmproj_embd reads it) and it must hold half the clip's frames of rows.  Toy sizes:
16 mel bins (2 frequency rows after the subsampling), 8 channels, a 32-wide encoder of 2 layers and 2 heads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_audio import audio_mmproj_writer, float32_tensors, write_conv_subsampling, write_fastconformer_blocks
from tiny_vision_lfm2 import write_tiny_lfm2vl
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

N_MEL, C_SUB, A_EMBD, A_FF, A_LAYER, A_HEAD, D_POS, N_POS, N_TEXT = 16, 8, 32, 64, 2, 2, 512, 2000, 64
F_OUT = 2  # frequency rows left after three stride-2 convolutions (16 -> 8 -> 4 -> 2)
K_DW = 9  # the convolution module's depthwise kernel (clip.cpp pads it 4 a side)


def write_tiny_lfm2a_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT) -> Path:
    """A random LFM2-Audio projector; its matrices stored as ``qtype`` (the subsampling's kernels float32)."""
    rng = np.random.default_rng(seed)
    w = audio_mmproj_writer(path, "tiny-lfm2a-mmproj", "lfm2a", n_text_embd, N_MEL, A_EMBD, A_FF, A_LAYER, A_HEAD)
    mat, vec = _random_tensors(w, rng, qtype)
    arr = float32_tensors(w, rng)

    write_conv_subsampling(arr, mat, vec, C_SUB, F_OUT, A_EMBD)
    w.add_tensor("a.position_embd.weight", np.zeros((N_POS, n_text_embd), np.float32))
    write_fastconformer_blocks(w, rng, mat, vec, arr, A_LAYER, A_EMBD, A_FF, A_HEAD, K_DW, D_POS)
    vec("mm.a.mlp.0.weight", A_EMBD)
    vec("mm.a.mlp.0.bias", A_EMBD, 0.0)
    mat("mm.a.mlp.1.weight", n_text_embd, A_EMBD, 0.3)
    vec("mm.a.mlp.1.bias", n_text_embd, 0.0)
    mat("mm.a.mlp.3.weight", n_text_embd, n_text_embd, 0.2)
    vec("mm.a.mlp.3.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_lfm2a_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random ``lfm2`` text model 64 wide (tiny_vision_lfm2's: LFM2's convolution and attention layers)."""
    return write_tiny_lfm2vl(path, qtype, seed, chat_template)
