"""The checks a picture layout makes first: its text model's architecture and the marker tokens a picture's rows go
between, each a single token of the vocabulary (or, for layouts that look markers up as libmtmd's ``lookup_token``
does, the first token whose text is exactly it), else a one-line error naming what is missing.  Written once here so
that every layout (runtime/vision_*.py) refuses a wrong pairing in the same words."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..loaders.errors import KvrunError


class PictureRows(np.ndarray):
    """A picture's rows [n, n_embd] as a view that tells them from a clip's: a two-sided projector (runtime/omni.py's
    ``feed_rows``) sends these to its picture side.  M-RoPE layouts' rows carry their grid too (vision_qwen2vl.py's
    ``GridRows``)."""


def require_arch(engine: Any, archs: tuple[str, ...], goes_with: str, takes_images: bool = False) -> None:
    """A one-line KvrunError unless ``engine`` runs one of ``archs`` (with ``takes_images``: a model built to take
    pictures, its rope sections stated); ``goes_with`` says which text model the projector wants, as the error begins
    ("a glm4v projector goes with a GLM-4.1V text model (...)"), and the error ends with the model's architecture."""
    if engine.cfg.arch not in archs or takes_images and not getattr(engine.model, "takes_images", False):
        raise KvrunError(f"{engine.path}: {goes_with}, not {engine.cfg.arch}")


def require_markers(engine: Any, markers: tuple[str, ...], model: str) -> None:
    """A one-line KvrunError unless ``engine``'s vocabulary has each of ``markers`` as one token (special tokens
    parsed); ``model`` names the vision model with its article, as the error ends ("not a Kimi-VL model")."""
    tok = engine.tokenizer
    for t in markers:
        if len(tok.encode(t, add_bos=False, parse_special=True)) != 1:
            raise KvrunError(f"{engine.path}: the vocabulary has no {t} token; not {model} model")


def lookup_markers(engine: Any, texts: tuple[str, ...], model: str) -> list[int]:
    """Each of ``texts``' token: the first whose piece (special tokens' text included) is exactly it (libmtmd's
    ``lookup_token``), else a one-line KvrunError naming the first one missing (``model`` as :func:`require_markers`)."""
    tok = engine.tokenizer
    ids = []
    for text in texts:
        want = text.encode()  # (a scan once a model: well under a second for SmolLM2's 49k tokens)
        i = next((i for i in range(tok.n_vocab) if tok.token_bytes(i, special=True) == want), None)
        if i is None:
            raise KvrunError(f"{engine.path}: the vocabulary has no {text!r} token; not {model} model")
        ids.append(i)
    return ids


def require_text_model(engine: Any, projector: str, arch: str, model: str, markers: tuple[str, ...]) -> None:
    """One-line KvrunErrors unless ``engine`` runs ``arch`` (the ``projector`` file's text model, ``model`` in words) and
    its vocabulary has each of ``markers`` as one token."""
    require_arch(engine, (arch,), f"a {projector} projector goes with a {model} text model ({arch})")
    require_markers(engine, markers, f"a {model} vision")
