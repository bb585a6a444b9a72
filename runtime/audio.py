"""Audio in the prompt (Ultravox with llama.cpp's ``--mmproj`` and ``--audio``): an audio projector beside an engine,
and the prompt's layout.

An audio mmproj (``clip.has_audio_encoder``, no vision encoder) opens as :class:`Audio` wherever a projector is
opened (``Vision(engine, mmproj)`` hands it over: runtime/vision.py), so ``kvrun run --mmproj F --audio FILE``,
the chat's ``/audio PATH``, the server's ``input_audio`` parts and the Python API's take the same path as pictures:
a prompt names its clips with libmtmd's media marker ``<__media__>``, one per clip in order (where it has none,
the clips come first), each marker becomes the clip's rows (models/whisper_audio.py: every 30 s chunk's, one
block), fed through :meth:`Engine.eval_embd` with the rows of the whole clip seeing each other, as
``mtmd_helper_eval_chunks`` feeds them.  Ultravox's layout puts no tokens around them (mtmd's ``aud_beg`` is empty
for it), Qwen2-Audio's puts ``<|audio_bos|>`` before and ``<|audio_eos|>`` after the clip, Voxtral's
``[BEGIN_AUDIO]`` before (:data:`AUDIO_MARKERS`); the text between is tokenized as libmtmd does (special tokens parsed, BOS only before the first piece).
A clip is handed over as a WAV file's path or bytes (16 kHz PCM: :func:`~..models.whisper_audio.load_wav`) or
as its 16 kHz mono float32 samples.
"""

from __future__ import annotations

import base64
import binascii
import os
from contextlib import nullcontext
from typing import Any, Union

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..models.audio_towers import audio_tower
from ..models.whisper_audio import is_audio_mmproj, load_wav
from .engine import Engine
from .vision import MARKER, Segments, Vision, prefill_media

#: a clip as callers hand it over: a WAV file's path or bytes, or 16 kHz mono float32 samples [n]
AudioSource = Union[str, os.PathLike, bytes, np.ndarray]
AUDIO_PART = "input_audio"  # OpenAI's content part type for a clip
#: the text libmtmd puts before and after a clip's rows, by projector type (mtmd.cpp's aud_beg / aud_end)
AUDIO_MARKERS = {"ultravox": ("", ""), "qwen2a": ("<|audio_bos|>", "<|audio_eos|>"), "voxtral": ("[BEGIN_AUDIO]", "")}
AUDIO_MARKERS.update({"glma": ("", ""), "musicflamingo": ("<sound>", "")})  # (GLM-ASR: its boi / eoi are rows of the clip's)
AUDIO_MARKERS["qwen3a"] = ("<|audio_start|>", "<|audio_end|>")  # (Qwen3-Omni: around the whole clip, all its windows)
AUDIO_MARKERS["lfm2a"] = ("", "")  # (LFM2-Audio: mtmd.cpp puts nothing around the clip's rows)
AUDIO_MARKERS["granite_speech"] = ("", "")  # (Granite Speech: nothing around the clip's rows either)
AUDIO_MARKERS["gemma4a"] = ("<|audio>", "<audio|>")  # (Gemma 4: around the whole clip, all its 30 s pieces)
AUDIO_MARKERS["gemma4ua"] = ("<|audio>", "<audio|>")  # (Gemma 4 12B: around the whole clip, one chunk)
AUDIO_MARKERS["parakeet"] = ("", "")  # (Parakeet, Nemotron Nano VL's: nothing around the clip's rows)
AUDIO_MARKERS["mimo_audio"] = ("<|mimo_audio_start|>", "<|mimo_audio_end|>")  # (MiMo-V2.5: around the whole clip)
AUDIO_MARKERS["dots3note_a"] = ("<|audio_comp_start|>", "<|audio_comp_end|>")  # (dots.note: around the whole clip)


def is_audio_projector(g: GGUFFile) -> bool:
    """Whether the opened file ``g`` is an audio-only mmproj (runtime/vision.py opens it once and routes it)."""
    return g.get("general.architecture") == "clip" and is_audio_mmproj(g)


def decode_audio(src: Any, where: str = "the audio") -> np.ndarray:
    """A clip as callers hand it over decoded to 16 kHz mono float32 samples; a one-line KvrunError otherwise."""
    if isinstance(src, np.ndarray):
        if src.ndim != 1 or src.dtype != np.float32:
            raise KvrunError(f"{where}: an array clip must be float32 [n] samples at 16 kHz, got {src.dtype} {list(src.shape)}")
        return src
    if isinstance(src, (str, os.PathLike, bytes, bytearray)):
        return load_wav(bytes(src) if isinstance(src, bytearray) else src)
    raise KvrunError(f"{where}: a clip is a WAV file's path, its bytes or float32 samples, got {type(src).__name__}")


def audio_part(p: dict, where: str) -> np.ndarray:
    """OpenAI's ``{"type": "input_audio", "input_audio": {"data": base64, "format": "wav"}}`` decoded; ValueError in
    one line for a bad part (kvrun reads WAV only)."""
    a = p.get(AUDIO_PART)
    if not isinstance(a, dict) or not isinstance(a.get("data"), str):
        raise ValueError(f'{where}: input_audio must be {{"data": "<base64>", "format": "wav"}}')
    fmt = a.get("format", "wav")
    if fmt != "wav":
        raise ValueError(f"{where}: audio format {fmt!r} is not supported; kvrun reads wav")
    try:
        data = base64.b64decode("".join(a["data"].split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: the audio is not valid base64") from None
    try:
        return load_wav(data)
    except KvrunError as e:
        raise ValueError(f"{where}: {e}") from None


class Audio:
    """An audio projector file (``--mmproj``) loaded for ``engine``'s model: clips to rows, prompts to segments.
    It answers as :class:`~.vision.Vision` does (``segments``, ``prefill``, ``feed_rows``, ``generate_text``,
    ``image_rows``, ``image_positions``), a clip in a picture's place."""

    takes_audio = True
    begin, end = "", ""  # (Ultravox: no tokens around a clip's rows)

    def __init__(self, engine: Engine, mmproj: str | os.PathLike, g: GGUFFile | None = None) -> None:
        self.engine = engine
        g = g if g is not None else GGUFFile(mmproj)  # (``g``: the file already open, as Vision routes it)
        try:
            tower = audio_tower(g)  # (Whisper's, Qwen3-Omni's, LFM2-Audio's: models/audio_towers.py)
            cfg = tower.load_config(g)
            if cfg.n_text_embd != engine.cfg.n_embd:
                raise KvrunError(f"{mmproj}: the projector makes rows {cfg.n_text_embd} wide and {engine.path} embeds "
                                 f"{engine.cfg.n_embd}: not this model's mmproj")  # fmt: skip
            self.encoder = tower.encoder(g, cfg, engine.backend)
        except Exception:
            g.close()
            raise
        self.cfg = cfg
        self.begin, self.end = AUDIO_MARKERS.get(cfg.projector_type, ("", ""))

    @property
    def n_tokens(self) -> int:
        """Positions one 30 s chunk of a clip takes in the context."""
        return self.cfg.rows_per_chunk

    def image_positions(self, samples: np.ndarray) -> int:
        """Positions the decoded clip ``samples`` takes (its chunks' rows)."""
        if np.asarray(samples).ndim != 1:
            raise KvrunError("this projector takes audio, not images (its mmproj has no vision encoder)")
        return self.encoder.n_rows(np.asarray(samples).size)  # (Whisper's 30 s chunks; the others' own frames)

    def image_rows(self, clip: AudioSource) -> np.ndarray:
        """One clip decoded and encoded: float32 [n_chunks * rows_per_chunk, n_embd]."""
        if isinstance(clip, np.ndarray) and clip.ndim == 3:
            raise KvrunError("this projector takes audio, not images (its mmproj has no vision encoder)")
        return self.encoder.encode(decode_audio(clip))

    def segments(self, prompt: str, clips: list[AudioSource], add_bos: bool = True, encode: bool = True) -> Segments:
        """``prompt`` laid out with ``clips``, one per ``<__media__>`` marker (as :meth:`Vision.segments`)."""
        n = prompt.count(MARKER)
        if n == 0 and clips:
            prompt, n = MARKER * len(clips) + prompt, len(clips)
        if n != len(clips):
            raise KvrunError(f"the prompt has {n} media markers ({MARKER}) and {len(clips)} audio clips were given")
        # (the layout's markers are text around each clip, tokenized with the text as mtmd_tokenize does)
        prompt = prompt.replace(MARKER, self.begin + MARKER + self.end)
        tok = self.engine.tokenizer
        out: Segments = []
        for i, text in enumerate(prompt.split(MARKER)):
            if text:
                out.append(tok.encode(text, add_bos=None if i == 0 and add_bos else False, parse_special=True))
            if i < n:
                out.append(self.image_rows(clips[i]) if encode else i)
        return out

    def prefill(self, cache: Any, segments: Segments) -> list[int]:
        """Feed every segment but the last text piece; returns that piece (a prompt must end in text)."""
        return prefill_media(self, cache, segments, "a prompt with audio must end in text (put the question after the clip's <__media__>)",
                             f"30 s of audio takes {self.n_tokens}")  # fmt: skip

    def feed_rows(self, cache: Any, rows: np.ndarray) -> None:
        """Feed a clip's rows after what ``cache`` holds."""
        feed_context = getattr(self.encoder, "feed_context", None)  # (Qwen3-Omni's: its M-RoPE thinker turns a clip's
        with feed_context(self.engine.model) if feed_context else nullcontext():  # rows as libmtmd does)
            self.engine.eval_embd(cache, rows)

    generate_text = Vision.generate_text  # (prefill, then the reply streamed: the same for a clip as for a picture)
