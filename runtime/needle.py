"""Passkey retrieval ("needle in a haystack"): can the model still find a fact at depth d%?

Filler text of about ``ctx`` tokens hides ``The pass key is NNNNN. Remember it.``
at a given depth; the model is then asked for the key and decodes greedily.
Under a compressed cache this shows whether eviction/quantization lost it.
(Landmark-attention passkey test, https://arxiv.org/abs/2305.16300.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .engine import Engine, GenRequest
from .sampling import greedy

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "\nWhat is the pass key? The pass key is"


@dataclass
class NeedleResult:
    depth: int  # percent
    trials: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.trials if self.trials else 0.0


def build_prompt(engine: Engine, ctx: int, depth_pct: int, key: str) -> list[int]:
    tk = engine.tokenizer
    needle = tk.encode(f" The pass key is {key}. Remember it. {key} is the pass key. ", add_bos=False)
    question = tk.encode(QUESTION, add_bos=False)
    unit = tk.encode(FILLER, add_bos=False)
    bos = tk.encode("", add_bos=None)
    room = ctx - len(needle) - len(question) - len(bos) - 16
    if room < len(unit):
        raise ValueError(f"--ctx {ctx} is too small for the passkey test; use at least {ctx - room + len(unit)}")
    filler = (unit * (room // len(unit) + 1))[:room]
    at = room * depth_pct // 100
    return bos + filler[:at] + needle + filler[at:] + question


def needle_test(
    engine: Engine,
    ctx: int,
    depths: list[int],
    trials: int = 3,
    make_cache: Callable[[], object] | None = None,
    seed: int = 0,
    progress: Callable[[], None] | None = None,
) -> list[NeedleResult]:
    rng = np.random.default_rng(seed)
    out = []
    for d in depths:
        res = NeedleResult(d, 0, 0)
        for _ in range(trials):
            key = str(rng.integers(10000, 99999))
            prompt = build_prompt(engine, ctx, d, key)
            cache = make_cache() if make_cache else engine.new_cache()
            ids = list(engine.generate_tokens(cache, prompt, GenRequest(max_tokens=8, sampler=greedy())))
            answer = engine.tokenizer.decode(ids)
            res.trials += 1
            res.correct += key in answer
            if progress:
                progress()
        out.append(res)
    return out
