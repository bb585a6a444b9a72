"""The check every picture layout makes first: its text model's architecture and the marker tokens a picture's rows go
between, each a single token of the vocabulary, else a one-line error naming what is missing."""

from __future__ import annotations

from typing import Any

from ..loaders.errors import KvrunError


def require_text_model(engine: Any, projector: str, arch: str, model: str, markers: tuple[str, ...]) -> None:
    """One-line KvrunErrors unless ``engine`` runs ``arch`` (the ``projector`` file's text model, ``model`` in words) and
    its vocabulary has each of ``markers`` as one token."""
    if engine.cfg.arch != arch:
        raise KvrunError(f"{engine.path}: a {projector} projector goes with a {model} text model ({arch}), not {engine.cfg.arch}")
    tok = engine.tokenizer
    for t in markers:
        if len(tok.encode(t, add_bos=False, parse_special=True)) != 1:
            raise KvrunError(f"{engine.path}: the vocabulary has no {t} token; not a {model} vision model")
