"""JSON mode: generation constrained to one JSON object, as Ollama's ``format: "json"`` and OpenAI's
``response_format: {"type": "json_object"}``.  Before each draw, every token that would make the
text stop being a prefix of a JSON object gets a logit of -inf (``ops/cpu/jsonfsm.py`` decides, per
token, from the text so far); end-of-generation tokens are allowed only once the object is closed,
and are then the only ones allowed.  A reply cut by max_tokens may still end mid-object."""

from __future__ import annotations

import numpy as np

from ..loaders.tokenizer import Tokenizer
from ..ops.cpu import jsonfsm


def _vocab_bytes(tok: Tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every token's bytes, their offsets, and whether each is plain string content (no quote,
    backslash or control byte)."""
    data, off = tok.vocab_bytes()
    bad = ((data < 32) | (data == 34) | (data == 92)).astype(np.int64)
    n_bad = np.diff(np.concatenate([[0], np.cumsum(bad)])[off])
    return data, off, (n_bad == 0).astype(np.uint8)


class JsonConstraint:
    """The constraint of one generation: :meth:`mask` the logits before a draw, :meth:`accept` the token drawn."""

    def __init__(self, tokenizer: Tokenizer, n_vocab: int) -> None:
        self.bytes, self.off, self.plain = _vocab_bytes(tokenizer)
        if len(self.off) - 1 < n_vocab:  # an output wider than the vocabulary: those ids have no bytes
            self.off = np.concatenate([self.off, np.full(n_vocab - len(self.off) + 1, self.off[-1])])
            self.plain = np.concatenate([self.plain, np.zeros(n_vocab - len(self.plain), np.uint8)])
        self.eot = np.array(sorted(tokenizer.eot_ids), np.int64)
        self.state = jsonfsm.new_state()
        self.allowed = np.zeros(n_vocab, np.uint8)

    @property
    def done(self) -> bool:
        return int(self.state[0]) == jsonfsm.DONE

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` [n_vocab] with -inf wherever the next token may not go."""
        jsonfsm.token_mask(self.state, self.bytes, self.off, self.plain, self.allowed)
        eot = self.eot[self.eot < self.allowed.size]
        self.allowed[eot] = 1 if self.done else 0
        if not self.allowed.any():  # (cannot happen for a JSON prefix; ending beats a stuck draw)
            self.allowed[eot] = 1
        return np.where(self.allowed.astype(bool), np.asarray(logits, np.float32), np.float32(-np.inf))

    def accept(self, tok: int) -> None:
        if tok not in self.eot:
            jsonfsm.advance(self.state, self.bytes, self.off, tok)
