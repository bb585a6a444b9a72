"""llama.cpp's perplexity with a quantized KV cache (developer tool; needs llama-cpp-python).

The reference for the compressed-cache issue: llama.cpp's ``-ctk/-ctv`` cache
types (q8_0, q4_0, ... need flash attention for V) on GPL-3, windows of
``--ctx`` tokens, second half of each window scored (llama-perplexity's
method, the same as ``kvrun perplexity`` and ``tools/make_golden.py``).
Every window is evaluated in one batch, so all of its tokens pass through the
quantized cache.

    /work/llvenv/bin/python tools/llamacpp_kv_ppl.py MODEL.gguf [--ctx 512] [--types f16,q8_0,q4_0]

Prints one line per cache type: type, bits per value, perplexity, change vs f16.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import llama_cpp
from llama_cpp import Llama
from make_golden import window_perplexity  # tools/ is on sys.path when run as a script

TEXT = Path("/usr/share/common-licenses/GPL-3")
GGML_TYPE = {"f16": 1, "q8_0": 8, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7}
BITS = {"f16": 16.0, "q8_0": 8.5, "q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0}


def ppl(path: str, text: str, n_ctx: int, kv_type: str, threads: int) -> tuple[float, int]:
    t = GGML_TYPE[kv_type]
    llm = Llama(
        model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, verbose=False,
        n_threads=threads, type_k=t, type_v=t, flash_attn=True,
    )  # fmt: skip
    add_bos = llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model))
    toks = llm.tokenize(text.encode(), add_bos=add_bos, special=False)
    return window_perplexity(llm, toks, n_ctx, add_bos)[:2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--types", default="f16,q8_0,q4_0")
    ap.add_argument("-t", "--threads", type=int, default=2)
    a = ap.parse_args()
    text = TEXT.read_text()
    base = None
    for ty in a.types.split(","):
        p, n = ppl(a.model, text, a.ctx, ty, a.threads)
        base = p if base is None else base
        print(f"llama.cpp {Path(a.model).name} ctx={a.ctx} cache={ty:5s} bits/value={BITS[ty]:.1f} ppl={p:.4f} ({100 * (p / base - 1):+.2f}% vs {a.types.split(',')[0]}) over {n} tokens")


if __name__ == "__main__":
    main()
