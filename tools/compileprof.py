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


def listen(path: str) -> None:
    """Append a line to ``path`` for each Numba compile from now on."""
    from numba.core import event

    out = open(path, "a")

    class Listener(event.Listener):
        def on_start(self, ev) -> None:
            _open.append([time.perf_counter(), 0.0])

        def on_end(self, ev) -> None:
            t0, nested = _open.pop()
            took = time.perf_counter() - t0
            if _open:
                _open[-1][1] += took
            d = ev.data or {}
            f = getattr(d.get("dispatcher"), "py_func", None)
            name = f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', d.get('dispatcher'))}"
            out.write(json.dumps({"test": _test[0], "fn": name, "sig": str(d.get("args")), "excl": took - nested}) + "\n")
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


def run_cli(path: str, args: list[str]) -> None:
    """``kvrun ARGS`` in this process, its compiles recorded to ``path`` (emptied first), then their report."""
    open(path, "w").close()
    _test[0] = "kvrun " + " ".join(args)
    listen(path)
    from kvrun import cli

    t0 = time.perf_counter()
    try:
        cli.main(args)
    except SystemExit:
        pass
    print(f"-- kvrun took {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    report(path)


if __name__ == "__main__":
    if sys.argv[1] == "--cli":
        run_cli(sys.argv[2], sys.argv[3:])
    else:
        report(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
