"""Gemma 4 12B's "unified" audio side (projector type "gemma4ua"), as llama.cpp's libmtmd runs it
(``mtmd_audio_preprocessor_gemma4ua`` in tools/mtmd/mtmd-audio.cpp, ``clip_graph_gemma4ua`` in
tools/mtmd/models/gemma4ua.cpp), from the same mmproj file as its pictures (models/gemma4uv_image.py).

Gemma 4 12B has no audio encoder: no spectrogram, no conformer (models/gemma4a_audio.py's are Gemma 4's other
models').  The raw 16 kHz waveform is cut into frames of 640 samples (40 ms; clip.cpp sets ``n_mel_bins`` to 640
whatever the file says), the last zero-padded, and each frame becomes one row:

    samples -> frames [ceil(n / 640), 640] -> RMSNorm without a weight (epsilon 1e-6, clip.cpp's)
    -> ``mm.a.input_projection`` -> [rows, n_text_embd]

The whole clip is one chunk (``audio_chunk_len`` 0: no 30 s pieces).  mtmd.cpp puts ``<|audio>`` before the rows and
``<audio|>`` after (runtime/audio.py's AUDIO_MARKERS) and decodes them causally (``mtmd_decode_use_non_causal`` is
false for gemma4ua), so :meth:`Gemma4UAudioEncoder.feed_context` is gemma4a's: the text model reads a clip's rows as
text while it is fed.  The forward is written against models/vit_ops.py's ops, so it runs on the GPU as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import GGUFError, KvrunError
from ..loaders.gguf_file import GGUFFile
from ..ops.backend import Backend
from .common import WeightLoader
from .gemma4a_audio import Gemma4AudioEncoder
from .gemma4v_image import _HostOps
from .vit_ops import ops_of
from .whisper_audio import SAMPLE_RATE, AudioTowerConfig, audio_tower_shape, check_audio_mmproj, need_audio_tensors

F32 = np.float32
PROJECTOR = "gemma4ua"
FRAME = 640  # samples a row (clip.cpp's n_mel_bins for gemma4ua: 40 ms at 16 kHz)
EPS = 1e-6  # the pre-projection RMSNorm's (clip.cpp hard-codes hparams.eps for gemma4ua)
PROJ = "mm.a.input_projection.weight"


def n_rows(n_samples: int) -> int:
    """Rows a clip of ``n_samples`` becomes: one a frame, the last padded."""
    return -(-n_samples // FRAME)


@dataclass(frozen=True)
class Gemma4UAudioConfig(AudioTowerConfig):
    """The audio side's hyperparameters: the file's ``clip.audio.*`` shape (unused: no encoder) and the rows' width."""

    n_text_embd: int  # (clip_n_mmproj_embd's for gemma4ua: the projection's output width)

    @property
    def rows_per_chunk(self) -> int:
        """Rows 30 s of audio become (how runtime/audio.py states a clip's cost)."""
        return n_rows(30 * SAMPLE_RATE)


def load_gemma4ua_config(g: GGUFFile) -> Gemma4UAudioConfig:
    """The config of an opened "gemma4ua" mmproj file, or a one-line error."""
    check_audio_mmproj(g)
    need_audio_tensors(g, (PROJ,))
    t = g.tensors[PROJ]
    if len(t.shape) != 2 or t.shape[-1] != FRAME:
        raise GGUFError(f"{g.path}: {PROJ} has shape {tuple(t.shape)}; it takes frames of {FRAME} samples")
    return Gemma4UAudioConfig(projector_type=PROJECTOR, **audio_tower_shape(g), n_text_embd=int(t.n_elements // FRAME))


class Gemma4UAudioEncoder:
    """Gemma 4 12B's encoder-free audio embedder from an mmproj file: :meth:`encode` a clip into rows."""

    def __init__(self, g: GGUFFile, cfg: Gemma4UAudioConfig, backend: Backend) -> None:
        self.cfg, self.be, self.path = cfg, backend, g.path
        t = g.tensors[PROJ]
        self.proj = WeightLoader(g, backend)._upload(t, t.rows(), t.n_elements // FRAME)  # (the loader's checks and upload)

    def n_rows(self, n_samples: int) -> int:
        """Rows a clip of ``n_samples`` becomes."""
        return n_rows(n_samples)

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """16 kHz mono samples -> the clip's rows, float32 [n_rows, n_text_embd]."""
        n = samples.size
        if samples.ndim != 1 or n == 0:
            raise KvrunError(f"the audio embedder takes a clip of 16 kHz samples [n > 0], got {list(samples.shape)}")
        frames = np.zeros((n_rows(n), FRAME), F32)
        frames.reshape(-1)[:n] = samples
        return _forward(ops_of(self, host=_HostOps), self, frames)

    feed_context = Gemma4AudioEncoder.feed_context  # (the text model reads a clip's rows causally while they go in)


def _forward(ops: Any, enc: Gemma4UAudioEncoder, frames: np.ndarray) -> np.ndarray:
    """clip_graph_gemma4ua on either device's ``ops``: each frame RMS-normed (no weight), then projected."""
    x = ops.rms_norm(ops.vector(frames), None, EPS)
    return ops.to_host(ops.xp.ascontiguousarray(ops.linear(enc.proj, x), F32))
