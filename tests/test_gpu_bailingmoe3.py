"""Ling 3 (``bailingmoe3``, models/bailingmoe3.py) on ``--device gpu``: Kimi Linear's GPU path (models/gpu_delta.py) with
Ling's parameters, on the kernel emulator against the CPU (whose logits are llama.cpp's: tests/test_bailingmoe3.py).

What Ling adds to Kimi's GPU steps, each a kernel: the KDA "safe gate" decay ``lower_bound * sigmoid(A (f_a x +
dt_b))`` (a flag of delta.cu's decay kernel) from the full-rank ``ssm_f_a`` / ``ssm_g_a`` (no ``_b`` products), MLA's
rope parts turned by the backend's rope (normal rope, or the M-RoPE text tables where the file states sections), the
per-head sigmoid gate on MLA's output, and clamped SwiGLU experts and dense FFN (ops/gpu/moe2.cu's and the backend's
clamp).  Pictures in the cache are refused on the GPU in one line.

Tolerances: tests/test_gpu_delta.py's (the kernels within 2e-5 of the CPU's numpy, the logits within 2e-3 of the CPU's largest, float32 weights), over a prefill of
two chunks and decode steps, the first captured as a CUDA graph and the others replayed."""

from __future__ import annotations

import numpy as np
import pytest
from gpu_checks import check_decode_copies_only_logits, check_prefill_and_replayed_decode, rel_err
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.models.qwen35 import _sigmoid
from kvrun.ops import gpu_available
from kvrun.ops.gpu import delta as G
from kvrun.ops.gpu import emulate

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
    want = np.concatenate([(_sigmoid((f + dt_b).reshape(T, H, d) * A[:, None]) * np.float32(-5.0)).reshape(T, -1), _sigmoid(beta)], 1)
    gb = rt.xp.zeros((T, H * d + H), np.float32)
    G.decay_beta(_dev(rt, f), _dev(rt, beta), _dev(rt, dt_b), _dev(rt, A), gb, d, -5.0)
    assert rel_err(want, rt.asnumpy(gb)) < 2e-5
    att, gate = rng.standard_normal((T, H, d)).astype(np.float32), rng.standard_normal((T, H)).astype(np.float32) * 3
    want, got = att * _sigmoid(gate)[:, :, None], _dev(rt, att)
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


def test_pictures_on_the_gpu_are_refused_in_one_line(gpu_env, tmp_path):
    """A picture's rows turn by per-row M-RoPE tables (and the text after it by shifted positions), which the GPU path
    does not carry yet: refused in one line, the CPU's way named."""
    from kvrun.loaders.errors import UnsupportedModelError
    from kvrun.models.mrope_images import add_image
    from kvrun.runtime.engine import Engine

    gpu = Engine(write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS["bailingmoe3-mrope"]), device="gpu", n_ctx=64, n_batch=16)
    cache = gpu.new_cache()
    gpu.eval(cache, [1, 2, 3])
    add_image(cache, 2, 2)
    with pytest.raises(UnsupportedModelError, match="pictures on --device gpu") as e:
        gpu.eval_embd(cache, np.zeros((4, gpu.cfg.n_embd), np.float32))
    assert "\n" not in str(e.value) and "--device cpu" in str(e.value)
