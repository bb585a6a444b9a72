"""Regenerate tests/fixtures/embed_gemma-embedding.npz (and ``-nodense``): llama.cpp's token ids,
per-token outputs and mean-pooled embeddings of the tiny EmbeddingGemma-style encoder of
``tests/tinygemmaembed.py`` (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_gemma_embed_fixture.py --oracle /work/llvenv/bin/python

Each fixture holds, for every text of ``tinygemmaembed.TEXTS``: ``ids_<k>`` (llama_tokenize with
special tokens: BOS ... EOS), ``embd_<k>`` (pooling none: every token's final-normed state, through
dense_2 and dense_3 where the model has them, as llama.cpp's build_dense_out applies them to the
per-token output when nothing pools), ``pooled_<k>`` (pooling mean, the model's own: the pooled
vector through the projections, not normalised), and ``sha256`` (the model file's digest: the test
writes the same bytes again).  Flash attention off: llama.cpp's f32 attention, as kvrun's.
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
from tinygemmaembed import TEXTS, write_tiny_gemma_embedding  # noqa: E402

FIX = ROOT / "tests" / "fixtures"

_ORACLE = """
import json, sys, numpy as np
import llama_cpp
from llama_cpp import Llama
path, out, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
kw = dict(model_path=path, embedding=True, n_ctx=128, n_batch=128, n_ubatch=128, verbose=False, n_threads=1, flash_attn=False)
none = Llama(pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE, **kw)
mean = Llama(pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, **kw)
res = {}
for k, t in enumerate(texts):
    res[f"ids_{k}"] = np.asarray(none.tokenize(t.encode(), add_bos=True, special=True), np.int32)
    res[f"embd_{k}"] = np.asarray(none.embed(t, normalize=False), np.float32)
    res[f"pooled_{k}"] = np.asarray(mean.embed(t, normalize=False), np.float32)
np.savez(out, **res)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for dense, name in ((True, "gemma-embedding"), (False, "gemma-embedding-nodense")):
            path = write_tiny_gemma_embedding(Path(tmp) / f"{name}.gguf", dense=dense)
            out = Path(tmp) / f"{name}.npz"
            subprocess.run([a.oracle, "-c", _ORACLE, str(path), str(out), json.dumps(TEXTS)], check=True)
            res = dict(np.load(out))
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            np.savez_compressed(FIX / f"embed_{name}.npz", sha256=digest, **res)
            print(f"{name}: {[len(res[f'ids_{k}']) for k in range(len(TEXTS))]} tokens, model {digest[:12]}")


if __name__ == "__main__":
    main()
