"""``kvrun perplexity --kl-divergence`` (runtime/kld.py) held to llama-perplexity's: its base file byte for
byte, its per-position KL divergence and Δp, its statistics, and the figures for the tiny llama quantized to
Q8_0 and Q4_0 against its F32 self (tests/fixtures/kld_tiny.npz from tools/make_kld_fixture.py: llama.cpp's
logits with perplexity.cpp's formulas transcribed); a base file of another vocabulary or text refused in one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tinymodel import Q, write_tiny_model

from kvrun.cli import main
from kvrun.loaders.errors import KvrunError
from kvrun.ops.cpu.qmatmul import HAVE_VNNI
from kvrun.runtime.engine import Engine
from kvrun.runtime.kld import BaseFile, BaseWriter, KLDivergenceResult, check_base, encode_rows, kl_divergence, n_scored, row_width

FX = np.load(Path(__file__).parent / "fixtures" / "kld_tiny.npz")
N_CTX, N_CHUNK = int(FX["n_ctx"]), int(FX["n_chunk"])
TOKENS = FX["tokens"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The fixture's three models, written again (the same bytes), and its text and base file beside them."""
    d = tmp_path_factory.mktemp("kld")
    out = {}
    for q, t in (("f32", Q.F32), ("q8_0", Q.Q8_0), ("q4_0", Q.Q4_0)):
        out[q] = write_tiny_model(d / f"{q}.gguf", "llama", qtype=t)
        assert hashlib.sha256(out[q].read_bytes()).hexdigest() == str(FX[f"sha256_{q}"]), "the fixture was made from another model file"
    (d / "text.txt").write_text(str(FX["text"]))
    (d / "llamacpp.kld").write_bytes(FX["base"].tobytes())
    out["text"], out["base"] = d / "text.txt", d / "llamacpp.kld"
    return out


def _stored_rows() -> np.ndarray:
    """The fixture's base file's rows ``[n_chunk, n_scored, row_width]``."""
    return np.frombuffer(FX["base"].tobytes(), np.uint16, offset=8 + 12 + 4 * N_CHUNK * N_CTX).reshape(N_CHUNK, n_scored(N_CTX), -1)


def _targets(c: int) -> np.ndarray:
    return TOKENS[c * N_CTX + N_CTX // 2 + 1 : (c + 1) * N_CTX]


def test_a_stored_row_is_llamacpps_bit_for_bit_from_the_same_logits(models):
    """scale and min_log_prob as float32, then the logits 16 nats below the top on 65535 steps, rounded half to even."""
    base = BaseFile.open(models["base"])
    rows = encode_rows(FX["logits_f32_c0"])
    assert rows.shape == (n_scored(N_CTX), row_width(262)) == base.rows[0].shape
    assert rows.tobytes() == base.rows[0].tobytes()


def test_the_header_is_llamacpps_and_reads_back(models, tmp_path):
    """``_logits_``, n_ctx, n_vocab, n_chunk, then the text's n_chunk * n_ctx tokens."""
    w = BaseWriter(tmp_path / "b.kld", TOKENS, N_CTX, 262, N_CHUNK)
    for c in range(N_CHUNK):
        w.window(np.zeros((n_scored(N_CTX), 262), np.float32), _targets(c))
    w.close()
    n_head = 8 + 12 + 4 * N_CHUNK * N_CTX
    assert (tmp_path / "b.kld").read_bytes()[:n_head] == FX["base"].tobytes()[:n_head]
    b = BaseFile.open(models["base"])
    assert (b.n_ctx, b.n_vocab, b.n_chunk) == (N_CTX, 262, N_CHUNK)
    assert b.tokens.tolist() == TOKENS[: N_CHUNK * N_CTX].tolist()


def test_each_positions_kl_divergence_and_delta_p_are_llamacpps():
    """The same logits against the same stored row give llama.cpp's float32 figures exactly."""
    rows = _stored_rows()
    r = KLDivergenceResult(N_CTX)
    r.add_window(FX["logits_q4_0_c0"], rows[0], _targets(0))
    np.testing.assert_array_equal(r.kld_values[0], FX["kld_q4_0_c0"])
    np.testing.assert_array_equal(r.p_diff_values[0], FX["p_diff_q4_0_c0"])


def test_the_statistics_are_llamacpps():
    """Mean KLD and its ±, median, percentiles, Δp, RMS Δp, same top, PPL ratio and difference: llama.cpp's
    definitions over the same positions (window 0 of Q4_0), to float64 rounding."""
    rows = _stored_rows()
    r = KLDivergenceResult(N_CTX)
    r.add_window(FX["logits_q4_0_c0"], rows[0], _targets(0))
    got, ref = r.statistics(), json.loads(str(FX["stats_q4_0_c0"]))
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


@pytest.mark.parametrize("q", ["q8_0", "q4_0"])
def test_quantized_models_against_llamacpps_f32_base_give_llamacpps_figures(models, q):
    """kvrun's Q8_0 / Q4_0 logits against the base file llama.cpp's F32 logits make: the figures llama.cpp's own
    Q8_0 / Q4_0 logits give, as closely as the two engines' logits agree (llama.cpp multiplies int8-quantized
    activations, a few hundredths of a logit on this peaked random model): the perplexities within 1%, the mean
    KL divergence within 15% (Q8_0's is 3.6e-4 nats, Q4_0's 160 times that), the top token agreeing as often to
    two positions in 120.  PPL(base) comes from the file: exactly llama.cpp's."""
    eng = Engine(models[q], n_ctx=N_CTX, n_batch=N_CTX)
    base = BaseFile.open(models["base"])
    check_base(base, eng.cfg.n_vocab, eng.tokenizer.encode(str(FX["text"]), add_bos=False))
    got, ref = kl_divergence(eng, base).statistics(), json.loads(str(FX[f"stats_{q}"]))
    assert got["count"] == ref["count"] == N_CHUNK * n_scored(N_CTX)
    assert got["ppl_base"] == ref["ppl_base"] and got["ppl_base_unc"] == ref["ppl_base_unc"]
    for k in ("ppl", "ppl_ratio", "ppl_diff"):
        assert got[k] == pytest.approx(ref[k], rel=0.01), k
    assert got["cor"] == pytest.approx(ref["cor"], abs=1e-3)
    if HAVE_VNNI or q != "q8_0":
        assert got["kld_mean"] == pytest.approx(ref["kld_mean"], rel=0.15)
        assert got["kld_unc"] == pytest.approx(ref["kld_unc"], rel=0.15)
        assert got["kld_median"] == pytest.approx(ref["kld_median"], rel=0.1)
    else:  # (an AVX2 host's prefill meets Q8_0 with float32 activations, not int8: nearer the base, 2.6e-4 nats)
        assert 0.5 * ref["kld_mean"] < got["kld_mean"] < 1.15 * ref["kld_mean"]
    assert abs(got["same_top"] - ref["same_top"]) * got["count"] <= 2


def test_the_f32_model_against_llamacpps_base_diverges_by_nothing(models):
    """kvrun's F32 logits against llama.cpp's stored F32 ones: the noise floor of the comparison."""
    s = kl_divergence(Engine(models["f32"], n_ctx=N_CTX, n_batch=N_CTX), BaseFile.open(models["base"])).statistics()
    assert abs(s["kld_mean"]) < 1e-5 and s["kld_max"] < 1e-3 and s["same_top"] == 1.0


def test_cli_writes_a_base_then_compares_with_it(models, tmp_path):
    """The two runs of llama-perplexity: the F32 model's base file has llama.cpp's header and rows within a
    step or two of its (the engines' F32 logits differ by ~1e-3); the Q4_0 model then reads it."""
    out = tmp_path / "f32.kld"
    args = ["perplexity", str(models["f32"]), "-f", str(models["text"]), "--ctx", str(N_CTX), "--chunks", str(N_CHUNK)]
    r = CliRunner().invoke(main, [*args, "--kl-divergence-base", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["n_chunks"] == N_CHUNK
    mine, theirs = BaseFile.open(out), BaseFile.open(models["base"])
    n_head = 8 + 12 + 4 * N_CHUNK * N_CTX
    assert out.read_bytes()[:n_head] == FX["base"].tobytes()[:n_head]
    steps = np.abs(mine.rows[..., 4:].astype(np.int32) - theirs.rows[..., 4:].astype(np.int32))
    assert np.percentile(steps, 99) <= 8  # 16 nats on 65535 steps: 8 steps are 2e-3 nats
    args[1] = str(models["q4_0"])
    r = CliRunner().invoke(main, [*args, "--kl-divergence-base", str(out), "--kl-divergence"])
    assert r.exit_code == 0, r.output
    for line in ("====== KL divergence statistics ======", "Mean    KLD:", "99.9%   KLD:", "Median  KLD:", "RMS Δp    :", "Same top p:", "Mean PPL(Q)/PPL(base)"):
        assert line in r.output
    r = CliRunner().invoke(main, [*args, "--kl-divergence-base", str(out), "--kl-divergence", "--json"])
    s = json.loads(r.output.strip().splitlines()[-1])
    assert s["count"] == N_CHUNK * n_scored(N_CTX) and s["kld_mean"] > 0.01 and 0.8 < s["same_top"] < 1


def test_a_base_of_another_vocabulary_or_text_is_refused_in_one_line(models, tmp_path):
    args = ["perplexity", str(models["q4_0"]), "-f", str(models["text"]), "--kl-divergence"]
    other_vocab = bytearray(FX["base"].tobytes())
    other_vocab[12:16] = np.array([32000], "<i4").tobytes()
    other_vocab += bytes(2 * N_CHUNK * n_scored(N_CTX) * (row_width(32000) - row_width(262)))
    (tmp_path / "vocab.kld").write_bytes(bytes(other_vocab))
    other_text = tmp_path / "other.txt"
    other_text.write_text("a different text, " * 40)
    (tmp_path / "junk.kld").write_bytes(b"not a base file")
    (tmp_path / "short.kld").write_bytes(FX["base"].tobytes()[:1000])
    cases = {
        "vocab.kld": ("vocabulary of 32000", args),
        "llamacpp.kld": ("another text", [*args[:3], str(other_text), "--kl-divergence"]),
        "junk.kld": ("is not a base file", args),
        "short.kld": ("is truncated", args),
    }
    for name, (msg, a) in cases.items():
        path = models["base"] if name == "llamacpp.kld" else tmp_path / name
        r = CliRunner().invoke(main, [*a, "--kl-divergence-base", str(path)])
        assert r.exit_code != 0 and msg in r.output and "Traceback" not in r.output, (name, r.output)
        assert len(r.output.strip().splitlines()) == 1, r.output
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and "--kl-divergence-base FILE" in r.output
    with pytest.raises(KvrunError, match="another text"):
        check_base(BaseFile.open(models["base"]), 262, TOKENS[:100])
