"""A tiny random Gemma 4 "unified" pair, for tests held to llama.cpp's libmtmd: one projector file (mmproj,
``general.architecture`` "clip") with both sides, ``clip.vision.projector_type`` "gemma4uv" and
``clip.audio.projector_type`` "gemma4ua", as llama.cpp's converter writes Gemma 4 12B's encoder-free embedders
(conversion/gemma.py's Gemma4UnifiedVisionAudioModel), and a Gemma 4 text model (tests/tiny_gemma4.py's layout: the
unified model's text side is plain ``gemma4``) whose width is the projector's output and whose vocabulary knows
``<|image>``, ``<image|>``, ``<|audio>`` and ``<audio|>``.

The vision side has no transformer (block_count, heads and FFN width 0, as the converter writes them): the patch
LayerNorm ``v.patch_norm.1`` over a patch's CHW pixels, ``v.patch_embd`` (a matrix [E, 3 p p] with its bias), the
LayerNorm ``v.patch_norm.2``, the two learned position tables ``v.position_embd`` [2, n_pos, E], the LayerNorm
``v.patch_norm.3`` (the converter's pos_norm), then ``mm.input_projection``.  Toy sizes: 4-pixel patches merged 3x3
by the converter's patch size (clip.cpp's patch_size x n_merge, one row per 12 x 12 pixels), a 32-wide embedder,
rows projected to the text model's 64.  The audio side is only ``mm.a.input_projection`` [64, 640] (clip.cpp frames
the raw 16 kHz waveform 640 samples a row whatever ``clip.audio.num_mel_bins`` says: the converter's default 128 is
written, as a file would hold it).  LayerNorm weights and biases are far from 1 and 0 so that each norm shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tiny_gemma4 import GEOMETRY, write_tiny_gemma4
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, MERGE, V_EMBD, N_POS = 48, 4, 3, 32, 64
FRAME = 640  # samples a row (clip.cpp's n_mel_bins for gemma4ua)
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (distinct per channel: a channel mix-up shows)
TOKENS = ("<|image>", "<image|>", "<|audio>", "<audio|>")


def write_tiny_gemma4u_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = GEOMETRY[0], audio: bool = True) -> Path:
    """A random Gemma 4 unified projector, its matrices stored as ``qtype`` (the position tables float32, as the
    converter forces); ``audio`` off: the vision side alone, its type under ``clip.projector_type`` as a one-sided
    file holds it (the same vision tensors: tests/tiny_vision.py TINY_MMPROJS' entry)."""
    rng = np.random.default_rng(seed)
    E, p = V_EMBD, PATCH * MERGE
    w = GGUFWriter(str(path), "clip")
    w.add_name("tiny-gemma4u-mmproj")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", audio)
    w.add_string("clip.vision.projector_type" if audio else "clip.projector_type", "gemma4uv")  # (clip.cpp: the shared key wins)
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", E)
    w.add_uint32("clip.vision.feed_forward_length", 0)
    w.add_uint32("clip.vision.projection_dim", n_text_embd)
    w.add_uint32("clip.vision.block_count", 0)
    w.add_uint32("clip.vision.attention.head_count", 0)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_array("clip.vision.image_mean", list(MEAN))
    w.add_array("clip.vision.image_std", list(STD))
    if audio:
        w.add_string("clip.audio.projector_type", "gemma4ua")
        w.add_uint32("clip.audio.num_mel_bins", 128)
        w.add_uint32("clip.audio.embedding_length", FRAME)
        w.add_uint32("clip.audio.feed_forward_length", 0)
        w.add_uint32("clip.audio.projection_dim", n_text_embd)
        w.add_uint32("clip.audio.block_count", 0)
        w.add_uint32("clip.audio.attention.head_count", 0)
        w.add_float32("clip.audio.attention.layer_norm_epsilon", 1e-6)
    mat, vec = _random_tensors(w, rng, qtype)
    vec("v.patch_norm.1.weight", 3 * p * p, 1.0, 0.5)
    vec("v.patch_norm.1.bias", 3 * p * p, 0.0, 0.5)
    mat("v.patch_embd.weight", E, 3 * p * p, 0.2)  # (columns in im2col's CHW order: the converter permutes them so)
    vec("v.patch_embd.bias", E, 0.0, 0.5)
    vec("v.patch_norm.2.weight", E, 1.0, 0.5)
    vec("v.patch_norm.2.bias", E, 0.0, 0.5)
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((2, N_POS, E)) * 0.5).astype(np.float32))  # x table, y table
    vec("v.patch_norm.3.weight", E, 1.0, 0.5)
    vec("v.patch_norm.3.bias", E, 0.0, 0.5)
    mat("mm.input_projection.weight", n_text_embd, E, 0.3)  # [n_text_embd, E]: ggml_mul_mat(w, x)
    if audio:
        mat("mm.a.input_projection.weight", n_text_embd, FRAME, 0.3)
    return _finish(w, path)


def write_tiny_gemma4u_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """tests/tiny_gemma4.py's Gemma 4 whose vocabulary knows the image and audio markers."""
    return write_tiny_gemma4(path, qtype, seed, image_tokens=TOKENS, chat_template=chat_template)
