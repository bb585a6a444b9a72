"""A tiny random Qwen3-Omni audio pair ("qwen3a"), for tests held to llama.cpp's libmtmd: an audio projector file
(mmproj, ``general.architecture`` "clip", projector type "qwen3a", an audio encoder and no vision one) and a
``qwen3vl`` text model (Qwen3-Omni's thinker is Qwen3-VL-MoE's M-RoPE text model) whose width is the projector's
output and whose vocabulary holds the layout's ``<|audio_start|>`` and ``<|audio_end|>``.

The projector is laid out as llama.cpp's converter writes Qwen3-Omni's audio tower: three conv2d kernels
``a.conv2d.{1,2,3}`` (3x3, stride 2, padding 1, ``C_DOWN`` channels; F16 as converters store them) with their
biases, ``a.conv_out`` (no bias) from the flattened (channel, frequency) features to the encoder's width, positions
``a.position_embd`` (Qwen3-Omni's are sinusoidal, written as a table), ``a.blk.N.*`` pre-norm blocks with Q, K, V and
output biases, ``a.post_ln``, and the projector ``mm.a.mlp.1`` (width to width, bias), GELU, ``mm.a.mlp.2`` (to the
text model's width, bias).  Toy sizes: 16 mel bins (2 frequency rows after the convolutions), 8 channels, a 32-wide
encoder of 2 layers and 2 heads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_audio import audio_mmproj_writer, write_audio_blocks
from tiny_vision import write_vl_text
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

N_MEL, C_DOWN, A_EMBD, A_FF, A_LAYER, A_HEAD, N_POS = 16, 8, 32, 48, 2, 2, 20
F_OUT = (((N_MEL - 1) // 2 + 1 - 1) // 2 + 1 - 1) // 2 + 1  # frequency rows left after three stride-2 convolutions (16 -> 2)
MARKER_TOKENS = ["<|audio_start|>", "<|audio_end|>"]
#: the text model: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer) and its interleaved M-RoPE sections
TEXT_GEOMETRY, SECTIONS = (64, 4, 2, 16, 96, 2), [4, 2, 1, 1]


def write_tiny_qwen3a_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = TEXT_GEOMETRY[0]) -> Path:
    """A random Qwen3-Omni audio projector; its matrices (the conv kernels always F16) as ``qtype``."""
    rng = np.random.default_rng(seed)
    w = audio_mmproj_writer(path, "tiny-qwen3a-mmproj", "qwen3a", n_text_embd, N_MEL, A_EMBD, A_FF, A_LAYER, A_HEAD)
    mat, vec = _random_tensors(w, rng, qtype)

    for n, c_in in ((1, 1), (2, C_DOWN), (3, C_DOWN)):  # [c_out, c_in, 3, 3] kernels, [c_out, 1, 1] biases
        w.add_tensor(f"a.conv2d.{n}.weight", (rng.standard_normal((C_DOWN, c_in, 3, 3)) * (0.5 / np.sqrt(c_in))).astype(np.float16))
        w.add_tensor(f"a.conv2d.{n}.bias", (rng.standard_normal((C_DOWN, 1, 1)) * 0.1).astype(np.float32))
    mat("a.conv_out.weight", A_EMBD, C_DOWN * F_OUT, 0.3)
    w.add_tensor("a.position_embd.weight", (rng.standard_normal((N_POS, A_EMBD)) * 0.5).astype(np.float32))
    write_audio_blocks(mat, vec, A_EMBD, A_FF, A_LAYER, k_bias=True)  # (Qwen3-Omni's K has its bias)
    mat("mm.a.mlp.1.weight", A_EMBD, A_EMBD, 0.3)
    vec("mm.a.mlp.1.bias", A_EMBD, 0.0)
    mat("mm.a.mlp.2.weight", n_text_embd, A_EMBD, 0.2)
    vec("mm.a.mlp.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_qwen3a_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None,
                           deepstack: int = 0) -> Path:  # fmt: skip
    """A random ``qwen3vl`` text model whose vocabulary ends in :data:`MARKER_TOKENS` (control tokens)."""
    return write_vl_text(path, "qwen3vl", "tiny-qwen3a", TEXT_GEOMETRY, MARKER_TOKENS, [3] * len(MARKER_TOKENS), 1e-6, 100.0,
                         qtype, seed, chat_template, sections=SECTIONS, deepstack=deepstack)  # fmt: skip
