"""What the compressed cache's block-diagonal Hadamard rotation buys on heads that are no power of two.

A head of ``n = m * 2^k`` channels rotates by ``blockdiag(H_{2^k}, ...)`` (``cache/quant.py`` hadamard).  This script
measures, on real K/V, the quantization error of 4- and 2-bit rows (the cache's quantizer: MSE-clipped groups of
32 or the head when smaller) and the attention output's error with and without that rotation:

* SmolLM2-135M (64-wide heads): every layer's K/V heads of a token laid side by side, cut into rows of 96 (Phi-3's
  width, 3 x 32) and of 576 (MLA's latent, 9 x 64); a query row likewise from the first query head of each KV head,
  so a 96- or 576-wide "head" attends over the prompt (causal), its scores the sums of the real heads' products;
* Gemma 3 270M's 256-wide heads by Sylvester's H_256 and by blocks of 8 .. 128 (what a smaller block loses);
* the tiny MLA fixture's latent (keys 8 + 32, values 32: blocks of 8) through its own attention spec.

The rotation is exact for attention (``q @ H . k @ H = q . k``): only the quantization error differs.  Prints a
Markdown table.  ``python tools/measure_block_rotation.py [--tokens 256]``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from kvrun.cache.quant import dequantize, quantize

TEXT = "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/licenses/GPL-3.0-or-later.txt"


def block_h(n: int, b: int) -> np.ndarray:
    """blockdiag(H_b, ..., H_b) [n, n] float64 (b a power of two dividing n; b = 1: the identity)."""
    h = np.ones((1, 1))
    while h.shape[0] < b:
        h = np.block([[h, h], [h, -h]])
    return np.kron(np.eye(n // b), h / math.sqrt(b))


def roundtrip(x: np.ndarray, bits: int, G: int, h: np.ndarray | None) -> np.ndarray:
    """x [n, D] quantized and back, through the rotation ``h`` (None: none), in the original basis."""
    xr = x if h is None else x @ h
    c, m, lut = quantize(xr.astype(np.float32), bits, G)
    y = dequantize(c, m, lut, bits, G, x.shape[1]).astype(np.float64)
    return y if h is None else y @ h.T


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Causal attention of one head: q, k [T, D], v [T, Dv] -> [T, Dv] (float64)."""
    s = q @ k.T / math.sqrt(q.shape[1])
    s = np.where(np.tril(np.ones(s.shape, bool)), s, -np.inf)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)) @ v


def errors(q: np.ndarray, k: np.ndarray, v: np.ndarray, bits: int, G: int, hk: np.ndarray | None, hv: np.ndarray | None) -> tuple[float, float]:
    """Relative squared error of the quantized K and V (together), and relative RMS error of the attention output.

    q, k [heads, T, D], v [heads, T, Dv]; all heads' rows are quantized as one pool (the cache's table per layer)."""
    H, T, D = k.shape
    kq = roundtrip(k.reshape(-1, D), bits, G, hk).reshape(k.shape)
    vq = roundtrip(v.reshape(-1, v.shape[2]), bits, G, hv).reshape(v.shape)
    qerr = (((kq - k) ** 2).sum() + ((vq - v) ** 2).sum()) / ((k**2).sum() + (v**2).sum())
    o = np.stack([attend(q[i], k[i], v[i]) for i in range(H)])
    oq = np.stack([attend(q[i], kq[i], vq[i]) for i in range(H)])
    return float(qerr), float(np.sqrt(((oq - o) ** 2).sum() / (o**2).sum()))


def capture(path: str | Path, tokens: int, random_ids: bool = False) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(q, k, v) of every layer for the text's first ``tokens`` tokens (``random_ids``: random tokens, for a fixture's
    toy vocabulary), as the model hands them to its plain cache."""
    from kvrun.cache.plain import PlainLayerCache
    from kvrun.runtime.engine import Engine

    got: list = []
    orig = PlainLayerCache.update_and_attend

    def hook(self, q, k, v, pos, out):  # noqa: ANN001
        got.append(tuple(np.array(a, np.float64) for a in (q, k, v)))
        return orig(self, q, k, v, pos, out)

    eng = Engine(path, n_ctx=tokens + 8, n_batch=tokens)
    if random_ids:
        ids = [int(i) for i in np.random.default_rng(0).integers(3, eng.cfg.n_vocab, tokens)]
    else:
        ids = eng.tokenizer.encode(Path(TEXT).read_text())[:tokens]
    PlainLayerCache.update_and_attend = hook
    try:
        eng.eval(eng.new_cache(), ids)
    finally:
        PlainLayerCache.update_and_attend = orig
    return got


def side_by_side(layers: list, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every layer's KV heads of a token side by side, cut into ``width``-wide heads: q, k, v [heads, T, width]."""
    qs, ks, vs = [], [], []
    for q, k, v in layers:
        T, n_head, D = q.shape
        g = n_head // k.shape[1]
        qs.append(q[:, ::g])  # (the first query head of each KV head)
        ks.append(k)
        vs.append(v)
    T = qs[0].shape[0]
    out = []
    for a in (qs, ks, vs):
        row = np.concatenate([x.reshape(T, -1) for x in a], axis=1)
        n = row.shape[1] // width * width
        out.append(row[:, :n].reshape(T, -1, width).transpose(1, 0, 2).copy())
    return out[0], out[1], out[2]


def per_head(layers: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The layers' own heads: q (first of each group), k, v [layers * n_kv, T, D]."""
    qs, ks, vs = [], [], []
    for q, k, v in layers:
        g = q.shape[1] // k.shape[1]
        qs.append(q[:, ::g].transpose(1, 0, 2))
        ks.append(k.transpose(1, 0, 2))
        vs.append(v.transpose(1, 0, 2))
    return np.concatenate(qs), np.concatenate(ks), np.concatenate(vs)


def row(name: str, q, k, v, blocks: list[int], G: int = 32) -> None:
    D, Dv = k.shape[2], v.shape[2]
    g = math.gcd(D, Dv)
    G = min(G, g & -g)  # (the cache's group: a power of two dividing both widths)
    cells = []
    for bits in (4, 2):
        for b in blocks:
            hk = None if b == 1 else block_h(D, min(b, D & -D))
            hv = None if b == 1 else block_h(Dv, min(b, Dv & -Dv))
            qe, oe = errors(q, k, v, bits, G, hk, hv)
            cells.append(f"{bits}b/{'none' if b == 1 else b}: {qe:.4f} / {oe:.4f}")
    print(f"| {name} (G={G}) | " + " | ".join(cells) + " |")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256)
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from kvrun.loaders.store import known, local_path

    print("cells: bits/block: relative squared error of K and V / relative RMS error of the attention output")
    smol = capture(local_path(known("smollm2")), a.tokens)
    for w in (96, 576):
        b = w & -w
        row(f"SmolLM2 K/V as {w}-wide heads", *side_by_side(smol, w), [1, 2, 4, 8, b])
    gem = capture(local_path(known("gemma3-270m")), a.tokens)
    row("Gemma 3 270M, 256-wide heads", *per_head(gem), [1, 8, 16, 32, 64, 256])
    import tempfile

    from tinymodel import write_tiny_model

    with tempfile.TemporaryDirectory() as d:
        p = write_tiny_model(Path(d) / "mla.gguf", arch="deepseek2")
        mla = capture(p, 64, random_ids=True)
    row("tiny MLA fixture latent (keys 40, values 32)", *per_head(mla), [1, 8])


if __name__ == "__main__":
    main()
