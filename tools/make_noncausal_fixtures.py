"""Regenerate tests/fixtures/arch_<name>.npz for the non-causal models tools/make_arch_fixtures.py cannot: llama.cpp's
logits for a tiny random model whose attention sees the whole batch both ways (RND1, a diffusion language model), the
prompt evaluated as one batch (developer tool; llama.cpp is the oracle, never a kvrun dependency).

llama.cpp builds such a model without a KV cache, which llama-cpp-python's ``eval`` expects to clear before a batch:
the oracle skips that call, and evaluates the 40 positions of make_arch_fixtures.py's prompt in one batch.  Run with
kvrun's environment, pointing at a Python that has llama-cpp-python::

    python tools/make_noncausal_fixtures.py --oracle /work/llvenv/bin/python [NAME ...]

Writes ``ids``, ``logits`` (every position) and ``sha256`` (the model file's digest), as make_arch_fixtures.py does.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))
from make_arch_fixtures import IDS  # noqa: E402
from tinymodel import write_tiny_model  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
#: name: write_tiny_model's arguments
MODELS = {"rnd1": {"arch": "rnd1", "seed": 1}}  # (seed 0: two experts tie at one position)

_ORACLE = """
import sys, numpy as np
from llama_cpp import Llama
path, out, ids = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")]
llm = Llama(model_path=path, n_ctx=64, n_batch=64, n_ubatch=64, logits_all=True, verbose=False, n_threads=1)
llm._ctx.kv_cache_seq_rm = lambda *a: None  # (no KV cache: nothing to clear)
llm.eval(ids)
np.save(out, np.asarray(llm.scores[: len(ids)], np.float32))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    ap.add_argument("names", nargs="*", default=list(MODELS), help=f"of {', '.join(MODELS)}")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.names:
            path = write_tiny_model(Path(tmp) / f"{name}.gguf", **MODELS[name])
            out = Path(tmp) / f"{name}.npy"
            subprocess.run([a.oracle, "-c", _ORACLE, str(path), str(out), ",".join(map(str, IDS))], check=True)
            logits = np.load(out)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            np.savez_compressed(FIX / f"arch_{name}.npz", ids=np.asarray(IDS, np.int32), logits=logits, sha256=digest)
            print(f"{name}: logits {logits.shape}, model {digest[:12]}")


if __name__ == "__main__":
    main()
