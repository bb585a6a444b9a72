"""The kernel emulator catches, without a GPU, what a GPU would refuse or get wrong.

A launch an H100 would not run (too many threads, registers or bytes of shared
memory a block, past a kernel's launch bounds) fails on the emulator too, from
ptxas's own report of the kernel (ops/gpu/resources.py); shared memory read
before any thread wrote it reads NaN; a race between a block's threads gives
other numbers when the threads run in the other order, and kvrun's kernels give
the same bits in both.
"""

from __future__ import annotations

import platform
import re

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from tinymodel import write_tiny_model

from kvrun.ops.gpu import compile_check as cc
from kvrun.ops.gpu import emulate
from kvrun.ops.gpu import kernels as K
from kvrun.ops.gpu import resources
from kvrun.ops.gpu.resources import Usage, launch_problem, most_threads, parse_report, usage

needs_emulator = pytest.mark.skipif(not emulate.available(), reason="no host C++ compiler for the kernel emulator")
needs_ptxas = pytest.mark.skipif(cc.available_compiler() == "skipped", reason="no CUDA compiler (NVRTC or nvcc) for ptxas's report")

PLAIN = Usage(registers=32, static_smem=0, spill_bytes=0, max_threads=None)


# ------------------------------------------------------------------ the device's limits
@pytest.mark.parametrize(
    "grid, block, smem, u, why",
    [
        ((1,), (32, 33), 0, PLAIN, "1056 threads a block exceed the device's 1024"),
        ((1,), (1, 1, 65), 0, PLAIN, "block.z = 65 exceeds the device's 64"),
        ((1, 65536), (32,), 0, PLAIN, "grid.y = 65536 exceeds the device's 65535"),
        ((0,), (32,), 0, PLAIN, "an empty launch, grid (0, 1, 1) block (32, 1, 1)"),
        ((1,), (32,), 10_000, Usage(32, 40_000, 0, None), "40000 + 10000 bytes of shared memory a block exceed the device's 49152"),
        ((1,), (256,), 0, Usage(40, 0, 0, 128), "256 threads a block exceed its __launch_bounds__ of 128"),
        # 130 registers: 4160 a warp, given in units of 256: 4352; 65536 / 4352 = 15 warps
        ((1,), (512,), 0, Usage(130, 0, 0, None), "512 threads of 130 registers exceed the device's 65536 a block (at most 480 threads)"),
    ],
    ids=["threads", "block-z", "grid-y", "empty", "shared-memory", "launch-bounds", "registers"],
)
def test_a_launch_the_device_refuses_is_named_in_one_line(grid, block, smem, u, why):
    assert launch_problem("k", grid, block, smem, u) == f"k: {why}"


@pytest.mark.parametrize("grid, block, smem, u", [((2**31 - 1, 65535, 65535), (1024,), 0, PLAIN), ((1,), (480,), 0, Usage(130, 0, 0, None)),
                                                   ((1,), (128,), 49152 - 4096, Usage(64, 4096, 0, 128)), ((8,), (1024,), 0, None)])  # fmt: skip
def test_a_launch_within_the_limits_passes(grid, block, smem, u):
    assert launch_problem("k", grid, block, smem, u) is None


def test_ptxas_report_is_read_kernel_by_kernel():
    ptx = ".visible .entry bounded(\n\t.param .u64 a\n)\n.maxntid 128, 1, 1\n{\n ret;\n}\n.visible .entry free(\n\t.param .u64 a\n)\n{\n}\n"
    log = (
        "ptxas info    : Compiling entry function 'bounded' for 'sm_90'\n"
        "ptxas         .     0 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n"
        "ptxas info    : Used 40 registers, used 1 barriers, 4096 bytes smem\n"
        "ptxas info    : Compiling entry function 'free' for 'sm_90'\n"
        "ptxas info    : Used 130 registers, used 0 barriers\n"
    )
    assert parse_report(ptx, log) == {"bounded": Usage(40, 4096, 8, 128), "free": Usage(130, 0, 0, None)}


@needs_ptxas
def test_kvruns_kernels_report_their_registers_and_bounds():
    """From ptxas itself (sm_90): RWKV's WKV kernel keeps a state row in registers, so a block of it holds at most
    480 threads, which its launches (a thread a row of a head: 64, at most WKV_MAX_HEAD = 128) keep to; the decode
    attention declares launch bounds of 128."""
    wkv, attn = usage("wkv_f32"), usage("attn_decode_partial_f16")
    assert wkv.registers > 64 and launch_problem("wkv_f32", (1,), (512,), 0, wkv) is not None
    assert launch_problem("wkv_f32", (4,), (128,), 0, wkv) is None
    assert attn.max_threads == 128


@needs_ptxas
@pytest.mark.parametrize("module, kernel", [("qattention", "qattn_decode_partial"), ("batch_attention", "attn_decode_batch_f16")])
def test_a_wrappers_shared_memory_budget_leaves_room_for_its_kernels_own(module, kernel):
    """A wrapper that sizes a launch's dynamic shared memory to the 48 KiB a block has must leave out what the kernel
    declares itself (ptxas's figure), or the largest launches it allows fail on the device alone."""
    import importlib

    assert usage(kernel).static_smem <= importlib.import_module(f"kvrun.ops.gpu.{module}").STATIC_SHARED


@needs_ptxas
def test_a_batch_of_48_query_heads_a_kv_head_goes_alone_not_to_a_launch_the_device_refuses():
    """StarCoder's 48 heads on one KV head of 128: the batched decode's queries and logits take 48 KiB, the whole
    of a block's shared memory, with its kernel's own 144 bytes beside them: too much on a device, so the sequences
    decode one by one (attention.py's kernel declares none)."""
    from kvrun.ops.gpu import batch_attention

    dyn = 4 * 48 * (128 + batch_attention.DECODE_CHUNK)
    assert launch_problem("attn_decode_batch_f16", (1, 1, 2), (128,), dyn, usage("attn_decode_batch_f16")) is not None
    assert not batch_attention.fits(48, 1, 128)
    assert launch_problem("attn_decode_partial_f16", (1, 1, 1), (128,), dyn, usage("attn_decode_partial_f16")) is None
    assert batch_attention.fits(32, 1, 128)


def test_the_largest_block_a_kernel_takes():
    assert most_threads(Usage(130, 0, 0, None)) == 480  # (its registers)
    assert most_threads(Usage(40, 0, 0, 128)) == 128  # (its launch bounds)
    assert most_threads(Usage(16, 0, 0, None)) == 1024  # (the device's)


@needs_ptxas
def test_the_resource_report_names_every_file(capsys):
    """``python -m kvrun.ops.gpu.resources``: a line a .cu file, before a GPU is at hand."""
    assert resources.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == K.cu_files()
    rwkv = next(line for line in lines if line.startswith("recurrent.cu: "))
    assert int(re.search(r"blocks of at most (\d+) threads", rwkv).group(1)) < 1024  # (WKV's registers: 480 with CUDA 12)


@needs_emulator
def test_an_emulated_launch_the_device_would_refuse_fails():
    x = np.zeros(4096, np.float32)
    with pytest.raises(emulate.EmulatedKernelError, match=r"^add_f32: 2048 threads a block exceed the device's 1024$"):
        emulate.EmulatedRuntime().launch("add_f32", (2,), (64, 32), (x, x, np.int64(4096)), 0)


@needs_emulator
def test_a_run_lists_the_kernels_it_launched(tmp_path):
    """KVRUN_EMU_COVERAGE names a file each process adds its launched kernels to, so a whole run of the emulated
    tests shows which kernels none of them runs."""
    import os
    import subprocess
    import sys

    code = ("import numpy as np; from kvrun.ops.gpu import emulate; x = np.zeros(4, np.float32); "
            "emulate.EmulatedRuntime().launch('add_f32', (1,), (32,), (x, x, np.int64(4)), 0)")  # fmt: skip
    cov = tmp_path / "launched.txt"
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, KVRUN_EMU_COVERAGE=str(cov)), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    assert cov.read_text() == "add_f32\nadd_f32\n"


def test_an_unknown_thread_order_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("KVRUN_EMU_ORDER", "sideways")
    with pytest.raises(ValueError, match=r"^KVRUN_EMU_ORDER='sideways': use one of forward, reverse$"):
        emulate.EmulatedRuntime()


# ------------------------------------------------------------------ shared memory and thread order
SOURCE = r"""
extern "C" __global__ void first_block_writes(float* out) {
    __shared__ float s[64];
    if (blockIdx.x == 0) s[threadIdx.x] = 1.0f;  // the second block reads what nobody wrote in it
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}
extern "C" __global__ void neighbour(float* out, int sync) {
    __shared__ float s[64];
    s[threadIdx.x] = (float)threadIdx.x;
    if (sync) __syncthreads();  // without it: a race, each thread reads a slot another writes
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}
extern "C" __global__ void chain(float* x) {  // x[b + 1] = x[b] + 1: each block reads what the one before wrote
    if (threadIdx.x == 0) x[blockIdx.x + 1] = x[blockIdx.x] + 1.0f;
}
extern "C" __global__ void shifted(const float* x, float* out, int shift) {  // out[i] = x[i + shift]: past x's end
    out[threadIdx.x] = x[(int)threadIdx.x + shift];
}
extern "C" __global__ void write_shifted(float* out, int shift) {
    out[(int)threadIdx.x + shift] = 1.0f;
}
"""
ARGS = {"first_block_writes": "p", "neighbour": "pi", "chain": "p", "shifted": "ppi", "write_shifted": "pi"}


def _launch(name: str, grid: int, block: int, *args, order: str = "forward", guard: bool = False) -> None:
    lib = emulate.build(emulate.emulator_text(SOURCE, ARGS), "emulator_spec")
    emulate.run(lib, emulate.launcher(lib, name, ARGS[name]), (grid,), (block,), args, 0, order, guard)


def _run(name: str, grid: int, block: int, n_out: int, *scalars: int, order: str = "forward") -> np.ndarray:
    out = np.zeros(n_out, np.float32)
    _launch(name, grid, block, out, *scalars, order=order)
    return out


@needs_emulator
def test_static_shared_memory_starts_each_block_unwritten():
    """On a GPU a block's shared memory holds whatever was there; the emulator's holds NaN bytes, never what the
    previous block left (a `static` array would)."""
    out = _run("first_block_writes", 2, 64, 128)
    assert (out[:64] == 1).all() and np.isnan(out[64:]).all()


@needs_emulator
def test_a_race_between_threads_shows_in_the_other_order():
    fwd, rev = (_run("neighbour", 1, 64, 64, 0, order=o) for o in ("forward", "reverse"))
    assert not np.array_equal(fwd, rev, equal_nan=True)
    want = (np.arange(64, dtype=np.float32) + 1) % 64
    for order in ("forward", "reverse"):
        assert np.array_equal(_run("neighbour", 1, 64, 64, 1, order=order), want)  # with the barrier: one answer


@needs_emulator
def test_blocks_that_read_each_others_writes_show_in_the_other_order():
    """A GPU runs a launch's blocks in any order and side by side: in the reverse order the blocks run last to first."""
    assert np.array_equal(_run("chain", 7, 32, 8), np.arange(8, dtype=np.float32))
    assert np.array_equal(_run("chain", 7, 32, 8, order="reverse"), np.minimum(np.arange(8), 1).astype(np.float32))


needs_guard = pytest.mark.skipif(platform.machine() != "x86_64" or platform.system() != "Linux", reason="guard mode: x86-64 Linux")


@needs_emulator
@needs_guard
def test_guard_mode_catches_a_read_past_an_arrays_end():
    """Without the guard a read one past the end takes whatever lies there (on a GPU: that, or a fault that ends the
    process); with it the read faults and the launch fails, naming the block and thread; the arrays keep what the
    kernel wrote, and within bounds all is as without the guard."""
    x, out = np.arange(64, dtype=np.float32), np.zeros(64, np.float32)
    _launch("shifted", 1, 64, x, out, 0, guard=True)
    assert np.array_equal(out, x)
    out[:] = 0
    _launch("shifted", 1, 63, x[1:], out, 0, guard=True)  # (a view: its base's end is the guarded one)
    assert np.array_equal(out[:63], x[1:]) and out[63] == 0
    with pytest.raises(emulate.EmulatedKernelError, match=r"^memory fault at 0x[0-9a-f]+, past the end of an argument array \(block 0,0,0 thread 63\)$"):
        _launch("shifted", 1, 64, x, out, 1, guard=True)
    _launch("shifted", 1, 64, x, out, 0, guard=True)  # (the thread given up is made again: the next launch runs)
    assert np.array_equal(out, x)


@needs_emulator
@needs_guard
@pytest.mark.parametrize("shift, where", [(-1, "before the start"), (2, "past the end")])
def test_guard_mode_catches_a_write_outside_an_array(shift, where):
    """62 floats leave 8 bytes before the 16-byte mark and the page: a write there, or before the start, is found in
    the canaries after the launch."""
    out = np.zeros(62, np.float32)
    with pytest.raises(emulate.EmulatedKernelError, match=f"^a write {where} of an argument array \\(shape \\(62,\\), float32\\)$"):
        _launch("write_shifted", 1, 62, out, shift, guard=True)


@needs_emulator
def test_a_model_on_the_emulated_device_gives_the_same_bits_in_either_thread_order(tmp_path, monkeypatch):
    """A tiny Llama with a 2-bit, evicting, merging cache: prefill and decode steps (attention on the quantized cache,
    the quantizer, the policy's scores) give bit-identical logits whichever way a block's threads run: no kernel on
    the path has a race between its threads."""
    from kvrun.cache.kvconfig import KVConfig
    from kvrun.runtime.engine import Engine

    monkeypatch.setenv("KVRUN_GPU_EMULATE", "1")
    monkeypatch.setenv("KVRUN_CUDA_GRAPHS", "0")
    path = write_tiny_model(tmp_path / "tiny.gguf", "llama", qtype=Q.Q4_0)
    logits = {}
    for order in ("forward", "reverse"):
        prev = K.set_runtime(emulate.EmulatedRuntime(order))
        try:
            eng = Engine(path, device="gpu", n_ctx=64, n_batch=16, kv=KVConfig.parse("2,policy=h2o,budget=16,residual=4,merge=keepkv"))
            cache = eng.new_cache()
            rows = [eng.eval(cache, list(range(3, 27)), logits_all=True)]
            rows += [eng.eval(cache, [t]) for t in (5, 9, 14)]
            logits[order] = [np.array(r) for r in rows]
        finally:
            K.set_runtime(prev)
    assert np.isfinite(logits["forward"][0]).all()
    for a, b in zip(logits["forward"], logits["reverse"]):
        assert np.array_equal(a, b)
