"""Regenerate tests/fixtures/arch_<arch>.npz: llama.cpp's logits for a tiny random model of each
architecture (developer tool; llama.cpp is the oracle, never a kvrun dependency).

A real checkpoint of every architecture is not at hand (and too big for CI), but llama.cpp runs
any well-formed GGUF, random weights included.  So each architecture is held to llama.cpp on the
tiny model ``tests/tinymodel.py`` writes for it (seeded: the test writes the same bytes again and
checks their digest), float32 weights, so the comparison is of the architecture's arithmetic:
norms, rope layout, attention scaling and windows, activations, softcaps.

Run with kvrun's environment, pointing at a Python that has llama-cpp-python::

    python tools/make_arch_fixtures.py --oracle /work/llvenv/bin/python [NAME ...]

Writes ``tests/fixtures/arch_<name>.npz`` (``tinymodel.FIXTURE_MODELS``): ``ids`` (the prompt), ``logits`` (llama.cpp's, every
position, one batch), ``sha256`` (the model file's digest).
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
from tinymodel import FIXTURE_MODELS as MODELS  # noqa: E402
from tinymodel import write_tiny_model  # noqa: E402

FIX = ROOT / "tests" / "fixtures"

#: the prompt: byte tokens and the merged ones, 40 positions (past the tiny Gemma's window of 8)
IDS = [int(x) for x in np.random.default_rng(7).integers(0, 261, 40)]

_ORACLE = """
import sys, numpy as np
from llama_cpp import Llama
path, out, ids = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")]
llm = Llama(model_path=path, n_ctx=64, n_batch=64, n_ubatch=64, logits_all=True, verbose=False, n_threads=1)
llm.eval(ids)
np.save(out, np.asarray(llm.scores[: len(ids)], np.float32))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    ap.add_argument("names", nargs="*", default=list(MODELS), help=f"of {', '.join(MODELS)}")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.names:
            path = write_tiny_model(Path(tmp) / f"{arch}.gguf", **MODELS[arch])
            out = Path(tmp) / f"{arch}.npy"
            subprocess.run([a.oracle, "-c", _ORACLE, str(path), str(out), ",".join(map(str, IDS))], check=True)
            logits = np.load(out)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            np.savez_compressed(FIX / f"arch_{arch}.npz", ids=np.asarray(IDS, np.int32), logits=logits, sha256=digest)
            print(f"{arch}: logits {logits.shape}, model {digest[:12]}")


if __name__ == "__main__":
    main()
