"""kvrun: GGUF LLM inference in Python with a compressible KV cache.

>>> import kvrun
>>> model = kvrun.load("smollm2")
>>> print(model.complete("Once upon a time", max_tokens=32, temperature=0))
"""

from __future__ import annotations

from typing import Any

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
