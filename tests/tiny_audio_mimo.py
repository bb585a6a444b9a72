"""A tiny random MiMo-V2.5 audio pair ("mimo_audio"), for tests held to llama.cpp's libmtmd: an audio projector file
(mmproj, ``general.architecture`` "clip", projector type "mimo_audio", an audio encoder and no vision one) and a
``mimo2`` text model whose width is the projector's output and whose vocabulary knows ``<|mimo_audio_start|>`` and
``<|mimo_audio_end|>`` (mtmd.cpp puts them around a clip).

The projector is laid out as clip.cpp loads MiMo-V2.5's (clip-impl.h's names): the audio tokenizer's encoder
``a.conv1d.1`` (kernel 3, stride 1) and ``a.conv1d.2`` (stride 2) with biases, ``a.blk.N.*`` pre-LayerNorm blocks
(Q, V, output with biases, K without, a biased GELU MLP), ``clip.audio.wa_pattern_mode`` [-1, 0, 0, -1] (causal
full / causal windowed layers), ``clip.audio.window_size`` 3, ``a.post_ln``; the downsampling conv
``a.downsample.conv`` (kernel 2, stride 2, no bias) and its LayerNorm ``a.downsample.norm``; the residual vector
quantizer's codebooks ``a.rvq.codebook`` [n_q, max bins, width] (``clip.audio.rvq.codebook_size`` [16, 8, 12]: each
quantizer reads its first bins only), the text side's code tables ``mm.a.code_embd`` [n_q, vocab, width]; the
input-local transformer ``mm.a.local_blk.N.*`` (RMSNorms, Q/K/V with biases, output without, a gated SiLU MLP),
``mm.a.local_norm``, groups of ``clip.audio.local_group_size`` 3 frames; the projection ``mm.a.mlp.1`` / ``mm.a.mlp.2``
(no biases).  Toy sizes: 16 mel bins, a 32-wide encoder of 4 layers and 2 heads, 2 local layers.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
from gguf import GGMLQuantizationType

from tiny_audio import audio_mmproj_writer, float32_tensors, write_audio_blocks
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

N_MEL, A_EMBD, A_FF, A_LAYER, A_HEAD = 16, 32, 64, 4, 2
MODES = [-1, 0, 0, -1]  # (per layer: -1 causal full attention, 0 causal window)
WINDOW = 3  # (clip.audio.window_size: keys up to this many frames back)
BINS = [16, 8, 12]  # (clip.audio.rvq.codebook_size: each quantizer's bins, of MAX_BINS stored)
MAX_BINS, CODE_VOCAB = 16, 20
LOCAL_LAYERS, GROUP, L_FF, P_HIDDEN = 2, 3, 48, 80
MARKERS = ("<|mimo_audio_start|>", "<|mimo_audio_end|>")
N_TEXT_EMBD = 64  # (tiny_moe3.py's N_EMBD)


def write_tiny_mimo_audio_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT_EMBD) -> Path:
    """A random MiMo-V2.5 audio projector; its matrices stored as ``qtype`` (the conv kernels F16, as clip.cpp's
    im2col reads them, the codebooks float32)."""
    rng = np.random.default_rng(seed)
    w = audio_mmproj_writer(path, "tiny-mimo-audio-mmproj", "mimo_audio", n_text_embd, N_MEL, A_EMBD, A_FF, A_LAYER, A_HEAD)
    w.add_uint32("clip.audio.rvq.num_quantizers", len(BINS))
    w.add_array("clip.audio.rvq.codebook_size", BINS)
    w.add_array("clip.audio.wa_pattern_mode", MODES)
    w.add_uint32("clip.audio.window_size", WINDOW)
    w.add_uint32("clip.audio.local_block_count", LOCAL_LAYERS)
    w.add_uint32("clip.audio.local_group_size", GROUP)
    mat, vec = _random_tensors(w, rng, qtype)
    arr = float32_tensors(w, rng)
    E = A_EMBD

    def conv(name: str, c_out: int, c_in: int, k: int, bias: bool = True) -> None:
        w.add_tensor(name + ".weight", (rng.standard_normal((c_out, c_in, k)) * 0.3).astype(np.float16))
        if bias:
            w.add_tensor(name + ".bias", (rng.standard_normal((c_out, 1)) * 0.1).astype(np.float32))

    conv("a.conv1d.1", E, N_MEL, 3)
    conv("a.conv1d.2", E, E, 3)
    write_audio_blocks(mat, vec, E, A_FF, A_LAYER, k_bias=False)
    conv("a.downsample.conv", E, E, 2, bias=False)
    vec("a.downsample.norm.weight", E)
    vec("a.downsample.norm.bias", E, 0.1)
    arr("a.rvq.codebook.weight", (len(BINS), MAX_BINS, E), 1.0)
    arr("mm.a.code_embd.weight", (len(BINS), CODE_VOCAB, E), 0.5)
    for i in range(LOCAL_LAYERS):
        b = f"mm.a.local_blk.{i}."
        vec(b + "ln1.weight", E)
        for t in ("attn_q", "attn_k", "attn_v"):
            mat(b + t + ".weight", E, E, 0.3)
            vec(b + t + ".bias", E, 0.1)
        mat(b + "attn_out.weight", E, E, 0.3)
        vec(b + "ln2.weight", E)
        mat(b + "ffn_gate.weight", L_FF, E, 0.3)
        mat(b + "ffn_up.weight", L_FF, E, 0.3)
        mat(b + "ffn_down.weight", E, L_FF, 0.3)
    vec("mm.a.local_norm.weight", E)
    mat("mm.a.mlp.1.weight", P_HIDDEN, E * GROUP, 0.2)
    mat("mm.a.mlp.2.weight", n_text_embd, P_HIDDEN, 0.2)
    return _finish(w, path)


def write_tiny_mimo_audio_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """tiny_moe3.py's random ``mimo2`` text model, its byte vocabulary ending in the audio markers (control tokens)."""
    import tinymodel
    from tiny_moe3 import write_tiny_moe3

    plain_vocab, plain_add = tinymodel.byte_vocab, tinymodel._add_byte_vocab

    def vocab() -> tuple[list[str], list[str], list[int]]:
        toks, merges, types = plain_vocab()
        return toks + list(MARKERS), merges, types + [3] * len(MARKERS)

    def add_vocab(w, extra=()):  # (plain_add on the plain vocabulary with the markers as its extras)
        with mock.patch.object(tinymodel, "byte_vocab", plain_vocab):
            plain_add(w, MARKERS)

    with mock.patch.object(tinymodel, "byte_vocab", vocab), mock.patch.object(tinymodel, "_add_byte_vocab", add_vocab):
        return write_tiny_moe3(path, "mimo2", qtype, seed)
