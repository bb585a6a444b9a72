"""Where a cold run's compile time goes (developer tool): a pytest plugin and its report.

Records every Numba compile of the run (the ``numba:compile`` event): the function, its signature, the test that
set it off, and its seconds exclusive of the compiles nested in it (a caller compiles its callees inside its own)::

    KVRUN_JIT_CACHE=$(mktemp -d) COMPILEPROF=/tmp/cp.jsonl PYTHONPATH=tools pytest -p compileprof tests/...
    python tools/compileprof.py /tmp/cp.jsonl [N]    # the N costliest functions, modules and test files

Subprocesses (the CLI tests' ``kvrun`` runs, tests/test_jit_cache.py's) are not seen.  Stop 51's cold run on one
worker: 474 s of compiling, ``qattention`` 123 s, ``cache/insert`` 75 s, ``_attend_decode_q`` 55 s over two signatures.

A first run of the CLI, in this process (how stop 52 found a first ``kvrun run`` spending 24 s in one attention
kernel and 13 s in decoders)::

    KVRUN_JIT_CACHE=$(mktemp -d) python tools/compileprof.py --cli /tmp/cp.jsonl run MODEL -p Hello -n 8
    python tools/compileprof.py --timeline /tmp/cp.jsonl    # each process's top-level compiles, in order

``--cli`` traces the compile helper that a cold first run starts (runtime/prewarm.py) as well, into the same file.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time

_test = ["<collection>"]
_open: list[list[float]] = []  # [start, seconds of nested compiles] of each compile under way


def pytest_configure(config) -> None:
    listen(os.environ.get("COMPILEPROF", "compileprof.jsonl"))


def listen(path: str, proc: str = "main", t0: float | None = None) -> None:
    """Append a line to ``path`` for each Numba compile from now on: besides the fields above, ``proc`` (this process's
    part: "main" or the compile "helper"), its start ``t`` in seconds since ``t0`` (a wall-clock ``time.time()``, so a
    helper's and its parent's lines share one clock; now by default), ``incl`` (its seconds with its callees') and
    ``depth`` (0: a compile that no other compile holds, the timeline's rows)."""
    from numba.core import event

    out = open(path, "a")
    now = time.time()
    shift = now - time.perf_counter() - (now if t0 is None else t0)  # perf_counter() + shift: seconds since t0

    class Listener(event.Listener):
        def on_start(self, ev) -> None:
            _open.append([time.perf_counter(), 0.0])

        def on_end(self, ev) -> None:
            start, nested = _open.pop()
            took = time.perf_counter() - start
            if _open:
                _open[-1][1] += took
            d = ev.data or {}
            f = getattr(d.get("dispatcher"), "py_func", None)
            name = f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', d.get('dispatcher'))}"
            row = {"test": _test[0], "fn": name, "sig": str(d.get("args")), "excl": took - nested, "proc": proc,
                   "t": start + shift, "incl": took, "depth": len(_open)}  # fmt: skip
            out.write(json.dumps(row) + "\n")
            out.flush()

    event.register("numba:compile", Listener())


def pytest_runtest_setup(item) -> None:
    _test[0] = item.nodeid


def report(path: str, n: int = 25) -> None:
    rows = [json.loads(line) for line in open(path)]
    print(f"{len(rows)} compiles, {sum(r['excl'] for r in rows):.0f} s (exclusive)")
    for title, key in (("function", lambda r: r["fn"]), ("module", lambda r: r["fn"].rsplit(".", 1)[0]),
                       ("test file", lambda r: r["test"].split("::")[0])):
        total: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
        for r in rows:
            total[key(r)][0] += r["excl"]
            total[key(r)][1] += 1
        print(f"-- by {title} (seconds, compiles)")
        for k, (s, c) in sorted(total.items(), key=lambda kv: -kv[1][0])[:n]:
            print(f"{s:8.1f} {c:4d}  {k}")


def timeline(path: str) -> None:
    """Each process's compiles that no other compile holds, in the order they started: where a first run's two
    processes (kvrun and its compile helper, runtime/prewarm.py) each spend their time, and where one waits for the
    other (a kernel the other is compiling is loaded once its compile ends: its row's seconds are mostly the wait)."""
    rows = sorted((r for r in map(json.loads, open(path)) if r.get("depth") == 0), key=lambda r: r["t"])
    print("   start    secs  proc    function")
    for r in rows:
        print(f"{r['t']:8.1f} {r['incl']:7.1f}  {r['proc']:6s}  {r['fn']}")


def run_cli(path: str, args: list[str]) -> None:
    """``kvrun ARGS`` in this process, its compiles recorded to ``path`` (emptied first), and the compile helper's where
    one starts (traced alike: its lines say ``proc: helper``); then their report and timeline."""
    open(path, "w").close()
    _test[0] = "kvrun " + " ".join(args)
    t0 = time.time()
    listen(path, "main", t0)
    from kvrun import cli
    from kvrun.runtime import prewarm

    prewarm.helper_command = lambda: [sys.executable, os.path.abspath(__file__), "--helper", path, repr(t0)]
    try:
        cli.main(args)
    except SystemExit:
        pass
    print(f"-- kvrun took {time.time() - t0:.1f} s", file=sys.stderr)
    report(path)
    timeline(path)


def run_helper(path: str, t0: float) -> None:
    """The compile helper's work (its job on stdin, as ``python -m kvrun.runtime.prewarm``), its compiles recorded."""
    import pickle

    from kvrun.runtime import prewarm

    _test[0] = "helper"
    listen(path, "helper", t0)
    prewarm.run(pickle.loads(sys.stdin.buffer.read()))


if __name__ == "__main__":
    if sys.argv[1] == "--cli":
        run_cli(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "--helper":
        run_helper(sys.argv[2], float(sys.argv[3]))
    elif sys.argv[1] == "--timeline":
        timeline(sys.argv[2])
    else:
        report(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
