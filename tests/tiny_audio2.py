"""Tiny random Qwen2-Audio ("qwen2a") and Voxtral ("voxtral") pairs, for tests held to llama.cpp's libmtmd: an audio
projector file (mmproj, ``general.architecture`` "clip", an audio encoder and no vision one) and a llama text model
whose width is the projector's output and whose vocabulary holds the audio layout's marker tokens.

Both projectors run tiny_audio's Whisper encoder (16 mel bins, 32 wide, 2 layers, Whisper's 1500 positions) with
clip.cpp's average pooling (kernel 2, stride 2) before the post LayerNorm, so a 30 s chunk's 1500 rows become 750:

* qwen2a: one linear layer with a bias, ``mm.a.fc`` -> 750 rows a chunk, between ``<|audio_bos|>`` and
  ``<|audio_eos|>``;
* voxtral: the pooled rows stacked ``STACK`` at a time, ``mm.a.mlp.1`` (no bias), GELU(erf), ``mm.a.mlp.2``, after
  ``[BEGIN_AUDIO]``.  Voxtral's real stack factor is 4 (750 / 4 = 187.5: clip.cpp's graph pads to 188 rows while its
  token count says 187, and libmtmd aborts on the mismatch), so the tiny one stacks 5, which divides 750;
* qwen25o: Qwen2.5-Omni's audio tower, projector type "qwen2.5o" (clip.cpp reads its audio side as qwen2a), with an
  M-RoPE ``qwen2vl`` text model (tiny_vision_qwen2vl's geometry and sections).  The tiny file holds the audio encoder
  alone; a real Omni mmproj holds the vision encoder beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_audio import A_EMBD, audio_mmproj_writer, write_whisper_encoder
from tiny_vision import write_vl_text
from tinymodel import ARCH_GEOMETRY, _finish, _random_tensors

Q = GGMLQuantizationType

#: Voxtral's stack (see above) and projector width
STACK, PROJ_HIDDEN = 5, 48
#: the layout's marker tokens (libmtmd's aud_beg / aud_end), control tokens of the text model's vocabulary
MARKER_TOKENS = ["<|audio_bos|>", "<|audio_eos|>", "[BEGIN_AUDIO]"]


def write_tiny_audio2_mmproj(path: Path, kind: str, qtype: int = Q.F32, seed: int = 0,
                             n_text_embd: int = ARCH_GEOMETRY["llama"][0]) -> Path:  # fmt: skip
    """A random ``kind`` ("qwen2a" or "voxtral") projector; its matrices (the conv kernels always F16) as ``qtype``."""
    rng = np.random.default_rng(seed)
    w = audio_mmproj_writer(path, f"tiny-{kind}-mmproj", "qwen2.5o" if kind == "qwen25o" else kind, n_text_embd)
    if kind == "voxtral":
        w.add_uint32("clip.audio.projector.stack_factor", STACK)
    mat, vec = _random_tensors(w, rng, qtype)

    write_whisper_encoder(w, rng, mat, vec)
    if kind in ("qwen2a", "qwen25o"):
        mat("mm.a.fc.weight", n_text_embd, A_EMBD, 0.2)
        vec("mm.a.fc.bias", n_text_embd, 0.0)
    elif kind == "voxtral":
        mat("mm.a.mlp.1.weight", PROJ_HIDDEN, A_EMBD * STACK, 0.2)
        mat("mm.a.mlp.2.weight", n_text_embd, PROJ_HIDDEN, 0.1)
    else:
        raise ValueError(kind)
    return _finish(w, path)


def write_tiny_audio2_text(path: Path, kind: str, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random llama text model (tinymodel's geometry; qwen25o: a qwen2vl one with M-RoPE) whose vocabulary ends in
    :data:`MARKER_TOKENS` (control)."""
    if kind == "qwen25o":
        from tiny_vision_qwen2vl import IMAGE_TOKENS, SECTIONS, TEXT_GEOMETRY

        toks = list(IMAGE_TOKENS) + MARKER_TOKENS
        return write_vl_text(path, "qwen2vl", "tiny-qwen25o", TEXT_GEOMETRY, toks, [3] * len(toks), 1e-6, 100.0, qtype, seed,
                             chat_template, sections=SECTIONS)  # fmt: skip
    return write_vl_text(path, "llama", f"tiny-{kind}", ARCH_GEOMETRY["llama"], MARKER_TOKENS, [3] * len(MARKER_TOKENS),
                         1e-5, 10000.0, qtype, seed, chat_template)  # fmt: skip
