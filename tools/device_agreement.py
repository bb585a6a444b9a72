"""How closely does decoding on one device follow the CPU's?  (developer tool)

Greedy-decodes ``-n`` tokens after a prompt on the CPU, then feeds the same
tokens (teacher forcing) to:

* the CPU again, as one batch (its float BLAS prefill path): the CPU's own
  arithmetic noise, since its decode products quantize x per 32 (int8, as
  llama.cpp's) and its batch products do not;
* the ``--device`` engine token by token (its decode path);

and prints, for each against the CPU's decode logits, the top-1 agreement,
the mean KL, and the mean largest |logit difference|.  Greedy texts part at
the first step whose top two logits are closer than that noise.

Measured on SmolLM2 Q4_1, "The history of the printing press", 32 steps
(the CUDA kernels on the CPU emulator, KVRUN_GPU_EMULATE=1):

    cpu batch vs cpu decode        top-1 29/32  KL 0.00266  mean max|dlogit| 0.606
    gpu decode vs cpu decode       top-1 29/32  KL 0.00266  mean max|dlogit| 0.606
    gpu decode vs cpu batch        top-1 32/32  KL 0.00000  mean max|dlogit| 0.004

and Gemma 3 270M: cpu batch vs cpu decode 31/32, KL 0.00112, 0.470, the GPU
the same against the CPU's decode.  The GPU keeps activations in float32 as
the CPU's batch path does, and follows that path to 0.004 of a logit; both
part from the CPU's decode, whose products quantize x to int8 per 32 (as
llama.cpp's CPU does), by the same amount.  Greedy texts part where that
difference meets a near-tie: on SmolLM2 the CPU's decode says "is a
fascinating tale of innovation", its batch path and the GPU "is a story of
innovation" (``--texts`` prints the three).  Quantizing x on the GPU as the
CPU does (tried twice) does not close the gap.  The second try made every GPU
matvec equal to the CPU's integer kernel to NMSE 1e-13, and tiny test models to
3e-5 of a logit, yet SmolLM2 stayed at 29/32 and 0.61.  A float32-rounding
difference upstream moves some x across a rounding boundary of its int8 code
(about twice a token: ~3000 codes a layer, 30 layers); each such flip moves the
products by ~1e-3 of their size, which flips many codes in the next layer.  So
the GPU keeps float x, the more accurate choice: the CPU's float path is its
reference.

    python tools/device_agreement.py MODEL --device gpu -n 32 [--kv "4,policy=h2o,budget=32,residual=8"]

With ``--kv`` both engines use that compressed cache (the batch row then
attends once over the whole text, so it evicts nothing: with a budget it is
no baseline).
"""

from __future__ import annotations

import argparse

import numpy as np

from kvrun.cache.kvconfig import KVConfig
from kvrun.runtime.engine import Engine


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _compare(name: str, ref: np.ndarray, got: np.ndarray) -> None:
    lr, lg = _log_softmax(ref), _log_softmax(got)
    kl = float((np.exp(lr) * (lr - lg)).sum(axis=-1).mean())
    top1 = int((ref.argmax(-1) == got.argmax(-1)).sum())
    dmax = float(np.abs(ref - got).max(axis=-1).mean())
    print(f"{name:28s} top-1 {top1}/{len(ref)}  KL {kl:.5f}  mean max|dlogit| {dmax:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--device", default="gpu")
    ap.add_argument("-p", "--prompt", default="The history of the printing press")
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--texts", action="store_true", help="also print the greedy texts: CPU decode, CPU batch path, device decode")
    ap.add_argument("--kv", default=None, help='compressed cache on both devices, a KVConfig spec such as "4,policy=h2o,budget=32"')
    a = ap.parse_args()

    cpu = Engine(a.model, device="cpu", n_ctx=512)
    kv = KVConfig.parse(a.kv).validate(512) if a.kv else None
    toks = cpu.tokenizer.encode(a.prompt)
    cache = cpu.cache_for(kv, 512, cpu.n_batch)
    logits = [np.asarray(cpu.eval(cache, toks)[-1], np.float32)]
    seq = []
    for _ in range(a.n - 1):  # the CPU's greedy continuation, decode path
        seq.append(int(np.argmax(logits[-1])))
        logits.append(np.asarray(cpu.eval(cache, [seq[-1]])[-1], np.float32))
    ref = np.stack(logits)  # [n, vocab]: after the prompt, then after each generated token

    batch = np.asarray(cpu.eval(cpu.cache_for(kv, 512, cpu.n_batch), toks + seq, logits_all=True, logits_start=len(toks) - 1), np.float32)
    _compare("cpu batch vs cpu decode", ref, batch)

    dev = Engine(a.model, device=a.device, n_ctx=512)
    cache = dev.cache_for(kv, 512, dev.n_batch)
    got = [np.asarray(dev.eval(cache, toks)[-1], np.float32)]
    for t in seq:
        got.append(np.asarray(dev.eval(cache, [t])[-1], np.float32))
    got = np.stack(got)
    _compare(f"{a.device} decode vs cpu decode", ref, got)
    _compare(f"{a.device} decode vs cpu batch", batch, got)  # both keep x in float: the GPU's own noise
    if a.texts:
        _texts(cpu, dev, kv, toks, seq + [int(np.argmax(ref[-1]))], a.n, a.device)


def _texts(cpu: Engine, dev: Engine, kv: KVConfig | None, toks: list[int], seq: list[int], n: int, device: str) -> None:
    """Greedy continuations of ``n`` tokens: the CPU's decode (``seq``), the CPU's batch path (each step re-evaluated as one
    batch: float activations, as the GPU keeps them) and the device's own decode."""
    fl = list(toks)
    for _ in range(n):
        fl.append(int(np.argmax(cpu.eval(cpu.cache_for(kv, 512, cpu.n_batch), fl)[-1])))
    cache = dev.cache_for(kv, 512, dev.n_batch)
    dv = list(toks)
    logits = dev.eval(cache, dv)[-1]
    for _ in range(n):
        dv.append(int(np.argmax(logits)))
        logits = dev.eval(cache, [dv[-1]])[-1]
    for name, ids in (("cpu decode", seq), ("cpu batch", fl[len(toks) :]), (f"{device} decode", dv[len(toks) :])):
        print(f"{name + ' greedy':28s} {cpu.tokenizer.decode(ids)!r}", flush=True)


if __name__ == "__main__":
    main()
