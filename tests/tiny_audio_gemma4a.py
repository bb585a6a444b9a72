"""A tiny random Gemma 4 audio pair ("gemma4a"), for tests held to llama.cpp's libmtmd: an audio projector file
(mmproj, ``general.architecture`` "clip", projector type "gemma4a", an audio encoder and no vision one) and a Gemma 4
text model (tests/tiny_gemma4.py's E2B-like layout) whose width is the projector's output and whose vocabulary knows
``<|audio>`` and ``<audio|>``.

The projector is laid out as llama.cpp's converter writes Gemma 4's audio conformer (clip-impl.h's names): the
subsampling ``a.conv1d.{0,1}`` (3x3 stride-2 convolutions without a bias, each followed by a channel LayerNorm
``a.conv1d.N.norm``), ``a.input_projection`` from the flattened (frequency, channel) features to the encoder's
width, ``a.blk.N.*`` conformer blocks of RMSNorms (``ffn_norm``/``ffn_up``/``ffn_down``/``ffn_post_norm`` and the
``_1`` twins, ``ln1`` before attention, ``attn_post_norm``, ``ln2`` after the block), chunked attention with
``attn_q``/``attn_k``/``attn_v``/``attn_out``, ``per_dim_scale``/``per_dim_k_scale`` and ``attn_k_rel`` (the
relative sinusoids' projection), the light convolution module (``conv_norm`` before it and ``norm_conv`` after the
depthwise convolution: the converter's names are swapped, clip.cpp reads them so; ``conv_pw1``, ``conv_dw`` of 5
causal taps, ``conv_pw2``), then ``a.pre_encode.out`` (the encoder's output projection, with a bias) and the
embedder ``mm.a.soft_emb_norm`` / ``mm.a.input_projection``.  Two Gemma4ClippableLinear bounds
(``<weight>.input_max``... scalars) are tight enough to bite.  Toy sizes: 16 mel bins (4 frequency rows after the
subsampling), 4 then 8 channels, a 32-wide encoder of 2 layers with 2 heads, 48 wide out, rows projected to 64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_audio import audio_mmproj_writer, float32_tensors
from tiny_gemma4 import GEOMETRY, write_tiny_gemma4
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

N_MEL, C0, C1, A_EMBD, A_FF, A_LAYER, A_HEAD, A_OUT = 16, 4, 8, 32, 64, 2, 2, 48
N_TEXT = GEOMETRY[0]
F_OUT = 4  # frequency rows left after two stride-2 convolutions (16 -> 8 -> 4)
K_DW = 5  # the convolution module's causal depthwise kernel
AUDIO_TOKENS = ("<|audio>", "<audio|>")
#: Gemma4ClippableLinear bounds written: weight -> {scalar suffix: value}
CLAMPS = {"a.blk.0.attn_q.weight": {"input_min": -1.0, "input_max": 1.0},
          "a.blk.1.ffn_down_1.weight": {"output_max": 0.3}}  # fmt: skip


def write_tiny_gemma4a_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT, clamps: bool = True) -> Path:
    """A random Gemma 4 audio projector; its matrices stored as ``qtype`` (the convolution kernels float32);
    ``clamps`` off: without the clippable-linear bounds."""
    rng = np.random.default_rng(seed)
    E = A_EMBD
    w = audio_mmproj_writer(path, "tiny-gemma4a-mmproj", "gemma4a", n_text_embd, N_MEL, E, A_FF, A_LAYER, A_HEAD, eps=1e-6)
    mat, vec = _random_tensors(w, rng, qtype)
    arr = float32_tensors(w, rng)

    arr("a.conv1d.0.weight", (C0, 1, 3, 3), 0.5)
    vec("a.conv1d.0.norm.weight", C0)
    arr("a.conv1d.1.weight", (C1, C0, 3, 3), 0.3)
    vec("a.conv1d.1.norm.weight", C1)
    mat("a.input_projection.weight", E, C1 * F_OUT, 0.3)
    d = E // A_HEAD
    for i in range(A_LAYER):
        b = f"a.blk.{i}."
        for sfx in ("", "_1"):  # (the two half-step FFNs)
            vec(b + f"ffn_norm{sfx}.weight", E)
            mat(b + f"ffn_up{sfx}.weight", A_FF, E, 0.3)
            mat(b + f"ffn_down{sfx}.weight", E, A_FF, 0.3)
            vec(b + f"ffn_post_norm{sfx}.weight", E)
        vec(b + "ln1.weight", E)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out", "attn_k_rel"):
            mat(b + t + ".weight", E, E, 0.3)
        vec(b + "per_dim_scale.weight", d, 1.0, 0.3)
        vec(b + "per_dim_k_scale.weight", d, 1.0, 0.3)
        vec(b + "attn_post_norm.weight", E)
        vec(b + "conv_norm.weight", E)  # (the norm before the module: clip.cpp's norm_conv_w)
        mat(b + "conv_pw1.weight", 2 * E, E, 0.3)
        arr(b + "conv_dw.weight", (E, K_DW), 0.4)
        vec(b + "norm_conv.weight", E)  # (the norm after the depthwise convolution: clip.cpp's conv_norm_w)
        mat(b + "conv_pw2.weight", E, E, 0.3)
        vec(b + "ln2.weight", E)
    mat("a.pre_encode.out.weight", A_OUT, E, 0.3)
    vec("a.pre_encode.out.bias", A_OUT, 0.0)
    vec("mm.a.soft_emb_norm.weight", A_OUT)
    mat("mm.a.input_projection.weight", n_text_embd, A_OUT, 0.3)
    if clamps:
        for name, bounds in CLAMPS.items():
            for k, v in bounds.items():
                w.add_tensor(name.replace(".weight", "." + k), np.array([v], np.float32))
    return _finish(w, path)


def write_tiny_gemma4a_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """tests/tiny_gemma4.py's Gemma 4 (the E2B-like layout) whose vocabulary knows the audio markers."""
    return write_tiny_gemma4(path, qtype, seed, image_tokens=AUDIO_TOKENS, chat_template=chat_template)
