"""The diffusion language models Dream (``dream``), LLaDA (``llada``) and LLaDA-MoE (``llada-moe``), and ``kvrun
diffusion`` (runtime/diffusion.py, llama.cpp's llama-diffusion-cli):

* each forward pass, over one batch whose positions all see each other, matches llama.cpp's logits
  (tools/make_diffusion_fixtures.py) and fails them without what sets the architecture apart; a decode step is refused;
* the denoising chooses llama.cpp's tokens step by step (each step's logits and candidates llama.cpp's, the proposal at
  temperature 0 the most probable) under Dream's timestep schedule and LLaDA's blocks, by confidence, entropy, margin;
* the loop's rules hold on small logits: how many a step unmasks, which, ties, top-k / top-p, shifted logits;
* bad settings, a file without a mask token and a model that is no diffusion model are refused in one line, as
  ``kvrun run`` on a diffusion model is (pointing at ``kvrun diffusion``), before anything prints.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_diffusion import ARCHS, write_tiny_diffusion
from tinymodel import write_tiny_model

from kvrun.cli import main
from kvrun.loaders.errors import KvrunError, UnsupportedModelError
from kvrun.models.diffusion_lm import DiffusionForward
from kvrun.runtime.diffusion import (ALGORITHMS, DiffusionParams, block_transfers, candidates, denoise, diffuse, progress_line,
                                     transfer_count)  # fmt: skip
from kvrun.runtime.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_diffusion_fixtures import MAX_LENGTH, SETTINGS  # noqa: E402

FIX = Path(__file__).parent / "fixtures"
#: the drops' bar: a forward that still matches within this has not lost anything llama.cpp computes
BAR = 3e-2


def _fixture(arch: str):
    return np.load(FIX / f"diffusion_{arch}.npz")


def _engine(tmp_path: Path, arch: str, n: int = 64, **kw) -> Engine:
    path = write_tiny_diffusion(tmp_path / f"{arch}.gguf", arch, **kw)
    if not kw:  # (as tools/make_diffusion_fixtures.py writes it)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == str(_fixture(arch)["sha256"]), \
            "tiny_diffusion.py writes another model now: regenerate the fixtures"  # fmt: skip
    return Engine(path, n_ctx=n, n_batch=n)


def _forward_error(e: Engine, forward=None) -> float:
    fix = _fixture(e.cfg.arch)
    n = len(fix["ids"])
    cache = e.cache_for(None, n, n)
    out = np.zeros((n, e.cfg.n_vocab), np.float32)
    (forward or e.model.forward)(fix["ids"], np.arange(n, dtype=np.int32), cache, np.arange(n), out)
    return float(np.abs(out - fix["logits"]).max() / np.abs(fix["logits"]).max())


def _drop_biases(m):
    for L in m.layers:
        L.bq = L.bk = L.bv = None


def _flip_rope(m):
    import dataclasses

    m.cfg = dataclasses.replace(m.cfg, rope_neox=not m.cfg.rope_neox)


def _renormalise(m):
    for L in m.layers:
        L.moe.norm_weights = True


@pytest.mark.parametrize("arch,drop", [("dream", _drop_biases), ("llada", _flip_rope), ("llada-moe", _renormalise)])
def test_forward_matches_llamacpp_over_one_batch(tmp_path, arch, drop):
    """40 positions in one batch, every one seeing every other: llama.cpp's logits.  Causal attention fails them, and
    so does Dream without its Q/K/V biases, LLaDA with rope over halves, LLaDA-MoE with its experts' weights
    renormalised; a batch continuing the sequence (a decode step) is refused in one line."""
    e = _engine(tmp_path, arch)
    assert _forward_error(e) < 1e-3
    trunk = super(DiffusionForward, e.model).forward  # (the same block, attending causally)
    assert _forward_error(e, trunk) > BAR
    drop(e.model)
    assert _forward_error(e) > BAR
    with pytest.raises(UnsupportedModelError, match="kvrun diffusion") as err:
        e.model.forward(np.array([1], np.int32), np.array([40], np.int32), e.new_cache(), np.arange(1), np.zeros((1, e.cfg.n_vocab), np.float32))  # fmt: skip
    assert "\n" not in str(err.value)


CASES = [(arch, name) for arch in ARCHS for name in SETTINGS[arch]]


@pytest.mark.parametrize("arch,name", CASES)
def test_denoising_chooses_llamacpps_tokens_step_by_step(tmp_path, arch, name):
    """llama-diffusion-cli's loop over llama.cpp's logits and sampler chain (top-k 40, top-p 0.95; the proposal the most
    probable candidate): the sequence before every step and after the last is kvrun's, token for token -- the file's
    shift_logits (Dream's true, LLaDA's false), the mask token, the schedule and the algorithm all read as llama.cpp
    reads them (a position whose proposal is the mask token itself stays masked, as there)."""
    fix = _fixture(arch)
    steps, eps, block, alg = SETTINGS[arch][name]
    seen: list[np.ndarray] = []
    prm = DiffusionParams(steps=steps, eps=eps, block_length=block, algorithm=ALGORITHMS[alg], max_length=MAX_LENGTH)
    out = diffuse(_engine(tmp_path, arch), list(fix["prompt"]), prm, lambda s, t, x: seen.append(x.copy()))
    want = fix[f"{name}_trace"]
    assert len(seen) == len(want)
    for i, (got, exp) in enumerate(zip(seen, want)):
        assert (got == exp).all(), f"step {i}: {got.tolist()} != {exp.tolist()}"
    assert (out == want[-1]).all()
    if arch == "dream" and name == "conf":  # (unshifted, Dream's text is another)
        prm = DiffusionParams(steps=steps, eps=eps, algorithm="confidence", max_length=MAX_LENGTH, shift_logits=False)
        assert not (diffuse(_engine(tmp_path, arch), list(fix["prompt"]), prm) == want[-1]).all()


def test_how_many_a_step_unmasks():
    """Dream's schedule: at step s of N a fraction 1 - t(s+1)/t(s) of the masked, t(s) = 1 - s/N (1 - eps), truncated,
    the last step all; LLaDA's: a block's masks spread over its steps, the first ones one more."""
    masked, counts = 12, []
    for step in range(4):
        counts.append(transfer_count(step, 4, masked, 0.0))
        masked -= counts[-1]
    assert counts == [3, 2, 3, 4]  # (9 * (1 - 0.5 / 0.75) is 2.9999998 in llama.cpp's float32: 2, not 3)
    assert transfer_count(0, 8, 16, 1e-3) == 1  # (16 * 0.12489 truncated: llama.cpp's float32 and int cast)
    assert block_transfers(10, 4) == [3, 3, 2, 2] and block_transfers(2, 4) == [1, 1, 0, 0]


def _run(logits: np.ndarray, prompt: list[int], **kw) -> list[np.ndarray]:
    """The loop over fixed logits [L, V] (every step the same), the sequence before each step and after the last."""
    seen: list[np.ndarray] = []
    prm = DiffusionParams(**{"max_length": len(logits), "shift_logits": False, **kw})  # (temperature 0)
    prm.validate(len(prompt))
    denoise(lambda x: logits, prompt, 9, prm, lambda s, t, x: seen.append(x.copy()))
    return seen


def test_which_positions_a_step_unmasks():
    """One a step (LLaDA's schedule, 3 masks over 3 steps): the most confident first (confidence: the proposal's
    probability; margin: the best minus the second; entropy: llama.cpp's, the entropy itself, so the least sure
    first), ties to the leftmost; a shifted model reads position i's logits at row i - 1."""
    logits = np.zeros((4, 10), np.float32)
    logits[1, 3] = 5.0  # sure (p 0.94)
    logits[2, 4] = 1.5  # p 0.33, margin 0.26, entropy 2.10
    logits[3, 5], logits[3, 6] = 2.0, 1.9  # p 0.34, margin 0.03, entropy 1.79
    flat = {"steps": 3, "block_length": 4, "top_k": 0, "top_p": 1.0}
    conf = _run(logits, [1], algorithm="confidence", **flat)
    assert [s.tolist() for s in conf] == [[1, 9, 9, 9], [1, 3, 9, 9], [1, 3, 9, 5], [1, 3, 4, 5]]
    marg = _run(logits, [1], algorithm="margin", **flat)
    assert [s.tolist() for s in marg][1:3] == [[1, 3, 9, 9], [1, 3, 4, 9]]
    ent = _run(logits, [1], algorithm="entropy", **flat)
    assert [s.tolist() for s in ent][1:] == [[1, 9, 4, 9], [1, 9, 4, 5], [1, 3, 4, 5]]
    ties = _run(np.zeros((4, 10), np.float32), [1], **flat)
    assert ties[1].tolist() == [1, 0, 9, 9]  # (every proposal token 0, every confidence 1/10: the leftmost)
    shifted = _run(logits, [1], shift_logits=True, **{**flat, "algorithm": "confidence"})
    assert shifted[1].tolist() == [1, 9, 3, 9]  # (position 2 from row 1, the sure one)


def test_top_k_and_top_p_set_the_probabilities_confidence_reads():
    """The candidates that survive top-k then top-p (the smallest prefix reaching top_p, at least one), renormalised,
    then the temperature: the probabilities every confidence reads."""
    row = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    ids, p = candidates(row, 0, 1.0, 0.0)
    assert ids.tolist() == [[0, 1, 2, 3]] and np.allclose(p, [[0.5, 0.3, 0.15, 0.05]])
    ids, p = candidates(row, 2, 1.0, 0.0)
    assert np.allclose(p, [[0.625, 0.375]])
    ids, p = candidates(row, 0, 0.8, 0.0)
    assert np.allclose(p, [[0.625, 0.375, 0, 0]])
    ids, p = candidates(row, 0, 0.1, 0.0)
    assert np.allclose(p, [[1, 0, 0, 0]])
    ids, p = candidates(row, 2, 1.0, 0.5)
    assert np.allclose(p[0, 0] / p[0, 1], (0.5 / 0.3) ** 2, rtol=1e-5)


def test_a_seeded_draw_repeats_and_origin_fills_every_mask(tmp_path):
    """At temperature > 0 the same seed gives the same tokens; Dream's ``origin`` leaves no mask after the last step."""
    e = _engine(tmp_path, "dream")
    prm = lambda **kw: DiffusionParams(steps=6, eps=1e-3, max_length=20, **kw)  # noqa: E731
    a = diffuse(e, [116, 104, 101], prm(temperature=0.8, seed=5))
    assert (a == diffuse(e, [116, 104, 101], prm(temperature=0.8, seed=5))).all()
    o = diffuse(e, [116, 104, 101], prm(algorithm="origin", seed=1))
    assert (o[:3] == [116, 104, 101]).all() and o.shape == (20,)


@pytest.mark.parametrize("kw,message", [
    ({}, "one of the two"),
    ({"eps": 1e-3, "block_length": 8}, "one of the two"),
    ({"block_length": 8, "steps": 7}, "multiple of the 4 blocks"),
    ({"block_length": 5}, "multiple of --diffusion-block-length"),
    ({"eps": 1e-3, "algorithm": "fastest"}, "algorithm must be one of"),
    ({"eps": 1e-3, "algorithm": "7"}, "one of 0..4"),
    ({"eps": 1e-3, "max_length": 3}, "nothing left to denoise"),
    ({"eps": 1e-3, "top_p": 0.0}, "top-p"),
    ({"eps": 1e-3, "steps": 0}, "--diffusion-steps must be >= 1"),
])  # fmt: skip
def test_bad_settings_are_refused_in_one_line(kw, message):
    prm = DiffusionParams(**{"max_length": 32, **kw})
    with pytest.raises(KvrunError, match=message) as e:
        prm.validate(3)
    assert "\n" not in str(e.value)


def test_algorithms_by_llamacpps_numbers():
    prm = DiffusionParams(eps=1e-3, algorithm="1", max_length=8)
    prm.validate(2)
    assert prm.algorithm == "entropy"


def test_a_file_without_a_mask_token_and_a_model_that_is_not_one_are_refused(tmp_path):
    prm = DiffusionParams(eps=1e-3, max_length=16)
    with pytest.raises(KvrunError, match="mask_token_id") as e:
        diffuse(_engine(tmp_path, "llada", mask=False), [1, 2], prm)
    assert "\n" not in str(e.value)
    llama = Engine(write_tiny_model(tmp_path / "l.gguf"), n_ctx=16, n_batch=16)
    with pytest.raises(KvrunError, match="not a diffusion language model.*kvrun run") as e:
        diffuse(llama, [1, 2], prm)
    with pytest.raises(KvrunError, match="load it with n_ctx and n_batch >= 32"):
        diffuse(_engine(tmp_path, "llada", n=16), [1, 2], DiffusionParams(eps=1e-3, max_length=32))


def test_shift_logits_unstated_is_shifted(tmp_path):
    """llama-diffusion-cli shifts where the file says nothing (Dream's converter states true, LLaDA's false)."""
    from kvrun.runtime.diffusion import file_shift_logits

    assert file_shift_logits(_engine(tmp_path, "llada", shift_logits=None))
    assert not file_shift_logits(_engine(tmp_path, "llada"))
    assert file_shift_logits(_engine(tmp_path, "dream"))


def test_cli_and_api_write_the_same_text(tmp_path):
    """``kvrun diffusion`` prints the denoised text on stdout and llama-diffusion-cli's progress bar on stderr (its
    frames with --diffusion-visual, the screen cleared for each); Model.diffuse returns the same text."""
    import kvrun

    path = str(write_tiny_diffusion(tmp_path / "d.gguf", "dream"))
    args = ["diffusion", path, "-p", "the cat", "--no-chat-template", "-ub", "24", "--diffusion-steps", "6", "--diffusion-eps", "0.001"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    text = kvrun.load(path, n_ctx=24, n_batch=24).diffuse("the cat", chat_template=False, steps=6, eps=1e-3)
    assert r.stdout == text + "\n"
    assert progress_line(6, 6) in r.stderr and "diffusion step: 0/6 [" in r.stderr
    v = CliRunner().invoke(main, args + ["--diffusion-visual"], color=True)  # (on a terminal: click strips escapes elsewhere)
    assert v.exit_code == 0 and v.stdout == r.stdout and v.stderr.count("\033[2J\033[H") == 7


@pytest.mark.parametrize("arch", ARCHS)
def test_run_on_a_diffusion_model_points_at_kvrun_diffusion(tmp_path, arch):
    """One line, nothing printed before it."""
    path = str(write_tiny_diffusion(tmp_path / "m.gguf", arch))
    r = CliRunner().invoke(main, ["run", path, "-p", "hi", "-n", "4"])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "`kvrun diffusion MODEL -p PROMPT`" in r.stderr and arch in r.stderr


def test_run_opens_the_models_file_once(tmp_path, monkeypatch):
    """The refusal reads the config the engine loaded: ``kvrun run`` opens a model's file once, a diffusion model's too."""
    from kvrun.loaders.gguf_file import GGUFFile
    from tinymodel import write_tiny_model

    opened, init = [], GGUFFile.__init__
    monkeypatch.setattr(GGUFFile, "__init__", lambda self, path: opened.append(str(path)) or init(self, path))
    text, dream = str(write_tiny_model(tmp_path / "t.gguf")), str(write_tiny_diffusion(tmp_path / "d.gguf", "dream"))
    assert CliRunner().invoke(main, ["run", text, "-p", "hi", "-n", "2", "--no-stats"]).exit_code == 0
    assert CliRunner().invoke(main, ["run", dream, "-p", "hi", "-n", "2"]).exit_code == 2
    assert opened == [text, dream]


def test_cli_bad_flag_fails_before_the_model_loads(tmp_path):
    r = CliRunner().invoke(main, ["diffusion", str(tmp_path / "absent.gguf"), "-p", "x", "--diffusion-eps", "0.001", "--diffusion-block-length", "8"])
    assert r.exit_code == 2 and "one of the two" in r.stderr and r.stderr.count("\n") == 1
