"""Numba's on-disk cache, kept honest across kvrun's kernel files.

Numba keys a cached function on the source of the one file that defines it.  kvrun's kernels
inline code from other files: ``fused.py``'s products inline ``qmatmul``'s row kernels and shape
checks, the caches' one-call decode steps inline the attention kernels.  After an edit or a
``git pull`` that changes only the callee's file, the caller's cache entry still looked fresh, and
its machine code was the old callee's: a wrong result or a bogus error (seen: a weight type added
to ``qmatmul``, refused by ``fused.py``'s stale copy of the shape check).

:func:`install` gives every function defined under the kvrun package a cache stamp that also
holds a digest of all kernel sources (:data:`KERNEL_DIRS`), so a change to any of them makes
every cached kernel compile again, once.  A pip upgrade rewrites every file and was not at risk;
a git checkout was.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from numba.core import caching

ROOT = Path(__file__).resolve().parents[2]  #: the kvrun package
KERNEL_DIRS = ("ops/cpu", "cache")  #: where the njit code lives


def sources_digest(root: Path = ROOT, dirs: tuple[str, ...] = KERNEL_DIRS) -> str:
    """A digest of the ``.py`` files under ``root/dirs`` (names and contents)."""
    h = hashlib.sha256()
    for d in dirs:
        for p in sorted((root / d).rglob("*.py")):
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


@functools.cache
def kernel_sources_digest() -> str:
    """:func:`sources_digest` of this installation, computed once a process (~2 ms)."""
    return sources_digest()


def _ours(py_file: str) -> bool:
    try:
        return Path(py_file).resolve().is_relative_to(ROOT)
    except (OSError, ValueError):
        return False


def _stamped(base: type) -> type:
    """``base`` (a Numba locator), for kvrun's files only, with the kernel digest in its stamp."""

    class Locator(base):
        kvrun_stamped = True

        def get_source_stamp(self):
            return (super().get_source_stamp(), kernel_sources_digest())

        @classmethod
        def from_function(cls, py_func, py_file):
            return super().from_function(py_func, py_file) if _ours(py_file) else None

    Locator.__name__ = Locator.__qualname__ = f"Kvrun{base.__name__}"
    return Locator


def _numba(name: str):
    """A name of Numba's caching module (public since 0.61, underscored before); None if gone."""
    return getattr(caching, name, None) or getattr(caching, "_" + name, None)


def install() -> None:
    """Put the stamped locators first (idempotent).  Must run before the kernel modules are
    imported: Numba picks a function's locator when the decorator runs.  Where Numba's internals
    differ from what this expects, does nothing (the cache is then keyed per file, as before)."""
    impl = _numba("CacheImpl")
    bases = [_numba(n) for n in ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")]
    if impl is None or not isinstance(getattr(impl, "_locator_classes", None), list) or None in bases:
        return
    if any(getattr(c, "kvrun_stamped", False) for c in impl._locator_classes):
        return
    impl._locator_classes = [_stamped(c) for c in bases] + impl._locator_classes
