"""Three GPU paths that were correct but slow, now held to the CPU as they run on the device (the kernel emulator where
there is no GPU, ``KVRUN_GPU_EMULATE=1``, as tests/test_gpu_archs2.py):

* T5 decodes from captured CUDA graphs: its decoder step is kernels reading device buffers (the self-attention over
  the plain fp16 ring with the relative-position bias looked up on the device, ops/gpu/encoder.cu; the cross-attention to
  the encoded prompt kept on the device), so the first step is captured and the others replayed, a new prompt on the
  same cache captures anew (its cross-attention K/V are other arrays), and a replayed step copies down its logits alone;
* the embedding encoders keep their states on the device (models/bert.py's ``device_states``, EmbeddingGemma's),
  norms, rope, biases, activations and nomic-bert-moe's routing included: a text's states come down once, at the end
  (the strict CuPy stand-in, tests/devicexp.py, logs every copy down), within 2e-3 of the CPU's;
* a mixture of experts' prompt goes by expert (ops/gpu/moe.py ``grouped``, llama.cpp's mul_mat_id): rows counted and
  ordered per expert on the device, one dense matmul each of gate, up and down per expert that has rows, the GLU and
  the weighted sum in kernels; one token keeps the decode kernels.  Against the float64 product (NMSE 1e-9, as
  tests/test_gpu_moe.py) and the CPU's logits at prompts of 1, 7 and 33 tokens (2e-3).

Weights are float32 in the models (tests/test_gpu_encoders.py's and tests/test_gpu_moe.py's fixtures), so the backends'
arithmetic is compared; T5's bound is the one tests/test_gpu_encoders.py holds it to.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gpu_checks import check_decode_copies_only_logits, rel_err
from test_gpu_encoders import ENCODERS
from test_gpu_kernels import nmse
from test_gpu_moe import _reference, _stacked, _upload
from tiny_t5 import write_tiny_t5
from tinymodel import FIXTURE_MODELS, write_tiny_model

from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate
from kvrun.ops.gpu import kernels as K
from kvrun.ops.gpu import moe as gpu_moe
from kvrun.runtime.engine import Engine

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

FIX = Path(__file__).parent / "fixtures"
BOUND = 2e-3  # of the CPU's largest logit or state (tests/test_gpu_archs2.py's)


# ----------------------------------------------------------------- T5's decode as CUDA graphs
@pytest.fixture(scope="module", params=["t5", "t5-relu"])  # (gated GELU, the float16 table's; ReLU)
def t5(request, emulated, tmp_path_factory):
    name = request.param
    path = write_tiny_t5(tmp_path_factory.mktemp("t5") / f"{name}.gguf", name)
    fx = np.load(FIX / f"t5_{name}.npz")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == str(fx["sha256"]), "not the fixture's model file"
    return path, fx


def test_t5_decode_steps_replay_a_captured_graph_and_give_the_cpus_logits(t5, capsys):
    path, fx = t5
    cpu, gpu = Engine(path, device="cpu", n_ctx=64), Engine(path, device="gpu", n_ctx=64)
    assert gpu.graphs is not None
    ca, cb = cpu.new_cache(), gpu.new_cache()
    for k, n in (("0", 6), ("1", 3)):  # a second prompt on the same caches: the encoder again, its own cross K/V
        if ca.offset:
            assert ca.truncate(0) == cb.truncate(0) == 0
        ids, forced = fx[f"ids_{k}"].tolist(), fx[f"forced_{k}"].tolist()
        assert rel_err(cpu.eval(ca, ids), gpu.eval(cb, ids)) < BOUND  # (the start token's step: captured)
        for tok in forced[:n]:
            assert rel_err(cpu.eval(ca, [tok]), gpu.eval(cb, [tok])) < BOUND, f"prompt {k}, decode step {tok}"
    assert (gpu.graphs.n_captures, gpu.graphs.n_replays) == (2, 6 + 3)  # (a new prompt's cross K/V: a new capture)
    assert "CUDA graphs off" not in capsys.readouterr().err


def test_a_replayed_t5_step_copies_only_its_logits_down(t5, monkeypatch):
    path, fx = t5
    check_decode_copies_only_logits(monkeypatch, path, prompt=fx["ids_0"].tolist(), steps=fx["forced_0"].tolist()[:2])


def test_a_t5_prefill_of_the_decoder_is_the_cpus(t5):
    """Several decoder tokens a forward (the same kernel over the ring, every row's causal mask on the device)."""
    path, fx = t5
    cpu, gpu = Engine(path, device="cpu", n_ctx=64), Engine(path, device="gpu", n_ctx=64)
    ca, cb = cpu.new_cache(), gpu.new_cache()
    ids, forced = fx["ids_0"].tolist(), fx["forced_0"].tolist()[:8]
    cpu.eval(ca, ids), gpu.eval(cb, ids)
    assert rel_err(cpu.eval(ca, forced, logits_all=True), gpu.eval(cb, forced, logits_all=True)) < BOUND


# ----------------------------------------------------------------- the encoders' states on the device
@pytest.mark.parametrize("name", ENCODERS)  # (each its own hooks: norms, rope, ALiBi, GLUs, nomic-bert-moe's routing)
def test_an_encoders_forward_copies_down_only_its_states(emulated, strict, tmp_path, name):
    from devicexp import COPIES

    if gpu_available():
        pytest.skip("checks the strict CuPy stand-in (devicexp.py); on a GPU tests/test_gpu_encoders.py runs the device")
    path = ENCODERS[name](tmp_path / f"{name}.gguf")
    ids = np.load(FIX / f"embed_{name}.npz")["ids_1"].tolist()  # (long enough for ModernBERT's window to hide keys)
    cpu, gpu = Engine(path, device="cpu"), Engine(path, device="gpu")
    want = cpu.embed(ids)
    COPIES.clear()
    got = gpu.embed(ids)
    assert COPIES == [("asnumpy", want.shape)]  # the states, once; nothing between the kernels
    assert rel_err(want, got) < BOUND


# ----------------------------------------------------------------- a prompt's experts grouped
@pytest.mark.parametrize("act", ["silu", "swiglu_oai"])  # (gpt-oss's: with the experts' biases)
def test_grouped_experts_are_the_float64_product_reading_each_expert_once(rt, monkeypatch, act):
    """9 tokens, 3 experts each of 6, expert 5 chosen by none: one matmul each of gate, up and down per expert chosen;
    the output written (accumulate False) and added to (True)."""
    rng = np.random.default_rng(11)
    n_expert, n_embd, n_ff, T, k = 6, 64, 96, 9, 3
    g, u, d = _stacked(Q.Q8_0, n_expert, n_ff, n_embd, rng), _stacked(Q.Q4_0, n_expert, n_ff, n_embd, rng), _stacked(Q.Q8_0, n_expert, n_embd, n_ff, rng)
    gw = [_upload(rt, g, Q.Q8_0, (n_expert * n_ff, n_embd)), _upload(rt, u, Q.Q4_0, (n_expert * n_ff, n_embd)), _upload(rt, d, Q.Q8_0, (n_expert * n_embd, n_ff))]
    xn, x = (rng.standard_normal((T, n_embd)).astype(np.float32) for _ in range(2))
    ids = np.stack([rng.permutation(5)[:k] for _ in range(T)]).astype(np.int32)
    wts = rng.random((T, k)).astype(np.float32)
    biases = tuple(rng.standard_normal((n_expert, m)).astype(np.float32) for m in (n_ff, n_ff, n_embd)) if act == "swiglu_oai" else None
    launched = []
    real = K.launch
    monkeypatch.setattr(K, "launch", lambda name, *a, **kw: launched.append(name) or real(name, *a, **kw))
    dev = rt.xp.asarray
    for accumulate in (False, True):
        launched.clear()
        out = dev(np.full_like(x, np.nan) if not accumulate else x.copy())
        h = rt.xp.full((T, k * n_ff), np.nan, np.float32)
        gpu_moe.experts(*gw, n_ff, dev(ids), dev(wts), dev(xn), out, h, None if biases is None else tuple(map(dev, biases)), act, accumulate)
        base = x if accumulate else np.zeros_like(x)
        assert nmse(rt.asnumpy(out), _reference(g, u, d, Q.Q8_0, Q.Q4_0, Q.Q8_0, ids, wts, xn, base, n_ff, biases, act)) < 1e-9
        assert sum(n.startswith("matmul_") for n in launched) == 3 * 5  # (expert 5: no rows, no launch)
        assert not any(n.startswith("moe_gate_up_") for n in launched)


@pytest.mark.parametrize("name", ["qwen3moe", "llama-moe"])  # (Qwen3-MoE's and Mixtral's layouts)
def test_a_mixtures_prompt_goes_by_expert_and_gives_the_cpus_logits(gpu_env, tmp_path, monkeypatch, name):
    path = write_tiny_model(tmp_path / f"{name}.gguf", **FIXTURE_MODELS[name])
    cpu, gpu = Engine(path, device="cpu", n_ctx=64, n_batch=64), Engine(path, device="gpu", n_ctx=64, n_batch=64)
    grouped = []
    real = gpu_moe.grouped
    monkeypatch.setattr(gpu_moe, "grouped", lambda *a: grouped.append(a[7].shape[0]) or real(*a))
    for T in (1, 7, 33):
        ids = np.random.default_rng(T).integers(0, 200, T).tolist()
        grouped.clear()
        assert rel_err(cpu.eval(cpu.new_cache(), ids, logits_all=True), gpu.eval(gpu.new_cache(), ids, logits_all=True)) < BOUND
        assert grouped == ([] if T == 1 else [T] * gpu.cfg.n_layer)  # (one token: the decode kernels)
