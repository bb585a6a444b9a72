"""The compressed KV cache on ``--device gpu``: the CUDA decode kernel against the CPU one, the engine and the CLI.

Kernel tests run on two runtimes, as ``test_gpu_kernels.py``: ``cuda`` (a
real GPU, ``@pytest.mark.gpu``) and ``emulated`` (the CUDA sources compiled
for the CPU by ``kvrun.ops.gpu.emulate``).  Engine and CLI tests use the
emulator through ``KVRUN_GPU_EMULATE=1`` when there is no GPU, as
``test_gpu_engine.py``.

Tolerances: kernel outputs and per-slot probabilities within 1e-4 of the CPU
kernel's, relative to the largest (same codes and tables, float32 softmax in
another order); engine: the same greedy tokens as the CPU engine with the same
KVConfig and logits within 2e-2 relative (the backends' matmuls differ, so the
quantizer sees slightly different K/V); the device mirror equal to the host
storage bit for bit.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as Q
from tinymodel import write_tiny_model

from kvrun.cache.gpu_compressed import GPUCompressedLayerCache, make_gpu_compressed_cache
from kvrun.cache.gpu_plain import GPUPlainLayerCache
from kvrun.cache.kvconfig import KVConfig
from kvrun.cache.pool import Pool
from kvrun.cli import main
from kvrun.ops import gpu_available
from kvrun.ops.cpu.qattention import attend_decode_q as cpu_attend
from kvrun.ops.gpu import emulate
from kvrun.ops.gpu import qattention as qa
from kvrun.runtime.engine import Engine

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

# the `rt` fixture (real CUDA where a GPU is, else the kernel emulator) is in conftest.py


@pytest.fixture
def gpu_env(monkeypatch):
    if not gpu_available():
        monkeypatch.setenv("KVRUN_GPU_EMULATE", "1")


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


# ----------------------------------------------------------------- kernel
def _pool(rng, n_kv: int, cap: int, D: int, Dv: int, widths: tuple[int, int], G: int) -> Pool:
    """A pool of ``cap`` slots filled through the real quantizer (rows with a few outlier channels)."""
    p = Pool(n_kv, cap, D, Dv, widths[0], widths[1], G)
    if cap:
        k = rng.standard_normal((n_kv, cap, D)).astype(np.float32) * np.where(rng.random(D) < 0.1, 4.0, 1.0).astype(np.float32)
        v = rng.standard_normal((n_kv, cap, Dv)).astype(np.float32)
        p.calibrate(k, v)
        for c in range(cap):
            p.write(np.full(n_kv, c, np.int64), np.ascontiguousarray(k[:, c]), np.ascontiguousarray(v[:, c]))
    return p


# (pool 0 widths, pool 1 widths or None, n_head, n_kv, D, Dv, G, T, P per head, logw, window, softcap, acc)
CASES = {
    "16x16": ((16, 16), None, 2, 2, 64, 64, 32, 1, False, False, 0, 0.0, True),
    "8x8-gqa3-logw": ((8, 8), None, 6, 2, 64, 64, 32, 2, False, True, 0, 0.0, True),
    "4x4-mixed2x2-window": ((4, 4), (2, 2), 2, 2, 64, 64, 32, 1, True, False, 50, 0.0, True),
    "3x3-gqa3-softcap": ((3, 3), None, 6, 2, 64, 64, 32, 3, True, False, 0, 2.0, True),
    "2x2-gqa3-logw-window": ((2, 2), None, 3, 1, 64, 64, 32, 2, False, True, 60, 0.0, True),
    "4x2-dv32": ((4, 2), None, 6, 2, 64, 32, 16, 1, False, False, 0, 0.0, True),
    "8x2-mixed3x16": ((8, 2), (3, 16), 2, 2, 64, 64, 32, 4, True, True, 0, 1.5, True),
    "2x4-mixed16x2": ((2, 4), (16, 2), 6, 2, 32, 32, 16, 1, True, True, 40, 3.0, True),
    "3x8-no-acc": ((3, 8), (2, 3), 4, 2, 64, 64, 32, 2, False, False, 0, 0.0, False),
    "2x2-d128-g64": ((2, 2), None, 3, 1, 128, 128, 64, 1, False, False, 0, 0.0, True),
    "2x4-mixed3x8-g24": ((2, 4), (3, 8), 4, 2, 48, 48, 24, 2, True, True, 0, 0.0, True),  # group not a power of two
}


@pytest.mark.parametrize("case", list(CASES))
def test_decode_kernel_matches_cpu(rt, case):
    w0, w1, H, n_kv, D, Dv, G, T, per_head, use_logw, window, softcap, use_acc = CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    F, C0 = 12, 180
    C1 = 90 if w1 else 0
    N = F + C0 + C1  # > 2 chunks of 128: the reduce merges several splits
    k16 = rng.standard_normal((n_kv, F, D)).astype(np.float16).view(np.uint16)
    v16 = rng.standard_normal((n_kv, F, Dv)).astype(np.float16).view(np.uint16)
    p0 = _pool(rng, n_kv, C0, D, Dv, w0, G)
    p1 = _pool(rng, n_kv, C1, D, Dv, w1 or w0, G)
    P = n_kv if per_head else 1
    n_tok = N + 20
    pos = np.full((P, N), -1, np.int32)
    for r in range(P):  # distinct tokens per head row, ~10% of slots empty, some beyond the queries
        pos[r] = rng.permutation(n_tok)[:N]
        pos[r, rng.random(N) < 0.1] = -1
    qpos = (n_tok - 12 + 3 * np.arange(T)).astype(np.int32)
    logw = (rng.standard_normal((n_kv, N)) * 0.5).astype(np.float32) if use_logw else np.zeros((0, 0), np.float32)
    q = (rng.standard_normal((T, H, D)) * 1.5).astype(np.float32)
    scale = float(D**-0.5)

    gqa = H // n_kv
    want = np.zeros((T, H, Dv), np.float32)
    acc_want = np.zeros((n_kv, N), np.float32) if use_acc else np.zeros((0, 0), np.float32)
    cpu_attend(
        q, qpos, k16, v16,
        p0.kc, p0.km, p0.vc, p0.vm, p0.bits_k, p0.bits_v,
        p1.kc, p1.km, p1.vc, p1.vm, p1.bits_k, p1.bits_v,
        p0.klut, p0.vlut, p1.klut, p1.vlut, G, pos, logw, window, scale, softcap, want,
        np.zeros((n_kv, gqa, N), np.float32), acc_want, int_keys=False,  # float queries, as the device's
    )  # fmt: skip

    xp = rt.xp
    d = lambda a: xp.asarray(np.ascontiguousarray(a))  # noqa: E731
    dpool = lambda p: qa.DevicePool(d(p.kc), d(p.km), d(p.vc), d(p.vm), p.bits_k, p.bits_v)  # noqa: E731
    luts = d(np.stack([p0.klut, p0.vlut, p1.klut, p1.vlut]))
    out = xp.full((T, H, Dv), np.nan, np.float32)
    acc = xp.full((n_kv, N), np.nan, np.float32) if use_acc else None
    qa.attend_decode_q(d(q), d(qpos), d(k16), d(v16), dpool(p0), dpool(p1), luts, G, d(pos), d(logw), window, scale, softcap, out, acc)
    got = rt.asnumpy(out)
    assert np.isfinite(got).all()
    assert rel_err(got, want) <= 1e-4, f"output error {rel_err(got, want):.2e}"
    if use_acc:
        got_acc = rt.asnumpy(acc)
        assert rel_err(got_acc, acc_want) <= 1e-4, f"probability error {rel_err(got_acc, acc_want):.2e}"
        np.testing.assert_allclose(got_acc.sum(), T * H, rtol=1e-4)  # every query's probabilities sum to 1


def test_decode_kernel_with_nothing_visible_gives_zeros(rt):
    """A query before every cached position sees nothing: output 0 and no probabilities (as the CPU kernel)."""
    rng = np.random.default_rng(1)
    n_kv, D, G = 1, 32, 16
    p0 = _pool(rng, n_kv, 10, D, D, (2, 2), G)
    p1 = _pool(rng, n_kv, 0, D, D, (2, 2), G)
    xp = rt.xp
    d = lambda a: xp.asarray(np.ascontiguousarray(a))  # noqa: E731
    dpool = lambda p: qa.DevicePool(d(p.kc), d(p.km), d(p.vc), d(p.vm), p.bits_k, p.bits_v)  # noqa: E731
    pos = np.arange(100, 114, dtype=np.int32)[None]
    out = xp.full((1, 2, D), np.nan, np.float32)
    acc = xp.full((1, 14), np.nan, np.float32)
    luts = d(np.stack([p0.klut, p0.vlut, p1.klut, p1.vlut]))
    k16 = d(np.zeros((n_kv, 4, D), np.uint16))
    qa.attend_decode_q(d(rng.standard_normal((1, 2, D)).astype(np.float32)), d(np.array([5], np.int32)), k16, k16, dpool(p0), dpool(p1), luts, G, d(pos), d(np.zeros((0, 0), np.float32)), 0, 0.2, 0.0, out, acc)
    assert (rt.asnumpy(out) == 0).all() and (rt.asnumpy(acc) == 0).all()


def test_bad_arguments_are_refused(rt):
    xp = rt.xp
    z = lambda *s: xp.zeros(s, np.uint8)  # noqa: E731
    pool = qa.DevicePool(z(1, 4, 8), z(1, 4, 1, 2), z(1, 4, 8), z(1, 4, 1, 2), 5, 2)
    empty = qa.DevicePool(z(1, 0, 8), z(1, 0, 1, 2), z(1, 0, 8), z(1, 0, 1, 2), 2, 2)
    args = (xp.zeros((1, 1, 32), np.float32), xp.zeros(1, np.int32), xp.zeros((1, 2, 32), np.uint16), xp.zeros((1, 2, 32), np.uint16))
    with pytest.raises(ValueError, match="5-bit"):
        qa.attend_decode_q(*args, pool, empty, xp.ones((4, 256), np.float32), 32, xp.zeros((1, 6), np.int32), xp.zeros((0, 0), np.float32), 0, 1.0, 0.0, xp.zeros((1, 1, 32), np.float32))
    with pytest.raises(ValueError, match="kpos"):
        qa.attend_decode_q(*args, empty, empty, xp.ones((4, 256), np.float32), 32, xp.zeros((1, 5), np.int32), xp.zeros((0, 0), np.float32), 0, 1.0, 0.0, xp.zeros((1, 1, 32), np.float32))


# ----------------------------------------------------------------- the layer cache
def test_layer_cache_mirror_is_incremental(rt):
    """Host-path steps upload only the slots they wrote, device steps (kv_policy_push) none; the
    mirror equals the host storage after prefill, decode, eviction with merging, truncate and reset.

    Outputs within 2e-3: the one-token steps quantize and merge on the device (test_gpu_policies;
    mixed 8/2 there and here: see its CACHE_KV for why not 4/2)."""
    from kvrun.cache.base import LayerSpec
    from kvrun.cache.compressed import CompressedLayerCache

    spec = LayerSpec(n_head=4, n_head_kv=2, head_dim=32, head_dim_v=32, scale=32**-0.5)
    kv = KVConfig.parse("2,policy=h2o,budget=24,residual=4,sinks=2,merge=keepkv,mixed=8/2,group=16").validate(64)
    cpu_c = CompressedLayerCache(spec, kv, 64)
    cpu_c.int_keys = False  # float queries, as the device's
    gpu_c = GPUCompressedLayerCache(spec, kv, 64)
    rng = np.random.default_rng(4)
    p = 0
    uploads = []
    for T in [10, 1, 1, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1]:
        q = rng.standard_normal((T, 4, 32)).astype(np.float32)
        k = rng.standard_normal((T, 2, 32)).astype(np.float32)
        v = rng.standard_normal((T, 2, 32)).astype(np.float32)
        pos = np.arange(p, p + T, dtype=np.int32)
        want = np.zeros((T, 4, 32), np.float32)
        cpu_c.update_and_attend(q, k, v, pos, want)
        out = rt.xp.full((T, 4, 32), np.nan, np.float32)
        gpu_c.update_and_attend(rt.xp.asarray(q), rt.xp.asarray(k), rt.xp.asarray(v), pos, out)
        assert rel_err(rt.asnumpy(out), want) <= 2e-3, f"chunk of {T} at {p}"
        np.testing.assert_allclose(rt.asnumpy(gpu_c.policy.score), cpu_c.policy.score, rtol=2e-3, atol=1e-6)  # the scores live on the device
        if p > 10 and T == 1:
            uploads.append(gpu_c.last_upload)
        p += T
    assert gpu_c.n_tokens() == cpu_c.n_tokens() and gpu_c.nbytes() == cpu_c.nbytes()
    assert max(uploads) <= 1 + 2 * 2  # the new fp16 slot, a spill per head and a demotion per head
    assert gpu_c.mirror_mismatches() == []
    gpu_c.truncate(15)
    assert gpu_c.mirror_mismatches() == []
    gpu_c.reset()
    assert gpu_c.mirror_mismatches() == [] and gpu_c.n_tokens() == 0


# ----------------------------------------------------------------- engine and CLI
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # float weights: both backends then compute the same K/V up to rounding, so
    # the quantizer makes the same codes and greedy tokens can be compared
    return write_tiny_model(tmp_path_factory.mktemp("gpuq") / "tiny.gguf", "llama", qtype=Q.F32)


ENGINE_KV = ["2,residual=8,group=16", "4", "2,policy=h2o,budget=40,residual=8", "2,mixed=8/2,residual=8"]


def _greedy_cpu_vs_gpu(path, kv: KVConfig, n_ctx: int, n_prompt: int, n_gen: int, tol: float = 2e-2) -> None:
    """Prefill then greedy decoding on both engines: the same token at every step, logits close, mirror exact."""
    engines = {dev: Engine(path, device=dev, n_ctx=n_ctx, n_batch=16, kv=kv) for dev in ("cpu", "gpu")}
    caches = {dev: e.new_cache() for dev, e in engines.items()}
    assert all(isinstance(layer, GPUCompressedLayerCache) for layer in caches["gpu"].layers)
    for layer in caches["cpu"].layers:
        layer.int_keys = False  # float queries, as the device's kernels
    prompt = list(np.random.default_rng(11).integers(0, 200, n_prompt))
    la = engines["cpu"].eval(caches["cpu"], prompt)[-1]
    lb = engines["gpu"].eval(caches["gpu"], prompt)[-1]
    worst = rel_err(lb, la)
    for step in range(n_gen):  # greedy decoding: both must pick the CPU's token at every step
        tok = int(np.argmax(la))
        assert int(np.argmax(lb)) == tok, f"step {step}: gpu picked {int(np.argmax(lb))}, cpu {tok}"
        la = engines["cpu"].eval(caches["cpu"], [tok])[-1]
        lb = engines["gpu"].eval(caches["gpu"], [tok])[-1]
        worst = max(worst, rel_err(lb, la))
    assert worst < tol, f"max relative logit error {worst:.2e}"
    for lc, lg in zip(caches["cpu"].layers, caches["gpu"].layers):
        assert lg.n_tokens() == lc.n_tokens()
        assert lg.mirror_mismatches() == []
    assert caches["gpu"].layers[0].pools[0].calibrated  # some tokens really were quantized


@pytest.mark.parametrize("spec", ENGINE_KV)
def test_engine_on_gpu_matches_cpu(gpu_env, tiny, spec):
    # "4" keeps 64 tokens in fp16 (its default residual): 72 tokens make it quantize some
    _greedy_cpu_vs_gpu(tiny, KVConfig.parse(spec), n_ctx=80, n_prompt=30, n_gen=42)


def test_engine_on_gpu_matches_cpu_gemma3_window_keepkv(gpu_env, tmp_path):
    """Sliding-window layers (a ring of the window, quantized too), GQA 2, snapkv eviction with KeepKV log weights."""
    path = write_tiny_model(tmp_path / "gemma3.gguf", "gemma3", qtype=Q.F32, sliding_window=8)
    # The backends' K/V differ by rounding (prefill logits agree to ~2e-5); 3-bit codes
    # that flip on it and KeepKV merges that fold them in move later logits by 1-5e-2,
    # depending only on where the flips fall (the same evictions on both sides).
    _greedy_cpu_vs_gpu(path, KVConfig.parse("3,policy=snapkv,budget=30,residual=4,merge=keepkv"), n_ctx=80, n_prompt=30, n_gen=24, tol=8e-2)


def test_engine_on_gpu_plain_stays_plain(gpu_env, tiny):
    eng = Engine(tiny, device="gpu", n_ctx=64, kv=KVConfig.parse("16"))
    assert all(isinstance(layer, GPUPlainLayerCache) for layer in eng.new_cache().layers)
    assert all(isinstance(layer, GPUPlainLayerCache) for layer in make_gpu_compressed_cache(eng.model.layer_specs(), 64, 16, None))


def test_cli_run_on_gpu_with_kv_bits(gpu_env, tiny):
    args = ["run", str(tiny), "-p", "the cat sat on the mat, then the dog ran in", "-n", "10", "--temp", "0", "--no-stats", "-c", "96"]
    args += ["--kv-bits", "2", "--kv-residual", "4"]
    cpu = CliRunner().invoke(main, args + ["--device", "cpu"])
    gpu = CliRunner().invoke(main, args + ["--device", "gpu"])
    assert cpu.exit_code == 0 and gpu.exit_code == 0, gpu.output
    # (the CPU's run may say it compiles kernels first: whether it does depends on which tests ran before)
    cpu_text = "".join(line for line in cpu.output.splitlines(True) if not line.startswith("kvrun: first run on this machine"))
    assert gpu.output == cpu_text
