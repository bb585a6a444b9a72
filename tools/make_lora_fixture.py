"""Regenerate tests/fixtures/lora_llama.npz: llama.cpp's logits for the tiny llama with the tiny LoRA
adapter of ``tests/tinymodel.py`` applied at scale 0.7 (developer tool; llama.cpp is the oracle, never
a kvrun dependency).

    python tools/make_lora_fixture.py --oracle /work/llvenv/bin/python

Writes ``ids``, ``logits`` (every position), ``scale``, ``sha256_model``, ``sha256_lora``.
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
from tinymodel import write_tiny_lora, write_tiny_model  # noqa: E402

SCALE = 0.7
IDS = [int(x) for x in np.random.default_rng(7).integers(0, 261, 24)]

_ORACLE = """
import sys, numpy as np
from llama_cpp import Llama
path, lora, scale, out, ids = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], [int(t) for t in sys.argv[5].split(",")]
llm = Llama(model_path=path, lora_path=lora, lora_scale=scale, n_ctx=64, n_batch=64, n_ubatch=64, logits_all=True, verbose=False, n_threads=1)
llm.eval(ids)
np.save(out, np.asarray(llm.scores[: len(ids)], np.float32))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_model(Path(tmp) / "m.gguf", "llama")
        lora = write_tiny_lora(Path(tmp) / "lora.gguf", model)
        out = Path(tmp) / "logits.npy"
        subprocess.run([a.oracle, "-c", _ORACLE, str(model), str(lora), str(SCALE), str(out), ",".join(map(str, IDS))], check=True)
        logits = np.load(out)
        digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
        np.savez_compressed(ROOT / "tests" / "fixtures" / "lora_llama.npz", ids=np.asarray(IDS, np.int32), logits=logits, scale=SCALE,
                            sha256_model=digest(model), sha256_lora=digest(lora))  # fmt: skip
        print(f"logits {logits.shape}")


if __name__ == "__main__":
    main()
