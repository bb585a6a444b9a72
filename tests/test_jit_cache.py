"""A token's logits do not depend on whether Numba compiled the kernels in this process or loaded
them from its on-disk cache: the first run after an install (or an edit) must give what every later
run gives, or a kv-eval figure changes between the first run and the second."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# one process: the compressed cache's steady-state decode steps (insert.decode_step, which calls the
# decode attention kernel from inside Numba) on a tiny model, printing a digest of every step's logits
_SCRIPT = """
import hashlib, sys
import numpy as np
from kvrun.cache.kvconfig import KVConfig
from kvrun.runtime.engine import Engine
eng = Engine(sys.argv[1], n_ctx=160, threads=1, kv=KVConfig.parse("2"))
cache = eng.new_cache()
h = hashlib.sha256()
for i in range(120):
    h.update(np.ascontiguousarray(eng.eval(cache, [(37 * i) % 250 + 3]), np.float32).tobytes())
print(h.hexdigest())
"""


def _digest(model: str, cache_dir: str) -> str:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    r = subprocess.run([sys.executable, "-c", _SCRIPT, model], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


def _copy_of_the_package(where: Path) -> Path:
    """A copy of kvrun's sources at ``where/kvrun`` (no venv, tests, models, docs or build files)."""
    import shutil

    from kvrun.ops.cpu import jitstamp

    shutil.copytree(jitstamp.ROOT, where / "kvrun", ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", "tests", "*.gguf", "*.egg-info", "docs", "tools"))
    return where / "kvrun"


def test_compiled_and_cached_kernels_give_the_same_logits(tmp_path):
    """Numba compiles a callee inside its caller's compilation: the decode attention kernel (parallel)
    called from the exact-arithmetic decode step took other rounding when compiled that way than when
    loaded from the cache (SmolLM2, kv-eval --ctx 2048 --kv-bits 4: PPL 20.48 on a first run, 20.32 after)."""
    from tinymodel import write_tiny_model

    model = str(write_tiny_model(tmp_path / "llama.gguf", "llama"))
    cache_dir = str(tmp_path / "numba-cache")  # empty: the first run compiles, the second loads
    first = _digest(model, cache_dir)
    assert any(n.endswith(".nbi") for _, _, fs in os.walk(cache_dir) for n in fs)  # it did write a cache
    assert _digest(model, cache_dir) == first


def test_a_kernel_cache_entry_is_stale_when_any_kernel_file_changes(tmp_path):
    """Kernels inline code from other files (fused.py from qmatmul.py, the caches' decode steps from
    the attention kernels), so a cached kernel is stamped with every kernel file's source, not only
    its own: after a change that touched qmatmul.py alone, fused.py's cached products had run the old
    shape check and refused a new weight type."""
    from kvrun.cache import insert
    from kvrun.ops.cpu import fused, jitstamp, qmatmul

    for kernel in (qmatmul._mv_1, fused._fused_1, insert.decode_step):
        stamp = kernel._cache._impl.locator.get_source_stamp()  # the digest, or (Numba's own stamp, the digest)
        assert jitstamp.kernel_sources_digest() in (stamp if isinstance(stamp, tuple) else (stamp,))

    # a copy of the package: one edit to a kernel file changes the digest
    root = _copy_of_the_package(tmp_path)
    before = jitstamp.sources_digest(root)
    assert before == jitstamp.kernel_sources_digest()

    q = root / "ops" / "cpu" / "qmatmul.py"
    q.write_bytes(q.read_bytes() + b"\n# an edit\n")
    assert jitstamp.sources_digest(root) != before


def test_the_digest_holds_what_a_kernel_can_reach_and_no_more(tmp_path):
    """The digest covers the files under the kernel directories that import Numba and the package's modules they
    import, transitively: qmatmul's kernels hold loaders/quants.py's grids as constants (an edit there once compiled
    nothing), while the caches' Python orchestration reaches no kernel (an edit there recompiled the whole set: eight
    minutes of the test suite)."""
    from kvrun.ops.cpu import jitstamp

    root = _copy_of_the_package(tmp_path)
    sources = jitstamp.kernel_sources(root)
    assert {"ops/cpu/qmatmul.py", "cache/insert.py", "loaders/quants.py", "ops/cpu/parallel.py"} <= set(sources)
    assert not {"cache/compressed.py", "cache/gpu_compressed.py", "cache/factory.py", "models/llama.py"} & set(sources)
    before = jitstamp.sources_digest(root)

    def edit(rel: str, text: bytes) -> None:
        (root / rel).write_bytes((root / rel).read_bytes() + text)

    edit("cache/compressed.py", b"\n# the orchestration changes\n")
    assert jitstamp.sources_digest(root) == before
    edit("loaders/quants.py", b"\n# a grid changes\n")
    assert jitstamp.sources_digest(root) != before

    # a module a kernel file comes to import (a parenthesised list over lines, relative) joins the digest
    before = jitstamp.sources_digest(root)
    edit("cache/factory.py", b"\n# an edit\n")
    assert jitstamp.sources_digest(root) == before
    edit("cache/quant.py", b"\nfrom .policies import (\n    base,  # a comment\n)\nfrom . import (\n    factory as _f,\n)\n")
    assert "cache/factory.py" in jitstamp.kernel_sources(root)
    before = jitstamp.sources_digest(root)
    edit("cache/factory.py", b"\n# another edit\n")
    assert jitstamp.sources_digest(root) != before


def test_a_kernel_outside_the_digest_is_stamped_with_its_own_file(tmp_path):
    """A kernel defined outside the digest's files (the audio models' features) is keyed on its own file's contents
    as well: Numba's index key holds a function's bytecode but not its constants, so an edited constant loaded the
    old machine code."""
    import shutil

    from numba.core.registry import CPUDispatcher

    from kvrun.models import whisper_audio
    from kvrun.ops.cpu import jitstamp

    assert "models/whisper_audio.py" not in jitstamp.kernel_sources()
    kernel = next(v for v in vars(whisper_audio).values() if isinstance(v, CPUDispatcher))
    locator = kernel._cache._impl.locator
    if type(locator).__name__ == "KvrunSharedCacheLocator":
        assert locator.get_source_stamp() == (jitstamp.kernel_sources_digest(), jitstamp.file_digest(whisper_audio.__file__))
    copy = tmp_path / "whisper_audio.py"
    shutil.copy(whisper_audio.__file__, copy)
    before = jitstamp.file_digest(str(copy))
    copy.write_bytes(copy.read_bytes() + b"\n# an edit\n")
    jitstamp.file_digest.cache_clear()
    assert jitstamp.file_digest(str(copy)) != before


# a process that imports the kernels while the cache is empty, waits (stdin), then runs a kernel that calls an outlined C
# function (ops/cpu/outline.py); argv[1] "no-hook": without jitstamp.LOAD_HOOKS
_IMPORTED_EARLY = """
import sys
import numpy as np
from kvrun.ops.cpu import jitstamp, qattention
if sys.argv[1] == "no-hook":
    getattr(jitstamp, "LOAD_HOOKS", []).clear()
print("imported", flush=True)
sys.stdin.readline()
x = (np.arange(4 * 64, dtype=np.float32).reshape(4, 64) / 7).astype(np.float16).view(np.uint16)
out = np.zeros((2, 64), np.float32)
qattention.decode_half_slots(x, np.array([1, 3], np.int32), out)
print(float(out.sum()), sum(qattention.decode_slots.stats.cache_hits.values()), flush=True)
"""


def test_a_kernel_another_process_cached_after_this_ones_import_finds_its_outlined_functions(tmp_path):
    """Kernels call outlined C functions by name (ops/cpu/outline.py), registered at import where the cache holds them.
    A process that imported while the cache was empty, then loaded a kernel another process had compiled and cached
    since, called a name never registered, and died (the suite on two workers: ``matvec``, ``decode_half_slots``): the
    C functions the cache holds are now registered before each kernel is loaded.  Without that hook, the same process
    dies."""
    env = dict(os.environ, KVRUN_JIT_CACHE=str(tmp_path / "jit"))
    env.pop("NUMBA_CACHE_DIR", None)

    def early(mode: str):
        p = subprocess.Popen([sys.executable, "-c", _IMPORTED_EARLY, mode], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "imported"
        return p

    first, second = early("hook"), early("no-hook")
    other = subprocess.run([sys.executable, "-c", _IMPORTED_EARLY, "hook"], env=env, input="\n", capture_output=True,
                           text=True, timeout=600)  # (compiles and caches the kernel and its C functions)
    assert other.returncode == 0, other.stderr[-2000:]
    want, hits = other.stdout.split()[1:]
    assert hits == "0"
    out, err = first.communicate("\n", timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert out.split() == [want, "1"]  # the same figures, the kernel loaded from the cache
    second.communicate("\n", timeout=600)
    assert second.returncode != 0  # (the name unregistered: the call jumps to nothing)


def test_each_process_names_its_compiled_functions_apart_from_anothers():
    """Numba names a compiled function by its qualname and a per-process counter, and a process that loads kernels two
    processes compiled keeps one definition of a name: two processes doing alike gave equal names to two closures of
    one qualname (a sort's, with other captured values), and one ran the other's code.  kvrun starts the counter at a
    random point of each process."""
    script = ("from kvrun.ops import cpu\nfrom numba.core.bytecode import FunctionIdentity as F\n"
              "print(next(F._unique_ids))\n")
    starts = [int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120).stdout) for _ in range(2)]
    assert starts[0] != starts[1] and min(starts) > 1 << 20


# one process: a small kernel called once; prints where kvrun was imported from and whether the
# kernel came from the on-disk cache
_ONE_KERNEL = """
import numpy as np
import kvrun
from kvrun.ops.cpu import nn
nn.rms_norm(np.ones((2, 8), np.float32), np.ones(8, np.float32), 1e-6, np.empty((2, 8), np.float32))
print(kvrun.__file__, sum(nn.rms_norm.stats.cache_hits.values()))
"""


def test_a_fresh_copy_of_the_package_loads_the_kernels_another_copy_compiled(tmp_path):
    """The shared kernel cache is keyed by the kernel sources' digest, not by the checkout's path or
    its files' times: a reinstall, a second venv or a fresh clone with the same kernels compiles
    nothing (CI's clean clone had compiled every kernel again: minutes of the suite)."""
    from kvrun.ops.cpu import jitstamp

    env = dict(os.environ, KVRUN_JIT_CACHE=str(tmp_path / "jit"))
    env.pop("NUMBA_CACHE_DIR", None)
    runs = []
    for copy in ("a", "b"):  # two copies, at two paths, with their own file times
        _copy_of_the_package(tmp_path / copy)
        env["PYTHONPATH"] = str(tmp_path / copy)
        r = subprocess.run([sys.executable, "-c", _ONE_KERNEL], env=env, capture_output=True, text=True, timeout=600,
                           cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        where, hits = r.stdout.split()
        assert where.startswith(str(tmp_path / copy))
        runs.append(int(hits))
    assert runs == [0, 1]  # the first copy compiled, the second loaded
    assert [p.name for p in (tmp_path / "jit").iterdir()] == [jitstamp.kernel_sources_digest()]


def test_where_the_shared_cache_cannot_be_written_kernels_still_compile_and_cache_beside_their_source(tmp_path):
    """A read-only home (a container, a locked-down account) costs the cache's sharing, never a run: the kernels
    then cache in the checkout's ``__pycache__`` as Numba's own do, stamped with the digest all the same."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # (a directory cannot be made under a file)
    env = dict(os.environ, KVRUN_JIT_CACHE=str(blocked / "jit"))
    env.pop("NUMBA_CACHE_DIR", None)
    script = """
from kvrun.ops.cpu import jitstamp, nn
loc = nn.rms_norm._cache._impl.locator
print(jitstamp.shared_cache_dir(), type(loc).__name__, loc.get_cache_path())
"""
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    shared, locator, path = r.stdout.split()
    assert shared == "None" and locator != "KvrunSharedCacheLocator"
    assert path.endswith("__pycache__")


def _holding_the_index_lock(path: str):
    """Another process's save under way: the index's lock held exclusively (``flock`` locks of two open file
    descriptions conflict within one process too).  Closing the returned descriptor releases it."""
    import fcntl

    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_cache_entry_is_saved_and_loaded_only_while_no_other_save_is_under_way(tmp_path, monkeypatch):
    """Two processes filling one kernel cache at once (two chats started together) must not interleave Numba's
    save (index read, a free data file named, index written, data written): the index could end naming a data file
    the other wrote for another signature, whose machine code then ran for this one.  A save waits while another
    holds the index's lock, and so does a load (it would read the new index before its data)."""
    import threading

    import pytest

    from kvrun.ops.cpu import jitstamp

    if jitstamp.fcntl is None:
        pytest.skip("no flock here: Numba's cache is unlocked")
    from numba.core.caching import IndexDataCacheFile

    monkeypatch.setenv("KVRUN_JIT_CACHE", str(tmp_path / "jit"))  # (the shared cache's: kvrun's kernels)
    jitstamp.install()
    (tmp_path / "jit" / "digest").mkdir(parents=True)
    f = IndexDataCacheFile(str(tmp_path / "jit" / "digest"), "kernel-12.py311", "stamp")
    fd = _holding_the_index_lock(f._index_path)
    save = threading.Thread(target=f.save, args=(("sig", "a"), b"code a"))
    save.start()
    save.join(0.5)
    assert save.is_alive() and not os.path.exists(f._index_path)  # waiting for the other save
    os.close(fd)
    save.join(30)
    assert not save.is_alive()

    got: list = []
    fd = _holding_the_index_lock(f._index_path)
    load = threading.Thread(target=lambda: got.append(f.load(("sig", "a"))))
    load.start()
    load.join(0.5)
    assert load.is_alive() and got == []
    os.close(fd)
    load.join(30)
    assert got == [b"code a"]


def test_another_librarys_numba_cache_is_not_locked(tmp_path, monkeypatch):
    """The lock is kvrun's: a cache elsewhere (another library's kernels in the same process) saves as Numba does,
    whatever holds a lock file beside its index."""
    import pytest

    from kvrun.ops.cpu import jitstamp

    if jitstamp.fcntl is None:
        pytest.skip("no flock here")
    from numba.core.caching import IndexDataCacheFile

    monkeypatch.setenv("KVRUN_JIT_CACHE", str(tmp_path / "jit"))
    jitstamp.install()
    (tmp_path / "elsewhere").mkdir()
    f = IndexDataCacheFile(str(tmp_path / "elsewhere"), "theirs-3.py311", "stamp")
    fd = _holding_the_index_lock(f._index_path)
    try:
        f.save(("sig", "a"), b"code a")  # (no wait)
        assert f.load(("sig", "a")) == b"code a"
    finally:
        os.close(fd)
    assert jitstamp._kvruns(str(jitstamp.ROOT / "ops" / "cpu" / "__pycache__" / "nn.rms_norm-12.py311.nbi"))
    assert not jitstamp._kvruns(f._index_path)


# a process that compiles nn.rms_norm while holding its compile lock from before the other process asks for it:
# "locked" once it holds it, then waits for a line, compiles (and saves), prints its cache hits
_COMPILES_HOLDING_THE_LOCK = """
import sys
import numpy as np
from kvrun.ops.cpu import jitstamp, nn
with jitstamp.compile_lock(nn.rms_norm._cache._cache_file._index_path):
    print("locked", flush=True)
    sys.stdin.readline()
    nn.rms_norm(np.ones((2, 8), np.float32), np.ones(8, np.float32), 1e-6, np.empty((2, 8), np.float32))
print(sum(nn.rms_norm.stats.cache_hits.values()))
"""


def test_a_kernel_another_process_is_compiling_is_waited_for_and_loaded_not_compiled_twice(tmp_path):
    """Two processes that miss one kernel at once (the suite's two workers on an empty cache, two chats started
    together) compiled it both.  The second now waits for the first's compile, then loads what it saved."""
    from kvrun.ops.cpu import jitstamp

    if jitstamp.fcntl is None:
        import pytest

        pytest.skip("no flock here: compiles are not locked")
    env = dict(os.environ, KVRUN_JIT_CACHE=str(tmp_path / "jit"))
    env.pop("NUMBA_CACHE_DIR", None)
    first = subprocess.Popen([sys.executable, "-c", _COMPILES_HOLDING_THE_LOCK], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "locked"
    second = subprocess.Popen([sys.executable, "-c", _ONE_KERNEL], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        second.wait(8)  # (unlocked, it would have compiled the kernel itself by now, and ended)
    except subprocess.TimeoutExpired:
        pass
    assert second.poll() is None  # waiting for the first's compile
    out, err = first.communicate("\n", timeout=600)
    assert first.returncode == 0 and out.split() == ["0"], err[-2000:]
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-2000:]
    assert out.split()[-1] == "1"  # loaded from the cache the first filled
