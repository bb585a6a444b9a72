"""Pictures on `--device gpu`, round 4: Step3-VL's and Youtu-VL's (issue 5), the last two projectors the GPU refused, on
the kernel emulator against the CPU and libmtmd, each on the tiny pair of its own vision test (tests/test_vision_<name>.py,
the very files its committed fixture was made from).

Both encoders run on the GPU beside the GPU's text model (models/siglip.py ``ON_GPU``; their rows the CPU's within 2e-3,
tests/test_gpu_vision_encoders4.py), a picture's rows coming down once and going up with the prompt.  Neither text
model needs anything new to read them, and that is what is checked:

- Step3-VL: its crops and overview with the markers' embedding rows between them, one block of rows fed causally at
  consecutive plain positions (no M-RoPE, no both-ways block: ``mtmd_decode_use_non_causal`` is false) into Qwen3;
- Youtu-VL: one picture's rows between ``<|vision_start|>`` and ``<|vision_end|>``, fed the same way into deepseek2's
  latent attention (models/deepseek2.py).

Weights are float32: logits within 2e-3 of the CPU's (relative to their largest, tests/test_gpu_archs2.py's bound), and
within each projector's own test's tolerance of libmtmd's, then decode steps replayed from captured graphs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gpu_checks import check_steps_copy_only_logits, rel_err, strict_stand_in

from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

BOUND = 2e-3
STEPS = (5, 9, 14)  # decode steps after the prompt: the first captured, the rest replayed

#: fixture name: (the tool with its IMAGES, PROMPTS, PAIRS and write_pair, the pair's key, the prompt, the libmtmd
#: tolerance of its vision test)
CASES = {
    "step3vl": ("make_vision_step3vl_fixtures", "s3", 1, 3e-2),  # a picture of its overview alone, then one of 3 crops
    "youtuvl": ("make_vision_youtuvl_fixtures", "yt", 1, 2e-2),  # two pictures
}


def _visions(name: str, d: Path):
    """The fixture tool, the fixture, and the text model with its projector on the CPU and on the GPU."""
    import importlib

    from vision_checks import check_files, fixture

    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    m = importlib.import_module(CASES[name][0])
    fx = fixture(name)
    files = check_files(m.write_pair(d), fx)
    text, mmproj = files["text"], files[m.PAIRS[CASES[name][1]]]
    return m, fx, [Vision(Engine(text, device=dev, n_ctx=512, n_batch=64, threads=1), mmproj) for dev in ("cpu", "gpu")]


def _prompt(vision, fx, pics: dict, prompt: str, key: str, tol: float, ids):
    """``prompt`` with ``pics`` in turn at its media markers: libmtmd's ids (``pids_<key>``, as ``ids(segments,
    pictures)`` gives them), the logits after it within ``tol`` of ``logits_<key>`` with its argmax
    (tests/vision_checks.check_logits' checks).  The cache and the logits."""
    from vision_checks import prompt_logits

    cache, logits = prompt_logits(vision, fx, pics, prompt, key, tol, ids)
    assert cache.offset == int(fx[f"npast_{key}"])  # (every row and marker one plain position, as libmtmd's)
    return cache, logits


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.heavy_emulation) if n == "step3vl" else n for n in CASES])
def test_pictures_on_the_gpu_give_the_cpus_rows_and_logits_and_libmtmds_then_decode_from_graphs(tmp_path, emulated, name):
    """The encoder on the GPU beside the GPU's text model (the CPU's rows within 2e-3), libmtmd's ids and logits after
    the prompt's pictures on both backends, the GPU's within 2e-3 of the CPU's, then decode steps from captured graphs."""
    from vision_checks import block_ids, pictures, row_ids

    _, pair, k, tol = CASES[name]
    m, fx, (cpu, gpu) = _visions(name, tmp_path)
    assert gpu.engine.backend.name == "gpu" and gpu.encoder.be.name == "gpu"  # (tests/test_gpu_vision_encoders4.py)
    pics = pictures(m.IMAGES)
    last = list(pics)[m.PROMPTS[k].count("<__media__>") - 1]  # (Step3-VL's "wide": three crops and the overview)
    rows = gpu.image_rows(pics[last])
    assert rel_err(cpu.image_rows(pics[last]), rows) < BOUND
    encode = gpu.image_rows  # (the emulator encodes that picture once: the prompt below reads these rows)
    gpu.image_rows = lambda image: rows if image is pics[last] else encode(image)
    (ca, a), (cb, b) = (_prompt(v, fx, pics, m.PROMPTS[k], f"{pair}_{k}", tol, block_ids(v) if name == "step3vl" else row_ids)
                        for v in (cpu, gpu))  # fmt: skip
    assert rel_err(a, b) < BOUND
    n0 = gpu.engine.graphs.n_replays
    errs = [rel_err(cpu.engine.eval(ca, [t])[-1], gpu.engine.eval(cb, [t])[-1]) for t in STEPS]
    assert max(errs) < BOUND, errs
    assert gpu.engine.graphs.n_replays - n0 >= len(STEPS) - 1



def test_the_checks_have_teeth_step3vl_markers_rows_left_zero_on_the_gpu_are_far_off(tmp_path, emulated, monkeypatch):
    """Step3-VL's block on the GPU with its markers' rows (the GPU's token_embd rows between the crops) left zero, the
    crops' and overview's rows the CPU's, is far from the CPU's logits: the markers' rows are checked, not only the
    encoder's."""
    from vision_checks import pictures

    m, _, (cpu, gpu) = _visions("step3vl", tmp_path)
    pic = pictures(m.IMAGES)["wide"]
    ids = np.asarray(gpu.idefics3.ids(pic))
    rows = cpu.image_rows(pic)  # (the CPU's crops' rows: the GPU encoder's are checked above; the emulator's are slow)
    rows[ids != -1] = 0.0
    monkeypatch.setattr(gpu, "image_rows", lambda image: rows)
    out = []
    for v in (cpu, gpu):
        c = v.engine.new_cache()
        out.append(v.engine.eval(c, v.prefill(c, v.segments(m.PROMPTS[0], [pic])))[-1])
    assert rel_err(*out) > 10 * BOUND

@pytest.mark.parametrize("name", list(CASES))
def test_pictures_go_up_as_cupy_takes_them_and_decode_brings_down_only_logits(tmp_path, emulated, name):
    """On the strict CuPy stand-in (tests/devicexp.py: host arrays refused in device arithmetic, every copy down
    logged) a picture goes in (Step3-VL's markers' rows looked up in the GPU's token_embd among the crops'), and each
    replayed decode step after it brings down its logits and nothing else."""
    from vision_checks import pictures

    with strict_stand_in():
        m, _, (c, v) = _visions(name, tmp_path)
        # the crops' rows come down from the CPU's encoder (the GPU encoder's one copy down on this stand-in:
        # tests/test_gpu_vision_encoders4.py; the emulator's forward of 4 crops is slow), the markers' rows are
        # looked up here
        v.encoder.encode = c.encoder.encode
        cache = v.engine.new_cache()
        v.engine.eval(cache, v.prefill(cache, v.segments(m.PROMPTS[0], [pictures(m.IMAGES)["wide"]])))
        v.engine.eval(cache, [STEPS[0]])  # (a capture, or a replay where the prompt's last token was captured)
        check_steps_copy_only_logits(v.engine, cache, STEPS[1:])
