"""What the tests of models on ``--device gpu`` share (tests/test_gpu_*.py): the relative error they bound, a model's
logits against the CPU's over a prefill and decode steps replayed from captured CUDA graphs, a recurrent state going
back where the CPU's does, a replayed decode step on the strict CuPy stand-in copying down its logits alone, and
``kvrun run`` writing the CPU's text on the GPU.

Without a GPU the models run on the kernel emulator (``KVRUN_GPU_EMULATE=1``: conftest.py's ``gpu_env`` and
``emulated`` fixtures); one code path for every architecture, so a check tightened here is tightened for all."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kvrun.cli import main
from kvrun.ops import gpu_available
from kvrun.runtime.engine import Engine

#: the logit a model suppresses (Chameleon's image tokens: -FLT_MAX on both backends)
SUPPRESSED = np.finfo(np.float32).min


def rel_err(want, got) -> float:
    """``max |want - got| / max |want|`` in float64: the error relative to the reference's (the CPU's, the float64
    product's) largest value.  Values a model suppresses (-FLT_MAX) must be suppressed in both and are left out."""
    want, got = np.asarray(want), np.asarray(got)
    live = want != SUPPRESSED
    assert (live == (got != SUPPRESSED)).all(), "a value suppressed on one side only"
    want, got = want[live].astype(np.float64), got[live].astype(np.float64)
    return float(np.abs(want - got).max() / max(np.abs(want).max(), 1e-30))


def check_encoder_rows(cpu, gpu, x: np.ndarray, shape: tuple[int, ...] | None = None, bound: float = 2e-3) -> None:
    """A projector's encoder on the device (``gpu``, its backend the GPU's) encodes ``x`` to the CPU encoder's rows
    (``shape`` where given), brought down as a host array, within ``bound`` of their largest."""
    assert type(gpu.be).__name__ == "GPUBackend"
    want, got = cpu.encode(x), gpu.encode(x)
    assert isinstance(got, np.ndarray) and got.shape == want.shape
    if shape is not None:
        assert got.shape == shape
    assert rel_err(want, got) < bound


def check_rows_come_down_once(encoders: Callable[[], tuple], x: np.ndarray, bound: float = 2e-3) -> None:
    """On the strict CuPy stand-in (:func:`strict_stand_in`), with the CPU's and the GPU's encoders ``encoders()``
    builds there: the GPU one's forward of ``x`` makes one copy down, its rows, which are the CPU's within ``bound``."""
    with strict_stand_in() as copies:
        cpu, gpu = encoders()
        copies.clear()
        rows = gpu.encode(x)
        assert copies == [("asnumpy", rows.shape)]
    assert rel_err(cpu.encode(x), rows) < bound


def check_prefill_and_replayed_decode(cpu_path: Path, gpu_path: Path | None = None, capsys=None, *, steps: Sequence[int] = (5, 9, 14),
                                      bound: float = 2e-3, kv=None, graphs: bool = True) -> tuple[Engine, object]:  # fmt: skip
    """A prefill of 20 tokens (every row's logits), then ``steps`` decoded one token each: the GPU's logits on
    ``gpu_path`` (default ``cpu_path``) within ``bound`` of the CPU's on ``cpu_path``.  With ``graphs`` the first step
    was captured and the others replayed (every op a step launches is a kernel a graph holds; three steps by default,
    a capture and two replays: a fourth only repeated them, CI time); with ``capsys`` nothing
    said the graphs were turned off.  The GPU's engine and cache, for the caller's own checks."""
    ids = list(np.random.default_rng(3).integers(0, 200, 20))
    cpu = Engine(cpu_path, device="cpu", n_ctx=64, n_batch=16, kv=kv)
    gpu = Engine(gpu_path or cpu_path, device="gpu", n_ctx=64, n_batch=16, kv=kv)
    assert gpu.backend.name == "gpu"
    ca, cb = cpu.new_cache(), gpu.new_cache()
    a, b = cpu.eval(ca, ids, logits_all=True), gpu.eval(cb, ids, logits_all=True)
    assert isinstance(b, np.ndarray) and b.shape == a.shape
    assert rel_err(a, b) < bound
    for tok in steps:
        assert rel_err(cpu.eval(ca, [tok]), gpu.eval(cb, [tok])) < bound, f"decode step {tok}"
    if graphs:
        assert (gpu.graphs.n_captures, gpu.graphs.n_replays) == (1, len(steps) - 1)
    if capsys is not None:
        assert "CUDA graphs off" not in capsys.readouterr().err
    return gpu, cb


def check_going_back(cpu: Engine, ca, gpu: Engine, cb, back: int, rng: np.random.Generator, n_steps: int, bound: float = 2e-3) -> None:
    """Both caches ``back`` positions back (each GPU layer able to go back where the CPU's is, both caches then at the
    same position), then 3 tokens from ``rng`` fed (every row's logits) and ``n_steps`` decoded: the GPU's logits
    within ``bound`` of the CPU's."""
    n_past = ca.offset - back
    assert [layer.can_truncate(n_past) for layer in cb.layers] == [layer.can_truncate(n_past) for layer in ca.layers]
    assert ca.truncate(n_past) == cb.truncate(n_past) == n_past
    more = list(rng.integers(0, 200, 3))
    assert rel_err(cpu.eval(ca, more, logits_all=True), gpu.eval(cb, more, logits_all=True)) < bound
    for tok in rng.integers(0, 200, n_steps):
        assert rel_err(cpu.eval(ca, [int(tok)]), gpu.eval(cb, [int(tok)])) < bound, f"decode step {tok} after going back {back}"


def check_decode_copies_only_logits(monkeypatch, path: Path, prompt: Iterable[int] = range(3, 27), steps: Iterable[int] = (5, 9),
                                    state_copy_at: int | None = None) -> None:  # fmt: skip
    """On the strict CuPy stand-in (devicexp.py, which refuses any copy while a graph is captured, as CUDA does, and logs
    every copy down): after ``prompt`` the next step is captured, and each of ``steps`` then brings down its logits
    alone.  With ``state_copy_at`` the first layer's cache holds a copy of its state at that position (one a replay
    made).  Skipped on a GPU, where the other tests run the device itself."""
    with strict_stand_in(monkeypatch):
        eng = Engine(path, device="gpu", n_ctx=64, n_batch=16)
        cache = eng.new_cache()
        eng.eval(cache, list(prompt))
        eng.eval(cache, [4])  # (captured here)
        assert eng.graphs.n_captures == 1
        check_steps_copy_only_logits(eng, cache, steps)
        if state_copy_at is not None:
            assert state_copy_at in cache[0].ck_pos.tolist()


@contextmanager
def strict_stand_in(monkeypatch=None) -> Iterator[list]:
    """The block on the strict CuPy stand-in (devicexp.py: it refuses any copy while a graph is captured, as CUDA does,
    and logs every copy down in the list yielded), on the kernel emulator where ``monkeypatch`` is given (else the
    caller's fixture sets it).  Skips the test on a GPU, where the other tests run the device itself."""
    if gpu_available():
        pytest.skip("checks the strict CuPy stand-in (devicexp.py); on a GPU the other tests run the device itself")
    from devicexp import COPIES, StrictRuntime

    from kvrun.ops.gpu import kernels as K

    if monkeypatch is not None:
        monkeypatch.setenv("KVRUN_GPU_EMULATE", "1")
    prev = K.set_runtime(StrictRuntime())
    try:
        yield COPIES
    finally:
        K.set_runtime(prev)


def check_steps_copy_only_logits(eng: Engine, cache, steps: Iterable[int]) -> None:
    """On the strict stand-in (:func:`strict_stand_in`), each of ``steps`` decoded on ``cache`` brings down its logits
    and nothing else."""
    from devicexp import COPIES

    for tok in steps:
        COPIES.clear()
        logits = eng.eval(cache, [tok])
        assert COPIES == [("asnumpy", logits.shape)], f"decode step {tok}"


def check_cli_text_matches_cpu(path: Path) -> None:
    """``kvrun run`` greedy, 6 tokens after "the", on both devices: the same text on stdout, and the same lines on both
    streams but for the ``kvrun: `` notices (a first run's kernel builds)."""
    args = ["run", str(path), "-p", "the", "-n", "6", "--temp", "0", "--no-stats", "-c", "64"]
    cpu = CliRunner().invoke(main, args + ["--device", "cpu"])
    gpu = CliRunner().invoke(main, args + ["--device", "gpu"])
    assert cpu.exit_code == 0 and gpu.exit_code == 0, gpu.output
    assert gpu.stdout == cpu.stdout
    text = (lambda out: [line for line in out.splitlines() if not line.startswith("kvrun: ")])  # fmt: skip
    assert text(gpu.output) == text(cpu.output)
