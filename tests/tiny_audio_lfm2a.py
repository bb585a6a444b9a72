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
from gguf import GGMLQuantizationType, GGUFWriter

from tiny_vision_lfm2 import write_tiny_lfm2vl
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

N_MEL, C_SUB, A_EMBD, A_FF, A_LAYER, A_HEAD, D_POS, N_POS, N_TEXT = 16, 8, 32, 64, 2, 2, 512, 2000, 64
F_OUT = 2  # frequency rows left after three stride-2 convolutions (16 -> 8 -> 4 -> 2)
K_DW = 9  # the convolution module's depthwise kernel (clip.cpp pads it 4 a side)


def write_tiny_lfm2a_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT) -> Path:
    """A random LFM2-Audio projector; its matrices stored as ``qtype`` (the subsampling's kernels float32)."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "clip")
    w.add_name("tiny-lfm2a-mmproj")
    w.add_bool("clip.has_vision_encoder", False)
    w.add_bool("clip.has_audio_encoder", True)
    w.add_string("clip.projector_type", "lfm2a")
    w.add_uint32("clip.audio.num_mel_bins", N_MEL)
    w.add_uint32("clip.audio.embedding_length", A_EMBD)
    w.add_uint32("clip.audio.feed_forward_length", A_FF)
    w.add_uint32("clip.audio.projection_dim", n_text_embd)
    w.add_uint32("clip.audio.block_count", A_LAYER)
    w.add_uint32("clip.audio.attention.head_count", A_HEAD)
    w.add_float32("clip.audio.attention.layer_norm_epsilon", 1e-5)
    mat, vec = _random_tensors(w, rng, qtype)

    def arr(name: str, shape: tuple[int, ...], scale: float) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    arr("a.conv1d.0.weight", (C_SUB, 1, 3, 3), 0.5)
    arr("a.conv1d.0.bias", (C_SUB, 1, 1), 0.1)
    for dw, pw in ((2, 3), (5, 6)):
        arr(f"a.conv1d.{dw}.weight", (C_SUB, 1, 3, 3), 0.4)
        arr(f"a.conv1d.{dw}.bias", (C_SUB, 1, 1), 0.1)
        arr(f"a.conv1d.{pw}.weight", (C_SUB, C_SUB, 1, 1), 0.4)
        arr(f"a.conv1d.{pw}.bias", (C_SUB, 1, 1), 0.1)
    mat("a.pre_encode.out.weight", A_EMBD, C_SUB * F_OUT, 0.3)
    vec("a.pre_encode.out.bias", A_EMBD, 0.0)
    w.add_tensor("a.position_embd.weight", np.zeros((N_POS, n_text_embd), np.float32))
    d = A_EMBD // A_HEAD
    for i in range(A_LAYER):
        b = f"a.blk.{i}."
        for sfx in ("", "_1"):  # (the two half-step FFNs)
            vec(b + f"ffn_norm{sfx}.weight", A_EMBD)
            vec(b + f"ffn_norm{sfx}.bias", A_EMBD, 0.0)
            mat(b + f"ffn_up{sfx}.weight", A_FF, A_EMBD, 0.3)
            vec(b + f"ffn_up{sfx}.bias", A_FF, 0.0)
            mat(b + f"ffn_down{sfx}.weight", A_EMBD, A_FF, 0.3)
            vec(b + f"ffn_down{sfx}.bias", A_EMBD, 0.0)
        vec(b + "ln1.weight", A_EMBD)
        vec(b + "ln1.bias", A_EMBD, 0.0)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            mat(b + t + ".weight", A_EMBD, A_EMBD, 0.3)
            vec(b + t + ".bias", A_EMBD, 0.0)
        mat(b + "linear_pos.weight", A_EMBD, D_POS, 0.3)
        arr(b + "pos_bias_u", (A_HEAD, d), 0.5)
        arr(b + "pos_bias_v", (A_HEAD, d), 0.5)
        vec(b + "norm_conv.weight", A_EMBD)
        vec(b + "norm_conv.bias", A_EMBD, 0.0)
        mat(b + "conv_pw1.weight", 2 * A_EMBD, A_EMBD, 0.3)
        vec(b + "conv_pw1.bias", 2 * A_EMBD, 0.0)
        arr(b + "conv_dw.weight", (A_EMBD, K_DW), 0.3)
        vec(b + "conv_dw.bias", A_EMBD, 0.0)
        vec(b + "conv_norm.weight", A_EMBD)
        vec(b + "conv_norm.bias", A_EMBD, 0.0)
        mat(b + "conv_pw2.weight", A_EMBD, A_EMBD, 0.3)
        vec(b + "conv_pw2.bias", A_EMBD, 0.0)
        vec(b + "ln2.weight", A_EMBD)
        vec(b + "ln2.bias", A_EMBD, 0.0)
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
