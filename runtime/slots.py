"""A server's parallel slots: one KV cache (a chat session) per request generated at once.

``kvrun serve --parallel N`` keeps N slots, as llama-server's ``--parallel``
and Ollama's ``OLLAMA_NUM_PARALLEL``: up to N requests are generated at the same
time (their tokens fed through the model together: ``batcher.py``), the others
wait for a slot.  Each slot keeps its cache between requests, so a client that
resends a growing conversation prefills only the new turn; a request takes the
idle slot whose cache holds most of its prompt, where that is most of what the
slot holds, else an empty slot, else the one idle longest (a new conversation
that shares only a system prompt with a slot does not wipe another
conversation's long cache).  Every slot has the whole ``--ctx-size``.

A new conversation that starts as another idle slot's did (the app's system
prompt, a few-shot preamble) takes a copy of that slot's K/V for the shared
prefix rather than evaluating it again: a memory copy instead of a prefill.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .api import Model, Session
from .engine import shared_prefix

MAX_PARALLEL = 64  # slots a server may keep
SHARE_MIN = 32  # prompt tokens another slot must hold beyond what the chosen one does before they are copied over


@dataclass(eq=False)
class Slot:
    """One slot: its session (cache and the tokens it holds), whether a request holds it, and since when idle."""

    id: int
    session: Session
    busy: bool = False
    idle_since: float = field(default_factory=time.monotonic)
    n_requests: int = 0


class Slots:
    """The slots of a server and the requests waiting for one (see the module docstring)."""

    def __init__(self, model: Model, n: int) -> None:
        if not 1 <= n <= MAX_PARALLEL:
            raise ValueError(f"--parallel must be in 1..{MAX_PARALLEL} (requests generated at once), got {n}")
        self.slots = [Slot(i, Session(model)) for i in range(n)]
        self.cv = threading.Condition()
        self.waiting = 0  # requests waiting for a slot
        self.n_shared = 0  # prompt tokens copied from one slot to another (not evaluated again)

    def __len__(self) -> int:
        return len(self.slots)

    @contextlib.contextmanager
    def take(self, prompt: list[int] | None, id_slot: int = -1) -> Iterator[Slot]:
        """An idle slot for a request whose prompt is ``prompt`` (None: unknown), or slot ``id_slot`` (>= 0: the
        client's choice, as llama-server's ``id_slot``), waited for; held while the ``with`` body runs."""
        if id_slot >= len(self.slots):
            raise ValueError(f"id_slot {id_slot} does not exist: this server keeps slots 0..{len(self.slots) - 1} (--parallel)")
        with self.cv:
            self.waiting += 1
            try:
                while not (idle := [s for s in self.slots if not s.busy and id_slot in (-1, s.id)]):
                    self.cv.wait()
            finally:
                self.waiting -= 1
            slot = pick(idle, prompt)
            slot.busy = True
            slot.n_requests += 1
            if prompt is not None:
                self._share_prefix(slot, [s for s in self.slots if not s.busy], prompt)
        try:
            yield slot
        finally:
            with self.cv:
                slot.busy = False
                slot.idle_since = time.monotonic()
                self.cv.notify_all()  # (a request waiting for this very slot may not be the one notify would wake)

    def _share_prefix(self, slot: Slot, others: list[Slot], prompt: list[int]) -> None:
        """(Holding ``cv``.)  Where another idle slot holds more of ``prompt`` than ``slot`` does, by
        ``SHARE_MIN`` tokens at least (a system prompt several conversations start with), ``slot`` takes a copy
        of that prefix's K/V instead of evaluating it again (a compressed cache's as that slot holds them: where it
        no longer holds every prefix position, or merges, the prompt is evaluated)."""
        shares = {s.id: shared_prefix(s.session.tokens, prompt) for s in (slot, *others)}  # (each slot's once)
        best = max(others, key=lambda s: shares[s.id], default=None)
        if best is None:
            return
        mine = shares[slot.id]
        n = min(shares[best.id], len(prompt) - 1, best.session.cache.offset)
        if n - mine < SHARE_MIN:
            return
        s = slot.session
        if s.engine.copy_prefix(s.cache, best.session.cache, n):  # (a draft head's rows go with the K/V)
            s.tokens = best.session.tokens[:n]
            self.n_shared += n
        else:  # (the cache is empty now: the prompt is evaluated whole)
            s.tokens = []

    def describe(self) -> list[dict[str, Any]]:
        """Each slot's state (``GET /slots``, as llama-server's)."""
        with self.cv:
            return [{"id": s.id, "is_processing": s.busy, "n_ctx": s.session.engine.n_ctx, "n_tokens": len(s.session.tokens),
                     "n_requests": s.n_requests} for s in self.slots]  # fmt: skip

    def counts(self) -> tuple[int, int]:
        """(idle slots, busy slots)."""
        with self.cv:
            busy = sum(s.busy for s in self.slots)
            return len(self.slots) - busy, busy


def pick(idle: list[Slot], prompt: list[int] | None) -> Slot:
    """Of the idle slots, the one to serve ``prompt``: the longest shared prefix where it is at least half of what
    that slot holds (a continuation), else an empty slot, else the one idle longest."""
    if prompt is not None:
        shared = [(shared_prefix(s.session.tokens, prompt), s) for s in idle]
        n, best = max(shared, key=lambda p: p[0])
        if n > 0 and 2 * n >= len(best.session.tokens):
            return best
    empty = [s for s in idle if not s.session.tokens]
    return empty[0] if empty else min(idle, key=lambda s: s.idle_since)
