"""A tiny random Granite Speech pair ("granite_speech"), for tests held to llama.cpp's libmtmd: an audio projector file
(mmproj, ``general.architecture`` "clip", projector type "granite_speech", an audio encoder and no vision one) and a
``granite`` text model (Granite Speech's backbone is Granite 3.x) whose width is the projector's output.

The projector is laid out as llama.cpp's converter writes Granite Speech's (conversion/granite.py
``GraniteSpeechMmprojModel``): ``a.input_projection`` from the stacked mel features (two frames of ``N_MEL`` bins
each, ``clip.audio.num_mel_bins`` their sum) to the encoder's width; ``a.blk.N.*`` macaron conformer blocks
(``ffn_norm``/``ffn_up``/``ffn_down``, ``ln1``, Q/K/V without bias and ``attn_out`` with one, the Shaw relative
position table ``attn_rel_pos_emb`` [2 max_pos_emb + 1, d_head], the convolution module ``norm_conv``/``conv_pw1``/
``conv_dw`` [n_embd, kernel]/``conv_norm`` (batch norm folded)/``conv_pw2``, ``ffn_norm_1``/``ffn_up_1``/
``ffn_down_1``, ``ln2``); the CTC branch ``a.enc_ctc_out``/``a.enc_ctc_out_mid``; the Q-Former ``a.proj_query``,
``a.proj_norm``, two ``a.proj_blk.N.*`` layers (self-attention, cross-attention to the window, GELU FFN, each with
its post-LayerNorm) and ``a.proj_linear`` into the text model.  Toy sizes: 16 mel bins (32 stacked), a 32-wide encoder
of 3 layers (the CTC branch after the first, n_layer / 2) and 2 heads, attention blocks of 8 frames (``chunk_size``;
Granite's are 200) so a clip spans several and a remainder, a depthwise kernel of 5, and the Q-Former's windows of
15 frames read by 3 queries (Granite's own).  ``feature_layers``: Granite Speech Plus's concatenation of those
layers' outputs before the last's (``clip.audio.feature_layer``), the Q-Former's keys and values that much wider.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_audio import audio_mmproj_writer, float32_tensors, write_macaron_ffns
from tinymodel import _finish, _random_tensors, write_tiny_model

Q = GGMLQuantizationType

N_MEL, A_EMBD, A_FF, A_LAYER, A_HEAD, N_TEXT = 16, 32, 64, 3, 2, 64
CHUNK, KERNEL, MAX_POS = 8, 5, 10  # attention block, depthwise kernel, relative distances kept (table 2 * 10 + 1)
WINDOW, DOWNSAMPLE, P_HEAD, N_CTC = 15, 5, 2, 12  # the Q-Former's window, queries per window = 15 / 5, heads; CTC classes


def write_tiny_granite_speech_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT,
                                     feature_layers: tuple[int, ...] = ()) -> Path:  # fmt: skip
    """A random Granite Speech projector; its matrices stored as ``qtype`` (the convolution module's float32, as the
    converter forces them)."""
    rng = np.random.default_rng(seed)
    w = audio_mmproj_writer(path, "tiny-granite-speech-mmproj", "granite_speech", n_text_embd, 2 * N_MEL, A_EMBD, A_FF, A_LAYER, A_HEAD)
    w.add_uint32("clip.audio.chunk_size", CHUNK)
    w.add_uint32("clip.audio.conv_kernel_size", KERNEL)
    w.add_uint32("clip.audio.max_pos_emb", MAX_POS)
    w.add_uint32("clip.audio.projector.window_size", WINDOW)
    w.add_uint32("clip.audio.projector.downsample_rate", DOWNSAMPLE)
    w.add_uint32("clip.audio.projector.head_count", P_HEAD)
    if feature_layers:
        w.add_array("clip.audio.feature_layer", list(feature_layers))
    mat, vec = _random_tensors(w, rng, qtype)
    arr = float32_tensors(w, rng)

    E, d = A_EMBD, A_EMBD // A_HEAD
    mat("a.input_projection.weight", E, 2 * N_MEL, 0.3)
    vec("a.input_projection.bias", E, 0.0)
    for i in range(A_LAYER):
        b = f"a.blk.{i}."
        write_macaron_ffns(mat, vec, b, E, A_FF)
        for t in ("attn_q", "attn_k", "attn_v"):
            mat(b + t + ".weight", E, E, 0.4)
        mat(b + "attn_out.weight", E, E, 0.3)
        vec(b + "attn_out.bias", E, 0.0)
        arr(b + "attn_rel_pos_emb", (2 * MAX_POS + 1, d), 1.0)
        vec(b + "norm_conv.weight", E)
        vec(b + "norm_conv.bias", E, 0.0)
        arr(b + "conv_pw1.weight", (2 * E, E), 0.3)
        vec(b + "conv_pw1.bias", 2 * E, 0.0)
        arr(b + "conv_dw.weight", (E, KERNEL), 0.4)
        vec(b + "conv_norm.weight", E)
        vec(b + "conv_norm.bias", E, 0.0)
        arr(b + "conv_pw2.weight", (E, E), 0.3)
        vec(b + "conv_pw2.bias", E, 0.0)
        vec(b + "ln2.weight", E)
        vec(b + "ln2.bias", E, 0.0)
    mat("a.enc_ctc_out.weight", N_CTC, E, 0.5)
    vec("a.enc_ctc_out.bias", N_CTC, 0.0)
    mat("a.enc_ctc_out_mid.weight", E, N_CTC, 0.5)
    vec("a.enc_ctc_out_mid.bias", E, 0.0)
    kv = E * (len(feature_layers) + 1) if feature_layers else E  # (the Q-Former's keys and values read the concatenation)
    arr("a.proj_query", (1, WINDOW // DOWNSAMPLE, E), 1.0)
    vec("a.proj_norm.weight", E)
    vec("a.proj_norm.bias", E, 0.0)
    for i in range(2):  # (clip.cpp loads two Q-Former layers)
        b = f"a.proj_blk.{i}."
        for part, n_in in (("self_attn", E), ("cross_attn", kv)):
            mat(b + f"{part}_q.weight", E, E, 0.3)
            vec(b + f"{part}_q.bias", E, 0.0)
            for t in ("k", "v"):
                mat(b + f"{part}_{t}.weight", E, n_in, 0.3)
                vec(b + f"{part}_{t}.bias", E, 0.0)
            mat(b + f"{part}_out.weight", E, E, 0.3)
            vec(b + f"{part}_out.bias", E, 0.0)
            vec(b + f"{part}_norm.weight", E)
            vec(b + f"{part}_norm.bias", E, 0.0)
        mat(b + "ffn_up.weight", A_FF, E, 0.3)
        vec(b + "ffn_up.bias", A_FF, 0.0)
        mat(b + "ffn_down.weight", E, A_FF, 0.3)
        vec(b + "ffn_down.bias", E, 0.0)
        vec(b + "ffn_norm.weight", E)
        vec(b + "ffn_norm.bias", E, 0.0)
    mat("a.proj_linear.weight", n_text_embd, E, 0.3)
    vec("a.proj_linear.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_granite_speech_text(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """A random ``granite`` text model 64 wide (tinymodel's: Granite's multipliers far from 1)."""
    return write_tiny_model(path, "granite", qtype, seed)

