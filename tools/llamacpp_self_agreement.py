"""How well does llama.cpp agree with itself?  (developer tool; needs llama-cpp-python)

The golden fixtures hold llama.cpp's logits for a 256-token prompt evaluated as one
batch.  This script evaluates the same prompt in llama.cpp again, as one batch, in
batches of 32, and token by token (its decode path), and prints each one's top-1
agreement with the fixture and KL(batch || decode).  Measured (llama-cpp-python
0.3.36, 2 threads, this machine):

    smollm2 decode top1 vs golden 0.9609   KL(batch||decode) 0.00447
    gemma3  decode top1 vs golden 0.9648   KL(batch||decode) 0.00760

i.e. llama.cpp's own decode path agrees with its prompt path less often than
kvrun agrees with either (kvrun vs fixture: 0.965 / 0.969, KL 0.0043 / 0.0059):
a top-1 agreement of 0.99 is below llama.cpp's own arithmetic noise.

    /work/oracle/bin/python tools/llamacpp_self_agreement.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from llama_cpp import Llama

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MODELS = Path(os.environ.get("KVRUN_MODELS", Path.home() / ".cache" / "kvrun" / "models"))
FILES = {"smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma3": "gemma-3-270m-q4_k_m.gguf"}


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def logits(path: Path, ids: list[int], mode: str) -> np.ndarray:
    llm = Llama(model_path=str(path), n_ctx=512, n_batch=512 if mode == "batch512" else 32, logits_all=True, verbose=False, n_threads=2)
    if mode == "decode":
        for t in ids:
            llm.eval([t])
    else:
        llm.eval(ids)
    return np.array(llm.scores[: len(ids)], np.float64)


def main() -> None:
    for name, file in FILES.items():
        npz = np.load(FIX / f"golden_{name}.npz")
        ids = [int(x) for x in npz["prompt_ids"]]
        res = {m: logits(MODELS / file, ids, m) for m in ("batch512", "batch32", "decode")}
        for m, lg in res.items():
            print(f"{name} {m:8s} top1 vs golden {(lg.argmax(1) == npz['top_ids'][:, 0]).mean():.4f}")
        p, q = log_softmax(res["batch512"]), log_softmax(res["decode"])
        print(f"{name} KL(batch||decode) {(np.exp(p) * (p - q)).sum(1).mean():.5f}")


if __name__ == "__main__":
    main()
