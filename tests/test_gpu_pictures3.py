"""Pictures on `--device gpu`, round 3: the last four projectors the GPU refused (issue 5), on the kernel emulator
against the CPU and libmtmd, each on the tiny pair of its own vision test (tests/test_vision_<name>.py, the very files
its committed fixture was made from).

As for the others (tests/test_gpu_vision2.py), each encoder runs on the GPU too (models/siglip.py ON_GPU: the CPU's
rows within 2e-3, tests/test_gpu_vision_encoders*.py); what is new is how the text model reads them on the GPU:

- Hunyuan-VL / HunyuanOCR: the picture's rows turn by their XD-RoPE positions through per-row tables uploaded for that
  prefill (models/hunyuan_vl.py); a picture takes as many positions as rows, so the text after it keeps its plain
  positions and a captured decode step needs no shift (unlike M-RoPE's, ops/gpu/mrope.cu);
- CogVLM: the picture's rows run through the visual expert's weights, uploaded as the language ones (models/cogvlm.py:
  llama.cpp picks the set per batch, a batch of rows the expert's), the text and its decode steps the language ones;
- Gemma 3n: 256 causal rows into its AltUp forward (models/gemma3n.py's device forward), per-layer inputs token 0's;
- Gemma 4: rows that see each other both ways (cache/gpu_picture.py, ops/gpu/picture.cu), its last layers attending
  over an earlier layer's ring (cache/gpu_shared.py) under the picture's mask.

Weights are float32: logits within 2e-3 of the CPU's (relative to their largest, tests/test_gpu_archs2.py's bound),
and within each projector's own test's tolerance of libmtmd's, then decode steps replayed from captured graphs."""

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


def _files(name: str, d: Path) -> tuple[Path, Path]:
    """The tiny text model and the projector its vision test reads, checked against the fixture's hashes."""
    from gguf import GGMLQuantizationType as Q
    from vision_checks import check_files, fixture

    fx = fixture(name)
    if name == "hunyuanvl":
        from make_vision_hunyuanvl_fixtures import PAIRS, write_pair

        files = check_files(write_pair(d), fx)
        return files["text"], files[PAIRS["hv"]]
    if name == "gemma3n":
        from tiny_vision_gemma3n import write_tiny_gemma3n_vl, write_tiny_gemma3nv_mmproj

        files = {"text": write_tiny_gemma3n_vl(d / "text.gguf"), "f16": write_tiny_gemma3nv_mmproj(d / "mmproj-f16.gguf", Q.F16)}
        check_files(files, fx)
        return files["text"], files["f16"]
    from tiny_vision_cogvlm import write_tiny_cogvlm_mmproj, write_tiny_cogvlm_text
    from tiny_vision_gemma4 import write_tiny_gemma4_vl, write_tiny_gemma4v_mmproj

    import mtmd_oracle

    text, mm = {"cogvlm": (write_tiny_cogvlm_text, write_tiny_cogvlm_mmproj), "gemma4": (write_tiny_gemma4_vl, write_tiny_gemma4v_mmproj)}[name]
    files = check_files(mtmd_oracle.write_files(d, text, mm, {"f32": "F32", "f16": "F16"}, None), fx)
    return files["text"], files["f32"]


#: fixture name: (the tool with its IMAGES and PROMPTS, the prompt, the fixture's key, libmtmd tolerance of its vision test)
CASES = {
    "hunyuanvl": ("make_vision_hunyuanvl_fixtures", 1, "hv_1", 2e-2),  # two pictures: the second's index 1
    "cogvlm": ("make_vision_cogvlm_fixtures", 1, "1", 2e-2),
    "gemma4": ("make_vision_gemma4_fixtures", 0, "0", 2e-2),  # 81 rows: two pieces of n_batch, past the window of 8
    "gemma3n": ("make_vision_gemma3n_fixtures", 0, "0", 0.15),  # (256 rows: a real GPU's only, see below)
}
#: on the emulator Gemma 3n's 256 rows through AltUp take minutes (measured: 50 to 100 s a picture on 2 busy vCPUs), so
#: there it is checked on a picture's first rows (test_gemma3n_...) and the whole picture where a GPU runs it
ON_EMULATOR = [n for n in CASES if n != "gemma3n" or gpu_available()]


def _visions(text: Path, mmproj: Path, n_ctx: int = 1024):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    return [Vision(Engine(text, device=d, n_ctx=n_ctx, n_batch=64, threads=1), mmproj) for d in ("cpu", "gpu")]


def _prompt(vision, fx, pics: dict, prompt: str, key: str, tol: float):
    """``prompt`` with ``pics`` in turn at its media markers: libmtmd's ids (``pids_<key>``), the logits after it within
    ``tol`` of ``logits_<key>`` with its argmax (tests/vision_checks.check_logits' checks).  The cache and the logits."""
    from vision_checks import row_ids

    segs = vision.segments(prompt, [pics[n] for n in list(pics)[: prompt.count("<__media__>")]])
    assert row_ids(segs, []) == fx[f"pids_{key}"].tolist()
    cache = vision.engine.new_cache()
    logits = vision.engine.eval(cache, vision.prefill(cache, segs))[-1]
    np.testing.assert_allclose(logits, fx[f"logits_{key}"], atol=tol)
    assert logits.argmax() == fx[f"logits_{key}"].argmax()
    return cache, logits


@pytest.mark.parametrize("name", ON_EMULATOR)
def test_pictures_on_the_gpu_give_the_cpus_rows_and_logits_and_libmtmds_then_decode_from_graphs(tmp_path, emulated, name):
    """The CPU's encoder beside the GPU's text model (the CPU's rows bit for bit), libmtmd's ids and logits after the
    prompt's pictures on both backends, the GPU's within 2e-3 of the CPU's, then decode steps from captured graphs."""
    import importlib

    from vision_checks import fixture, pictures

    tool, k, key, tol = CASES[name]
    m = importlib.import_module(tool)
    fx, pics = fixture(name), pictures(m.IMAGES)
    cpu, gpu = _visions(*_files(name, tmp_path))
    on_gpu = getattr(gpu.encoder, "be", cpu.engine.backend).name == "gpu"  # (Gemma 3n's: numpy; Hunyuan-VL's, Gemma 4's: models/vit_device.py)
    assert gpu.engine.backend.name == "gpu" and on_gpu == (name in ("hunyuanvl", "gemma4", "cogvlm", "gemma3n"))  # (CogVLM's, Gemma 3n's: p95)
    first = next(iter(pics.values()))
    want, got = cpu.image_rows(first), gpu.image_rows(first)
    assert rel_err(want, got) < BOUND if on_gpu else np.array_equal(want, got)
    encode = gpu.image_rows  # (the emulator encodes that picture once: the prompt below reads these rows)
    gpu.image_rows = lambda image: got if image is first else encode(image)
    (ca, a), (cb, b) = (_prompt(v, fx, pics, m.PROMPTS[k], key, tol) for v in (cpu, gpu))
    assert rel_err(a, b) < BOUND
    n0 = gpu.engine.graphs.n_replays
    errs = [rel_err(cpu.engine.eval(ca, [t])[-1], gpu.engine.eval(cb, [t])[-1]) for t in STEPS]
    assert max(errs) < BOUND, errs
    assert gpu.engine.graphs.n_replays - n0 >= len(STEPS) - 1


def test_gemma3n_picture_rows_go_up_into_its_altup_forward_with_the_cpus_logits(tmp_path, emulated):
    """A Gemma 3n picture's first rows (its CPU encoder's) between text: the device forward takes them unscaled, their
    per-layer inputs token 0's, read causally, with the CPU's logits within 2e-3, then a decode step replayed."""
    from make_vision_gemma3n_fixtures import IMAGES
    from vision_checks import pictures

    cpu, gpu = _visions(*_files("gemma3n", tmp_path), 32)  # (a small context: the emulator's attention spans it)
    rows = cpu.image_rows(pictures(IMAGES)["small"])[:8]
    tok = cpu.engine.tokenizer
    before, after = (tok.encode(t, add_bos=b, parse_special=True) for t, b in (("<start_of_image>", True), ("<end_of_image>", False)))
    logits = []
    for v in (cpu, gpu):
        c = v.engine.new_cache()
        v.engine.eval(c, before)
        v.engine.eval_embd(c, rows)
        logits.append((c, v.engine.eval(c, after)[-1]))
    (ca, a), (cb, b) = logits
    assert rel_err(a, b) < BOUND
    n0 = gpu.engine.graphs.n_replays
    assert rel_err(cpu.engine.eval(ca, [STEPS[0]])[-1], gpu.engine.eval(cb, [STEPS[0]])[-1]) < BOUND
    assert gpu.engine.graphs.n_replays - n0 == 1  # (the one-token piece before it was the capture)


def test_the_checks_have_teeth_cogvlm_rows_through_the_language_weights_are_far_off(tmp_path, emulated, monkeypatch):
    """CogVLM's picture rows run on the GPU through the language weights (the expert left out) are far from the CPU's."""
    from make_vision_cogvlm_fixtures import IMAGES, PROMPTS
    from vision_checks import pictures

    cpu, gpu = _visions(*_files("cogvlm", tmp_path))
    monkeypatch.setattr(gpu.engine.model, "vis_layers", gpu.engine.model.text_layers)
    out = []
    for v in (cpu, gpu):
        c = v.engine.new_cache()
        out.append(v.engine.eval(c, v.prefill(c, v.segments(PROMPTS[0], [pictures(IMAGES)["small"]])))[-1])
    assert rel_err(*out) > 10 * BOUND


def test_the_checks_have_teeth_hunyuan_vl_rows_at_plain_positions_are_far_off(tmp_path, emulated, monkeypatch):
    """Hunyuan-VL's picture rows turned on the GPU by their slots (no XD-RoPE tables) are far from the CPU's."""
    from make_vision_hunyuanvl_fixtures import IMAGES, PROMPTS
    from vision_checks import pictures

    from kvrun.models import hunyuan_vl

    cpu, gpu = _visions(*_files("hunyuanvl", tmp_path))
    out = []
    for v in (cpu, gpu):
        if v is gpu:
            monkeypatch.setattr(hunyuan_vl, "xd_positions", lambda cache, slots: None)
        c = v.engine.new_cache()
        out.append(v.engine.eval(c, v.prefill(c, v.segments(PROMPTS[0], [pictures(IMAGES)["exact"]])))[-1])
    assert rel_err(*out) > 10 * BOUND


@pytest.mark.parametrize("name", ["hunyuanvl", "cogvlm", "gemma4"])
def test_pictures_go_up_as_cupy_takes_them_and_decode_brings_down_only_logits(tmp_path, emulated, name):
    """On the strict CuPy stand-in (tests/devicexp.py: host arrays refused in device arithmetic, every copy down
    logged) a picture goes in (its rows, Hunyuan-VL's per-row tables uploaded), and each replayed decode step after it
    brings down its logits and nothing else."""
    import importlib

    from vision_checks import pictures

    with strict_stand_in():
        m = importlib.import_module(CASES[name][0])
        c, v = _visions(*_files(name, tmp_path))
        # the picture's rows come down from the CPU's encoder (the GPU encoder's one copy down on this stand-in:
        # tests/test_gpu_vision_encoders*.py; the emulator's forward is slow), what the text model does with them here
        v.encoder.encode = c.encoder.encode
        cache = v.engine.new_cache()
        v.engine.eval(cache, v.prefill(cache, v.segments(m.PROMPTS[0], [next(iter(pictures(m.IMAGES).values()))])))
        v.engine.eval(cache, [STEPS[0]])  # (a capture, or a replay where the prompt's last token was captured)
        check_steps_copy_only_logits(v.engine, cache, STEPS[1:])
