"""What the fixture tools share (developer tooling; llama.cpp is the oracle, never a kvrun dependency): their command
line, and llama-cpp-python run in a subprocess of the Python ``--oracle`` names, on tiny model files the test
helpers (tests/tiny*.py, importable once this module is) write again byte for byte.

* ``embed_fixtures``: an encoder's token ids, per-token states and pooled embeddings (``embed_<name>.npz``);
* ``logits_fixtures``: a tiny model's logits for a prompt evaluated as one batch (``arch_<name>.npz``).

Each fixture also holds ``sha256``, the model file's digest: the test writes the same bytes again and checks it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "tests"))


def parse_args(doc: str, names: Iterable[str] | None = None) -> argparse.Namespace:
    """The tools' command line: ``--oracle``, ``--out`` (tests/fixtures unless told) and, given ``names``, which of
    them to make (all unless told)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    ap.add_argument("--out", type=Path, default=FIX, help="the folder the fixtures go to (default: tests/fixtures)")
    if names is not None:
        names = list(names)
        ap.add_argument("names", nargs="*", default=names, help=f"of {', '.join(names)}")
    return ap.parse_args()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_fixtures(a: argparse.Namespace, prefix: str, write: Callable[[Path, str], Path], script: str, *args: str,
                 show: Callable[[dict], str]) -> None:  # fmt: skip
    """For each of ``a.names``: ``write(path, name)``'s file, ``script`` run by the oracle on it (argv: the file, the
    .npz it saves, ``args``), and what it saved with the file's ``sha256`` into ``<a.out>/<prefix>_<name>.npz``."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.names:
            path = write(Path(tmp) / f"{name}.gguf", name)
            out = Path(tmp) / f"{name}.npz"
            subprocess.run([a.oracle, "-c", script, str(path), str(out), *args], check=True)
            res = dict(np.load(out))
            digest = sha256(path)
            np.savez_compressed(a.out / f"{prefix}_{name}.npz", sha256=digest, **res)
            print(f"{name}: {show(res)}, model {digest[:12]}")


# llama_tokenize with special tokens, every token's last state (pooling none) and, unless the pooling named is None,
# the pooled embedding ("": the file's own pooling, else a LLAMA_POOLING_TYPE_ name); none normalised
_EMBED = """
import json, sys, numpy as np
import llama_cpp
from llama_cpp import Llama
path, out, texts, pooling = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
kw = dict(model_path=path, embedding=True, n_ctx=128, n_batch=128, n_ubatch=128, verbose=False, n_threads=1, flash_attn=False)
none = Llama(pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE, **kw)
if pooling is not None:
    pooled = Llama(**kw) if pooling == "" else Llama(pooling_type=getattr(llama_cpp, f"LLAMA_POOLING_TYPE_{pooling}"), **kw)
res = {}
for k, t in enumerate(texts):
    res[f"ids_{k}"] = np.asarray(none.tokenize(t.encode(), add_bos=True, special=True), np.int32)
    res[f"embd_{k}"] = np.asarray(none.embed(t, normalize=False), np.float32)
    if pooling is not None:
        res[f"pooled_{k}"] = np.asarray(pooled.embed(t, normalize=False), np.float32)
np.savez(out, **res)
"""


def embed_fixtures(a: argparse.Namespace, write: Callable[[Path, str], Path], texts: list[str], pooling: str | None = "") -> None:
    """``embed_<name>.npz`` for each of ``a.names``: for every text of ``texts``, ``ids_<k>``, ``embd_<k>`` and, unless
    ``pooling`` is None, ``pooled_<k>`` (``pooling``: "" the file's own, else a llama.cpp pooling type's name, "MEAN").
    Flash attention off: llama.cpp's f32 attention, as kvrun's."""
    run_fixtures(a, "embed", write, _EMBED, json.dumps(texts), json.dumps(pooling),
                 show=lambda res: f"{[len(res[f'ids_{k}']) for k in range(len(texts))]} tokens")  # fmt: skip


# the prompt's logits at every position, one batch; "no-kv": a model llama.cpp builds without a KV cache, which
# llama-cpp-python's eval expects to clear before a batch (the call skipped)
_LOGITS = """
import sys, numpy as np
from llama_cpp import Llama
path, out, ids = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")]
llm = Llama(model_path=path, n_ctx=64, n_batch=64, n_ubatch=64, logits_all=True, verbose=False, n_threads=1)
if sys.argv[4] == "no-kv":
    llm._ctx.kv_cache_seq_rm = lambda *a: None  # (no KV cache: nothing to clear)
llm.eval(ids)
np.savez(out, ids=np.asarray(ids, np.int32), logits=np.asarray(llm.scores[: len(ids)], np.float32))
"""


def logits_fixtures(a: argparse.Namespace, models: dict[str, dict], ids: list[int], no_kv: bool = False) -> None:
    """``arch_<name>.npz`` for each of ``a.names``: ``ids`` and llama.cpp's ``logits`` for them on the tiny model
    ``tinymodel.write_tiny_model(path, **models[name])`` writes (``no_kv``: one llama.cpp builds without a KV cache)."""
    from tinymodel import write_tiny_model

    run_fixtures(a, "arch", lambda path, name: write_tiny_model(path, **models[name]), _LOGITS, ",".join(map(str, ids)),
                 "no-kv" if no_kv else "kv", show=lambda res: f"logits {res['logits'].shape}")  # fmt: skip
