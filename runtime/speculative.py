"""Speculative decoding with a draft model (llama.cpp's ``-md`` / ``--model-draft``).

A small model of the same vocabulary (SmolLM2-135M for SmolLM2-1.7B, Qwen2.5-0.5B for Qwen2.5-7B)
drafts a few tokens greedily; the target checks them all in one forward (``Engine.generate_tokens``:
the same check as prompt lookup's) and keeps them as far as its own greedy choice agrees.  Decode is
memory-bound, so one target forward over k+1 tokens costs little more than over one: every token
the target agrees with saves a forward.  The text is greedy decoding's (up to near-ties a batched
forward may round the other way).

The draft keeps its own KV cache of the text so far and only the new tokens are fed to it each
round; a draft stops early where the draft model is unsure (its top probability below ``p_min``,
as llama.cpp's ``--draft-p-min``), since such tokens are rarely kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..loaders.errors import KvrunError

if TYPE_CHECKING:
    from .engine import Engine

P_MIN = 0.75  #: the draft stops at a token the draft model gives less than this probability
VOCAB_SLACK = 128  #: vocabularies may differ in size by this many (padding, extra control tokens), as llama.cpp allows


def check_vocab(target: Engine, draft: Engine) -> None:
    """A one-line KvrunError unless the draft's tokens mean what the target's do."""
    a, b = target.tokenizer, draft.tokenizer
    if a.kind != b.kind or abs(a.n_vocab - b.n_vocab) > VOCAB_SLACK:
        raise KvrunError(f"the draft model's vocabulary ({b.kind}, {b.n_vocab} tokens) is not the target's ({a.kind}, {a.n_vocab}); "
                         "use a smaller model of the same family")  # fmt: skip
    n = min(a.n_vocab, b.n_vocab)
    for i in range(n):
        if a.tokens[i] != b.tokens[i]:
            raise KvrunError(f"the draft model's token {i} is {b.tokens[i]!r}, the target's {a.tokens[i]!r}: "
                             "their vocabularies differ; use a smaller model of the same family")  # fmt: skip


class DraftModel:
    """The draft side: its engine, its cache and the tokens that cache holds."""

    def __init__(self, engine: Engine, n_vocab: int, p_min: float = P_MIN) -> None:
        self.engine = engine
        self.n_vocab = n_vocab  # the target's: a draft token past it is never proposed
        self.p_min = p_min
        self.cache = engine.new_cache()
        self.held: list[int] = []  # the tokens in ``cache``, in order

    def draft(self, tokens: list[int], k: int, target_cache: object = None) -> list[int]:
        """Up to ``k`` tokens the draft model would write greedily after ``tokens`` (the whole text); ``target_cache``, the
        target's, unread (a Gemma 4 assistant's reads it: models/gemma4_assistant.py)."""
        from .engine import shared_prefix

        eng, cache = self.engine, self.cache
        if k <= 0 or len(tokens) + k > eng.n_ctx:
            return []
        keep = min(shared_prefix(self.held, tokens), len(tokens) - 1)  # (at least the last token is fed: its logits)
        if keep < cache.offset:
            keep = cache.truncate(keep)  # (a convolution's state may not go back that far: 0)
        del self.held[keep:]
        logits = eng.eval(cache, tokens[keep:])[-1]
        self.held.extend(tokens[keep:])
        out: list[int] = []
        while True:
            t = int(np.argmax(logits))
            z = logits - logits[t]
            if 1.0 / float(np.exp(z.astype(np.float64)).sum()) < self.p_min or t >= self.n_vocab:
                break  # (the draft model is unsure: such tokens are seldom kept)
            out.append(t)
            if len(out) == k:
                break
            logits = eng.eval(cache, [t])[-1]
            self.held.append(t)
        return out
