"""Regenerate tests/fixtures/ugm_tokens.json and tests/fixtures/embed_ugm.npz: llama.cpp's Unigram
("t5") token ids for the tiny XLM-R-style vocabularies of ``tests/tiny_ugm.py``, and its per-token
hidden states for the tiny ``bert`` encoder that carries one (developer tool; llama.cpp is the
oracle, never a kvrun dependency).

    python tools/make_ugm_fixture.py --oracle /work/llvenv/bin/python

ugm_tokens.json: per variant (``tiny_ugm.VARIANTS``), the model's SHA-256, every token's piece
(``llama_token_to_piece`` with special True and False, latin-1 so any byte survives JSON) and, for
every text of ``tiny_ugm.TEXTS``, ``llama_tokenize`` with add_special and parse_special both True
and both False.  embed_ugm.npz: for the "xlmr" variant, ``ids_<k>`` and ``embd_<k>`` (the last
layer's state of every token, pooling none) as tools/make_embed_fixtures.py records them.
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
from tiny_ugm import EMBED_TEXTS, TEXTS, VARIANTS, write_tiny_ugm  # noqa: E402

FIX = ROOT / "tests" / "fixtures"

_ORACLE = """
import ctypes, json, sys, numpy as np
import llama_cpp
from llama_cpp import Llama
path, mode, out, texts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if mode == "tokens":
    llm = Llama(model_path=path, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    buf = ctypes.create_string_buffer(256)
    def piece(i, special):
        n = llama_cpp.llama_token_to_piece(vocab, i, buf, 256, 0, special)
        return buf.raw[:n].decode("latin-1")
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    res = {"pieces_special": [piece(i, True) for i in range(n_vocab)], "pieces_plain": [piece(i, False) for i in range(n_vocab)],
           "cases": [{"text": t, "ids_special": llm.tokenize(t.encode(), add_bos=True, special=True),
                      "ids_plain": llm.tokenize(t.encode(), add_bos=False, special=False)} for t in texts]}
    json.dump(res, open(out, "w"))
else:
    llm = Llama(model_path=path, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE, n_ctx=128, n_batch=128,
                n_ubatch=128, verbose=False, n_threads=1)
    res = {}
    for k, t in enumerate(texts):
        res[f"ids_{k}"] = np.asarray(llm.tokenize(t.encode(), add_bos=True, special=True), np.int32)
        res[f"embd_{k}"] = np.asarray(llm.embed(t, normalize=False), np.float32)
    np.savez(out, **res)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    a = ap.parse_args()
    fixture = {"texts": TEXTS, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in VARIANTS:
            path = write_tiny_ugm(Path(tmp) / f"{name}.gguf", name)
            out = Path(tmp) / f"{name}.json"
            subprocess.run([a.oracle, "-c", _ORACLE, str(path), "tokens", str(out), json.dumps(TEXTS)], check=True)
            res = json.loads(out.read_text())
            res["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            fixture["variants"][name] = res
            print(f"{name}: {[c['ids_special'] for c in res['cases'][:4]]} ...")
            if name == "xlmr":
                npz = Path(tmp) / "embed.npz"
                subprocess.run([a.oracle, "-c", _ORACLE, str(path), "embed", str(npz), json.dumps(EMBED_TEXTS)], check=True)
                np.savez_compressed(FIX / "embed_ugm.npz", sha256=res["sha256"], **dict(np.load(npz)))
    (FIX / "ugm_tokens.json").write_text(json.dumps(fixture, ensure_ascii=True, indent=None, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
