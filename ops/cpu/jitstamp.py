"""Numba's on-disk cache, kept honest across kvrun's kernel files.

Numba keys a cached function on the source of the one file that defines it.  kvrun's kernels
inline code from other files: ``fused.py``'s products inline ``qmatmul``'s row kernels and shape
checks, the caches' one-call decode steps inline the attention kernels.  After an edit or a
``git pull`` that changes only the callee's file, the caller's cache entry still looked fresh, and
its machine code was the old callee's: a wrong result or a bogus error (seen: a weight type added
to ``qmatmul``, refused by ``fused.py``'s stale copy of the shape check).

:func:`install` gives every function defined under the kvrun package a cache stamp that also
holds a digest of the kernel sources (:func:`kernel_sources`), so a change to any of them makes
every cached kernel compile again, once.  A pip upgrade rewrites every file and was not at risk;
a git checkout was.

The kernel sources are the files under :data:`KERNEL_DIRS` that import Numba and every module of the
package they import, transitively: a compiled kernel can only hold what its own module's globals
reach (Numba compiles no ``import`` inside a kernel), and those come from its imports.  So the
quantization grids of ``loaders/quants.py``, frozen into ``qmatmul``'s kernels as constants, are in
the digest; the caches' Python orchestration (``cache/compressed.py``, the GPU caches) is not, and an
edit there recompiles nothing (the whole kernel set is minutes of compiling for the test suite).

Where the cache lives: under ``~/.cache/kvrun/numba/<digest>/`` (``$KVRUN_JIT_CACHE``, else
``$XDG_CACHE_HOME/kvrun/numba``), keyed by that digest alone, not by the checkout's path or the
files' times as Numba's own ``__pycache__`` entries are.  So a reinstall, a second venv or a fresh
clone whose kernels are the same loads them (about a second) instead of compiling them again
(minutes for the test suite's variety, 20-40 s for a chat).  ``NUMBA_CACHE_DIR``, when set, wins
(with the digest in its stamp); where the directory cannot be written, the ``__pycache__`` next
to the source is used, stamped as well.  The newest :data:`KEEP` digests are kept.

Two processes filling one cache at once (two chats started together, a test run beside a chat) could
leave a function's index naming a data file that the other process wrote for another signature:
Numba's save reads the index, picks the first free data file name, writes the index, then the data,
with nothing in between to stop another process doing the same.  The machine code loaded for that
signature was then another's (seen: a process aborted inside a decode step's kernel).
:func:`install` therefore makes Numba's index-and-data save hold an exclusive ``flock`` on a lock
file beside the index, and a load a shared one (POSIX; elsewhere as before).

Two processes that both miss a kernel (the suite's two workers on an empty cache, two chats started together)
used to compile it both.  :func:`install` also makes a compile of one of kvrun's kernels hold an exclusive ``flock``
on ``<index>.compile`` (:func:`compile_lock`): the second process waits, then loads what the first saved.  A caller
holds its lock while its callees compile; kernels call each other without cycles, so two processes cannot wait on
each other, and a wait gives up after :data:`COMPILE_WAIT_S` (a stopped process) and compiles.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import re
import shutil
import time
from pathlib import Path

from numba.core import bytecode, caching, config, dispatcher, sigutils
from numba.core.compiler_lock import global_compiler_lock

try:
    import fcntl
except ImportError:  # (not POSIX: Numba's cache unlocked, as before)
    fcntl = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[2]  #: the kvrun package
KERNEL_DIRS = ("ops/cpu", "cache")  #: where the njit code lives
KEEP = 4  #: digest directories kept in the shared cache (a kernel edit adds one)
#: called before each of kvrun's cache entries is loaded (outline.py registers the C functions a loaded kernel calls)
LOAD_HOOKS: list = []
COMPILE_WAIT_S = 300.0  #: the longest a compile waits for another process compiling the same kernel


#: ``from X import a, b`` (the names may run on in parentheses) and ``import X``, on a line of their own; a match
#: in a docstring only adds a file
_FROM = re.compile(rb"[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(.*)")
_IMPORT = re.compile(rb"[ \t]*import[ \t]+(.*)")
#: a kernel file holds one of these words (it imports Numba, or compiles through a name it was handed: ``njit``, our
#: ``@outline``); a mention in a comment only adds a file
KERNEL_WORDS = (b"numba", b"njit", b"@outline", b"@intrinsic")


def _import_statements(src: bytes):
    """``(module, names)`` of each ``from`` import in ``src`` and ``(None, modules)`` of each ``import`` (the lines
    that hold the word, found by ``bytes.find``: a regex or a loop over every line took 5-10 ms of every start)."""
    at = src.find(b"import")
    while at >= 0:
        start = src.rfind(b"\n", 0, at) + 1
        end = src.find(b"\n", at)
        end = len(src) if end < 0 else end
        line = src[start:end]
        if m := _FROM.match(line):
            names = m.group(2)
            if names.lstrip().startswith(b"(") and b")" not in names:
                close = src.find(b")", end)
                end = len(src) if close < 0 else close
                names = names + src[start + len(line):end]
            yield m.group(1).decode(), re.sub(rb"#[^\n]*", b"", names).decode()
        elif m := _IMPORT.match(line):
            yield None, m.group(1).decode()
        at = src.find(b"import", end)


def _module_file(root: str, parts: tuple[str, ...], memo: dict) -> str | None:
    """The file of the package's module ``parts`` (``a/b.py`` or ``a/b/__init__.py``), if there is one."""
    if parts not in memo:
        base = os.path.join(root, *parts)
        memo[parts] = next((f for f in ((base + ".py") if parts else None, os.path.join(base, "__init__.py"))
                            if f is not None and os.path.isfile(f)), None)
    return memo[parts]


def _imported(root: str, package: tuple[str, ...], src: bytes, memo: dict) -> set[str]:
    """The package's modules that a source in ``package`` imports (at module level or in a function: a scan of the
    text, which may name a module too many, never one too few)."""
    found: set[str | None] = set()
    for module, names in _import_statements(src):
        if module is None:  # import kvrun.a.b [as c], ...
            for n in names.split(","):
                words = n.split()
                if words and words[0].startswith("kvrun."):
                    found.add(_module_file(root, tuple(words[0].split(".")[1:]), memo))
            continue
        dots = len(module) - len(module.lstrip("."))
        name = module[dots:]
        if dots:
            parts = package[: len(package) - dots + 1] + (tuple(name.split(".")) if name else ())
        elif name == "kvrun" or name.startswith("kvrun."):
            parts = tuple(name.split(".")[1:])
        else:
            continue
        found.add(_module_file(root, parts, memo))
        for n in re.split(r"[,()\\]", names):
            if n.strip():
                found.add(_module_file(root, parts + (n.split()[0],), memo))
    found.discard(None)
    return found  # type: ignore[return-value]


def kernel_sources(root: Path = ROOT, dirs: tuple[str, ...] = KERNEL_DIRS) -> dict[str, bytes]:
    """The files whose text can reach a compiled kernel (paths relative to ``root``, with their contents): those
    under ``root/dirs`` that hold kernels (:data:`KERNEL_WORDS`), and the package's modules these import, transitively."""
    top = str(root)
    texts = {}
    for d in dirs:
        for where, _, names in os.walk(os.path.join(top, d)):
            for n in names:
                if n.endswith(".py"):
                    with open(os.path.join(where, n), "rb") as f:
                        texts[os.path.join(where, n)] = f.read()
    todo = [p for p, src in texts.items() if any(w in src for w in KERNEL_WORDS)]
    reached: dict[str, bytes] = {}
    memo: dict = {}
    while todo:
        p = todo.pop()
        if p in reached:
            continue
        if p not in texts:
            with open(p, "rb") as f:
                texts[p] = f.read()
        reached[p] = texts[p]
        package = tuple(Path(os.path.relpath(os.path.dirname(p), top)).parts)
        todo += [f for f in _imported(top, package, reached[p], memo) if f not in reached]
    return {Path(os.path.relpath(p, top)).as_posix(): src for p, src in reached.items()}


def sources_digest(root: Path = ROOT, dirs: tuple[str, ...] = KERNEL_DIRS) -> str:
    """A digest of :func:`kernel_sources` (names relative to ``root``, and contents)."""
    h = hashlib.sha256()
    sources = kernel_sources(root, dirs)
    for rel in sorted(sources):
        h.update(rel.encode() + b"\0")
        h.update(sources[rel])
    return h.hexdigest()[:16]


@functools.cache
def kernel_sources_digest() -> str:
    """:func:`sources_digest` of this installation, computed once a process (a few ms)."""
    return sources_digest()


@functools.cache
def file_digest(py_file: str) -> str:
    """A digest of one source file's contents: the shared cache's stamp holds its function's own file too (a kernel
    outside :func:`kernel_sources`, as the audio models' feature kernels, would otherwise keep an edited constant:
    Numba's index key holds a function's bytecode, not its constants)."""
    with open(py_file, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


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


def shared_cache_root() -> Path:
    """Where kernels of every kernel digest are cached (one subdirectory a digest)."""
    d = os.environ.get("KVRUN_JIT_CACHE")
    if d:
        return Path(d)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kvrun" / "numba"


def _prune(root: Path, keep: str) -> None:
    """Drop all but the newest :data:`KEEP` digest directories (``keep`` among them), sparing any
    made in the last hour (another checkout's process may be writing there now)."""
    try:
        dirs = sorted((p for p in root.iterdir() if p.is_dir() and p.name != keep), key=lambda p: p.stat().st_mtime)
        recent = time.time() - 3600
        old = [p for p in dirs[: max(0, len(dirs) - (KEEP - 1))] if p.stat().st_mtime < recent]
    except OSError:
        return
    for p in old:
        shutil.rmtree(p, ignore_errors=True)


@functools.cache
def shared_cache_dir() -> Path | None:
    """This digest's directory of the shared cache, made (and older digests pruned) on first use;
    None when it cannot be written."""
    root = shared_cache_root()
    d = root / kernel_sources_digest()
    try:
        fresh = not d.is_dir()
        d.mkdir(parents=True, exist_ok=True)
        (d / ".probe").touch()
        (d / ".probe").unlink()
    except OSError:
        return None
    if fresh:
        _prune(root, d.name)
    return d


def _shared_locator(base: type) -> type:
    """A locator for kvrun's files in :func:`shared_cache_dir`, stamped with the digest and its file's contents (not
    its path or time: another checkout's same file loads what this one compiled)."""

    class Locator(base):
        kvrun_stamped = True

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            rel = Path(py_file).resolve().parent.relative_to(ROOT)
            self._cache_path = str(shared_cache_dir() / rel)

        def get_cache_path(self):
            return self._cache_path

        def get_source_stamp(self):
            return (kernel_sources_digest(), file_digest(self._py_file))

        @classmethod
        def from_function(cls, py_func, py_file):
            if config.CACHE_DIR or not _ours(py_file) or shared_cache_dir() is None:
                return None  # NUMBA_CACHE_DIR (a stamped locator below) or the checkout's __pycache__
            self = cls(py_func, py_file)
            try:
                self.ensure_cache_path()
            except OSError:
                return None
            return self

    Locator.__name__ = Locator.__qualname__ = "KvrunSharedCacheLocator"
    return Locator


def _numba(name: str):
    """A name of Numba's caching module (public since 0.61, underscored before); None if gone."""
    return getattr(caching, name, None) or getattr(caching, "_" + name, None)


def _lock_file(path: str) -> int | None:
    """A descriptor of lock file ``path`` (made if need be); None where it cannot be made (a read-only cache: nothing
    writes it there) or there is no ``fcntl``."""
    if fcntl is None:
        return None
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return None


@contextlib.contextmanager
def index_lock(index_path: str, exclusive: bool):
    """An ``flock`` on ``<index_path>.lock`` (made if need be) while the block runs: exclusive to save an entry,
    shared to load one.  No lock where the file cannot be made (a read-only cache: nothing writes it there) or
    there is no ``fcntl``."""
    fd = _lock_file(index_path + ".lock")
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # (releases the lock)


def _kvruns(index_path: str) -> bool:
    """Whether a cache index is of kvrun's kernels: in the shared cache, or beside (or, under ``NUMBA_CACHE_DIR``, in
    the mirror of) the package's sources.  Other libraries' Numba caches are left as Numba keeps them."""
    p = os.path.realpath(index_path)
    root = os.path.realpath(shared_cache_root())
    return p.startswith(root + os.sep) or str(ROOT) + os.sep in p or str(ROOT).lstrip(os.sep) + os.sep in p


def _locked(method, exclusive: bool):
    """``IndexDataCacheFile.save``/``load`` run under :func:`index_lock`, for kvrun's caches (:func:`_kvruns`); a load
    runs :data:`LOAD_HOOKS` first."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if not _kvruns(self._index_path):
            return method(self, *args, **kwargs)
        if not exclusive:
            for hook in LOAD_HOOKS:
                hook()
        with index_lock(self._index_path, exclusive):
            return method(self, *args, **kwargs)

    run.kvrun_locked = True
    return run


def _lock_saves() -> None:
    """Numba's index-and-data cache file saves and loads under :func:`index_lock` (idempotent; nothing where
    Numba's class lacks what this expects)."""
    cls = _numba("IndexDataCacheFile")
    if cls is None or not all(callable(getattr(cls, m, None)) for m in ("save", "load")):
        return
    if getattr(cls.save, "kvrun_locked", False):
        return
    cls.save = _locked(cls.save, exclusive=True)
    cls.load = _locked(cls.load, exclusive=False)


_held: set[str] = set()  # the index paths whose compile lock this process holds


@contextlib.contextmanager
def compile_lock(index_path: str):
    """An exclusive ``flock`` on ``<index_path>.compile`` while the block runs (a kernel's load-or-compile), re-entrant
    within the process.  Waits at most :data:`COMPILE_WAIT_S`, polling, then runs the block unlocked; no lock where the
    file cannot be made or there is no ``fcntl``.  Runs under Numba's compiler lock, so one thread at a time is here."""
    fd = None if index_path in _held else _lock_file(index_path + ".compile")
    if fd is not None:
        end = time.monotonic() + COMPILE_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > end:
                    os.close(fd)
                    fd = None
                    break
                time.sleep(0.02)
    if fd is not None:
        _held.add(index_path)
    try:
        yield
    finally:
        if fd is not None:
            _held.discard(index_path)
            os.close(fd)  # (releases the lock)


def _lock_compiles() -> None:
    """Numba's load-or-compile of a kvrun kernel under :func:`compile_lock` (idempotent)."""
    cls = dispatcher.Dispatcher
    if getattr(cls.compile, "kvrun_locked", False):
        return
    orig = cls.compile

    @functools.wraps(orig)
    def compile(self, sig):
        path = getattr(getattr(self._cache, "_cache_file", None), "_index_path", None)
        if path is None or tuple(sigutils.normalize_signature(sig)[0]) in self.overloads or not _kvruns(path):
            return orig(self, sig)
        with global_compiler_lock:  # (re-entrant; compile takes it too)
            with compile_lock(path):
                return orig(self, sig)

    compile.kvrun_locked = True
    cls.compile = compile


def _process_unique_names() -> None:
    """Start Numba's function ids at a random point of this process (idempotent).

    Numba names a compiled function ``<qualname>$<id>`` (an ABI tag of its symbol), the id from a counter that starts at
    1 in every process.  A cached kernel holds the callees it linked (Numba's own closures among them: a sort's, an
    ``np.empty``'s) as weak symbols of those names, and a process that loads kernels two processes compiled keeps one
    definition of a name.  Two processes doing alike (two chats started together, the suite's two workers, a chat and
    then a kv-eval) give equal ids to equal qualnames: two closures of one qualname with other captured values would
    then run one another's code.  With a random start of 2**48 ids a process, two never meet."""
    fi = getattr(bytecode, "FunctionIdentity", None)
    if fi is None or not isinstance(getattr(fi, "_unique_ids", None), itertools.count) or getattr(fi, "kvrun_ids", False):
        return
    fi._unique_ids = itertools.count(int.from_bytes(os.urandom(6), "little") + 1)
    fi.kvrun_ids = True


def install() -> None:
    """Put the stamped locators first (idempotent).  Must run before the kernel modules are
    imported: Numba picks a function's locator when the decorator runs.  Where Numba's internals
    differ from what this expects, does nothing (the cache is then keyed per file, as before)."""
    _lock_saves()
    _lock_compiles()
    _process_unique_names()
    impl = _numba("CacheImpl")
    bases = [_numba(n) for n in ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")]
    if impl is None or not isinstance(getattr(impl, "_locator_classes", None), list) or None in bases:
        return
    if any(getattr(c, "kvrun_stamped", False) for c in impl._locator_classes):
        return
    shared = _shared_locator(bases[1])  # (InTreeCacheLocator: the source-file mixin's disambiguator)
    impl._locator_classes = [shared] + [_stamped(c) for c in bases] + impl._locator_classes
