"""Tiny random GLM-ASR ("glma") and Music Flamingo ("musicflamingo") pairs, for tests held to llama.cpp's libmtmd: an
audio projector file (mmproj, ``general.architecture`` "clip", an audio encoder and no vision one) laid out as
llama.cpp's converter writes each (GlmASRWhisperEncoderModel, AudioFlamingo3WhisperEncoderModel), and a llama text
model whose width is the projector's output.

Both run tiny_audio's Whisper encoder (16 mel bins, 32 wide, 2 layers, Whisper's 1500 positions, its post LayerNorm):

* glma: GLM-ASR-Nano's adapter: a LayerNorm with bias (``mm.a.norm_pre``), the rows stacked ``STACK`` at a time
  (the converter's ``merge_factor``), ``mm.a.mlp.1`` + bias, GELU(erf), ``mm.a.mlp.2`` + bias, and the learned
  begin / end rows (``v.boi``, ``v.eoi``: the converter's ``audio_bos_eos_token``) around each chunk's rows.  libmtmd
  puts no tokens around a clip (the rows carry their own markers);
* musicflamingo: Audio Flamingo 3's: clip.cpp's average pooling (kernel 2, stride 2) before the post LayerNorm
  (1500 rows -> 750), ``mm.a.mlp.1`` + bias, GELU(erf), ``mm.a.mlp.2`` + bias, after the ``<sound>`` token.  Its
  converter keeps the conv kernels F32 (trained in BF16, "avoiding quantizing to FP16"), so the tiny file does too.

The real GLM-ASR text model is converted as llama, Music Flamingo's as qwen2; both tiny ones are tiny_vision's llama
(the text side is the text model's code, held to llama.cpp elsewhere), the vocabulary ending in :data:`MARKER_TOKENS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tiny_audio import A_EMBD, audio_mmproj_writer, write_whisper_encoder
from tiny_vision import write_vl_text
from tinymodel import ARCH_GEOMETRY, _finish, _random_tensors

Q = GGMLQuantizationType

#: GLM-ASR's merge factor (the real one's is 4 too: 1500 rows -> 375), the adapter's and Music Flamingo's MLP width
STACK, PROJ_HIDDEN = 4, 48
#: the layout's marker tokens (Music Flamingo's aud_beg), a control token of the text model's vocabulary
MARKER_TOKENS = ["<sound>"]
KINDS = ("glma", "musicflamingo")


class _F32Convs:
    """A GGUFWriter seen through: the conv kernels go in as F32 (Music Flamingo's converter keeps them F32)."""

    def __init__(self, w: GGUFWriter) -> None:
        self.w = w

    def add_tensor(self, name: str, a: np.ndarray, **kw: Any) -> None:
        self.w.add_tensor(name, a.astype(np.float32) if name.startswith("a.conv1d.") else a, **kw)


def write_tiny_audio3_mmproj(path: Path, kind: str, qtype: int = Q.F32, seed: int = 0,
                             n_text_embd: int = ARCH_GEOMETRY["llama"][0]) -> Path:  # fmt: skip
    """A random ``kind`` ("glma" or "musicflamingo") projector; its matrices as ``qtype`` (conv kernels: F16 for glma,
    F32 for musicflamingo, as the converters store them)."""
    if kind not in KINDS:
        raise ValueError(kind)
    rng = np.random.default_rng(seed)
    w = audio_mmproj_writer(path, f"tiny-{kind}-mmproj", kind, n_text_embd)
    if kind == "glma":
        w.add_uint32("clip.audio.projector.stack_factor", STACK)
    mat, vec = _random_tensors(w, rng, qtype)

    write_whisper_encoder(w if kind == "glma" else _F32Convs(w), rng, mat, vec)  # type: ignore[arg-type]
    if kind == "glma":
        vec("mm.a.norm_pre.weight", A_EMBD)
        vec("mm.a.norm_pre.bias", A_EMBD, 0.0)
        mat("mm.a.mlp.1.weight", PROJ_HIDDEN, A_EMBD * STACK, 0.2)
        vec("mm.a.mlp.1.bias", PROJ_HIDDEN, 0.0)
        mat("mm.a.mlp.2.weight", n_text_embd, PROJ_HIDDEN, 0.1)
        vec("mm.a.mlp.2.bias", n_text_embd, 0.0)
        vec("v.boi", n_text_embd, 0.0, 0.5)  # (the learned begin / end rows, a token embedding's size)
        vec("v.eoi", n_text_embd, 0.0, 0.5)
    else:
        mat("mm.a.mlp.1.weight", PROJ_HIDDEN, A_EMBD, 0.2)
        vec("mm.a.mlp.1.bias", PROJ_HIDDEN, 0.0)
        mat("mm.a.mlp.2.weight", n_text_embd, PROJ_HIDDEN, 0.1)
        vec("mm.a.mlp.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_audio3_text(path: Path, kind: str, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random llama text model (tinymodel's geometry) whose vocabulary ends in :data:`MARKER_TOKENS` (control)."""
    return write_vl_text(path, "llama", f"tiny-{kind}", ARCH_GEOMETRY["llama"], MARKER_TOKENS, [3] * len(MARKER_TOKENS),
                         1e-5, 10000.0, qtype, seed, chat_template)  # fmt: skip
