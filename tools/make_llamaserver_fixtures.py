"""Regenerate tests/fixtures/llamaserver_fim.json: llama.cpp's FIM token ids, /tokenize ids and /infill prompt
tokens for the tiny FIM vocabularies of ``tests/tiny_fim.py`` (developer tool; llama.cpp is the oracle, never a
kvrun dependency).

    python tools/make_llamaserver_fixtures.py --oracle /work/llvenv/bin/python

For each variant the oracle (llama-cpp-python, ``vocab_only``) gives ``llama_vocab_fim_pre`` ... ``_sep`` (the
ids a GGUF states, or llama.cpp's fallbacks by token text), ``llama_vocab_get_add_bos``, and ``llama_tokenize``
of every text of TOKENIZE with add_special and parse_special both ways.  The /infill prompts are assembled in
the oracle's process from its own tokenizations, step for step as llama-server's ``format_infill``
(tools/server/utils.hpp; ``format_prompt_infill`` in later versions) writes them, so the fixture holds
llama-server's token ids for INFILL's requests; ``sha256`` is each model file's digest (the test writes the
same bytes again).
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
from tiny_fim import FIM_VOCABS, write_tiny_fim  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "llamaserver_fim.json"

#: texts tokenized with add_special and parse_special both ways (a FIM token's text is parsed only with parse_special)
TOKENIZE = ["def f(x):\n    return x", "the cat sat", "h\u00e9llo \u2713", "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
            "<PRE> x <SUF>y <MID>", "<fim:pre>z<fim:mid>"]  # fmt: skip
#: /infill requests: input_prefix, input_suffix, input_extra, prompt, and the server's n_ctx and n_batch
INFILL = [
    {"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n\nprint(add(1, 2))\n", "input_extra": [], "prompt": "",
     "n_ctx": 4096, "n_batch": 2048},
    {"input_prefix": "import os\n\ndef main():\n    ", "input_suffix": "\n    return 0\n", "prompt": "path = ",
     "input_extra": [{"filename": "util.py", "text": "def helper():\n    pass\n"}, {"text": "X = 1\n"}], "n_ctx": 4096, "n_batch": 2048},
    # the prefix keeps its last 3 * (64 // 4) tokens, the suffix its first 64 // 4 - 2 - len(prompt), the extra files
    # their last 100 - 64 + 2
    {"input_prefix": "x = 1\n" * 20, "input_suffix": "y = 2\n" * 20, "prompt": "z",
     "input_extra": [{"filename": "a.py", "text": "A = 'a'\n" * 8}, {"filename": "b.py", "text": "B = 'b'\n" * 8}], "n_ctx": 100, "n_batch": 64},
    # FIM tokens' texts in the code are plain text (tokenized without special tokens)
    {"input_prefix": "s = '<|fim_suffix|><SUF><fim:suf>'\n", "input_suffix": "", "input_extra": [], "prompt": "", "n_ctx": 4096,
     "n_batch": 2048},
]  # fmt: skip

_ORACLE = r"""
import json, sys
import llama_cpp
from llama_cpp import Llama
path, tokenize, infill = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
llm = Llama(model_path=path, vocab_only=True, verbose=False)
v = llama_cpp.llama_model_get_vocab(llm.model)
fim = {k: getattr(llama_cpp, "llama_vocab_" + k)(v) for k in ("fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")}
NULL = -1
K_CHUNK_PREFIX = bytes([0x0a, 0x0a, 0x2d, 0x2d, 0x2d, 0x20, 0x73, 0x6e, 0x69, 0x70, 0x70, 0x65, 0x74, 0x20, 0x2d, 0x2d, 0x2d, 0x0a,
                        0x0a]).decode()  # (format_infill's k_chunk_prefix_str, its terminating NUL left out)
add_bos, bos = bool(llama_cpp.llama_vocab_get_add_bos(v)), llama_cpp.llama_vocab_bos(v)

def tok(text, add_special, parse_special):
    return llm.tokenize(text.encode(), add_bos=add_special, special=parse_special) if text else []

res = {"fim": fim, "add_bos": add_bos, "tokenize": [], "infill": []}
for t in tokenize:
    res["tokenize"].append({"text": t, "ids": {f"{int(a)}{int(p)}": tok(t, a, p) for a in (False, True) for p in (False, True)}})
for c in infill:  # format_infill, step for step
    n_batch, n_ctx, n_predict = c["n_batch"], c["n_ctx"], -1
    prompt = tok(c["prompt"], False, True)
    extra = []
    pre, suf = tok(c["input_prefix"], False, False), tok(c["input_suffix"], False, False)
    if fim["fim_rep"] != NULL:
        extra += [fim["fim_rep"]] + tok("myproject\n", False, False)
    for chunk in c["input_extra"]:
        if fim["fim_sep"] != NULL:
            extra += [fim["fim_sep"]] + tok(chunk.get("filename", "tmp") + "\n", False, False)
        else:
            extra += tok(K_CHUNK_PREFIX, False, False)
        extra += tok(chunk.get("text", ""), False, False)
    if fim["fim_sep"] != NULL:
        extra += [fim["fim_sep"]] + tok("filename\n", False, False)
    n_prefix_take = min(len(pre), 3 * (n_batch // 4))
    n_suffix_take = min(len(suf), max(0, (n_batch // 4) - (2 + len(prompt))))
    n_extra_take = min(max(0, n_ctx - n_batch - 2 * n_predict), len(extra))
    pre = pre[len(pre) - n_prefix_take:]
    suf = suf[:n_suffix_take]
    pre = [fim["fim_pre"]] + pre + prompt
    suf = [fim["fim_suf"]] + suf
    inp, end = pre, suf
    if add_bos:
        inp = [bos] + inp
    inp = extra[len(extra) - n_extra_take:] + inp
    res["infill"].append(dict(c, ids=inp + end + [fim["fim_mid"]]))
print(json.dumps(res))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    a = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in FIM_VOCABS:
            path = write_tiny_fim(Path(tmp) / f"{variant}.gguf", variant)
            r = subprocess.run([a.oracle, "-c", _ORACLE, str(path), json.dumps(TOKENIZE), json.dumps(INFILL)], check=True,
                               capture_output=True, text=True)  # fmt: skip
            res = json.loads(r.stdout.strip().splitlines()[-1])
            res["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            out[variant] = res
            print(f"{variant}: fim {res['fim']}, infill lengths {[len(c['ids']) for c in res['infill']]}")
    lines = [f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in out.items()]  # (a variant a line)
    FIX.write_text("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    main()
