"""Classifier-free guidance in ``kvrun diffusion`` (runtime/diffusion.py ``cfg_scale``, llama-diffusion-cli's
``--diffusion-cfg-scale``), on the tiny Dream, LLaDA and LLaDA-MoE models (tests/tiny_diffusion.py):

* 0, the default, is the unguided loop: one forward a step, llama.cpp's tokens as before (tests/test_diffusion.py's
  fixtures);
* > 0: each step also runs the model on the sequence with its prompt masked, and reads
  ``uncond + (cfg_scale + 1) * (cond - uncond)``, diffusion-cli's formula, in float32;
* the denoising under guidance chooses llama.cpp's tokens step by step (tools/make_diffusion_cfg_fixtures.py);
* the CLI flag and the API argument write the same text; a negative scale is refused in one line.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_diffusion import ARCHS, write_tiny_diffusion

from kvrun.cli import main
from kvrun.loaders.errors import KvrunError
from kvrun.runtime.diffusion import ALGORITHMS, DiffusionParams, denoise, diffuse, guided, mask_token
from kvrun.runtime.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_diffusion_cfg_fixtures import CFG_SETTINGS  # noqa: E402
from make_diffusion_fixtures import MAX_LENGTH, SETTINGS  # noqa: E402

FIX = Path(__file__).parent / "fixtures"


def _engine(tmp_path: Path, arch: str, n: int = 64) -> Engine:
    path = write_tiny_diffusion(tmp_path / f"{arch}.gguf", arch)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == str(np.load(FIX / f"diffusion_cfg_{arch}.npz")["sha256"]), "tiny_diffusion.py writes another model now: regenerate"
    return Engine(path, n_ctx=n, n_batch=n)


def _forward(e: Engine, L: int, seen: list[np.ndarray]):
    """The engine's logits of a whole sequence (as runtime/diffusion.py's diffuse runs it), each input kept in ``seen``."""
    cache = e.cache_for(None, L, L)
    out = np.empty((L, e.cfg.n_vocab), np.float32)
    pos = np.arange(L, dtype=np.int32)

    def logits_of(tokens: np.ndarray) -> np.ndarray:
        seen.append(tokens.copy())
        cache.reset()
        e.model.forward(tokens, pos, cache, np.arange(L), out)
        return out  # (the same buffer each call, as diffuse's)

    return logits_of


@pytest.mark.parametrize("arch", ARCHS)
def test_scale_zero_is_the_unguided_loop(tmp_path, arch):
    """cfg_scale 0 (the default) runs one forward a step and writes llama.cpp's unguided tokens, as before."""
    fix = np.load(FIX / f"diffusion_{arch}.npz")
    name = next(iter(SETTINGS[arch]))
    steps, eps, block, alg = SETTINGS[arch][name]
    e = _engine(tmp_path, arch)
    seen: list[np.ndarray] = []
    prm = DiffusionParams(steps=steps, eps=eps, block_length=block, algorithm=ALGORITHMS[alg], max_length=MAX_LENGTH, cfg_scale=0.0)
    prm.validate(len(fix["prompt"]))
    prm.shift_logits = arch == "dream"
    out = denoise(_forward(e, MAX_LENGTH, seen), list(fix["prompt"]), mask_token(e), prm)
    assert (out == fix[f"{name}_trace"][-1]).all()
    assert len(seen) <= steps and all((s[: len(fix["prompt"])] == fix["prompt"]).all() for s in seen)  # (no unconditional pass)


@pytest.mark.parametrize("arch", ARCHS)
def test_guidance_follows_the_formula(tmp_path, arch):
    """A guided step's logits: the sequence's (cond), then the sequence with every prompt position the mask token and
    the rest as it is (uncond), combined as uncond + (scale + 1) (cond - uncond); scale 0 leaves cond as it is."""
    e = _engine(tmp_path, arch)
    L, mask_id, prompt = 24, mask_token(e), [116, 104, 101, 32, 99, 97, 116]
    x = np.full(L, mask_id, np.int32)
    x[: len(prompt)] = prompt
    x[10] = 115  # (an unmasked position after the prompt: the unconditional pass keeps it)
    seen: list[np.ndarray] = []
    logits_of = _forward(e, L, seen)
    cond = logits_of(x).copy()
    un_x = x.copy()
    un_x[: len(prompt)] = mask_id
    uncond = logits_of(un_x).copy()
    seen.clear()
    for scale in (0.5, 1.5, 3.0):
        got = guided(logits_of, x, len(prompt), mask_id, scale)
        assert got.dtype == np.float32
        assert np.allclose(got, uncond.astype(np.float64) + (scale + 1) * (cond.astype(np.float64) - uncond), rtol=1e-5, atol=1e-4)
    assert len(seen) == 6 and all((s == x).all() for s in seen[::2]) and all((s == un_x).all() for s in seen[1::2])
    assert not np.allclose(cond, uncond)  # (the prompt matters to these models: guidance moves the logits)
    assert np.array_equal(guided(logits_of, x, len(prompt), mask_id, 0.0), cond)


@pytest.mark.parametrize("arch,name", [(arch, name) for arch in ARCHS for name in CFG_SETTINGS[arch]])
def test_guided_denoising_chooses_llamacpps_tokens_step_by_step(tmp_path, arch, name):
    """diffusion-cli's loop with --diffusion-cfg-scale over llama.cpp's logits (both passes) and sampler chain: the
    sequence before every step and after the last is kvrun's, token for token -- and not the unguided one."""
    fix = np.load(FIX / f"diffusion_cfg_{arch}.npz")
    steps, eps, block, alg, scale = CFG_SETTINGS[arch][name]
    seen: list[np.ndarray] = []
    e = _engine(tmp_path, arch)
    kw = {"steps": steps, "eps": eps, "block_length": block, "algorithm": ALGORITHMS[alg], "max_length": MAX_LENGTH}
    out = diffuse(e, list(fix["prompt"]), DiffusionParams(**kw, cfg_scale=scale), lambda s, t, x: seen.append(x.copy()))
    want = fix[f"{name}_trace"]
    assert len(seen) == len(want)
    for i, (got, exp) in enumerate(zip(seen, want)):
        assert (got == exp).all(), f"step {i}: {got.tolist()} != {exp.tolist()}"
    assert (out == want[-1]).all()
    assert not (diffuse(e, list(fix["prompt"]), DiffusionParams(**kw)) == want[-1]).all()


def test_cli_flag_and_api_argument_write_the_same_text(tmp_path):
    import kvrun

    path = str(write_tiny_diffusion(tmp_path / "d.gguf", "dream"))
    args = ["diffusion", path, "-p", "the cat", "--no-chat-template", "-ub", "24", "--diffusion-steps", "6", "--diffusion-eps", "0.001"]
    r = CliRunner().invoke(main, args + ["--diffusion-cfg-scale", "1.5"])
    assert r.exit_code == 0, r.output
    m = kvrun.load(path, n_ctx=24, n_batch=24)
    assert r.stdout == m.diffuse("the cat", chat_template=False, steps=6, eps=1e-3, cfg_scale=1.5) + "\n"
    assert r.stdout != m.diffuse("the cat", chat_template=False, steps=6, eps=1e-3) + "\n"


def test_a_negative_scale_is_refused_in_one_line(tmp_path):
    with pytest.raises(KvrunError, match="--diffusion-cfg-scale must be >= 0") as e:
        DiffusionParams(eps=1e-3, max_length=16, cfg_scale=-1.0).validate(2)
    assert "\n" not in str(e.value)
    r = CliRunner().invoke(main, ["diffusion", str(tmp_path / "absent.gguf"), "-p", "x", "--diffusion-eps", "0.001", "--diffusion-cfg-scale", "-2"])
    assert r.exit_code == 2 and "--diffusion-cfg-scale must be >= 0" in r.stderr and r.stderr.count("\n") == 1
