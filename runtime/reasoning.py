"""A reasoning model's thinking apart from its answer (Qwen3, DeepSeek-R1 distills, SmolLM3): a reply
that opens with ``<think>`` has its thoughts up to ``</think>`` returned as OpenAI-compatible
``reasoning_content`` (llama-server's) or Ollama's ``thinking``, and the rest as the content.

gpt-oss writes OpenAI's *harmony* format instead: messages ``<|channel|>NAME<|message|>BODY<|end|>``,
the next one after ``<|start|>assistant``; the ``analysis`` channel is its thinking, ``final`` (and
``commentary``) its answer (:class:`HarmonySplitter`).

:class:`ThinkSplitter` does it piece by piece, for streams: text that could still turn out to be
the opening or closing tag is held back until it is known not to be one.
"""

from __future__ import annotations

import re

OPEN, CLOSE = "<think>", "</think>"
CHANNEL, MESSAGE, START = "<|channel|>", "<|message|>", "<|start|>"
#: what ends a harmony message: <|end|> (another follows), <|call|> (a tool call), <|return|> (the reply)
HARMONY_ENDS = ("<|end|>", "<|call|>", "<|return|>")


def _partial_tail(text: str, tags: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` may be the start of one of ``tags``."""
    return max((k for t in tags for k in range(len(t) - 1, 0, -1) if text.endswith(t[:k])), default=0)


class HarmonySplitter:
    """gpt-oss's harmony messages, piece by piece: ``push`` text, get ``(kind, text)`` parts back."""

    def __init__(self) -> None:
        self.mode = "header"  # header: before a message's <|message|>; body; between: after its end tag
        self.held = ""
        self.kind = "content"

    def push(self, piece: str) -> list[tuple[str, str]]:
        self.held += piece
        out: list[tuple[str, str]] = []
        while True:
            if self.mode == "between":  # "<|start|>assistant" then the next header, or plain text
                head = self.held.lstrip()
                if head.startswith(START):
                    at = head.find(CHANNEL)
                    if at < 0:
                        return out
                    self.mode, self.held = "header", head[at:]
                elif START.startswith(head):
                    return out
                else:  # (text after a message without a new header: the answer, as it comes)
                    self.mode, self.kind = "body", "content"
            if self.mode == "header":
                at = self.held.find(MESSAGE)
                if at < 0:
                    return out
                m = re.match(re.escape(CHANNEL) + r"(\w+)", self.held[:at].lstrip())
                self.kind = "reasoning" if m is not None and m.group(1) == "analysis" else "content"
                self.mode, self.held = "body", self.held[at + len(MESSAGE) :]
            ends = [(self.held.find(t), t) for t in HARMONY_ENDS if t in self.held]
            if not ends:
                keep = _partial_tail(self.held, HARMONY_ENDS)
                text, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
                if text:
                    out.append((self.kind, text))
                return out
            at, tag = min(ends)
            if at:
                out.append((self.kind, self.held[:at]))
            self.mode, self.held = "between", self.held[at + len(tag) :]

    def flush(self) -> list[tuple[str, str]]:
        text, self.held = self.held, ""
        return [(self.kind, text)] if text and self.mode == "body" else []


class ThinkSplitter:
    """``push`` text pieces, get ``(kind, text)`` parts back, kind "reasoning" or "content"."""

    def __init__(self) -> None:
        self.mode = "start"  # start: not yet known whether the reply thinks; think; content; harmony
        self.held = ""
        self.strip = False  # the answer after </think> starts at its first non-space
        self.harmony: HarmonySplitter | None = None  # (a gpt-oss reply: its messages' parser)

    def push(self, piece: str) -> list[tuple[str, str]]:
        if self.harmony is not None:
            return self.harmony.push(piece)
        self.held += piece
        out: list[tuple[str, str]] = []
        if self.mode == "start":
            head = self.held.lstrip()
            if not head:  # (only spaces so far: they go out now, a stream does not wait on them)
                out += [("content", self.held)] if self.held else []
                self.held = ""
                return out
            if head.startswith(CHANNEL):
                self.mode, self.harmony, self.held = "harmony", HarmonySplitter(), ""
                return self.harmony.push(head)
            if head.startswith(OPEN):
                self.mode, self.held = "think", head[len(OPEN) :]
            elif OPEN.startswith(head) or CHANNEL.startswith(head):
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
        if self.harmony is not None:
            return self.harmony.flush()
        text, self.held = self.held, ""
        if not text:
            return []
        return [("reasoning" if self.mode == "think" else "content", text)]


#: where a harmony message's body ends (its end tags), or the next message starts
_BODY_ENDS = (*HARMONY_ENDS, START)
#: where a harmony header starts: ``<|start|>ROLE``, or (the role given) ``<|channel|>`` or `` to=``
_HEAD = re.compile(r"\s*(?:<\|start\|>|(?=<\|channel\|>|to=))")


def harmony_messages(text: str) -> list[tuple[str | None, str | None, str]]:
    """A whole harmony reply's messages as (channel, recipient, body); text outside any message is a
    (None, None, text) one, a header cut before its <|message|> is left out.  (:class:`HarmonySplitter`
    reads a stream the same way, without recipients: tests hold the two to each other.)"""
    out: list[tuple[str | None, str | None, str]] = []
    at = 0
    while text[at:].strip():
        meta: tuple[str | None, str | None] = (None, None)  # (a reply that is not harmony, or text after a message's end)
        head = _HEAD.match(text, at)
        if head is not None:
            opened = text.find(MESSAGE, head.end())
            if opened < 0:
                break  # (cut inside its header)
            header, at = text[head.end() : opened], opened + len(MESSAGE)
            channel = re.search(re.escape(CHANNEL) + r"\s*(\w+)", header)
            recipient = re.search(r"to=([^\s<]+)", header)
            meta = (channel.group(1) if channel else None, recipient.group(1) if recipient else None)
        ends = [(i, t) for t in _BODY_ENDS if (i := text.find(t, at)) >= 0]
        end, tag = min(ends) if ends else (len(text), "")
        out.append((*meta, text[at:end]))
        at = end + (len(tag) if tag != START else 0)  # (the next header starts with its <|start|>)
    return out


def split(text: str) -> tuple[str | None, str]:
    """(the reasoning, None if the reply does not think; the content) of a whole reply."""
    if is_harmony(text):  # its analysis messages the reasoning, the others the content
        msgs = harmony_messages(text)
        thought = "".join(body for channel, _, body in msgs if channel == "analysis")
        return thought or None, "".join(body for channel, _, body in msgs if channel != "analysis")
    s = ThinkSplitter()
    parts = s.push(text) + s.flush()
    content = "".join(t for k, t in parts if k == "content")
    thought = "".join(t for k, t in parts if k == "reasoning")
    if not text.lstrip().startswith(OPEN):
        return None, content
    return thought, content


def is_harmony(text: str) -> bool:
    """Whether a reply is in gpt-oss's harmony format (its messages' tags in the text)."""
    return text.lstrip().startswith(CHANNEL)
