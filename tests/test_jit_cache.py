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
