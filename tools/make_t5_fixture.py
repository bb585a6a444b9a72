"""Regenerate tests/fixtures/t5_<name>.npz for the tiny T5 encoder-decoders of ``tests/tiny_t5.py``: llama.cpp's
decoder logits after it encoded a prompt (developer tool; llama.cpp is the oracle, never a kvrun dependency).

    python tools/make_t5_fixture.py --oracle /work/llvenv/bin/python [NAME ...]

Through llama-cpp-python's low-level API, as llama-cli runs an encoder-decoder: ``llama_encode`` over the prompt's
ids (llama_tokenize with special tokens: T5's ``</s>`` appended), then ``llama_decode`` from
``llama_model_decoder_start_token``.  For every prompt of ``PROMPTS`` the fixture holds ``ids_<k>``; ``prefill_<k>``,
the logits of every token of [start] + ``forced_<k>`` fed in one batch; ``steps_<k>``, the same fed a token a
``llama_decode``; ``greedy_<k>``, the ids greedy decoding writes (until ``</s>`` or 12); and ``start`` and ``sha256``
(the model file's digest: the test writes the same bytes again).  Flash attention off, as the other fixtures'.
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
from tiny_t5 import VARIANTS, write_tiny_t5  # noqa: E402

FIX = ROOT / "tests" / "fixtures"

#: the prompts: a translation-style one and one past the encoder's exact buckets (8 of 16 each way)
PROMPTS = ["translate English to German: Hello", "the cat sat on the mat. the cat sat on the mat again, and then the cat ran."]
N_FORCED = 24  # (decoder distances up to 24: past the exact buckets, through the log-spaced ones)
N_GREEDY = 12

_ORACLE = """
import json, sys, ctypes, numpy as np
import llama_cpp as L
from llama_cpp import Llama
path, out, prompts, forced, n_greedy = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
llm = Llama(model_path=path, n_ctx=64, n_batch=64, n_ubatch=64, verbose=False, n_threads=1, flash_attn=False)
ctx, model = llm._ctx.ctx, llm._model.model
n_vocab = llm.n_vocab()
start = L.llama_model_decoder_start_token(model)
mem = L.llama_get_memory(ctx)

def encode(ids):
    L.llama_memory_clear(mem, True)
    arr = (L.llama_token * len(ids))(*ids)
    assert L.llama_encode(ctx, L.llama_batch_get_one(arr, len(ids))) == 0

def decode(toks, pos0):
    b = L.llama_batch_init(len(toks), 0, 1)
    for i, t in enumerate(toks):
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, pos0 + i, 1, 1
        b.seq_id[i][0] = 0
    b.n_tokens = len(toks)
    assert L.llama_decode(ctx, b) == 0
    rows = np.array([np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,)) for i in range(len(toks))], np.float32)
    L.llama_batch_free(b)
    return rows

res = {"start": np.int32(start)}
eos = L.llama_vocab_eos(L.llama_model_get_vocab(model))
for k, p in enumerate(prompts):
    ids = llm.tokenize(p.encode(), add_bos=True, special=True)
    res[f"ids_{k}"] = np.asarray(ids, np.int32)
    seq = [start] + forced[k]
    encode(ids)
    res[f"prefill_{k}"] = decode(seq, 0)
    encode(ids)
    res[f"steps_{k}"] = np.concatenate([decode([t], i) for i, t in enumerate(seq)])
    encode(ids)
    out_ids, tok = [], start
    for i in range(n_greedy):
        tok = int(np.argmax(decode([tok], i)[0]))
        if tok == eos:
            break
        out_ids.append(tok)
    res[f"greedy_{k}"] = np.asarray(out_ids, np.int32)
np.savez(out, **res)
"""


def forced_tokens(n_vocab: int) -> list[list[int]]:
    """The decoder tokens each prompt's logits are read after: seeded, any id but ``</s>`` (2) and the start (0)."""
    rng = np.random.default_rng(5)
    return [[int(t) for t in rng.integers(3, n_vocab, N_FORCED)] for _ in PROMPTS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    ap.add_argument("names", nargs="*", default=list(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    a = ap.parse_args()
    from kvrun.loaders.gguf_file import GGUFFile

    with tempfile.TemporaryDirectory() as tmp:
        for name in a.names:
            path = write_tiny_t5(Path(tmp) / f"{name}.gguf", name)
            n_vocab = len(GGUFFile(path).metadata["tokenizer.ggml.tokens"])
            forced = forced_tokens(n_vocab)
            out = Path(tmp) / f"{name}.npz"
            subprocess.run([a.oracle, "-c", _ORACLE, str(path), str(out), json.dumps(PROMPTS), json.dumps(forced), str(N_GREEDY)], check=True)
            res = dict(np.load(out))
            for k, f in enumerate(forced):
                res[f"forced_{k}"] = np.asarray(f, np.int32)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            np.savez_compressed(FIX / f"t5_{name}.npz", sha256=digest, **res)
            print(f"{name}: prompts {[len(res[f'ids_{k}']) for k in range(len(PROMPTS))]} tokens, "
                  f"greedy {[res[f'greedy_{k}'].tolist() for k in range(len(PROMPTS))]}, model {digest[:12]}")  # fmt: skip


if __name__ == "__main__":
    main()
