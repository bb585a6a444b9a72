"""Regenerate tests/fixtures/kld_tiny.npz: llama-perplexity's KL-divergence figures for the tiny llama
of ``tests/tinymodel.py`` quantized to Q8_0 and Q4_0 against its F32 self (developer tool; llama.cpp is
the oracle, never a kvrun dependency).

    python tools/make_kld_fixture.py --oracle /work/llvenv/bin/python

llama-cpp-python ships no llama-perplexity, so the oracle computes the scored logits with llama.cpp
(each window evaluated in one batch on a cleared cache, as llama-perplexity) and applies
tools/perplexity/perplexity.cpp's formulas to them, transcribed below element by element in float32 and
float64 as the C++ has them: the base file (``process_logits`` with a stream, ``log_softmax`` with
``uint16_t * log_prob``) and the comparison (``log_softmax`` with ``kl_divergence_result &``, and
``kl_divergence``'s statistics).

The fixture holds: ``text`` and its llama.cpp ``tokens``; ``n_ctx`` and ``n_chunk``; ``base`` (the base
file's bytes, from the F32 model's logits); ``logits_f32_c0``, ``logits_q4_0_c0`` (window 0's scored
logits) with ``kld_q4_0_c0`` and ``p_diff_q4_0_c0`` (their per-position figures) and ``stats_q4_0_c0``
(window 0's statistics alone); ``stats_<q>`` (the final statistics as JSON, Q8_0 and Q4_0); ``sha256_<q>`` (the model files' digests: the test writes
the same bytes again).
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
from tinymodel import Q, write_tiny_model  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
N_CTX, N_CHUNK = 32, 8  # 8 windows of 15 scored positions: llama.cpp prints statistics from 100 on
TEXT = Path("/usr/share/common-licenses/GPL-3").read_text()[:600]
QTYPES = {"f32": Q.F32, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}

_ORACLE = r'''
import json, math, struct, sys
import numpy as np
from llama_cpp import Llama
from llama_cpp import llama_cpp as low

# no repacked weight buffers: llama.cpp's AMX one segfaults on quantized weights on some Sapphire Rapids
# VMs (tools/bench_llamacpp.py); Llama() takes no such argument, so the defaults it starts from are patched
_default = low.llama_model_default_params


def _params():
    p = _default()
    p.use_extra_bufts = False
    return p


low.llama_model_default_params = _params
f32 = np.float32
paths, out, text, n_ctx, n_chunk = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
first, n_tok = n_ctx // 2, n_ctx - 1 - n_ctx // 2


def scored_logits(path):
    """The text's tokens, and llama-perplexity's windows: cleared cache, one batch, logits of positions
    first .. n_ctx-2."""
    llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, verbose=False, n_threads=1)
    toks = llm.tokenize(text.encode(), add_bos=False, special=False)
    assert not low.llama_vocab_get_add_bos(low.llama_model_get_vocab(llm.model))  # no window's first token becomes BOS
    out = []
    for c in range(n_chunk):
        llm.reset()
        llm.eval(toks[c * n_ctx:(c + 1) * n_ctx])
        out.append(np.array(llm.scores[first:n_ctx - 1], np.float32))
    return toks, llm.n_vocab(), np.stack(out)


def nearest_int(fval):  # float + 12582912.f, the mantissa read back: round half to even
    v = np.array([fval + f32(12582912.0)], np.float32).view(np.int32)[0]
    return int((v & 0x007fffff) - 0x00400000)


def store_row(logits):
    """log_softmax(n_vocab, logits, uint16_t * log_prob, tok): one stored row."""
    n_vocab = len(logits)
    max_logit = logits[0]; min_logit = logits[0]
    for i in range(1, n_vocab):
        max_logit = max(max_logit, logits[i]); min_logit = min(min_logit, logits[i])
    min_logit = max(min_logit, f32(max_logit - f32(16)))
    sum_exp = 0.0
    for i in range(n_vocab):
        sum_exp += float(np.exp(f32(logits[i] - max_logit)))
    log_sum_exp = f32(math.log(sum_exp))
    min_log_prob = f32(f32(min_logit - max_logit) - log_sum_exp)
    scale = f32(f32(max_logit - min_logit) / f32(65535))
    row = np.zeros(2 * ((n_vocab + 1) // 2) + 4, np.uint16)
    row[:4] = np.array([scale, min_log_prob], np.float32).view(np.uint16)
    if scale:
        inv_scale = f32(f32(1) / scale)
        for i in range(n_vocab):
            row[4 + i] = nearest_int(f32(inv_scale * f32(logits[i] - min_logit))) if logits[i] > min_logit else 0
    return row


def compare_row(logits, base, tok, k):
    """log_softmax(n_vocab, logits, base_log_prob, tok, kl_divergence_result &)."""
    n_vocab = len(logits)
    max_logit = logits[0]; imax = 0
    for i in range(1, n_vocab):
        if logits[i] > max_logit:
            max_logit = logits[i]; imax = i
    sum_exp = 0.0
    for i in range(n_vocab):
        sum_exp += float(np.exp(f32(logits[i] - max_logit)))
    log_sum_exp = f32(math.log(sum_exp))
    scale, min_log_prob = base[:4].view(np.float32)
    q = base[4:]
    nll = f32(f32(max_logit + log_sum_exp) - logits[tok])
    k["sum_nll"] += float(nll); k["sum_nll2"] += float(f32(nll * nll))
    nll_base = f32(-f32(f32(scale * f32(q[tok])) + min_log_prob))
    k["sum_nll_base"] += float(nll_base); k["sum_nll_base2"] += float(f32(nll_base * nll_base))
    k["sum_nll_nll_base"] += float(f32(nll * nll_base))
    max_logit = f32(max_logit + log_sum_exp)
    s = 0.0; imax_base = -1; p_log_base_max = f32(0)
    for i in range(n_vocab):
        p_log_base = f32(f32(scale * f32(q[i])) + min_log_prob)
        if i == 0 or p_log_base > p_log_base_max:
            p_log_base_max = p_log_base; imax_base = i
        if p_log_base > f32(-16):
            p_base = np.exp(p_log_base)
            s += float(f32(p_base * f32(f32(p_log_base - logits[i]) + max_logit)))
    k["sum_kld"] += s; k["sum_kld2"] += s * s; k["count"] += 1
    k["n_same_top"] += int(imax == imax_base)
    p_diff = f32(np.exp(f32(-nll)) - np.exp(f32(-nll_base)))
    k["sum_p_diff"] += float(p_diff)
    p_diff2 = float(f32(p_diff * p_diff))
    k["sum_p_diff2"] += p_diff2; k["sum_p_diff4"] += p_diff2 * p_diff2
    return s, p_diff


def mean_and_uncertainty(total, total2, count):
    f = total / count
    df = total2 / count - f * f
    return f, (math.sqrt(df / (count - 1)) if df > 0 and count > 10 else 0.0)


def percentile(values, fraction):
    p = f32(f32(fraction) * f32(len(values) - 1))
    ip = int(p); p = f32(p - f32(ip))
    return float(f32(f32(f32(1) - p) * values[ip]) + f32(p * values[min(ip + 1, len(values) - 1)]))


def median(v):
    h = len(v) // 2
    return float(f32(f32(0.5) * f32(v[h] + v[h - 1]))) if len(v) % 2 == 0 else float(v[h])


def statistics(k, kld_values, p_diff_values):
    """kl_divergence()'s final figures (fractions where it prints percent)."""
    n = k["count"]
    kv, dv = np.sort(np.array(kld_values, np.float32)), np.sort(np.array(p_diff_values, np.float32))
    lp, lpu = mean_and_uncertainty(k["sum_nll"], k["sum_nll2"], n)
    lb, lbu = mean_and_uncertainty(k["sum_nll_base"], k["sum_nll_base2"], n)
    cov = (k["sum_nll_nll_base"] / n - (k["sum_nll"] / n) * (k["sum_nll_base"] / n)) / (n - 1)
    ppl, ppl_base = math.exp(lp), math.exp(lb)
    r_unc = math.sqrt(lpu * lpu + lbu * lbu - 2.0 * cov)
    s = {"count": n, "ppl": ppl, "ppl_unc": ppl * lpu, "ppl_base": ppl_base, "ppl_base_unc": ppl_base * lbu,
         "cor": cov / (lpu * lbu), "ln_ppl_ratio": lp - lb, "ln_ppl_ratio_unc": r_unc,
         "ppl_ratio": math.exp(lp - lb), "ppl_ratio_unc": math.exp(lp - lb) * r_unc, "ppl_diff": ppl - ppl_base,
         "ppl_diff_unc": math.sqrt((ppl * lpu) ** 2 + (ppl_base * lbu) ** 2 - 2.0 * ppl * ppl_base * cov)}
    s["kld_mean"], s["kld_unc"] = mean_and_uncertainty(k["sum_kld"], k["sum_kld2"], n)
    s["kld_max"], s["kld_median"], s["kld_min"] = float(kv[-1]), median(kv), float(kv[0])
    for f in (0.999, 0.990, 0.950, 0.900, 0.100, 0.050, 0.010, 0.001):
        s[f"kld_{100 * f:.1f}%"] = percentile(kv, f)
    s["dp_mean"], s["dp_unc"] = mean_and_uncertainty(k["sum_p_diff"], k["sum_p_diff2"], n)
    s["dp_max"], s["dp_median"], s["dp_min"] = float(dv[-1]), median(dv), float(dv[0])
    for f in (0.999, 0.990, 0.950, 0.900, 0.750, 0.250, 0.100, 0.050, 0.010, 0.001):
        s[f"dp_{100 * f:.1f}%"] = percentile(dv, f)
    mse, mse_unc = mean_and_uncertainty(k["sum_p_diff2"], k["sum_p_diff4"], n)
    s["rms_dp"] = math.sqrt(mse); s["rms_dp_unc"] = 0.5 / s["rms_dp"] * mse_unc
    p = k["n_same_top"] / n
    s["same_top"], s["same_top_unc"] = p, math.sqrt(p * (1 - p) / (n - 1))
    return s


toks, n_vocab, base_logits = scored_logits(paths["f32"])
rows = np.stack([np.stack([store_row(r) for r in w]) for w in base_logits])
header = b"_logits_" + struct.pack("<iii", n_ctx, n_vocab, n_chunk) + np.asarray(toks[:n_chunk * n_ctx], "<i4").tobytes()
res = {"tokens": np.asarray(toks, np.int32), "base": np.frombuffer(header + rows.tobytes(), np.uint8),
       "logits_f32_c0": base_logits[0]}
for q in ("q8_0", "q4_0"):
    lg = scored_logits(paths[q])[2]
    k = dict.fromkeys(["sum_nll", "sum_nll2", "sum_nll_base", "sum_nll_base2", "sum_nll_nll_base", "sum_kld", "sum_kld2",
                       "sum_p_diff", "sum_p_diff2", "sum_p_diff4"], 0.0) | {"count": 0, "n_same_top": 0}
    kld_values, p_diff_values = [], []
    for c in range(n_chunk):
        for j in range(n_tok):
            kl, dp = compare_row(lg[c, j], rows[c, j], toks[c * n_ctx + first + 1 + j], k)
            kld_values.append(f32(kl)); p_diff_values.append(dp)
    res[f"stats_{q}"] = json.dumps(statistics(k, kld_values, p_diff_values))
    if q == "q4_0":
        res["logits_q4_0_c0"] = lg[0]
        res["kld_q4_0_c0"] = np.array(kld_values[:n_tok], np.float32)
        res["p_diff_q4_0_c0"] = np.array(p_diff_values[:n_tok], np.float32)
        k0 = dict.fromkeys(k, 0) | {"sum_" + n: 0.0 for n in ("nll", "nll2", "nll_base", "nll_base2", "nll_nll_base", "kld", "kld2", "p_diff", "p_diff2", "p_diff4")}
        for j in range(n_tok):  # window 0 alone: its logits are in the fixture, so kvrun's statistics can be held exactly
            compare_row(lg[0, j], rows[0, j], toks[first + 1 + j], k0)
        res["stats_q4_0_c0"] = json.dumps(statistics(k0, kld_values[:n_tok], p_diff_values[:n_tok]))
np.savez(out, **res)
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", required=True, help="a python with llama-cpp-python installed")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {q: str(write_tiny_model(Path(tmp) / f"tiny-{q}.gguf", "llama", qtype=t)) for q, t in QTYPES.items()}
        out = Path(tmp) / "kld.npz"
        if subprocess.run([a.oracle, "-c", _ORACLE, json.dumps(paths), str(out), TEXT, str(N_CTX), str(N_CHUNK)]).returncode:
            sys.exit("the oracle failed (its error above)")
        res = dict(np.load(out))
        digests = {f"sha256_{q}": hashlib.sha256(Path(p).read_bytes()).hexdigest() for q, p in paths.items()}
        np.savez_compressed(FIX / "kld_tiny.npz", text=TEXT, n_ctx=N_CTX, n_chunk=N_CHUNK, **digests, **res)
        for q in ("q8_0", "q4_0"):
            s = json.loads(str(res[f"stats_{q}"]))
            print(f"{q}: ppl {s['ppl']:.4f} vs base {s['ppl_base']:.4f}, mean KLD {s['kld_mean']:.6f} ± {s['kld_unc']:.6f}, same top {100 * s['same_top']:.2f}%")
        print(f"base file {len(res['base'])} bytes, {len(res['tokens'])} tokens")


if __name__ == "__main__":
    main()
