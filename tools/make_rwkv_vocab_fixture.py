"""Regenerate tests/fixtures/tokens_rwkv_world.json: llama.cpp's ids for texts on the small RWKV World vocabulary
``tests/tiny_rwkv7.py`` writes (developer tool; llama.cpp is the oracle, never a kvrun dependency).

Run with kvrun's environment, pointing at a Python that has llama-cpp-python::

    python tools/make_rwkv_vocab_fixture.py --oracle /work/llvenv/bin/python

Each case records ``tokenize(text, add_bos, special)`` with both flags, and the pieces of the ids
(``llama_token_to_piece(..., special=True)``, latin-1 decoded so any byte survives JSON); the header the
vocabulary file's digest, the end-of-generation ids, BOS/EOS and add_bos.
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
from tiny_rwkv7 import write_world_vocab  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "tokens_rwkv_world.json"

#: texts: longest matches, a prefix that is no token ("wor"), bytes of a character, quotes and backslashes, tabs, a
#: duplicated text (the later id), runs of spaces, control-token text with and without parsing, an unused token's text
TEXTS = ["", "hello world", "the the\n\nthe", " the world\n\n\n", "worx wor world", "é中文中国", "it's a'b\" ok", "\\\\\\x",
         "\t\t\t", "abcab abc", "   three   spaces ", "<s>hello<s>", "x<s <s", "[PAD300]", "😀 ok", "line\r\nbreak"]  # fmt: skip

_ORACLE = """
import ctypes, json, sys
import llama_cpp
from llama_cpp import Llama
path, out = sys.argv[1], sys.argv[2]
texts = json.loads(sys.argv[3])
llm = Llama(model_path=path, vocab_only=True, verbose=False)
vocab = llm._model.vocab
def piece(t):
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, t, buf, len(buf), 0, True)
    return bytes(buf.raw[:n]).decode("latin-1")
n = llama_cpp.llama_vocab_n_tokens(vocab)
res = {"bos_id": llama_cpp.llama_vocab_bos(vocab), "eos_id": llama_cpp.llama_vocab_eos(vocab),
       "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
       "eog_ids": [i for i in range(n) if llama_cpp.llama_vocab_is_eog(vocab, i)],
       "pieces_latin1": [piece(i) for i in range(n)], "cases": []}
for text in texts:
    case = {"text": text}
    for add in (True, False):
        for special in (True, False):
            case[f"ids_add{int(add)}_special{int(special)}"] = llm.tokenize(text.encode(), add_bos=add, special=special)
    res["cases"].append(case)
json.dump(res, open(out, "w"), indent=1, ensure_ascii=False)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_world_vocab(Path(tmp) / "world.gguf")
        out = Path(tmp) / "out.json"
        subprocess.run([a.oracle, "-c", _ORACLE, str(path), str(out), json.dumps(TEXTS)], check=True)
        res = json.loads(out.read_text())
        res = {"regenerate": "python tools/make_rwkv_vocab_fixture.py --oracle /path/to/llama-cpp-python-venv/bin/python",
               "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), **res}
    OUT.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    print(f"{OUT.name}: {len(res['cases'])} texts, {len(res['pieces_latin1'])} tokens")


if __name__ == "__main__":
    main()
