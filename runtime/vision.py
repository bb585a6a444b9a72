"""Images in the prompt (Gemma 3 with llama.cpp's ``--mmproj``): a projector beside an engine, and the prompt's layout.

A prompt names its images with libmtmd's media marker ``<__media__>``, one per image in order.  As mtmd lays
out Gemma 3's prompt, each marker becomes ``<start_of_image>``, the image's embedding rows (256 for Gemma 3,
models/siglip.py) and ``<end_of_image>``; the text between is tokenized piece by piece (special tokens parsed,
BOS only before the first piece), so the token ids are mtmd_tokenize's.  Text pieces are fed as tokens, image
rows through :meth:`Engine.eval_embd` (the rows of one image seeing each other, as llama.cpp feeds them); the KV
cache then holds them as any prompt, and generation goes on from the last text piece, which always has at
least ``<end_of_image>``.  SmolVLM's projector (idefics3) makes a picture a block of tiles between image tokens
instead, fed as one array of rows (runtime/vision_idefics3.py).  Qwen2-VL's (qwen2vl_merger, qwen2.5vl_merger) puts a
picture's rows between ``<|vision_start|>`` and ``<|vision_end|>`` and feeds them with their M-RoPE positions
(:meth:`Vision.feed_rows`, runtime/vision_qwen2vl.py).  LFM2-VL's (lfm2) puts a picture's block, its image or its tiles
and thumbnail, between ``<|image_start|>`` and ``<|image_end|>``, fed as one array of rows (runtime/vision_lfm2.py);
InternVL's (internvl) its tiles' and thumbnail's rows between ``<img>`` and ``</img>`` (runtime/vision_internvl.py);
Pixtral's (pixtral) its rows with [IMG_BREAK] rows between rows of blocks, then ``[IMG_END]`` (runtime/vision_pixtral.py);
Gemma 4's (gemma4v) its rows between ``<|image>`` and ``<image|>``, seeing each other both ways (runtime/vision_gemma4.py);
MiniCPM-V's (resampler) its overview and slices with ``<image>`` / ``<slice>`` markers, one array of rows (runtime/vision_minicpmv.py);
Llama 4's (llama4) its tiles' and overview's rows between ``<|image_start|>`` and ``<|image_end|>`` (runtime/vision_llama4.py);
Kimi-VL's (kimivl) its rows between ``<|media_start|>`` and ``<|media_end|>``, read by deepseek2 (runtime/vision_kimivl.py).
LightOnOCR's (lightonocr) its rows between ``<|im_start|>`` and ``<|im_end|>`` (runtime/vision_lightonocr.py); Janus-Pro's
(janus_pro) and CogVLM's (cogvlm) their rows with no markers, CogVLM's read by its text model's visual expert
(runtime/vision_janus.py, runtime/vision_cogvlm.py); LLaVA's and MobileVLM's (mlp, ldp, ldpv2) their rows (LLaVA 1.6's
tiles, then the overview) with no markers (runtime/vision_llava.py); PaddleOCR-VL's (paddleocr) Qwen2-VL's layout and
positions, Hunyuan-VL's (hunyuanvl) its rows with a newline row after each row of blocks between begin and end rows,
at XD-RoPE positions (runtime/vision_paddleocr.py, runtime/vision_hunyuanvl.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any, Union

import numpy as np

from ..cache.base import KVCache
from ..loaders.errors import KvrunError
from ..loaders.gguf_file import GGUFFile
from ..models.siglip import load_image, preprocess
from .engine import Engine, GenRequest, GenStats, stream_text
from .projectors import load_encoder, load_layout

MARKER = "<__media__>"  # libmtmd's default media marker
IMAGE_BEGIN, IMAGE_END = "<start_of_image>", "<end_of_image>"

#: an image as callers hand it over: a file's path, its bytes, a decoded PIL image, or uint8 RGB [H, W, 3]
ImageSource = Union[str, os.PathLike, bytes, np.ndarray, Any]
#: a laid-out prompt: token ids (a text piece) and float32 [n, n_embd] arrays (an image's rows), in order
Segments = list[Union[list[int], np.ndarray]]


class Vision:
    """A projector file (``--mmproj``) loaded for ``engine``'s model: images to rows, prompts to segments."""

    def __new__(cls, engine: Engine, mmproj: str | os.PathLike, g: GGUFFile | None = None) -> Any:
        if cls is not Vision:  # (Omni's picture side: routed already, the open file handed over)
            return super().__new__(cls)
        from .audio import Audio, is_audio_projector
        from .omni import Omni, is_omni_projector
        from .vision_gemma3n import skips_audio

        if g is None:  # (the file's header parsed once, here: what it holds routes it, and the side it goes to reads it on)
            try:
                g = GGUFFile(mmproj)
            except Exception:
                pass  # (unreadable: the picture loader says what is wrong, after the text model's own check)
        if g is not None and is_audio_projector(g):  # an audio mmproj (Ultravox's): clips in a picture's place (runtime/audio.py)
            return Audio(engine, mmproj, g)
        if g is not None and is_omni_projector(g) and not skips_audio(g):  # both encoders (Qwen2.5-Omni's): pictures and clips (runtime/omni.py)
            return Omni(engine, mmproj, g)
        self = super().__new__(cls)
        self._opened = g  # (Python calls __init__ with the caller's arguments: the open file goes over this way)
        return self

    def __init__(self, engine: Engine, mmproj: str | os.PathLike, g: GGUFFile | None = None) -> None:
        g = g if g is not None else self.__dict__.pop("_opened", None)
        if not getattr(engine.model, "takes_images", False):
            if g is not None:
                g.close()
            raise KvrunError(f"{engine.cfg.arch} models take no images; kvrun runs images with Gemma 3, 3n and 4 (12B's unified too), SmolVLM, Qwen2-VL, "
                             "Qwen3-VL, GLM-4.1V / 4.5V, LFM2-VL, InternVL, Pixtral / Mistral Small 3.1, MiniCPM-V (up to 4.6), Llama 4, Kimi-VL, Kimi-K2.5, PaddleOCR-VL, HunyuanOCR / Hunyuan-VL, LLaVA, MobileVLM, LightOnOCR, Janus-Pro, CogVLM, Step3-VL, Youtu-VL, MiMo-V2.5, dots.ocr, dots.note, DeepSeek-OCR (1 and 2), Nemotron Nano VL, EXAONE 4.5, Reka Edge, Ling 3 VL, Muse Glimmer, MiniMax-M3 and Granite 4 Vision "
                             "and their mmproj files")  # fmt: skip
        self.engine = engine
        self.encoder = load_encoder(mmproj if g is None else g, engine.backend)  # (its type's encoder and layout: runtime/projectors.py)
        n, m = self.encoder.cfg.n_text_embd, engine.cfg.n_embd
        wide = getattr(engine.model, "n_embd_inp", m)  # (a model taking DeepStack levels: rows n_embd * (1 + levels) wide)
        if n != m and n != wide:
            also = f" ({wide} with its DeepStack levels)" if wide != m else ""
            raise KvrunError(f"{mmproj}: the projector makes rows {n} wide and {engine.path} embeds {m}{also}: not this model's mmproj")
        self.begin, self.end, self.idefics3, self.qwen2vl = IMAGE_BEGIN, IMAGE_END, None, None
        layout, begin, end, rows = load_layout(engine, self.encoder)
        if layout is not None:  # a block of rows (SmolVLM's and most: pieces / rows / n_positions), or M-RoPE rows (Qwen2-VL's)
            self.begin, self.end = begin, end
            if rows == "mrope":
                self.qwen2vl = layout
            else:
                self.idefics3 = layout
            return
        tok = engine.tokenizer
        for t in (IMAGE_BEGIN, IMAGE_END):
            if len(tok.encode(t, add_bos=False)) != 1:
                raise KvrunError(f"{engine.path}: the vocabulary has no {t} token; not a Gemma 3 vision model")

    @property
    def n_tokens(self) -> int:
        """Positions one image takes in the context (its rows)."""
        return self.encoder.cfg.n_tokens

    def image_positions(self, image: np.ndarray) -> int:
        """Positions the decoded picture ``image`` (uint8 [h, w, 3]) takes: :attr:`n_tokens`, or SmolVLM's block's."""
        if self.qwen2vl is not None:
            return self.qwen2vl.n_positions(image)
        return self.n_tokens if self.idefics3 is None else self.idefics3.n_positions(image.shape[1], image.shape[0])

    def image_rows(self, image: ImageSource) -> np.ndarray:
        """One image decoded (Pillow), resized and normalised as clip.cpp does, encoded: float32 [n_tokens, n_embd]."""
        if isinstance(image, (str, os.PathLike, bytes)):
            image = load_image(image)
        if self.qwen2vl is not None:
            return self.qwen2vl.rows(np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, np.uint8))
        if self.idefics3 is not None:  # (a PIL image or a uint8 array: its RGB pixels)
            return self.idefics3.rows(np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, np.uint8))
        return self.encoder.encode(preprocess(image, self.encoder.cfg))

    def segments(self, prompt: str, images: list[ImageSource], add_bos: bool = True, encode: bool = True) -> Segments:
        """``prompt`` laid out with ``images``, one per ``<__media__>`` marker (where it has none, the images come
        first, each on a marker of its own, then the text).  ``encode`` False: an image's place holds its index in
        ``images`` (an int), for a caller that encodes only the images its cache does not hold yet."""
        n = prompt.count(MARKER)
        if n == 0 and images:
            prompt, n = MARKER * len(images) + prompt, len(images)
        if n != len(images):
            raise KvrunError(f"the prompt has {n} image markers ({MARKER}) and {len(images)} images were given")
        pieces = prompt.split(MARKER)
        tok = self.engine.tokenizer
        out: Segments = []
        for i, text in enumerate(pieces):
            text = (self.end if i > 0 else "") + text + (self.begin if i < n else "")
            if text:
                out.append(tok.encode(text, add_bos=None if i == 0 and add_bos else False, parse_special=True))
            if i < n:
                out.append(self.image_rows(images[i]) if encode else i)
        return out

    def prefill(self, cache: KVCache, segments: Segments) -> list[int]:
        """Feed every segment but the last text piece after what ``cache`` holds; returns that piece (the prompt
        generation starts from)."""
        each = f"an image takes {self.n_tokens}" if self.qwen2vl is None and self.idefics3 is None else "its images' rows included"
        return prefill_media(self, cache, segments, "a prompt with images must end in text", each)

    def feed_rows(self, cache: KVCache, rows: np.ndarray) -> None:
        """Feed an image's rows (:meth:`image_rows`) after what ``cache`` holds (Qwen2-VL's with their grid recorded)."""
        if self.qwen2vl is not None:
            self.qwen2vl.feed(cache, rows)
        else:
            self.engine.eval_embd(cache, rows)

    def generate_text(self, cache: KVCache, segments: Segments, req: GenRequest, stats: GenStats | None = None) -> Iterator[str]:
        """Prefill ``segments`` and stream the reply's text (as :meth:`Engine.generate_text`); ``stats.n_prompt``
        counts every position the prompt took, image rows included, and ``t_prompt`` the time they took."""
        stats = stats if stats is not None else GenStats()
        n_before = sum(len(s) for s in segments[:-1])
        t0 = time.perf_counter()
        last = self.prefill(cache, segments)
        t_before = time.perf_counter() - t0
        ids = self.engine.generate_tokens(cache, last, req, stats)

        def counted() -> Iterator[int]:
            done = False
            for t in ids:
                if not done:  # (generate_tokens has set the last piece's counts by its first token)
                    stats.n_prompt, stats.t_prompt, done = stats.n_prompt + n_before, stats.t_prompt + t_before, True
                yield t
            if not done:
                stats.n_prompt, stats.t_prompt = stats.n_prompt + n_before, stats.t_prompt + t_before

        return stream_text(self.engine.tokenizer, counted(), req.stop, stats)


def prefill_media(media: Any, cache: KVCache, segments: Segments, must_end: str, each: str) -> list[int]:
    """Feed every segment but the last text piece after what ``cache`` holds, text through ``Engine.eval`` and media rows
    through ``media.feed_rows`` (a picture's, a clip's); returns that last piece.  A prompt that does not end in text
    (``must_end``) or does not fit the context (``each`` says what its media take) is refused in one line first."""
    if not segments or not isinstance(segments[-1], list):
        raise KvrunError(must_end)
    need = sum(len(s) for s in segments)
    if cache.offset + need > media.engine.n_ctx:
        raise KvrunError(f"{cache.offset + need} tokens ({each}) do not fit the context of {media.engine.n_ctx}; raise --ctx-size")
    for seg in segments[:-1]:
        if isinstance(seg, list):
            media.engine.eval(cache, seg)
        else:
            media.feed_rows(cache, seg)
    return segments[-1]
