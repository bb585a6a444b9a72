"""Regenerate tests/fixtures/rerank_<arch>.npz: llama.cpp's reranking of ``tiny_rerank.DOCS``
against ``tiny_rerank.QUERY`` by the tiny rerankers of ``tests/tiny_rerank.py`` (developer tool;
llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_rerank_fixtures.py --oracle /work/llvenv/bin/python [bert qwen3]

llama-cpp-python has no rerank call, so the oracle builds each (query, document) prompt as
llama-server's ``format_prompt_rerank`` does (the file's ``rerank`` chat template with {query} and
{document} replaced, tokenized with special tokens parsed and nothing added; else BOS query [EOS]
[SEP] document [EOS] by the vocabulary's add_bos/add_eos/add_sep, EOS falling back to SEP), decodes
it with pooling RANK and reads the sequence's ``n_cls_out`` floats, as llama-server's
``send_rerank`` (whose score is the first).  Each fixture holds ``ids_<k>`` (the prompt's tokens),
``out_<k>`` (the pooled output) and ``sha256`` (the model file's digest: the test writes the same
bytes again).

Flash attention (:data:`FLASH`) is set as kvrun's attention rounds: Qwen3's decoder keeps K and V
in fp16 and weighs V by float32 probabilities, as llama.cpp's flash attention (llama-server's
default ``-fa auto`` on a CPU; without it llama.cpp rounds the probabilities to fp16 too and the
tiny Qwen3's scores move by up to 7e-4); BERT's encoder attends in float32, as llama.cpp without
it (the embedding fixtures' setting; with it the tiny BERT's scores move by up to 1.4e-2).
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
from tiny_rerank import DOCS, QUERY, WRITERS  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
FLASH = {"bert": False, "qwen3": True}  #: llama.cpp's flash attention by architecture (see above)

_ORACLE = """
import json, sys, numpy as np
import llama_cpp as lc
from llama_cpp import Llama
path, out, query, docs, flash = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5] == "1"
llm = Llama(model_path=path, embedding=True, pooling_type=lc.LLAMA_POOLING_TYPE_RANK, n_ctx=512, n_batch=512,
            n_ubatch=512, verbose=False, n_threads=1, flash_attn=flash)
vocab = lc.llama_model_get_vocab(llm.model)
template = lc.llama_model_chat_template(llm.model, b"rerank")
n_cls = lc.llama_model_n_cls_out(llm.model)

def tok(text, special):
    return llm.tokenize(text.encode(), add_bos=False, special=special)

res = {}
for k, doc in enumerate(docs):
    if template is not None:
        ids = tok(template.decode().replace("{query}", query).replace("{document}", doc), True)
    else:
        eos = lc.llama_vocab_eos(vocab)
        eos = lc.llama_vocab_sep(vocab) if eos == -1 else eos
        ids = [lc.llama_vocab_bos(vocab)] if lc.llama_vocab_get_add_bos(vocab) else []
        ids += tok(query, False)
        ids += [eos] if lc.llama_vocab_get_add_eos(vocab) else []
        ids += [lc.llama_vocab_sep(vocab)] if lc.llama_vocab_get_add_sep(vocab) else []
        ids += tok(doc, False)
        ids += [eos] if lc.llama_vocab_get_add_eos(vocab) else []
    llm._batch.reset()
    llm._batch.add_sequence(ids, 0, True)
    llm._ctx.kv_cache_clear()
    llm._ctx.decode(llm._batch)
    ptr = lc.llama_get_embeddings_seq(llm._ctx.ctx, 0)
    res[f"ids_{k}"] = np.asarray(ids, np.int32)
    res[f"out_{k}"] = np.asarray([ptr[i] for i in range(n_cls)], np.float32)
np.savez(out, **res)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    ap.add_argument("archs", nargs="*", default=list(WRITERS))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.archs:
            path = WRITERS[arch](Path(tmp) / f"{arch}.gguf")
            out = Path(tmp) / f"{arch}.npz"
            subprocess.run([a.oracle, "-c", _ORACLE, str(path), str(out), QUERY, json.dumps(DOCS), str(int(FLASH[arch]))], check=True)
            res = dict(np.load(out))
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            np.savez_compressed(FIX / f"rerank_{arch}.npz", sha256=digest, **res)
            print(f"{arch}: scores {[float(res[f'out_{k}'][0]) for k in range(len(DOCS))]}, model {digest[:12]}")


if __name__ == "__main__":
    main()
