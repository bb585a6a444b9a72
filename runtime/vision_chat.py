"""Images in chat messages (Gemma 3 with ``--mmproj``): the shapes clients send them in, and a conversation with
images generated on a KV cache kept between turns.

Messages.  An OpenAI message's content may be a list of parts: ``{"type": "text", "text": ...}``,
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`` and ``{"type": "image", "image": ...}``.
As llama-server does (``oaicompat_chat_params_parse``), each image part becomes libmtmd's marker ``<__media__>``
as a text part, and the parts are joined with a newline, as ``common_chat_msgs_to_json_oaicompat`` joins them
for a template that takes text content (Gemma 3's does).  An Ollama message's ``images`` (base64) go before its
text, one marker each, no separator, as Ollama's chat prompt places its ``[img-N]`` tags and llama-mtmd-cli's
``/image`` its markers.  Pictures are decoded (Pillow) as they come, so a bad one is a one-line error before
anything runs.  URLs are not fetched (kvrun makes no network requests); a server takes data URLs and base64
only (a path would read the server's own files), the Python API also a file's path, bytes or a PIL image.

Generation.  The chat template renders the conversation with its markers; :class:`~.vision.Vision` lays the
text out as libmtmd does (``segments``).  What the session's cache holds is kept as ids (``Session.tokens``), an
image row standing as an id of its own: negative, made of a hash of the picture's pixels and the row's index.  So
the prefix a new turn shares with the cache is found as for text: the same picture at the same place matches,
the next turn prefills only its new text and pictures, and a picture the cache holds is not encoded again
(llama-server keys its cached image chunks by a hash of the bitmap likewise).  A conversation with images is not
shifted when the context fills (llama-server turns the shift off with a projector too): one that outgrows the
context is a one-line error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..loaders.errors import KvrunError
from ..models.siglip import load_image
from .engine import GenRequest, GenStats, shared_prefix
from .vision import MARKER, Vision

IMAGE_PARTS = ("image_url", "image", "input_audio")  # content part types that carry a picture (or a clip: runtime/audio.py)
NO_PROJECTOR = ("images are not supported without the model's projector: give it with --mmproj FILE "
                "(kvrun.load(..., mmproj=FILE) in Python)")  # fmt: skip
KEY_BITS = 40  # bits of a picture's hash in its rows' ids (a row's index takes the low 16)


def decode_image(src: Any, where: str = "the image") -> np.ndarray:
    """A picture as callers hand it over (a file's path, its bytes, a PIL image, a uint8 array [H, W, 3]) decoded
    to uint8 RGB [H, W, 3]; a one-line KvrunError for what is not one."""
    if isinstance(src, np.ndarray):
        if src.ndim != 3 or src.shape[2] != 3 or src.dtype != np.uint8:
            raise KvrunError(f"{where}: an array image must be uint8 [height, width, 3] (RGB), got {src.dtype} {list(src.shape)}")
        return src
    if hasattr(src, "convert") and hasattr(src, "size"):  # a PIL image
        return np.asarray(src.convert("RGB"), np.uint8)
    if isinstance(src, (str, os.PathLike, bytes, bytearray)):
        return np.asarray(load_image(bytes(src) if isinstance(src, bytearray) else src), np.uint8)
    raise KvrunError(f"{where}: an image is a file's path, its bytes, a PIL image or a uint8 array, got {type(src).__name__}")


def _from_text(s: str, where: str, allow_paths: bool, base64_ok: bool) -> np.ndarray:
    """A picture named by a string: a data URL; base64 (``base64_ok``: Ollama's images); a path (``allow_paths``)."""
    if s.startswith(("http://", "https://")):
        raise ValueError(f"{where}: image URLs are not fetched (kvrun makes no network requests); send the picture as a "
                         "data URL, data:image/png;base64,...")  # fmt: skip
    if s.startswith("data:"):
        head, comma, data = s.partition(",")
        if not comma or not head.endswith(";base64"):
            raise ValueError(f"{where}: a data URL must be base64, data:image/png;base64,...")
        return decode_image(_b64(data, where), where)
    if allow_paths:
        return decode_image(s[len("file://") :] if s.startswith("file://") else s, where)
    if base64_ok:
        return decode_image(_b64(s, where), where)
    raise ValueError(f"{where}: give the picture as a data URL, data:image/png;base64,...")


def _b64(data: str, where: str) -> bytes:
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: the image is not valid base64") from None


def take_images(messages: Any, vision: Vision | None, allow_paths: bool = True) -> tuple[Any, list[np.ndarray]]:
    """``messages`` with each message's pictures put as ``<__media__>`` markers in its text (see the module
    docstring), and the pictures decoded, in marker order.  Messages without pictures come back as they are, for
    ``check_messages`` to check.  ``allow_paths`` False (a server): strings are data URLs or (Ollama's
    ``images``) base64.  ValueError or KvrunError in one line: a bad part or picture, or pictures to a model
    without its projector."""
    if not isinstance(messages, list):
        return messages, []
    out: list[Any] = []
    images: list[np.ndarray] = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        parts = isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in IMAGE_PARTS for p in content)
        extra = m.get("images") if isinstance(m, dict) else None
        if not parts and not extra:
            out.append(m)
            continue
        if vision is None:
            raise ValueError(NO_PROJECTOR)
        first: list[np.ndarray] = []  # Ollama's images: before the text
        if extra:
            if not isinstance(extra, list):
                raise ValueError(f"messages[{i}].images must be a list of base64 images")
            for j, src in enumerate(extra):
                w = f"messages[{i}].images[{j}]"
                first.append(_from_text(src, w, allow_paths, True) if isinstance(src, str) else _direct(src, w, allow_paths))
        mine: list[np.ndarray] = []
        if isinstance(content, list):
            texts = []
            for j, p in enumerate(content):
                w = f"messages[{i}].content[{j}]"
                kind = p.get("type") if isinstance(p, dict) else None
                if kind == "text":
                    texts.append(str(p.get("text", "")))
                    continue
                if kind in ("image_url", "image") and getattr(vision, "takes_audio", False) and not getattr(vision, "takes_images", False):
                    raise ValueError(f"{w}: this model's projector takes audio (input_audio parts), not images")
                if kind == "image_url":
                    url = p.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    if not isinstance(url, str):
                        raise ValueError(f'{w}: image_url must be {{"url": "data:image/png;base64,..."}}')
                    mine.append(_from_text(url, w, allow_paths, False))
                elif kind == "image":
                    src = p.get("image")
                    mine.append(_from_text(src, w, allow_paths, True) if isinstance(src, str) else _direct(src, w, allow_paths))
                elif kind == "input_audio":  # OpenAI's {"data": base64, "format": "wav"}, for an audio projector's model
                    from .audio import audio_part

                    if not getattr(vision, "takes_audio", False):
                        raise ValueError(f"{w}: content part type 'input_audio' is not supported by this model's projector (it takes images; audio needs an audio mmproj, Ultravox's)")
                    mine.append(audio_part(p, w))
                else:
                    raise ValueError(f"{w}: content part type {kind!r} is not supported; use text, image_url or image")
                texts.append(MARKER)
            content = "\n".join(texts)
        elif content is None:
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string or a list of parts")
        content, mine = MARKER * len(first) + content, first + mine
        images += mine
        out.append({k: v for k, v in m.items() if k != "images"} | {"content": content})
    return out, images


def _direct(src: Any, where: str, allow_paths: bool) -> np.ndarray:
    """A picture given as an object (bytes, a PIL image, an array): the Python API's; a server takes text only."""
    if not allow_paths and not isinstance(src, (bytes, bytearray)):
        raise ValueError(f"{where}: give the picture as base64 or a data URL")
    return decode_image(src, where)


def user_turn(vision: Vision | None, text: str, images: list[Any]) -> tuple[dict[str, str], list[np.ndarray]]:
    """A user's message with ``images`` attached before its text (llama-mtmd-cli's ``/image``), and them decoded."""
    if vision is None:
        raise KvrunError(NO_PROJECTOR)
    if getattr(vision, "takes_images", False):  # (Qwen2.5-Omni's: each attachment a picture or a clip, runtime/omni.py)
        from .omni import decode_media

        return {"role": "user", "content": MARKER * len(images) + text}, [decode_media(x, f"media[{j}]") for j, x in enumerate(images)]
    if getattr(vision, "takes_audio", False):  # (an audio projector: the attachments are clips, runtime/audio.py)
        from .audio import decode_audio

        return {"role": "user", "content": MARKER * len(images) + text}, [decode_audio(x, f"audio[{j}]") for j, x in enumerate(images)]
    return {"role": "user", "content": MARKER * len(images) + text}, [decode_image(x, f"images[{j}]") for j, x in enumerate(images)]


# ---------------------------------------------------------------- a prompt with images, on a kept cache


def image_key(img: np.ndarray) -> int:
    """A hash of a decoded picture (its size and pixels), KEY_BITS wide."""
    h = hashlib.blake2b(np.ascontiguousarray(img).tobytes(), digest_size=8, person=b"kvrun-img")
    h.update(repr(img.shape).encode())
    return int.from_bytes(h.digest(), "little") >> (64 - KEY_BITS)


def row_ids(key: int, n: int) -> list[int]:
    """The ids a picture's ``n`` rows stand as in a cache's token list: negative, never a token's."""
    return [-(1 + (key << 16) + r) for r in range(n)]


@dataclass
class Laid:
    """A prompt laid out with its pictures: ``pieces`` (text token lists, and pictures' indices in ``images``) and
    ``ids``, every position's id (rows as :func:`row_ids`)."""

    pieces: list[Any]
    images: list[np.ndarray]
    ids: list[int]


def lay_out(vision: Vision | None, text: str, images: list[np.ndarray]) -> Laid:
    """``text`` (a rendered conversation with its markers) laid out with ``images``, none encoded yet."""
    if vision is None:
        raise KvrunError(NO_PROJECTOR)
    pieces = vision.segments(text, images, encode=False)
    keys = [image_key(a) for a in images]
    ids: list[int] = []
    for p in pieces:
        ids.extend(p if isinstance(p, list) else row_ids(keys[p], vision.image_positions(images[p])))
    return Laid(pieces, images, ids)


def too_long(n: int, room: int, n_ctx: int) -> Any:
    """A conversation with images that outgrows the context: no shift (the turns dropped would take their pictures
    out of the marker order), a one-line error."""
    raise KvrunError(f"the conversation with its images is {n} positions; the context of {n_ctx} leaves {room} for it "
                     "(a chat with images is not shifted): raise --ctx-size or start a new chat")  # fmt: skip


def generate_reusing(vision: Vision, cache: Any, held: list[int], laid: Laid, req: GenRequest, stats: GenStats) -> Iterator[int]:
    """:meth:`Engine.generate_reusing` for a prompt with images: the prefix ``held`` (what ``cache`` holds) shares
    with ``laid.ids`` stays, never cutting a picture (its rows were fed seeing each other: all or none), the rest
    is fed (pictures encoded now), the last text piece through ``generate_tokens``; ``held`` follows the cache.
    ``stats.n_prompt`` counts every position evaluated, pictures' rows included."""
    eng, ids = vision.engine, laid.ids

    def n_img(p: int) -> int:  # (SmolVLM's blocks differ by picture)
        return vision.image_positions(laid.images[p])

    n_keep = min(shared_prefix(held, ids), len(ids) - 1)
    at = 0
    for p in laid.pieces:
        n = len(p) if isinstance(p, list) else n_img(p)
        if not isinstance(p, list) and at < n_keep < at + n:
            n_keep = at
        at += n
    if n_keep < cache.offset:
        n_keep = cache.truncate(n_keep)
    del held[n_keep:]
    t0 = time.perf_counter()
    *head, last = laid.pieces
    at = 0
    for p in head:
        n = len(p) if isinstance(p, list) else n_img(p)
        if at + n > n_keep:
            if isinstance(p, list):
                eng.eval(cache, p[max(n_keep - at, 0) :])
            else:
                vision.feed_rows(cache, vision.image_rows(laid.images[p]))
            held.extend(ids[max(n_keep, at) : at + n])
        at += n
    tail = last[max(n_keep - at, 0) :]
    n_before, t_before = len(ids) - len(tail) - n_keep, time.perf_counter() - t0
    held.extend(tail)
    text_before = [t for t in ids[: len(ids) - len(tail)] if t >= 0]  # (a draft model reads the text)
    out: list[int] = []
    counted = False
    try:
        for t in eng.generate_tokens(cache, tail, req, stats, context=text_before):
            if not counted:  # (generate_tokens has set the last piece's counts by its first token)
                stats.n_prompt, stats.t_prompt, counted = stats.n_prompt + n_before, stats.t_prompt + t_before, True
            out.append(t)
            yield t
    finally:
        if not counted:
            stats.n_prompt, stats.t_prompt = stats.n_prompt + n_before, stats.t_prompt + t_before
        held.extend(out[: cache.offset - len(held)])
