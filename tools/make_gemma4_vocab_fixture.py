"""Regenerate tests/fixtures/gemma4_vocab_tokens.json: llama.cpp's token ids, pieces and detokenized texts for
the tiny Gemma 4 vocabularies of ``tests/tiny_gemma4_vocab.py`` (developer tool; llama.cpp is the oracle,
never a kvrun dependency).

    python tools/make_gemma4_vocab_fixture.py --oracle /work/llvenv/bin/python

Per variant (``tiny_gemma4_vocab.VARIANTS``): the file's SHA-256; the vocabulary's BOS, EOS, add_bos and
end-of-generation ids; every token's piece (``llama_token_to_piece`` with special True and False, latin-1
so any byte survives JSON); and, for every text of ``tiny_gemma4_vocab.TEXTS``, ``llama_tokenize`` with
add_special and parse_special both True and both False, and ``Llama.detokenize`` of each (special True
and False respectively).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from tiny_gemma4_vocab import TEXTS, VARIANTS, write_tiny_gemma4_vocab  # noqa: E402

FIX = ROOT / "tests" / "fixtures"

_ORACLE = """
import ctypes, json, sys
import llama_cpp
from llama_cpp import Llama
path, out, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
llm = Llama(model_path=path, vocab_only=True, verbose=False)
vocab = llama_cpp.llama_model_get_vocab(llm.model)
buf = ctypes.create_string_buffer(256)
def piece(i, special):
    n = llama_cpp.llama_token_to_piece(vocab, i, buf, 256, 0, special)
    return buf.raw[:n].decode("latin-1")
n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
cases = []
for t in texts:
    s = llm.tokenize(t.encode(), add_bos=True, special=True)
    p = llm.tokenize(t.encode(), add_bos=False, special=False)
    cases.append({"text": t, "ids_special": s, "ids_plain": p, "detok_special": llm.detokenize(s, special=True).decode("latin-1"),
                  "detok_plain": llm.detokenize(p, special=False).decode("latin-1")})
res = {"bos": llama_cpp.llama_vocab_bos(vocab), "eos": llama_cpp.llama_vocab_eos(vocab),
       "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)), "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
       "eog": [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)],
       "pieces_special": [piece(i, True) for i in range(n_vocab)], "pieces_plain": [piece(i, False) for i in range(n_vocab)],
       "cases": cases}
json.dump(res, open(out, "w"))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    a = ap.parse_args()
    fixture = {"texts": TEXTS, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in VARIANTS:
            path = write_tiny_gemma4_vocab(Path(tmp) / f"{name}.gguf", name)
            out = Path(tmp) / f"{name}.json"
            subprocess.run([a.oracle, "-c", _ORACLE, str(path), str(out), json.dumps(TEXTS)], check=True)
            res = json.loads(out.read_text())
            res["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            fixture["variants"][name] = res
            print(f"{name}: {[c['ids_special'] for c in res['cases'][:4]]} ...")
    (FIX / "gemma4_vocab_tokens.json").write_text(json.dumps(fixture, ensure_ascii=True, indent=None, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
