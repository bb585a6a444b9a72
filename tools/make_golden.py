"""Regenerate the llama.cpp golden fixtures (developer tool, never a runtime dependency).

Needs llama-cpp-python (it builds llama.cpp from source)::

    python -m venv /tmp/oracle && /tmp/oracle/bin/pip install llama-cpp-python numpy
    /tmp/oracle/bin/python tools/make_golden.py SMOLLM2.gguf GEMMA3.gguf
    /tmp/oracle/bin/python tools/make_golden.py --greedy-only SMOLLM2.gguf GEMMA3.gguf  # greedy part only (seconds)
    /tmp/oracle/bin/python tools/make_golden.py --perplexity-only SMOLLM2.gguf GEMMA3.gguf  # perplexity part only
    /tmp/oracle/bin/python tools/make_golden.py --out DIR OTHER.gguf ...  # any model: DIR/golden_<stem>.*,
        # then KVRUN_GOLDEN_EXTRA=DIR pytest tests/test_golden.py holds kvrun to it as to the committed ones

Writes ``tests/fixtures/golden_<name>.npz`` / ``.json`` per model:
  * ``prompt_ids``: a 256-token prompt (llama.cpp's tokenization of GPL-3 text)
  * ``top_ids``, ``top_logp``: llama.cpp's 64 most likely tokens and their
    log-probabilities at every prompt position (to measure top-1 agreement
    and KL(llama.cpp || kvrun) without committing full 262k-wide logits)
  * greedy continuations (64 tokens) of 4 short prompts: ids, text, and at each
    step llama.cpp's margin (its top logit minus its second), which tells a
    clear choice from a near-tie that arithmetic noise may tip
  * perplexity of GPL-3 at ctx 512 scored as llama-perplexity does, with each window's
    negative log-likelihood (tests/test_golden.py scores the first windows only)
It does not import kvrun.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
TEXT = Path("/usr/share/common-licenses/GPL-3")
GREEDY_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
]
TOPK = 64


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def window_perplexity(llm: Llama, toks: list[int], n_ctx: int, add_bos: bool, progress=None) -> tuple[float, int, list[float]]:
    """llama-perplexity's figure: non-overlapping windows of ``n_ctx`` (first token
    BOS when the model adds one), each evaluated in one batch on a fresh cache,
    the second half scored.  Returns (perplexity, tokens scored, each window's summed NLL)."""
    nll, count, windows = 0.0, 0, []
    for c in range(len(toks) // n_ctx):
        win = list(toks[c * n_ctx : (c + 1) * n_ctx])
        if add_bos:
            win[0] = llm.token_bos()
        llm.reset()
        llm.eval(win)
        lp = log_softmax(np.asarray(llm.scores[n_ctx // 2 : n_ctx - 1], np.float32))
        tgt = np.asarray(toks[c * n_ctx + n_ctx // 2 + 1 : (c + 1) * n_ctx])
        windows.append(-float(lp[np.arange(len(tgt)), tgt].sum()))
        nll += windows[-1]
        count += len(tgt)
        if progress:
            progress(c + 1, math.exp(nll / count))
    return math.exp(nll / count), count, windows


def perplexity_entry(llm: Llama, toks: list[int], add_bos: bool, name: str, n_ctx: int = 512) -> dict:
    """The fixture's perplexity: the whole text's, and each window's NLL (so that a test may score the first few)."""
    n_chunks = len(toks) // n_ctx
    ppl, count, windows = window_perplexity(
        llm, toks, n_ctx, add_bos,
        progress=lambda c, p: print(f"{name}: window {c}/{n_chunks} ppl so far {p:.4f}", file=sys.stderr),
    )  # fmt: skip
    return {"text": str(TEXT), "ctx": n_ctx, "n_chunks": n_chunks, "n_scored": count, "ppl": ppl, "window_nll": windows}


def greedy_continuations(llm: Llama, add_bos: bool, n: int = 64) -> list[dict]:
    """llama.cpp's greedy text after each prompt (decode path, token by token), with its
    top-1 minus top-2 logit margin at every step."""
    greedy = []
    for pr in GREEDY_PROMPTS:
        ids = llm.tokenize(pr.encode(), add_bos=add_bos, special=False)
        llm.reset()
        llm.eval(ids)
        out, margin = [], []
        for _ in range(n):
            x = np.asarray(llm.scores[llm.n_tokens - 1], np.float32)
            t = int(np.argmax(x))
            top2 = np.partition(x, -2)[-2:]
            out.append(t)
            margin.append(round(float(top2[1] - top2[0]), 4))
            llm.eval([t])
        greedy.append({"prompt": pr, "prompt_ids": ids, "ids": out, "margin": margin, "text": llm.detokenize(out).decode("utf-8", "replace")})
    return greedy


def name_of(path: str) -> str:
    p = path.lower()
    return "gemma3" if "gemma" in p else "smollm2" if "smollm" in p else Path(path).stem


def main(paths: list[str]) -> None:
    global FIX
    greedy_only = "--greedy-only" in paths
    perplexity_only = "--perplexity-only" in paths
    paths = [p for p in paths if p not in ("--greedy-only", "--perplexity-only")]
    out = None
    if "--out" in paths:  # fixtures for other model files, named by file stem: KVRUN_GOLDEN_EXTRA in tests/test_golden.py
        i = paths.index("--out")
        out = Path(paths[i + 1])
        del paths[i : i + 2]
        FIX = out
        FIX.mkdir(parents=True, exist_ok=True)
    text = TEXT.read_text()
    for path in paths:
        name = Path(path).stem if out else name_of(path)
        llm = Llama(model_path=path, n_ctx=512, n_batch=512, logits_all=True, verbose=False, n_threads=2, seed=0)
        add_bos = llm._model.add_bos_token() if hasattr(llm._model, "add_bos_token") else True
        toks = llm.tokenize(text.encode(), add_bos=add_bos, special=False)

        if perplexity_only:
            meta = json.loads((FIX / f"golden_{name}.json").read_text())
            meta["perplexity"] = perplexity_entry(llm, toks, add_bos, name)
            (FIX / f"golden_{name}.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
            print(f"{name}: perplexity rewritten: {meta['perplexity']['ppl']:.4f}")
            continue

        # 1. logits of a 256-token prompt
        prompt = toks[:256]
        llm.reset()
        llm.eval(prompt)
        lp = log_softmax(np.asarray(llm.scores[: len(prompt)], np.float32))
        top = np.argsort(-lp, axis=1)[:, :TOPK]
        top_logp = np.take_along_axis(lp, top, 1).astype(np.float32)

        # 2. greedy continuations
        greedy = greedy_continuations(llm, add_bos)
        if greedy_only:
            meta = json.loads((FIX / f"golden_{name}.json").read_text())
            for old, new in zip(meta["greedy"], greedy):
                if old["ids"] != new["ids"]:
                    print(f"{name}: {old['prompt']!r}: llama.cpp's greedy ids changed (another llama.cpp build?)", file=sys.stderr)
            meta["greedy"] = greedy
            (FIX / f"golden_{name}.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
            print(f"{name}: greedy rewritten; smallest margins {sorted(m for g in greedy for m in g['margin'][:32])[:8]}")
            continue

        # 3. perplexity, llama-perplexity style: windows of 512, second half scored
        perplexity = perplexity_entry(llm, toks, add_bos, name)

        np.savez_compressed(FIX / f"golden_{name}.npz", prompt_ids=np.asarray(prompt, np.int32), top_ids=top.astype(np.int32), top_logp=top_logp)
        meta = {
            "regenerate": "python tools/make_golden.py SMOLLM2.gguf GEMMA3.gguf (with llama-cpp-python installed)",
            "model_file": Path(path).name,
            "model_path": str(Path(path).resolve()),
            "add_bos": bool(add_bos),
            "n_text_tokens": len(toks),
            "perplexity": perplexity,
            "greedy": greedy,
        }
        (FIX / f"golden_{name}.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        print(f"{name}: ppl {perplexity['ppl']:.4f} over {perplexity['n_scored']} tokens; greedy[0]: {greedy[0]['text'][:60]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
