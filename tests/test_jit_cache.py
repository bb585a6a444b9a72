"""A token's logits do not depend on whether Numba compiled the kernels in this process or loaded
them from its on-disk cache: the first run after an install (or an edit) must give what every later
run gives, or a kv-eval figure changes between the first run and the second."""

from __future__ import annotations

import os
import subprocess
import sys

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

    for d in jitstamp.KERNEL_DIRS:  # a copy of the kernel sources: one edit anywhere changes the digest
        for p in (jitstamp.ROOT / d).rglob("*.py"):
            dst = tmp_path / p.relative_to(jitstamp.ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(p.read_bytes())
    before = jitstamp.sources_digest(tmp_path)
    assert before == jitstamp.kernel_sources_digest()
    q = tmp_path / "ops" / "cpu" / "qmatmul.py"
    q.write_bytes(q.read_bytes() + b"\n# an edit\n")
    assert jitstamp.sources_digest(tmp_path) != before


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
    import shutil

    from kvrun.ops.cpu import jitstamp

    skip = shutil.ignore_patterns(".venv", ".git", "__pycache__", "tests", "*.gguf", "*.egg-info")
    env = dict(os.environ, KVRUN_JIT_CACHE=str(tmp_path / "jit"))
    env.pop("NUMBA_CACHE_DIR", None)
    runs = []
    for copy in ("a", "b"):  # two copies, at two paths, with their own file times
        shutil.copytree(jitstamp.ROOT, tmp_path / copy / "kvrun", ignore=skip)
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
