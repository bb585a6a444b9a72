"""Regenerate tests/fixtures/embed_<name>.npz for the tiny encoders of ``tests/tiny_embed2.py``
(modern-bert, eurobert, llama-embed, t5encoder and t5encoder-relu): llama.cpp's token ids,
per-token hidden states and pooled embeddings (developer tool; llama.cpp is the oracle, never a kvrun
dependency).

    python tools/make_embed2_fixtures.py --oracle /work/llvenv/bin/python [NAME ...]

Each fixture holds, for every text of ``tiny_embed2.TEXTS``: ``ids_<k>`` (llama_tokenize with special
tokens), ``embd_<k>`` (pooling none: every token's last state), ``pooled_<k>`` (the file's own pooling, not
normalised), and ``sha256`` (the model file's digest: the test writes the same bytes again).  Flash
attention off: llama.cpp's f32 attention, as kvrun's.
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
from tiny_embed2 import TEXTS, VARIANTS, write_tiny_embed2  # noqa: E402

FIX = ROOT / "tests" / "fixtures"

_ORACLE = """
import json, sys, numpy as np
import llama_cpp
from llama_cpp import Llama
path, out, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
kw = dict(model_path=path, embedding=True, n_ctx=128, n_batch=128, n_ubatch=128, verbose=False, n_threads=1, flash_attn=False)
none = Llama(pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE, **kw)
own = Llama(**kw)
res = {}
for k, t in enumerate(texts):
    res[f"ids_{k}"] = np.asarray(none.tokenize(t.encode(), add_bos=True, special=True), np.int32)
    res[f"embd_{k}"] = np.asarray(none.embed(t, normalize=False), np.float32)
    res[f"pooled_{k}"] = np.asarray(own.embed(t, normalize=False), np.float32)
np.savez(out, **res)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    ap.add_argument("names", nargs="*", default=list(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.names:
            path = write_tiny_embed2(Path(tmp) / f"{name}.gguf", name)
            out = Path(tmp) / f"{name}.npz"
            subprocess.run([a.oracle, "-c", _ORACLE, str(path), str(out), json.dumps(TEXTS)], check=True)
            res = dict(np.load(out))
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            np.savez_compressed(FIX / f"embed_{name}.npz", sha256=digest, **res)
            print(f"{name}: {[len(res[f'ids_{k}']) for k in range(len(TEXTS))]} tokens, model {digest[:12]}")


if __name__ == "__main__":
    main()
