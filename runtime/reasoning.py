"""A reasoning model's thinking apart from its answer (Qwen3, DeepSeek-R1 distills, SmolLM3): a reply
that opens with ``<think>`` has its thoughts up to ``</think>`` returned as OpenAI-compatible
``reasoning_content`` (llama-server's) or Ollama's ``thinking``, and the rest as the content.

:class:`ThinkSplitter` does it piece by piece, for streams: text that could still turn out to be
the opening or closing tag is held back until it is known not to be one.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


class ThinkSplitter:
    """``push`` text pieces, get ``(kind, text)`` parts back, kind "reasoning" or "content"."""

    def __init__(self) -> None:
        self.mode = "start"  # start: not yet known whether the reply thinks; think; content
        self.held = ""
        self.strip = False  # the answer after </think> starts at its first non-space

    def push(self, piece: str) -> list[tuple[str, str]]:
        self.held += piece
        out: list[tuple[str, str]] = []
        if self.mode == "start":
            head = self.held.lstrip()
            if not head:  # (only spaces so far: they go out now, a stream does not wait on them)
                out += [("content", self.held)] if self.held else []
                self.held = ""
                return out
            if head.startswith(OPEN):
                self.mode, self.held = "think", head[len(OPEN) :]
            elif OPEN.startswith(head):
                return out  # (maybe the tag, not yet whole)
            else:
                self.mode = "content"
        if self.mode == "think":
            at = self.held.find(CLOSE)
            if at < 0:
                keep = next((k for k in range(len(CLOSE) - 1, 0, -1) if self.held.endswith(CLOSE[:k])), 0)
                text, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
                if text:
                    out.append(("reasoning", text))
                return out
            if at:
                out.append(("reasoning", self.held[:at]))
            self.mode, self.held, self.strip = "content", self.held[at + len(CLOSE) :], True
        if self.mode == "content" and self.strip:
            self.held = self.held.lstrip()
            self.strip = not self.held
        if self.mode == "content" and self.held:
            out.append(("content", self.held))
            self.held = ""
        return out

    def flush(self) -> list[tuple[str, str]]:
        """What is held at the end (a reply cut inside its thinking keeps it as reasoning)."""
        text, self.held = self.held, ""
        if not text:
            return []
        return [("reasoning" if self.mode == "think" else "content", text)]


def split(text: str) -> tuple[str | None, str]:
    """(the reasoning, None if the reply does not think; the content) of a whole reply."""
    s = ThinkSplitter()
    parts = s.push(text) + s.flush()
    content = "".join(t for k, t in parts if k == "content")
    if not text.lstrip().startswith(OPEN):
        return None, content
    return "".join(t for k, t in parts if k == "reasoning"), content
