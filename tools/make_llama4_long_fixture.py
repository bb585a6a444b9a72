"""Regenerate tests/fixtures/llama4_long.npz: llama.cpp's logits for the tiny Llama 4 (``tinymodel.FIXTURE_MODELS``'s
"llama4") past its first chunk (developer tool; llama.cpp is the oracle, never a kvrun dependency).

llama.cpp fixes Llama 4's attention chunk and its NoPE layers' temperature step at 8192 positions in code (no file
states them), so the 40-token fixture of tools/make_arch_fixtures.py sees neither: this prompt runs 8240 positions,
and the logits kept are those of the last 80 (positions 8160-8239), across the first chunk's end at 8192 (and the
temperature's first step at position 8191, ``floor((pos + 1) / 8192)``).

Run with kvrun's environment, pointing at a Python that has llama-cpp-python::

    python tools/make_llama4_long_fixture.py --oracle /work/llvenv/bin/python

Writes ``ids`` (the prompt), ``first`` (the first position whose logits are kept), ``logits`` (llama.cpp's, positions
``first`` on, one batch after another of 512), ``sha256`` (the model file's digest).
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
from tinymodel import FIXTURE_MODELS, write_tiny_model  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "llama4_long.npz"
N_TOK, FIRST = 8240, 8160
#: the prompt: byte tokens and the merged ones
IDS = [int(x) for x in np.random.default_rng(7).integers(0, 261, N_TOK)]

_ORACLE = """
import sys, numpy as np
from llama_cpp import Llama
path, out, first, ids = sys.argv[1], sys.argv[2], int(sys.argv[3]), [int(t) for t in sys.argv[4].split(",")]
llm = Llama(model_path=path, n_ctx=len(ids) + 16, n_batch=512, n_ubatch=512, logits_all=True, verbose=False, n_threads=2)
llm.eval(ids)
np.save(out, np.asarray(llm.scores[first : len(ids)], np.float32))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_model(Path(tmp) / "llama4.gguf", **FIXTURE_MODELS["llama4"])
        out = Path(tmp) / "logits.npy"
        subprocess.run([a.oracle, "-c", _ORACLE, str(path), str(out), str(FIRST), ",".join(map(str, IDS))], check=True)
        logits = np.load(out)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        np.savez_compressed(OUT, ids=np.asarray(IDS, np.int32), first=FIRST, logits=logits, sha256=digest)
        print(f"llama4 long: logits {logits.shape} from position {FIRST}, model {digest[:12]}")


if __name__ == "__main__":
    main()
