"""Regenerate tests/fixtures/embed_<arch>.npz: llama.cpp's WordPiece token ids and per-token
hidden states for the tiny BERT-family encoders of ``tests/tinybert.py`` (developer tool; llama.cpp
is the oracle, never a kvrun dependency).

    python tools/make_embed_fixtures.py --oracle /work/llvenv/bin/python [bert nomic-bert]

Each fixture holds, for every text of ``tinybert.TEXTS``: ``ids_<k>`` (llama_tokenize with
special tokens: [CLS] ... [SEP]) and ``embd_<k>`` (the last layer's state of every token, pooling
none), and ``sha256`` (the model file's digest: the test writes the same bytes again).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from tinybert import TEXTS, write_tiny_bert  # noqa: E402

FIX = ROOT / "tests" / "fixtures"

_ORACLE = """
import json, sys, numpy as np
import llama_cpp
from llama_cpp import Llama
path, out, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
llm = Llama(model_path=path, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE, n_ctx=128, n_batch=128,
            n_ubatch=128, verbose=False, n_threads=1)
res = {}
for k, t in enumerate(texts):
    ids = llm.tokenize(t.encode(), add_bos=True, special=True)
    res[f"ids_{k}"] = np.asarray(ids, np.int32)
    res[f"embd_{k}"] = np.asarray(llm.embed(t, normalize=False), np.float32)
np.savez(out, **res)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    ap.add_argument("archs", nargs="*", default=["bert", "nomic-bert"])
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.archs:
            path = write_tiny_bert(Path(tmp) / f"{arch}.gguf", arch)
            out = Path(tmp) / f"{arch}.npz"
            subprocess.run([a.oracle, "-c", _ORACLE, str(path), str(out), json.dumps(TEXTS)], check=True)
            res = dict(np.load(out))
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            np.savez_compressed(FIX / f"embed_{arch}.npz", sha256=digest, **res)
            print(f"{arch}: {[list(res[f'ids_{k}']) for k in range(len(TEXTS))]}, model {digest[:12]}")


if __name__ == "__main__":
    main()
