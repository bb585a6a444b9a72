"""Continuous batching: the forwards of several sequences generated at once, fed through the model together.

Every engine has a :class:`Batcher`, and every ``Engine.eval`` goes through it,
so an engine may be used from several threads at once: a server's parallel
slots (``kvrun serve --parallel N``), an app's chat sessions.  Each thread
evaluates its tokens as one sequence alone would; the calls meet here: a step
takes the tokens every waiting sequence has queued (decode steps first, then
prompt chunks, ``n_batch`` tokens in all), runs them as one forward
(``Engine.forward_batch``: the weights are read once for all of them) and hands
each thread its logits.  A long prompt is fed a chunk a forward, so the other
sequences keep decoding beside it (llama-server's slots and chunked prefill).
A step of one sequence runs the engine's own one-sequence path, as before there
was batching.

On the CPU every step runs on one thread of the process, the model thread
(:class:`_ModelThread`: OpenMP keeps a worker pool per thread that starts
parallel regions, and two pools on two cores made decode 2.5x slower); the
callers wait.  On the GPU the thread that finds the model free leads instead,
until its own tokens are through (CuPy's current stream is the caller's), and
its steps batch as the model thread's do: a batch of one-token steps replays a
CUDA graph captured for that batch of caches (runtime/batch_graphs.py), other
batches (a prompt chunk among them, the compressed cache's) run eagerly, and
a step of one sequence replays its own graph as before.

The threads sample between their steps, so a leader waits a moment
(``GATHER_S``) for the sequences that are generating but have not queued their
next token yet: a forward without them would leave them to the next one, and
the batches would never form.  A client that reads slowly costs the others at
most that moment a step.

Models whose layers are not all attention (LFM2's convolutions, Mamba-2's
state, Gemma 3n's shared K/V) feed one sequence a forward,
in turn, a chunk at a time: the requests still interleave, none waits for
another's whole reply.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache.base import KVCache

GATHER_S = 0.004  # how long a leader waits for generating sequences' next tokens (sampling one takes ~0.1-1 ms)
DECODE_MAX = 16  # tokens a job may have and still count as a decode step (one token, or a draft to check)


@dataclass(eq=False)
class _Job:
    """One ``Engine.eval`` call: ``tokens`` fed after what ``cache`` holds, logits from token ``first`` on into ``out``."""

    cache: KVCache
    tokens: np.ndarray
    first: int
    out: Any
    fed: int = 0
    done: bool = False
    error: BaseException | None = None
    in_flight: bool = False  # in the forward running now
    cancelled: bool = False  # its thread left (Ctrl-C): fed no further


    @property
    def left(self) -> int:
        return len(self.tokens) - self.fed


class _ModelThread:
    """The one thread of the process that runs kvrun's CPU kernels: every engine's forwards and calls.

    Numba's OpenMP layer (libgomp) keeps a pool of workers per thread that starts parallel regions; with
    a second pool alive on a 2-core machine it counts more threads than cores and its workers stop
    spinning between regions, sleeping and waking ~200 times a token: a decode step started from a
    server's handler thread after the main thread had run one was 2.5x slower (SmolLM2: 57-61 tok/s
    against 150).  One thread for all of them keeps one pool."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.tasks: list[Callable[[], None]] = []
        self.thread: threading.Thread | None = None

    def submit(self, task: Callable[[], None]) -> None:
        with self.cv:
            self.tasks.append(task)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="kvrun-model", daemon=True)
                self.thread.start()
            self.cv.notify()

    def here(self) -> bool:
        """Whether the calling thread is the model thread."""
        return threading.current_thread() is self.thread

    def _run(self) -> None:
        while True:
            with self.cv:
                while not self.tasks:
                    self.cv.wait()
                task = self.tasks.pop(0)
            task()  # (each task catches what it raises: the thread lives on)


MODEL_THREAD = _ModelThread()


@dataclass(eq=False)
class _Call:
    """Work for the worker thread that is not a forward: ``fn()``, its result or error."""

    fn: Callable[[], Any]
    done: bool = False
    result: Any = None
    error: BaseException | None = None


class Batcher:
    """The meeting point of an engine's evaluations from several threads (see the module docstring)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.batched = engine.can_batch
        self.cv = threading.Condition()
        self.queue: list[_Job] = []
        self.running = False  # a thread is leading (or holds the model: exclusive); the GPU backend's way
        #: the CPU: every forward runs on the process's model thread (MODEL_THREAD), a step of this batcher a task
        self.use_worker = engine.backend.name == "cpu"
        self.scheduled = False  # a step of this batcher is on the model thread's list
        self.live: dict[int, float] = {}  # id(cache) of each generating sequence -> when its last tokens were fed
        #: counters: forwards run, and the rows (tokens) they fed
        self.n_forwards = 0
        self.n_rows = 0

    # ------------------------------------------------------------ threads' side
    @contextlib.contextmanager
    def sequence(self, cache: KVCache) -> Iterator[None]:
        """While a generation on ``cache`` runs: leaders wait a moment for its next token."""
        with self.cv:
            self.live[id(cache)] = time.perf_counter()
        try:
            yield
        finally:
            with self.cv:
                self.live.pop(id(cache), None)
                self.cv.notify_all()

    def eval(self, cache: KVCache, tokens: np.ndarray, first: int, out: Any) -> None:
        """Feed ``tokens`` after what ``cache`` holds, with whichever other sequences are waiting; the logits
        of tokens ``first..`` into ``out`` (as ``Engine._eval_chunks``).  Returns when they are through."""
        job = _Job(cache, tokens, first, out)
        with self.cv:
            if any(j.cache is cache for j in self.queue):
                raise RuntimeError("one cache is being fed from two threads at once")
            self.queue.append(job)
            self.cv.notify_all()
            if self.use_worker:
                self._schedule()
                self._wait(job)
            else:
                while self.running and not job.done:
                    self.cv.wait()
                if not job.done:
                    self.running = True
        if not job.done:
            self._lead(job)
        if job.error is not None:
            raise job.error

    def _wait(self, job: _Job) -> None:
        """(Holding ``cv``.)  Until the worker has fed ``job``.  Interrupted (Ctrl-C in a chat), the job is fed no
        further, and this returns only once no forward holds it: its cache is never fed after its thread left."""
        try:
            # (done, and out of the forward: _after has taken it off the queue in the same locked step, so this
            # thread's next eval of the cache never finds it there, however early a notification woke this one)
            while not job.done or job.in_flight:
                self.cv.wait()
        except BaseException:
            job.cancelled = True
            while job.in_flight:
                self.cv.wait()
            if job in self.queue:
                self.queue.remove(job)
            raise

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` with the model alone, between forwards, on the thread that runs them (embeddings: anything that
        is not a sequence's evaluation).  Returns what it returns, or raises what it raises."""
        if not self.use_worker:
            with self.exclusive():
                return fn()
        if MODEL_THREAD.here():  # (already there: a step's own work)
            return fn()
        c = _Call(fn)

        def task() -> None:
            try:
                c.result = fn()
            except BaseException as e:  # noqa: BLE001 - the caller raises it
                c.error = e
            with self.cv:
                c.done = True
                self.cv.notify_all()

        with self.cv:
            MODEL_THREAD.submit(task)
            while not c.done:
                self.cv.wait()
        if c.error is not None:
            raise c.error
        return c.result

    def _schedule(self) -> None:
        """(Holding ``cv``.)  A step of this batcher on the model thread's list, unless one is there already."""
        if not self.scheduled:
            self.scheduled = True
            MODEL_THREAD.submit(self._step)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The model alone, between forwards (embeddings, anything that is not a sequence's evaluation)."""
        with self.cv:
            while self.running:
                self.cv.wait()
            self.running = True
        try:
            yield
        finally:
            with self.cv:
                self.running = False
                self.cv.notify_all()

    # ------------------------------------------------------------ the worker (CPU)
    def _step(self) -> None:
        """On the model thread: one forward over what the sequences queued (after waiting a moment for the ones
        between two tokens), then another step on the list if work is left."""
        with self.cv:
            self._gather()
            plan = self._plan()
            for job, _ in plan:
                job.in_flight = True
        try:
            self._run(plan)
        except BaseException as e:  # noqa: BLE001 - its threads raise it; the model thread lives on
            for job, _ in plan:
                if not job.done:
                    job.error, job.done = e, True
        finally:
            self._after(plan)
            with self.cv:
                self.scheduled = False
                if any(not j.cancelled for j in self.queue):
                    self._schedule()

    def _after(self, plan: list[tuple[_Job, int]]) -> None:
        """After a forward: the fed sequences' clocks restart, finished and cancelled jobs leave the queue."""
        with self.cv:
            now = time.perf_counter()
            for job, _ in plan:
                job.in_flight = False
                if id(job.cache) in self.live:
                    self.live[id(job.cache)] = now
            self.queue = [j for j in self.queue if not (j.done or j.cancelled)]
            self.cv.notify_all()

    # ------------------------------------------------------------ the leader (GPU)
    def _lead(self, own: _Job) -> None:
        try:
            while not own.done:
                with self.cv:
                    self._gather()
                    plan = self._plan()
                self._run(plan)
                self._after(plan)
        finally:
            with self.cv:
                self.running = False
                self.cv.notify_all()

    def _gather(self) -> None:
        """Wait (holding ``cv``) until every generating sequence has queued its next tokens, or ``GATHER_S``
        after its last ones were fed: a sequence between two tokens joins this forward, not the next."""
        if not self.batched:
            return
        while True:
            queued = {id(j.cache) for j in self.queue}
            now = time.perf_counter()
            due = [t + GATHER_S for c, t in self.live.items() if c not in queued and t + GATHER_S > now]
            if not due:
                return
            self.cv.wait(min(due) - now)

    def _plan(self) -> list[tuple[_Job, int]]:
        """This forward's work (holding ``cv``): (job, tokens of it), decode steps first, then prompt chunks, in
        the order they came, ``n_batch`` tokens in all; one job when the model cannot batch sequences."""
        budget = self.engine.n_batch
        jobs = sorted((j for j in self.queue if not j.cancelled), key=lambda j: j.left > DECODE_MAX)  # (stable: arrival order)
        if not jobs:
            return []
        if not self.batched:
            return [(jobs[0], min(jobs[0].left, budget))]
        plan = []
        for job in jobs:
            n = min(job.left, budget)
            if n == 0:
                break
            plan.append((job, n))
            budget -= n
        return plan

    def _run(self, plan: list[tuple[_Job, int]]) -> None:
        """One forward over the plan's tokens; each job's wanted logits into its ``out``."""
        if not plan:
            return
        chunks, wants, outs = [], [], []
        for job, n in plan:
            s = job.fed
            lo = min(max(job.first - s, 0), n)  # the chunk's first token whose logits are wanted
            chunks.append(job.tokens[s : s + n])
            wants.append(lo)
            outs.append(job.out[s + lo - job.first : s + n - job.first] if lo < n else job.out[:0])
        if len(plan) > 1:
            try:
                self.engine.forward_batch([job.cache for job, _ in plan], chunks, wants, outs)
            except Exception:  # noqa: BLE001 - each cache is as it was: each sequence alone, so only the failing one fails
                for i, (job, n) in enumerate(plan):
                    self._run_one(job, n, chunks[i], wants[i], outs[i])
                return
            self._count(plan)
            return
        self._run_one(plan[0][0], plan[0][1], chunks[0], wants[0], outs[0])

    def _run_one(self, job: _Job, n: int, chunk: np.ndarray, want: int, out: Any) -> None:
        """One sequence's chunk alone: the engine's own path (its CUDA graphs and thread tuning included)."""
        try:
            self.engine._eval_chunks(job.cache, chunk, want, out)
        except BaseException as e:  # noqa: BLE001 - the job's thread raises it
            job.error, job.done = e, True
            if not isinstance(e, Exception) and not MODEL_THREAD.here():
                raise  # (a leader's own Ctrl-C; the model thread must live on)
            return
        self._count([(job, n)])

    def _count(self, plan: list[tuple[_Job, int]]) -> None:
        self.n_forwards += 1
        self.n_rows += sum(n for _, n in plan)
        for job, n in plan:
            job.fed += n
            job.done = job.fed == len(job.tokens)
