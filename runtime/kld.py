"""KL divergence of a model's next-token distributions from a base model's, as llama-perplexity's.

What a quantization costs is best seen token by token: the perplexity of a
quantized model can match its source's while its distributions wander.
llama-perplexity measures it in two runs, and so does ``kvrun perplexity``:

1. ``--kl-divergence-base FILE`` with the base model (F16, or the best one
   has): the usual perplexity run, which also stores the log-probabilities of
   every scored position.
2. ``--kl-divergence --kl-divergence-base FILE`` with the compared model:
   the same windows of the same tokens, each position's distribution compared
   with the stored one.

The file is llama.cpp's own (tools/perplexity/perplexity.cpp), so a base
written by llama-perplexity serves kvrun and the other way round: ``_logits_``,
then int32 ``n_ctx``, ``n_vocab``, ``n_chunk`` and the ``n_chunk * n_ctx``
tokens of the text (as tokenized, before a window's first token becomes BOS);
then, for each window's ``n_ctx - 1 - n_ctx/2`` scored positions, one row of
``nv = 2 * ceil(n_vocab / 2) + 4`` uint16: float32 ``scale`` and ``min_log_prob``
in the first four, then ``round((logit - min_logit) / scale)`` per token, the
logits clipped to 16 below the largest, so that ``log p = scale * q + min_log_prob``.

The statistics are llama.cpp's, to its float32 and float64 steps: the KL
divergence of each position sums over the tokens whose base log-probability is
above -16; "same top p" compares the argmax of the compared logits with that of
the stored base row; Δp is the change of the probability of the text's next
token; uncertainties are standard errors of means (``sqrt(var / (n - 1))``, 0 up
to ten values); percentiles interpolate linearly in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..loaders.errors import KvrunError
from .engine import Engine
from .perplexity import text_window

MAGIC = b"_logits_"
HEADER_INTS = 3  # n_ctx, n_vocab, n_chunk
BLOCK = 16  # rows at a time: a [16, 262144] float32 block is 16 MiB

# (fraction, label) of the percentiles llama-perplexity prints, highest first
KLD_PERCENTILES = ((0.999, "99.9%"), (0.990, "99.0%"), (0.950, "95.0%"), (0.900, "90.0%"), (0.100, "10.0%"), (0.050, " 5.0%"), (0.010, " 1.0%"), (0.001, " 0.1%"))
DP_PERCENTILES = ((0.999, "99.9%"), (0.990, "99.0%"), (0.950, "95.0%"), (0.900, "90.0%"), (0.750, "75.0%"), None, (0.250, "25.0%"), (0.100, "10.0%"), (0.050, " 5.0%"), (0.010, " 1.0%"), (0.001, " 0.1%"))  # None: the median


def row_width(n_vocab: int) -> int:
    """uint16 per stored row: two float32 (scale, min_log_prob), then the vocabulary rounded up to even."""
    return 2 * ((n_vocab + 1) // 2) + 4


def n_scored(n_ctx: int) -> int:
    """Positions scored per window: the second half, less the last (it predicts nothing in the window)."""
    return n_ctx - 1 - n_ctx // 2


# ---------------------------------------------------------------- the base file


def encode_rows(logits: np.ndarray) -> np.ndarray:
    """llama.cpp's stored rows ``[n, row_width]`` uint16 for logits ``[n, n_vocab]`` float32, bit for bit:
    the log-sum-exp a float64 sum of float32 exponentials, everything else float32, rounding half to even
    (llama.cpp's ``nearest_int``)."""
    logits = np.ascontiguousarray(logits, np.float32)
    n, n_vocab = logits.shape
    out = np.zeros((n, row_width(n_vocab)), np.uint16)
    head = out[:, :4].view(np.float32)  # [n, 2]: scale, min_log_prob
    for r0 in range(0, n, BLOCK):
        x = logits[r0 : r0 + BLOCK]
        mx = x.max(axis=1)
        mn = np.maximum(x.min(axis=1), mx - np.float32(16))
        lse = np.log(np.exp(x - mx[:, None]).sum(axis=1, dtype=np.float64)).astype(np.float32)
        scale = (mx - mn) / np.float32(65535)
        head[r0 : r0 + BLOCK, 0] = scale
        head[r0 : r0 + BLOCK, 1] = (mn - mx) - lse
        with np.errstate(divide="ignore", invalid="ignore"):  # a flat row: scale 0, every q 0
            inv = np.float32(1) / scale
            q = np.rint(inv[:, None] * (x - mn[:, None]))  # float32 throughout, as nearest_int's argument
            q = np.where((x > mn[:, None]) & (scale[:, None] != 0), q, 0)
        out[r0 : r0 + BLOCK, 4 : 4 + n_vocab] = q.astype(np.uint16)
    return out


class BaseWriter:
    """Writes a base file as llama-perplexity's ``--kl-divergence-base`` does, a window at a time."""

    def __init__(self, path: str | Path, tokens: np.ndarray, n_ctx: int, n_vocab: int, n_chunk: int):
        self.path, self.n_vocab = Path(path), n_vocab
        try:
            self.f: IO[bytes] = open(self.path, "wb")
        except OSError as e:
            raise KvrunError(f"cannot write {path}: {e.strerror}") from None
        self.f.write(MAGIC)
        self.f.write(np.array([n_ctx, n_vocab, n_chunk], "<i4").tobytes())
        self.f.write(np.asarray(tokens[: n_chunk * n_ctx], "<i4").tobytes())

    def window(self, logits: np.ndarray, targets: np.ndarray) -> None:
        """Store one window's scored rows (``targets`` unused: the file holds whole distributions)."""
        self.f.write(encode_rows(logits).tobytes())

    def close(self) -> None:
        self.f.close()


@dataclass
class BaseFile:
    """A base file's header and its stored rows (memory-mapped: a 512-token window of a 150k vocabulary is 77 MB)."""

    path: Path
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray  # [n_chunk * n_ctx] int32
    rows: np.ndarray  # [n_chunk, n_scored(n_ctx), row_width(n_vocab)] uint16

    @classmethod
    def open(cls, path: str | Path) -> BaseFile:
        path = Path(path)
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                magic, head = f.read(8), f.read(4 * HEADER_INTS)
        except OSError as e:
            raise KvrunError(f"cannot read the base file {path}: {e.strerror}") from None
        if magic != MAGIC or len(head) < 4 * HEADER_INTS:
            raise KvrunError(f"{path} is not a base file of log-probabilities (llama-perplexity's --kl-divergence-base)")
        n_ctx, n_vocab, n_chunk = (int(v) for v in np.frombuffer(head, "<i4"))
        if n_ctx < 2 or n_vocab < 1 or n_chunk < 1:
            raise KvrunError(f"{path}: a base file of {n_chunk} windows of {n_ctx} tokens over a vocabulary of {n_vocab} is not valid")
        tok_off = 8 + 4 * HEADER_INTS
        rows_off = tok_off + 4 * n_chunk * n_ctx
        shape = (n_chunk, n_scored(n_ctx), row_width(n_vocab))
        if size < rows_off + 2 * math.prod(shape):
            raise KvrunError(f"{path} is truncated: {size} bytes, its header promises {rows_off + 2 * math.prod(shape)}")
        tokens = np.fromfile(path, "<i4", n_chunk * n_ctx, offset=tok_off)
        rows = np.memmap(path, np.uint16, "r", rows_off, shape)
        return cls(path, n_ctx, n_vocab, n_chunk, tokens, rows)


# ---------------------------------------------------------------- the comparison


@dataclass
class KLDivergenceResult:
    """llama.cpp's ``kl_divergence_result`` sums, and every position's KL divergence and Δp."""

    n_ctx: int
    n_chunks: int = 0
    count: int = 0
    n_same_top: int = 0
    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    kld_values: list[np.ndarray] = field(default_factory=list)  # float32, window by window
    p_diff_values: list[np.ndarray] = field(default_factory=list)

    def add_window(self, logits: np.ndarray, base_rows: np.ndarray, targets: np.ndarray) -> None:
        """Compare one window's scored logits ``[n, n_vocab]`` with its stored base rows, as llama.cpp's
        ``log_softmax(..., kl_divergence_result &)``: float32 per token, float64 sums."""
        n_vocab = logits.shape[1]
        for r0 in range(0, len(targets), BLOCK):
            x = np.asarray(logits[r0 : r0 + BLOCK], np.float32)
            b = np.asarray(base_rows[r0 : r0 + BLOCK])
            t = np.asarray(targets[r0 : r0 + BLOCK])
            ar = np.arange(len(t))
            mx = x.max(axis=1)
            imax = x.argmax(axis=1)  # the first of equal maxima, as llama.cpp's strict ">"
            lse = np.log(np.exp(x - mx[:, None]).sum(axis=1, dtype=np.float64)).astype(np.float32)
            head = np.ascontiguousarray(b[:, :4]).view(np.float32)
            scale, min_lp = head[:, 0], head[:, 1]
            nll = (mx + lse) - x[ar, t]
            lp_base = scale[:, None] * b[:, 4 : 4 + n_vocab].astype(np.float32) + min_lp[:, None]
            nll_base = -lp_base[ar, t]
            top = mx + lse
            terms = np.where(lp_base > np.float32(-16), np.exp(lp_base) * ((lp_base - x) + top[:, None]), np.float32(0))
            kld = terms.sum(axis=1, dtype=np.float64)
            p_diff = np.exp(-nll) - np.exp(-nll_base)
            p_diff2 = (p_diff * p_diff).astype(np.float64)  # a float product, widened (llama.cpp's `double p_diff2 = p_diff*p_diff`)
            self.sum_nll += float(nll.sum(dtype=np.float64))
            self.sum_nll2 += float((nll * nll).sum(dtype=np.float64))
            self.sum_nll_base += float(nll_base.sum(dtype=np.float64))
            self.sum_nll_base2 += float((nll_base * nll_base).sum(dtype=np.float64))
            self.sum_nll_nll_base += float((nll * nll_base).sum(dtype=np.float64))
            self.sum_kld += float(kld.sum())
            self.sum_kld2 += float((kld * kld).sum())
            self.sum_p_diff += float(p_diff.sum(dtype=np.float64))
            self.sum_p_diff2 += float(p_diff2.sum())
            self.sum_p_diff4 += float((p_diff2 * p_diff2).sum())
            self.n_same_top += int((imax == lp_base.argmax(axis=1)).sum())
            self.count += len(t)
            self.kld_values.append(kld.astype(np.float32))
            self.p_diff_values.append(p_diff.astype(np.float32))
        self.n_chunks += 1

    def statistics(self) -> dict[str, float]:
        """llama-perplexity's final figures, keyed as it labels them (``ppl``, ``ppl_base``, ``kld_mean``,
        ``kld_99.9%``, ``dp_median``, ``rms_dp``, ``same_top``..., uncertainties ``*_unc``); Δp and
        "same top" as fractions (llama.cpp prints percent)."""
        n = self.count
        if n < 1:
            raise KvrunError("no position was compared")
        log_ppl, log_ppl_unc = _mean_and_uncertainty(self.sum_nll, self.sum_nll2, n)
        log_base, log_base_unc = _mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, n)
        cov = (self.sum_nll_nll_base / n - (self.sum_nll / n) * (self.sum_nll_base / n)) / (n - 1) if n >= 10 else 0.0
        ppl, ppl_base = math.exp(log_ppl), math.exp(log_base)
        ratio_unc = math.sqrt(max(log_ppl_unc**2 + log_base_unc**2 - 2 * cov, 0.0))
        s: dict[str, float] = {"count": n, "n_chunks": self.n_chunks, "ctx": self.n_ctx}
        s["ppl"], s["ppl_unc"] = ppl, ppl * log_ppl_unc
        s["ppl_base"], s["ppl_base_unc"] = ppl_base, ppl_base * log_base_unc
        s["cor"] = cov / (log_ppl_unc * log_base_unc) if log_ppl_unc * log_base_unc else math.nan
        s["ln_ppl_ratio"], s["ln_ppl_ratio_unc"] = log_ppl - log_base, ratio_unc
        s["ppl_ratio"] = math.exp(log_ppl - log_base)
        s["ppl_ratio_unc"] = s["ppl_ratio"] * ratio_unc
        ppl_cov = ppl * ppl_base * cov
        s["ppl_diff"] = ppl - ppl_base
        s["ppl_diff_unc"] = math.sqrt(max(s["ppl_unc"] ** 2 + s["ppl_base_unc"] ** 2 - 2 * ppl_cov, 0.0))
        s["kld_mean"], s["kld_unc"] = _mean_and_uncertainty(self.sum_kld, self.sum_kld2, n)
        kld = np.sort(np.concatenate(self.kld_values))
        dp = np.sort(np.concatenate(self.p_diff_values))
        s["kld_max"] = float(kld[-1])
        for f, label in KLD_PERCENTILES:
            s[f"kld_{label.strip()}"] = _percentile(kld, f)
        s["kld_median"], s["kld_min"] = _median(kld), float(kld[0])
        s["dp_mean"], s["dp_unc"] = _mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, n)
        s["dp_max"], s["dp_median"], s["dp_min"] = float(dp[-1]), _median(dp), float(dp[0])
        for pc in DP_PERCENTILES:
            if pc:
                s[f"dp_{pc[1].strip()}"] = _percentile(dp, pc[0])
        mse, mse_unc = _mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, n)
        s["rms_dp"] = math.sqrt(mse)
        s["rms_dp_unc"] = 0.5 / s["rms_dp"] * mse_unc if s["rms_dp"] else 0.0
        p = self.n_same_top / n
        s["same_top"], s["same_top_unc"] = p, math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0
        return s


def _mean_and_uncertainty(total: float, total2: float, n: int) -> tuple[float, float]:
    """llama.cpp's: the mean, and its standard error from the population variance over n - 1, 0 up to ten values."""
    f = total / n
    df = total2 / n - f * f
    return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)


def _percentile(v: np.ndarray, fraction: float) -> float:
    """llama.cpp's ``percentile``: linear between neighbours of the sorted values, in float32."""
    p = np.float32(fraction) * np.float32(v.size - 1)
    ip = int(p)
    p = np.float32(p - np.float32(ip))
    return float((np.float32(1) - p) * v[ip] + p * v[min(ip + 1, v.size - 1)])


def _median(v: np.ndarray) -> float:
    h = v.size // 2
    return float(np.float32(0.5) * (v[h] + v[h - 1])) if v.size % 2 == 0 else float(v[h])


def check_base(base: BaseFile, n_vocab: int, tokens: np.ndarray) -> None:
    """Refuse, in one line, a base file made with another vocabulary or from another text."""
    if base.n_vocab != n_vocab:
        raise KvrunError(f"{base.path} was written by a model with a vocabulary of {base.n_vocab}, this one has {n_vocab}: compare models of one vocabulary")
    n = base.n_chunk * base.n_ctx
    tokens = np.asarray(tokens)
    if len(tokens) < n or not np.array_equal(tokens[:n], base.tokens):
        raise KvrunError(f"{base.path} was written from another text (its {n} tokens differ from this text's): give the base run's -f file")


def kl_divergence(
    engine: Engine,
    base: BaseFile,
    make_cache: Callable[[], object] | None = None,
    progress: Callable[[int, int, KLDivergenceResult], None] | None = None,
    max_chunks: int = 0,
) -> KLDivergenceResult:
    """Compare ``engine``'s distributions over ``base``'s windows with the stored ones (the base file's
    tokens and window length: llama.cpp reads both from the file).  ``progress(done, total, result)``
    before the first window and after each."""
    n_ctx, first = base.n_ctx, base.n_ctx // 2
    n_chunks = min(base.n_chunk, max_chunks) if max_chunks else base.n_chunk
    res = KLDivergenceResult(n_ctx)
    if progress:
        progress(0, n_chunks, res)
    for c in range(n_chunks):
        window = text_window(base.tokens, c, n_ctx, engine.tokenizer)
        cache = make_cache() if make_cache else engine.new_cache()
        logits = engine.eval(cache, window, logits_all=True, logits_start=first)
        res.add_window(logits[: n_scored(n_ctx)], base.rows[c], base.tokens[c * n_ctx + first + 1 : (c + 1) * n_ctx])
        if progress:
            progress(c + 1, n_chunks, res)
    return res


def format_statistics(s: dict[str, Any]) -> str:
    """The three blocks llama-perplexity prints after a comparison, in its layout."""
    lines = ["====== Perplexity statistics ======"]
    lines.append(f"Mean PPL(Q)                   : {s['ppl']:10.6f} ± {s['ppl_unc']:10.6f}")
    lines.append(f"Mean PPL(base)                : {s['ppl_base']:10.6f} ± {s['ppl_base_unc']:10.6f}")
    lines.append(f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * s['cor']:6.2f}%")
    lines.append(f"Mean ln(PPL(Q)/PPL(base))     : {s['ln_ppl_ratio']:10.6f} ± {s['ln_ppl_ratio_unc']:10.6f}")
    lines.append(f"Mean PPL(Q)/PPL(base)         : {s['ppl_ratio']:10.6f} ± {s['ppl_ratio_unc']:10.6f}")
    lines.append(f"Mean PPL(Q)-PPL(base)         : {s['ppl_diff']:10.6f} ± {s['ppl_diff_unc']:10.6f}")
    lines += ["", "====== KL divergence statistics ======"]
    lines.append(f"Mean    KLD: {s['kld_mean']:10.6f} ± {s['kld_unc']:10.6f}")
    lines.append(f"Maximum KLD: {s['kld_max']:10.6f}")
    for f, label in KLD_PERCENTILES[:4]:
        lines.append(f"{label}   KLD: {s['kld_' + label.strip()]:10.6f}")
    lines.append(f"Median  KLD: {s['kld_median']:10.6f}")
    for f, label in KLD_PERCENTILES[4:]:
        lines.append(f"{label}   KLD: {s['kld_' + label.strip()]:10.6f}")
    lines.append(f"Minimum KLD: {s['kld_min']:10.6f}")
    lines += ["", "====== Token probability statistics ======"]
    lines.append(f"Mean    Δp: {100 * s['dp_mean']:6.3f} ± {100 * s['dp_unc']:5.3f} %")
    lines.append(f"Maximum Δp: {100 * s['dp_max']:6.3f}%")
    for pc in DP_PERCENTILES:
        if pc is None:
            lines.append(f"Median  Δp: {100 * s['dp_median']:6.3f}%")
        else:
            lines.append(f"{pc[1]}   Δp: {100 * s['dp_' + pc[1].strip()]:6.3f}%")
    lines.append(f"Minimum Δp: {100 * s['dp_min']:6.3f}%")
    lines.append(f"RMS Δp    : {100 * s['rms_dp']:6.3f} ± {100 * s['rms_dp_unc']:5.3f} %")
    lines.append(f"Same top p: {100 * s['same_top']:6.3f} ± {100 * s['same_top_unc']:5.3f} %")
    return "\n".join(lines)
