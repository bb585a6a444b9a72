"""Shared checks of the draft heads on the GPU (tests/test_eagle3.py, tests/test_gemma4_assistant.py): a head beside
its target on the device drafts what the CPU's drafts, files its target's rows as the CPU's, and the target's replayed
decode steps bring down only their logits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kvrun.runtime.engine import Engine, GenRequest, GenStats
from kvrun.runtime.sampling import SamplerConfig

SHORT = GenRequest(max_tokens=14, sampler=SamplerConfig(temperature=0), ignore_eos=True)  # (the emulator's: CI time)


def needs_a_device() -> None:
    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")


def _rounds(e: Engine, prompt: list[int], plain: list[int]) -> tuple[list[int], list[list[int]], int, int]:
    """``e`` generating after ``prompt``, its draft's rounds handed on twice as drafted (the tiny random head's: the
    target refuses them, then, the second time, decodes steps alone: captured, then replayed), then once as two tokens
    of the greedy text ``plain`` and one refused: the text, each round's drafted tokens, the drafted and kept counts."""
    draft, rounds = e.draft.draft, []

    def in_turn(tokens, k, cache):
        rounds.append(draft(tokens, k, cache))
        return rounds[-1] if len(rounds) % 3 else (prompt + plain)[len(tokens) : len(tokens) + 2] + [0]

    e.draft.draft = in_turn
    st = GenStats()
    text = list(e.generate_tokens(e.new_cache(), prompt, SHORT, st))
    return text, rounds, st.n_drafted, st.n_accepted


def check_drafts_are_the_cpus(target: Path, draft: Path, prompt: list[int]) -> None:
    """Round by round the drafted tokens and the kept counts on the GPU are the CPU's, the text greedy decoding's,
    the target's decode steps captured once and replayed."""
    needs_a_device()
    ref = Engine(target, n_ctx=64, threads=1)
    plain = list(ref.generate_tokens(ref.new_cache(), prompt, SHORT))
    runs, engines = {}, {}
    for device in ("cpu", "gpu"):
        e = engines[device] = Engine(target, n_ctx=64, threads=1, device=device, draft=draft, draft_max=3, draft_p_min=0.0)
        runs[device] = _rounds(e, prompt, plain)
    assert engines["gpu"].backend.name == "gpu" and engines["gpu"].draft.head.be.name == "gpu"
    assert runs["gpu"] == runs["cpu"]
    text, rounds, n_drafted, n_kept = runs["gpu"]
    assert text == plain and len(rounds) >= 4 and 0 < n_kept < n_drafted
    assert engines["gpu"].graphs.n_captures == 1 and engines["gpu"].graphs.n_replays >= 1


def check_batched_rows_are_the_cpus(target: Path, draft: Path, rows: Callable[[Engine, Any, int], np.ndarray]) -> None:
    """(a server's slots on the device) a batched prefill of two sequences, then three one-token steps of both, the
    first captured as a batch graph and the others replayed: each sequence's rows ``rows(engine, cache, n)`` (the
    head's, after ``n`` tokens) the CPU's within 1e-4."""
    needs_a_device()
    got = {}
    for device in ("cpu", "gpu"):
        e = Engine(target, n_ctx=64, threads=1, device=device, draft=draft)
        c1, c2 = e.new_cache(), e.new_cache()
        outs = [np.empty((3, e.cfg.n_vocab), np.float32), np.empty((1, e.cfg.n_vocab), np.float32)]
        e.forward_batch([c1, c2], [np.array([72, 101, 108, 108, 111], np.int32), np.array([33, 34, 35], np.int32)], [2, 2], outs)
        got[device] = [rows(e, c1, 5), rows(e, c2, 3)]
        for tok in (5, 6, 7):
            e.forward_batch([c1, c2], [np.array([tok], np.int32)] * 2, [0, 0], [np.empty((1, e.cfg.n_vocab), np.float32) for _ in range(2)])
        got[device] += [rows(e, c1, 8), rows(e, c2, 6)]
    assert (e.batch_graphs.n_captures, e.batch_graphs.n_replays) == (1, 2)
    for want, have in zip(got["cpu"], got["gpu"]):
        np.testing.assert_allclose(have, want, atol=1e-4)


def check_replays_bring_down_only_logits(monkeypatch, target: Path, draft: Path, prompt: list[int],
                                         draft_vocab: Callable[[Engine], int]) -> None:  # fmt: skip
    """On the strict CuPy stand-in (a copy while a graph is captured refused, every copy down logged), the head
    attached: a decode step is captured and each replay brings down its logits alone; the head then drafts the CPU's
    tokens from the rows the replays filed, each drafted token's draft logits (``draft_vocab(engine)`` wide) one copy
    down."""
    from gpu_checks import check_steps_copy_only_logits, strict_stand_in

    cpu = Engine(target, n_ctx=64, n_batch=16, threads=1, draft=draft, draft_p_min=0.0)
    ca = cpu.new_cache()
    for tokens in (prompt, [4], [5], [9]):
        cpu.eval(ca, tokens)
    text = prompt + [4, 5, 9, 7]
    want = cpu.draft.draft(text, 3, ca)
    with strict_stand_in(monkeypatch) as copies:
        e = Engine(target, n_ctx=64, n_batch=16, device="gpu", draft=draft, draft_p_min=0.0)
        cache = e.new_cache()
        e.eval(cache, prompt)
        e.eval(cache, [4])  # (captured here)
        assert e.graphs.n_captures == 1
        check_steps_copy_only_logits(e, cache, (5, 9))
        copies.clear()
        assert e.draft.draft(text, 3, cache) == want and len(want) == 3
        assert copies == [("asnumpy", (1, draft_vocab(e)))] * 3
