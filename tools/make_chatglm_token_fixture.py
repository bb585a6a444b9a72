"""Regenerate tests/fixtures/tokens_chatglm.json: llama.cpp's token ids for ChatGLM's two vocabularies in little
(developer tool; llama.cpp is the oracle, never a kvrun dependency).

The tiny ChatGLM files of ``tests/tiny_vl_falcon_chatglm.py``: ChatGLM3's SentencePiece layout (pre ``chatglm-spm``)
and GLM-4-9B-chat's byte-level one (pre ``chatglm-bpe``, no BOS stated).  Records llama.cpp's BOS and EOS and the ids
of every text of ``TEXTS`` with special tokens parsed and not::

    python tools/make_chatglm_token_fixture.py --oracle /work/llvenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from tiny_vl_falcon_chatglm import write_tiny_vl_falcon_chatglm  # noqa: E402

TEXTS = ["", "ab", " ab ab", "Hello world", "[gMASK]sop<|user|>\nab<|assistant|>", "ab[gMASK] a b\n\nab", "é€ x", "  Hello  world\n"]

_ORACLE = """
import json, sys
from llama_cpp import Llama
texts = json.loads(sys.argv[2])
llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
print(json.dumps({"bos": llm.token_bos(), "eos": llm.token_eos(),
                  "ids": {str(s): [llm.tokenize(t.encode(), add_bos=True, special=s) for t in texts] for s in (True, False)}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    a = ap.parse_args()
    out = {"texts": TEXTS}
    with tempfile.TemporaryDirectory() as tmp:
        for name, variant in (("chatglm-spm", "spm"), ("chatglm-bpe", "")):
            path = write_tiny_vl_falcon_chatglm(Path(tmp) / f"{name}.gguf", "chatglm", variant=variant)
            r = subprocess.run([a.oracle, "-c", _ORACLE, str(path), json.dumps(TEXTS)], check=True, capture_output=True, text=True)
            out[name] = json.loads(r.stdout.strip().splitlines()[-1])
    (ROOT / "tests" / "fixtures" / "tokens_chatglm.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
