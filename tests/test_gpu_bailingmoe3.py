"""Ling 3 (``bailingmoe3``, models/bailingmoe3.py) on ``--device gpu``: Kimi Linear's GPU path (models/gpu_delta.py) with
Ling's parameters, on the kernel emulator against the CPU (whose logits are llama.cpp's: tests/test_bailingmoe3.py).

What Ling adds to Kimi's GPU steps, each a kernel: the KDA "safe gate" decay ``lower_bound * sigmoid(A (f_a x +
dt_b))`` (a flag of delta.cu's decay kernel) from the full-rank ``ssm_f_a`` / ``ssm_g_a`` (no ``_b`` products), MLA's
rope parts turned by the backend's rope (normal rope, or the M-RoPE text tables where the file states sections), the
per-head sigmoid gate on MLA's output, and clamped SwiGLU experts and dense FFN (ops/gpu/moe2.cu's and the backend's
clamp).  Ling 3 VL's pictures: a picture's rows turn by per-row M-RoPE tables, the text after it by the text tables at
its slot plus the pictures' shift, made on the device, the shift part of a captured step's key (models/mrope_text.py,
as Qwen2-VL's: tests/test_gpu_vision2.py), on tiny_vision_ling3vl.py's pair with the prompts of
tests/test_vision_ling3vl.py.

Tolerances: tests/test_gpu_delta.py's (the kernels within 2e-5 of the CPU's numpy, the logits within 2e-3 of the CPU's largest, float32 weights), over a prefill of
two chunks and decode steps, the first captured as a CUDA graph and the others replayed."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_checks import check_decode_copies_only_logits, check_prefill_and_replayed_decode, rel_err
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.ops import gpu_available
from kvrun.ops.gpu import delta as G
from kvrun.ops.gpu import emulate
from kvrun.ops.host import sigmoid

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

BOUND = 2e-3  # (tests/test_gpu_delta.py's, Kimi Linear's)


def _dev(rt, a: np.ndarray):
    return rt.xp.asarray(np.ascontiguousarray(a))


def test_the_safe_gate_and_the_head_gate_as_the_cpu_computes_them(rt):
    """delta.cu's decay with a bound below 0: ``lower_bound * sigmoid(A[head] * (f + dt_b))`` per key channel (then the
    write strengths as ever), and its per-head gate mode: each head's values times ``sigmoid`` of its one gate value;
    within 2e-5 of bailingmoe3.py's numpy lines (float32 both)."""
    rng = np.random.default_rng(11)
    T, H, d = 3, 4, 16
    f, beta = rng.standard_normal((T, H * d)).astype(np.float32) * 4, rng.standard_normal((T, H)).astype(np.float32) * 4
    dt_b, A = rng.uniform(-1, 1, H * d).astype(np.float32), np.exp(rng.uniform(-1, 1, H)).astype(np.float32)
    want = np.concatenate([(sigmoid((f + dt_b).reshape(T, H, d) * A[:, None]) * np.float32(-5.0)).reshape(T, -1), sigmoid(beta)], 1)
    gb = rt.xp.zeros((T, H * d + H), np.float32)
    G.decay_beta(_dev(rt, f), _dev(rt, beta), _dev(rt, dt_b), _dev(rt, A), gb, d, -5.0)
    assert rel_err(want, rt.asnumpy(gb)) < 2e-5
    att, gate = rng.standard_normal((T, H, d)).astype(np.float32), rng.standard_normal((T, H)).astype(np.float32) * 3
    want, got = att * sigmoid(gate)[:, :, None], _dev(rt, att)
    G.head_gate(_dev(rt, gate), got)
    assert rel_err(want, rt.asnumpy(got)) < 2e-5


@pytest.mark.parametrize("name", ["bailingmoe3", "bailingmoe3-mrope"])
def test_gpu_logits_match_cpu_over_prefill_chunks_and_replayed_decode_steps(gpu_env, tmp_path, capsys, name):
    """Normal rope and a query LoRA; M-RoPE's text tables (neox halves) and ``attn_q``: 20 tokens in chunks of 16 and 4,
    then three decode steps (one capture, two replays), the KDA state on the device."""
    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
    _, cb = check_prefill_and_replayed_decode(path, capsys=capsys, steps=(5, 9, 14), bound=BOUND)
    assert [type(layer).__name__ == "GPUDeltaNetLayerCache" for layer in cb.layers] == [True, False, True, False]


def test_a_decode_step_copies_only_its_logits_down(monkeypatch, tmp_path):
    """On the strict CuPy stand-in (devicexp.py): the safe gate, the rope, the head gate and the clamps are kernels, so
    the step is captured and a replay brings down the logits alone."""
    path = write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS["bailingmoe3"])
    check_decode_copies_only_logits(monkeypatch, path, prompt=range(3, 10), steps=(5, 9))


# ---------------------------------------------------------------- Ling 3 VL's pictures

STEPS = (5, 9, 14)  # decode steps after a prompt: the first captured, the others replayed


@pytest.fixture(scope="module")
def ling3vl(tmp_path_factory, emulated):
    """tests/test_vision_ling3vl.py's tiny pair (F32 text model and projector, checked against the fixture's bytes) on
    both backends, its pictures and prompts."""
    import sys
    from pathlib import Path

    from vision_checks import check_files, fixture, pictures

    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from make_vision_ling3vl_fixtures import IMAGES, PAIRS, PROMPTS, write_pair

    fx = fixture("ling3vl")
    files = check_files(write_pair(tmp_path_factory.mktemp("gpu_ling3vl")), fx)
    cpu, gpu = (Vision(Engine(files["text"], device=d, n_ctx=256, n_batch=64, threads=1), files[PAIRS["t"]]) for d in ("cpu", "gpu"))
    return cpu, gpu, pictures(IMAGES), PROMPTS


def _feed(v, cache, text: str, pics: list) -> np.ndarray:
    """``text`` with ``pics`` at its media markers fed into ``cache`` (pictures' rows, then text): the last logits."""
    return v.engine.eval(cache, v.prefill(cache, v.segments(text, pics)))[-1]


def _decode(cpu, gpu, ca, cb, steps=STEPS) -> list[float]:
    """``steps`` decoded on both backends: the GPU's logits' differences from the CPU's."""
    return [rel_err(cpu.engine.eval(ca, [tok])[-1], gpu.engine.eval(cb, [tok])[-1]) for tok in steps]


def _two_pictures_one_after_the_other(ling3vl) -> list[float]:
    """Prompt 0 (one picture), decode steps, then a second picture of another shift on the same cache and decode steps
    again, on both backends: the GPU's logits' differences from the CPU's after the second picture (its last token,
    ``<|vision_end|>``, a decode step too) and at the steps after it."""
    cpu, gpu, pics, prompts = ling3vl
    names = list(pics)
    ca, cb = cpu.engine.new_cache(), gpu.engine.new_cache()
    assert rel_err(_feed(cpu, ca, prompts[0], [pics[names[0]]]), _feed(gpu, cb, prompts[0], [pics[names[0]]])) < BOUND
    assert type(cb.layers[1]).__name__ != "GPUDeltaNetLayerCache"  # (an MLA layer: the rope's)
    assert max(_decode(cpu, gpu, ca, cb)) < BOUND
    after = rel_err(_feed(cpu, ca, " and <__media__>", [pics["tall"]]), _feed(gpu, cb, " and <__media__>", [pics["tall"]]))
    return [after, *_decode(cpu, gpu, ca, cb)]


def test_ling3vl_pictures_on_the_gpu_give_the_cpus_logits_and_then_decode_from_graphs(ling3vl):
    """Prompt 1's two pictures between text (each picture's rows by per-row tables, the text after them shifted): the
    CPU's logits within 2e-3, then decode steps captured once and replayed, each turned by its own position."""
    cpu, gpu, pics, prompts = ling3vl
    imgs = [pics[n] for n in list(pics)[: prompts[1].count("<__media__>")]]
    ca, cb = cpu.engine.new_cache(), gpu.engine.new_cache()
    assert rel_err(_feed(cpu, ca, prompts[1], imgs), _feed(gpu, cb, prompts[1], imgs)) < BOUND
    r0 = gpu.engine.graphs.n_replays
    assert max(_decode(cpu, gpu, ca, cb)) < BOUND
    assert gpu.engine.graphs.n_replays - r0 >= len(STEPS) - 1


@pytest.mark.heavy_emulation  # (on the emulator, over 10 s: tests/conftest.py's sample leaves it out)
def test_a_second_picture_decodes_by_its_own_shift_and_the_graph_key_has_teeth(ling3vl, monkeypatch):
    """A second picture on the same cache moves the text's shift (the tall grid's): the steps after it are captured
    anew, the shift in the graph's key, with the CPU's logits; left out of the key (``decode_graph_key`` 0), the steps
    replay the first picture's shift and miss them by far."""
    from kvrun.models.bailingmoe3 import Bailingmoe3Model

    gpu = ling3vl[1]
    n0 = gpu.engine.graphs.n_captures
    assert max(_two_pictures_one_after_the_other(ling3vl)) < BOUND
    assert gpu.engine.graphs.n_captures >= n0 + 2
    monkeypatch.setattr(Bailingmoe3Model, "decode_graph_key", lambda self, cache, pos: 0)
    assert max(_two_pictures_one_after_the_other(ling3vl)) > 10 * BOUND
