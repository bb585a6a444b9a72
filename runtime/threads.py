"""Decode thread count chosen from measured step times, when the user named none.

Decode runs a fork/join region per matrix (about 200 a token for SmolLM2).
On a quiet machine all cores win; when another process keeps a core busy, a
worker that loses its time slice stalls every region, and two threads decode
2-3x slower than one (SmolLM2 on 2 vCPUs beside one busy process: 55 t/s on two
threads, 130 on one; quiet: ~170 against ~140).  Which case holds changes
while a desktop app runs, so the tuner keeps measuring: it decodes with the
faster count and, every ``probe_every`` steps, spends ``probe_len`` steps on
the other to refresh its estimate.  Prefill's Numba kernels follow the choice;
numpy's BLAS pool does not: OpenBLAS rounds a product otherwise on another
thread count, so resizing it mid-chat made the same prompt give other logits
later in the same process (it keeps the size ``--threads`` gave, or its own).
"""

from __future__ import annotations

import numba


class ThreadTuner:
    """Picks between ``max_threads`` and 1 thread for single-token steps.

    Call :meth:`begin` before a decode step (it sets the thread count for the
    calling thread) and :meth:`end` with the step's seconds after it.
    """

    def __init__(self, max_threads: int, probe_every: int = 64, probe_len: int = 4, smooth: float = 0.25) -> None:
        self.choices = (max_threads, 1) if max_threads > 1 else (1,)
        self.best = self.choices[0]
        self.current = self.best
        self.time: dict[int, float] = {}  # threads -> smoothed seconds a step
        self.probe_every, self.probe_len, self.smooth = probe_every, probe_len, smooth
        self.step = 0
        self.next_probe = probe_len  # the first probe follows a few steps at the default
        self.probe_left = 0

    def _other(self) -> int:
        return self.choices[1] if self.best == self.choices[0] else self.choices[0]

    def begin(self) -> int:
        """Thread count for the next step (set for the calling thread); returns it."""
        if len(self.choices) > 1 and self.probe_left == 0 and self.step >= self.next_probe:
            self.probe_left = self.probe_len
            self.next_probe = self.step + self.probe_every
            self.time.pop(self._other(), None)  # measure it afresh: the load may have changed
        self.current = self._other() if self.probe_left > 0 else self.best
        numba.set_num_threads(self.current)  # always: another engine may have set another count
        return self.current

    def end(self, seconds: float) -> None:
        """Record the step just run; after a probe the faster count becomes the default."""
        if self.step > 0:  # the very first step also loads kernels: not a speed sample
            t = self.time.get(self.current)
            self.time[self.current] = seconds if t is None else t + self.smooth * (seconds - t)
        self.step += 1
        if self.probe_left > 0:
            self.probe_left -= 1
            if self.probe_left == 0 and len(self.time) == len(self.choices):
                best = min(self.time, key=self.time.__getitem__)
                self.best = best
        if self.current != self.best:  # a probe step, or the choice just changed
            numba.set_num_threads(self.best)  # whatever runs next (a prefill) gets the chosen count
