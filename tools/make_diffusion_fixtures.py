"""Regenerate tests/fixtures/diffusion_<arch>.npz: llama.cpp's forward passes and llama-diffusion-cli's denoising of
the tiny diffusion language models (tests/tiny_diffusion.py: Dream, LLaDA, LLaDA-MoE) (developer tool; llama.cpp is
the oracle, never a kvrun dependency).

For each model the oracle writes

* ``ids``, ``logits``: make_arch_fixtures.py's 40-token prompt evaluated as one batch, every position seeing every
  other (llama.cpp builds these graphs without a KV cache: llama-cpp-python's ``eval`` would clear one, so the oracle
  skips that call), the logits of every position;
* for each of SETTINGS, ``<name>_trace`` [steps + 1, max_length]: the sequence before each step of
  llama-diffusion-cli's loop (examples/diffusion/diffusion-cli.cpp, reproduced here step for step) and after the
  last, each step's logits llama.cpp's (``llama_decode`` of the whole sequence from position 0), each masked
  position's candidates and their probabilities llama.cpp's own sampler chain's (top-k 40, top-p 0.95, then the
  ``dist`` sampler's softmax, through llama-cpp-python's ctypes bindings), and the proposal the most probable
  candidate (kvrun's temperature 0; llama.cpp's chain would draw one);
* ``prompt`` (the settings' prompt ids) and ``sha256`` (the model file's digest).

Run with kvrun's environment, pointing at a Python that has llama-cpp-python::

    python tools/make_diffusion_fixtures.py --oracle /work/llvenv/bin/python [--out DIR] [ARCH ...]
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fixture_oracle import parse_args, sha256  # (first: it puts tests/ on the path)
from make_arch_fixtures import IDS
from tiny_diffusion import ARCHS, write_tiny_diffusion

#: the denoising's prompt (byte tokens of "the cat sat"), the sequence's length
PROMPT = [116, 104, 101, 32, 99, 97, 116, 32, 115, 97, 116]
MAX_LENGTH = 27
#: arch: {name: (steps, eps, block_length, algorithm)} -- llama.cpp's algorithm numbers (1 entropy, 2 margin, 4 confidence)
SETTINGS = {
    "dream": {"conf": (8, 1e-3, 0, 4), "entropy": (8, 1e-3, 0, 1), "margin": (8, 1e-3, 0, 2)},
    "llada": {"blocks": (9, 0.0, 9, 4), "eps": (8, 1e-3, 0, 4)},
    "llada-moe": {"blocks": (9, 0.0, 9, 4), "margin": (8, 1e-3, 0, 2)},
}

_ORACLE = r"""
import ctypes, json, sys
import numpy as np
import llama_cpp as lc
from llama_cpp import Llama
path, out, ids, spec = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")], json.loads(sys.argv[4])
llm = Llama(model_path=path, n_ctx=64, n_batch=64, n_ubatch=64, logits_all=True, verbose=False, n_threads=1)
llm._ctx.kv_cache_seq_rm = lambda *a: None  # (no KV cache: nothing to clear)

def forward(tokens):
    llm.reset()
    llm.eval(list(map(int, tokens)))
    return np.asarray(llm.scores[: len(tokens)], np.float32).copy()

res = {"logits": forward(ids)}
V = llm.n_vocab()
mask_id = lc.llama_vocab_mask(lc.llama_model_get_vocab(llm._model.model))
meta = llm.metadata
shift = meta.get("diffusion.shift_logits", "true") == "true"  # (llama-diffusion-cli's default: shifted)
chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(40))
lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(0.95, 1))
lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(1234))
data = (lc.llama_token_data * V)()

def candidates(row):  # llama.cpp's chain over one position's logits: [(id, p)] as it leaves them
    for t in range(V):
        data[t].id, data[t].logit, data[t].p = t, float(row[t]), 0.0
    arr = lc.llama_token_data_array(data, V, -1, False)
    lc.llama_sampler_apply(chain, ctypes.byref(arr))
    return [(arr.data[i].id, arr.data[i].p) for i in range(arr.size)]

def confidence(cands, alg):  # diffusion-cli's calculate_confidence, the proposal the most probable candidate
    ps = np.array([p for _, p in cands], np.float32)
    best = int(np.argmax(ps))
    if alg == 4:
        return cands[best][0], float(ps[best])
    if alg == 1:
        acc = (ps * np.log(ps + np.float32(1e-10))).sum(dtype=np.float32)  # (C's "entropy": sum p log p)
        return cands[best][0], float(-acc)  # (what it returns: the entropy itself, so the least sure go first)
    if alg == 2:
        return cands[best][0], float(ps[0] - ps[1]) if len(ps) > 1 else float(ps[0])
    raise ValueError(alg)

def count(step, total, masked, eps, sched):  # calculate_transfer_count, float32 as in C
    if sched is not None:
        return sched[step]
    f = np.float32
    t = f(1) - f(step) / f(total) * (f(1) - f(eps))
    s = f(1) - f(step + 1) / f(total) * (f(1) - f(eps))
    return int(f(masked) * (f(1) - s / t if step < total - 1 else f(1)))

def guided(x, n_prompt, cfg):  # diffusion-cli's classifier-free guidance (cfg 0: none), float32 as in C
    if cfg <= 0:
        return forward(x)
    cond = forward(x)
    un_x = x.copy()
    un_x[:n_prompt] = mask_id
    uncond = forward(un_x)
    return uncond + (np.float32(cfg) + np.float32(1.0)) * (cond - uncond)

for name, (steps, eps, block, alg, *cfg) in spec["settings"].items():  # (cfg_scale, where given: make_diffusion_cfg_fixtures.py)
    cfg = cfg[0] if cfg else 0.0
    L, prompt = spec["max_length"], spec["prompt"]
    x = np.full(L, mask_id, np.int32)
    x[: len(prompt)] = prompt
    n_blocks = L // block if block else 1
    per = steps // n_blocks
    trace = []
    for b in range(n_blocks):
        lo, hi = (len(prompt) + b * block, min(len(prompt) + (b + 1) * block, L)) if block else (0, L)
        sched = None
        if block:
            m = int((x[lo:hi] == mask_id).sum())
            sched = [m // per + (i < m % per) for i in range(per)]
        for step in range(per):
            trace.append(x.copy())
            logits = guided(x, len(prompt), cfg)
            masked = [i for i in range(L) if x[i] == mask_id and lo <= i < hi]
            if not masked:
                break
            props = [confidence(candidates(logits[max(i - 1, 0)] if shift else logits[i]), alg) for i in masked]
            k = min(count(step, per, len(masked), eps, sched), len(masked))
            order = sorted(range(len(masked)), key=lambda j: (-props[j][1], j))
            for j in order[: max(k, 0)]:
                x[masked[j]] = props[j][0]
    trace.append(x.copy())
    res[name + "_trace"] = np.stack(trace)
np.savez(out, **res)
"""


def make(doc: str, prefix: str, settings: dict[str, dict], extra: dict[str, np.ndarray],
         keep: Callable[[str], bool] = lambda k: True) -> None:  # fmt: skip
    """The command line ``doc`` describes: for each arch asked for, the oracle's loop under its ``settings`` on the
    tiny model, what it saved that ``keep`` keeps, with ``extra`` and the model's ``sha256``, into
    ``<--out>/<prefix>_<arch>.npz``."""
    a = parse_args(doc, ARCHS)
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.names:
            path = write_tiny_diffusion(Path(tmp) / f"{arch}.gguf", arch)
            out = Path(tmp) / f"{arch}.npz"
            spec = {"settings": settings[arch], "prompt": PROMPT, "max_length": MAX_LENGTH}
            subprocess.run([a.oracle, "-c", _ORACLE, str(path), str(out), ",".join(map(str, IDS)), json.dumps(spec)], check=True)
            res = {k: v for k, v in np.load(out).items() if keep(k)}
            digest = sha256(path)
            np.savez_compressed(a.out / f"{prefix}_{arch}.npz", **extra, sha256=digest, **res)
            print(f"{arch}: {', '.join(f'{k} {v.shape}' for k, v in res.items())}, model {digest[:12]}")


def main() -> None:
    make(__doc__, "diffusion", SETTINGS, {"ids": np.asarray(IDS, np.int32), "prompt": np.asarray(PROMPT, np.int32)})


if __name__ == "__main__":
    main()
