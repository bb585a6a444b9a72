"""Without --threads, decode uses whichever thread count the machine runs faster now."""

from __future__ import annotations

import numba
import pytest

from kvrun.runtime.threads import ThreadTuner

N = numba.config.NUMBA_NUM_THREADS
pytestmark = pytest.mark.skipif(N < 2, reason="needs two or more cores")


def _run(tuner: ThreadTuner, seconds: dict[int, float], steps: int) -> list[int]:
    """Drive ``steps`` decode steps where a step on n threads takes ``seconds[n]``; the counts used."""
    used = []
    for _ in range(steps):
        n = tuner.begin()
        assert numba.get_num_threads() == n
        used.append(n)
        tuner.end(seconds[n])
    return used


@pytest.fixture(autouse=True)
def _restore_threads():
    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


def test_a_quiet_machine_keeps_every_core():
    t = ThreadTuner(N, probe_every=16, probe_len=4)
    used = _run(t, {N: 0.005, 1: 0.008}, 64)
    assert t.best == N
    assert used.count(1) == 4 * 4  # one 4-step probe every 16 steps, nothing more


def test_a_busy_core_moves_decode_to_one_thread():
    t = ThreadTuner(N, probe_every=16, probe_len=4)
    used = _run(t, {N: 0.020, 1: 0.008}, 64)
    assert t.best == 1
    assert used[8:].count(1) >= len(used[8:]) - 4 * 4  # after the first probe, one thread but for probes


def test_it_follows_the_load_when_it_goes_away():
    t = ThreadTuner(N, probe_every=16, probe_len=4)
    _run(t, {N: 0.020, 1: 0.008}, 32)
    assert t.best == 1
    _run(t, {N: 0.005, 1: 0.008}, 32)
    assert t.best == N
    assert numba.get_num_threads() == N  # between steps: the chosen count, for a prefill that follows


def test_the_first_step_is_not_a_speed_sample():
    t = ThreadTuner(N, probe_every=16, probe_len=4)
    t.begin()
    t.end(30.0)  # kernels compiled or loaded
    assert t.time == {}
