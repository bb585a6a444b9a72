"""A tiny random Qwen2.5-Omni pair, for tests held to llama.cpp's libmtmd: one projector file (mmproj,
``general.architecture`` "clip") holding both encoders, as llama.cpp's converter writes Qwen2.5-Omni's
(``clip.has_vision_encoder`` and ``clip.has_audio_encoder`` true, ``clip.projector_type`` "qwen2.5o", which clip.cpp
reads as "qwen2.5vl_merger" for pictures and "qwen2a" for clips), and tiny_audio2's qwen25o text model (a ``qwen2vl``
model with M-RoPE whose vocabulary knows ``<|vision_start|>`` ... and ``<|audio_bos|>`` ...).

The vision side is tiny_vision_qwen2vl's Qwen2.5-VL encoder (window attention, RMSNorm, gated SiLU MLP), the audio
side tiny_audio2's Whisper encoder with Qwen2-Audio's pooling and linear projector; both make rows 64 wide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType
from gguf.gguf_writer import GGUFValue

from tiny_audio import A_EMBD, add_audio_keys, write_whisper_encoder
from tiny_audio2 import write_tiny_audio2_text
from tiny_vision import mmproj_writer, write_vit
from tiny_vision_qwen2vl import MEAN, N_WA_PATTERN, PATCH, STD, TEXT_GEOMETRY, V_EMBD, V_FF, V_HEAD, V_LAYER
from tinymodel import _finish, _random_tensors

Q = GGMLQuantizationType


def write_tiny_omni_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0) -> Path:
    """A random Qwen2.5-Omni projector: the Qwen2.5-VL vision encoder's keys and tensors, then the audio encoder's."""
    rng = np.random.default_rng(seed)
    n_text = TEXT_GEOMETRY[0]
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-qwen2.5o-mmproj", "qwen2.5o", {"clip.use_silu": True, "clip.vision.n_wa_pattern": N_WA_PATTERN},
                      560, PATCH, geometry, n_text, MEAN, STD)  # fmt: skip
    w.kv_data[0]["clip.has_audio_encoder"] = GGUFValue(True, GGUFValueType.BOOL)  # (in place: the converter's key order)
    add_audio_keys(w, n_text)
    mat, vec, _ = write_vit(w, rng, qtype, geometry, PATCH, norm_bias=False, gate=True)
    mat("mm.0.weight", 4 * V_EMBD, 4 * V_EMBD, 0.2)
    vec("mm.0.bias", 4 * V_EMBD, 0.0)
    mat("mm.2.weight", n_text, 4 * V_EMBD, 0.2)
    vec("mm.2.bias", n_text, 0.0)
    mat, vec = _random_tensors(w, rng, qtype)

    write_whisper_encoder(w, rng, mat, vec)
    mat("mm.a.fc.weight", n_text, A_EMBD, 0.2)
    vec("mm.a.fc.bias", n_text, 0.0)
    return _finish(w, path)


def write_tiny_omni_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """The text model: tiny_audio2's qwen25o one (qwen2vl, M-RoPE, the vision and audio marker tokens)."""
    return write_tiny_audio2_text(path, "qwen25o", qtype, seed, chat_template)
