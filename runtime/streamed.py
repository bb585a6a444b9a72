"""A streamed answer in another API's wire format than OpenAI's server-sent events.

OpenAI's streams (a plain iterator of payloads) go out as ``data: {...}`` events closed by ``data: [DONE]``.  The
other API families wrap their iterators in a subclass that says how they differ; the server's handler reads those
three flags, and closing the wrapper closes the generation (a client gone mid-stream stops it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class Streamed:
    """An iterator of payloads and the wire format they go out in (the flags: OpenAI's unless a subclass says)."""

    ndjson = False  # a JSON object a line, not server-sent events (Ollama's)
    named = False  # (event type, payload) pairs, sent as named events (Anthropic's)
    done = True  # closed by ``data: [DONE]``

    def __init__(self, events: Iterator[Any]) -> None:
        self.events = events

    def __iter__(self) -> Iterator[Any]:
        return self.events

    def close(self) -> None:
        close = getattr(self.events, "close", None)
        if close:
            close()
