"""Token sampling: greedy, temperature, top-k, top-p, min-p, penalties, seed.

The order follows llama.cpp's default chain: penalties -> top-k -> top-p ->
min-p -> temperature -> draw.  A fixed ``seed`` gives the same text for the same
prompt and settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..ops.cpu.topk import top_k


@dataclass
class SamplerConfig:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0  # >1 discourages tokens seen in the last repeat_last_n
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_last_n: int = 64
    seed: int | None = None

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"min-p must be in [0, 1), got {self.min_p}")
        if self.top_k < 0:
            raise ValueError(f"top-k must be >= 0 (0 = off), got {self.top_k}")
        if self.repeat_penalty <= 0:
            raise ValueError(f"repeat penalty must be > 0, got {self.repeat_penalty}")
        if self.seed is not None and self.seed < -1:
            raise ValueError(f"seed must be >= 0, or -1 for a random one, got {self.seed}")


class Sampler:
    """Draws the next token from a logits vector ``[n_vocab]`` float32."""

    def __init__(self, cfg: SamplerConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.rng = np.random.default_rng(None if cfg.seed == -1 else cfg.seed)  # -1: random, as llama.cpp

    def __call__(self, logits: np.ndarray, history: list[int] | np.ndarray = ()) -> int:
        cfg = self.cfg
        logits = np.asarray(logits, np.float32).reshape(-1)
        if self._penalises(history):
            logits = logits.copy()
            recent = np.asarray(history[-cfg.repeat_last_n :] if cfg.repeat_last_n > 0 else history, np.int64)
            ids, counts = np.unique(recent, return_counts=True)
            sel = logits[ids]
            sel = np.where(sel > 0, sel / cfg.repeat_penalty, sel * cfg.repeat_penalty)
            sel -= counts * cfg.frequency_penalty + (counts > 0) * cfg.presence_penalty
            logits[ids] = sel
        if cfg.temperature <= 0:
            return int(np.argmax(logits))
        idx = top_k(logits, cfg.top_k) if 0 < cfg.top_k < logits.size else np.arange(logits.size)
        return self._draw(idx, logits[idx])

    def sample(self, logits: Any, history: list[int] | np.ndarray, xp: Any, to_host: Callable[[Any], np.ndarray]) -> int:
        """The same draw from logits ``[n_vocab]`` of array module ``xp`` (a device's), bringing down only what it needs.

        On a device, greedy brings down one id, top-k sampling the k candidates
        (ids and logits, one copy); penalties or a sampler without top-k need
        every logit on the host, and get them.  Host logits (``xp`` numpy) are
        drawn from as :meth:`__call__` draws.
        """
        cfg = self.cfg
        n = logits.size
        if xp is np or self._penalises(history) or (cfg.temperature > 0 and not 0 < cfg.top_k < n):
            return self(to_host(logits), history)  # (on the host: top-k by one pass, ops/cpu/topk.py)
        if cfg.temperature <= 0:
            return int(to_host(xp.argmax(logits)))
        k = cfg.top_k
        idx = xp.argpartition(-logits, k - 1)[:k]
        both = to_host(xp.concatenate([logits[idx].astype(xp.float64), idx.astype(xp.float64)]))  # ids < 2**53: exact
        return self._draw(both[k:].astype(np.int64), both[:k].astype(np.float32))

    def _penalises(self, history: list[int] | np.ndarray) -> bool:
        cfg = self.cfg
        return bool((cfg.repeat_penalty != 1.0 or cfg.presence_penalty or cfg.frequency_penalty) and len(history))

    def _draw(self, idx: np.ndarray, cand: np.ndarray) -> int:
        """top-p, min-p, temperature and the draw, over the top-k candidates ``idx`` with logits ``cand``."""
        cfg = self.cfg
        order = np.argsort(-cand, kind="stable")  # best first
        idx = idx[order]
        z = cand[order].astype(np.float64)
        p = np.exp(z - z[0])
        p /= p.sum()
        if cfg.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), cfg.top_p) + 1)
            idx, z, p = idx[:keep], z[:keep], p[:keep]
        if cfg.min_p > 0.0:
            keep = p >= cfg.min_p * p[0]
            idx, z = idx[keep], z[keep]
        z = z / cfg.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        return int(idx[self.rng.choice(len(idx), p=p)])


def greedy() -> SamplerConfig:
    return SamplerConfig(temperature=0.0)
