"""kvrun: GGUF LLM inference in Python with a compressible KV cache.

>>> import kvrun
>>> model = kvrun.load("smollm2")
>>> print(model.complete("Once upon a time", max_tokens=32, temperature=0))
"""

from __future__ import annotations

import os
from typing import Any

# Numba's OpenMP workers spin 300,000 rounds (libgomp's default) after each parallel kernel
# before they sleep: prefill's attention threads, which run between those kernels, lost the
# cores to them (SmolLM2 pp512 1500 -> 1850 tok/s, pp256 at depth 2048 440 -> 740 with 5000;
# decode unchanged).  libgomp reads this when Numba first loads it; a value set by the user wins.
os.environ.setdefault("GOMP_SPINCOUNT", "5000")

__version__ = "0.1.0"
__all__ = ["load", "KVConfig", "KvrunError", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import kvrun` (and `kvrun info`) do not pay for Numba start-up.
    if name == "load":
        from .runtime.api import load

        return load
    if name == "KVConfig":
        from .cache.kvconfig import KVConfig

        return KVConfig
    if name == "KvrunError":
        from .loaders.errors import KvrunError

        return KvrunError
    raise AttributeError(name)
