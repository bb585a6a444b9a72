"""Pictures and audio through one projector file (Qwen2.5-Omni's mmproj), as llama.cpp's libmtmd takes them.

Qwen2.5-Omni's mmproj holds two encoders (``clip.has_vision_encoder`` and ``clip.has_audio_encoder``); clip.cpp loads
each as a model of its own, reading the shared projector type "qwen2.5o" as "qwen2.5vl_merger" for the vision side
and "qwen2a" for the audio side (or the per-modality ``clip.vision.projector_type`` / ``clip.audio.projector_type``),
and mtmd.cpp sends each bitmap to the encoder of its kind.  :class:`Omni` does the same: ``Vision(engine, mmproj)``
hands such a file over (runtime/vision.py), and it holds a :class:`~.vision.Vision` for the pictures (Qwen2.5-VL's
encoder, ``<|vision_start|>`` rows ``<|vision_end|>``, the rows fed with their M-RoPE grid: runtime/vision_qwen2vl.py)
and an :class:`~.audio.Audio` for the clips (``<|audio_bos|>`` rows ``<|audio_eos|>``, one position a row, all M-RoPE
sections alike).  The media of one prompt are told apart by what they are, as libmtmd's helper tells a file's bytes:
a WAV file (its path or bytes, ``RIFF....WAVE``) or a 1-D float32 array is a clip, anything else a picture; the
``<__media__>`` markers take them in order, whatever the mix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from .audio import Audio, decode_audio
from .engine import Engine, GenRequest, GenStats
from .vision import MARKER, Segments, Vision, prefill_media
from .vision_markers import PictureRows


def is_omni_projector(g: GGUFFile) -> bool:
    """Whether the opened file ``g`` is a projector file with both a vision and an audio encoder."""
    return g.get("general.architecture") == "clip" and bool(g.get("clip.has_vision_encoder", False)) and bool(g.get("clip.has_audio_encoder", False))


def is_clip(src: Any) -> bool:
    """Whether a medium as callers hand it over is a clip: a 1-D array (16 kHz samples), or a WAV file's bytes or path."""
    if isinstance(src, np.ndarray):
        return src.ndim == 1
    head = b""
    if isinstance(src, (bytes, bytearray)):
        head = bytes(src[:12])
    elif isinstance(src, (str, os.PathLike)):
        try:
            with open(src, "rb") as f:
                head = f.read(12)
        except OSError:
            return False  # (the picture loader says what is wrong with the path)
    return head[:4] == b"RIFF" and head[8:12] == b"WAVE"


class _Pictures(Vision):
    """The vision side, built as a plain :class:`Vision` (the subclass keeps ``Vision.__new__`` from routing again)."""


class Omni:
    """A projector file with both encoders, loaded for ``engine``'s model: pictures and clips to rows, prompts with
    both to segments.  It answers as :class:`~.vision.Vision` does (``segments``, ``prefill``, ``feed_rows``,
    ``generate_text``, ``image_rows``, ``image_positions``), each medium going to its own side."""

    takes_audio = takes_images = True

    def __init__(self, engine: Engine, mmproj: str | os.PathLike, g: GGUFFile | None = None) -> None:
        self.engine = engine  # (``g``: the file already open, read by both sides)
        self.pictures = _Pictures(engine, mmproj, g)
        self.audio = Audio(engine, mmproj, g)

    @property
    def n_tokens(self) -> int:
        """Positions one 30 s chunk of a clip takes (a picture's depend on its size: :meth:`image_positions`)."""
        return self.audio.n_tokens

    def side(self, src: Any) -> Vision | Audio:
        """The side that takes the medium ``src``."""
        return self.audio if is_clip(src) else self.pictures

    def image_positions(self, media: np.ndarray) -> int:
        """Cache slots a decoded picture (uint8 [h, w, 3]) or clip (float32 [n]) takes."""
        return self.side(media).image_positions(media)

    def image_rows(self, media: Any) -> np.ndarray:
        """A picture's rows (a :class:`PictureRows` view, with their grid where the layout gives one) or a clip's, by
        what ``media`` is: :meth:`feed_rows` sends them back to their side by that."""
        side = self.side(media)
        rows = side.image_rows(media)
        return rows.view(PictureRows) if side is self.pictures and not isinstance(rows, PictureRows) else rows

    def segments(self, prompt: str, media: list[Any], add_bos: bool = True, encode: bool = True) -> Segments:
        """``prompt`` laid out with ``media``, pictures and clips mixed, one per ``<__media__>`` marker in order (where
        it has none, the media come first), each between its own kind's marker tokens."""
        n = prompt.count(MARKER)
        if n == 0 and media:
            prompt, n = MARKER * len(media) + prompt, len(media)
        if n != len(media):
            raise KvrunError(f"the prompt has {n} media markers ({MARKER}) and {len(media)} pictures and clips were given")
        sides = [self.side(x) for x in media]
        pieces = prompt.split(MARKER)
        # (the marker tokens are text around each medium, tokenized with the text as mtmd_tokenize does)
        texts = [(sides[i - 1].end if i > 0 else "") + t + (sides[i].begin if i < n else "") for i, t in enumerate(pieces)]
        tok = self.engine.tokenizer
        out: Segments = []
        for i, text in enumerate(texts):
            if text:
                out.append(tok.encode(text, add_bos=None if i == 0 and add_bos else False, parse_special=True))
            if i < n:
                out.append(self.image_rows(media[i]) if encode else i)
        return out

    def prefill(self, cache: Any, segments: Segments) -> list[int]:
        """Feed every segment but the last text piece; returns that piece (a prompt must end in text)."""
        return prefill_media(self, cache, segments, "a prompt with pictures or audio must end in text",
                             "its pictures' and clips' rows included")  # fmt: skip

    def feed_rows(self, cache: Any, rows: np.ndarray) -> None:
        """Feed a picture's rows (:meth:`image_rows`' :class:`PictureRows`; M-RoPE rows carry their grid) or a clip's (one
        position each) after ``cache``."""
        (self.pictures if isinstance(rows, PictureRows) else self.audio).feed_rows(cache, rows)

    def generate_text(self, cache: Any, segments: Segments, req: GenRequest, stats: GenStats | None = None) -> Iterator[str]:
        """Prefill ``segments`` and stream the reply's text (as :meth:`Vision.generate_text`)."""
        return Vision.generate_text(self, cache, segments, req, stats)  # type: ignore[arg-type]


def decode_media(src: Any, where: str) -> np.ndarray:
    """A picture or a clip as callers hand it over, decoded (uint8 RGB [h, w, 3] or float32 [n] at 16 kHz)."""
    if is_clip(src):
        return decode_audio(src, where)
    from .vision_chat import decode_image

    return decode_image(src, where)
