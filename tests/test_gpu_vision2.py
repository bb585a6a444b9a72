"""Pictures on `--device gpu`, round 2: M-RoPE pictures (Qwen2-VL, Qwen3-VL, GLM-4V, PaddleOCR-VL) and the projectors
whose rows go in causally as a block (Pixtral, InternVL, LLaVA), on the kernel emulator against the CPU and libmtmd.

Each encoder runs on the GPU too, its rows within 2e-3 of the CPU encoder's
(tests/test_gpu_vision_encoders*.py); the text model reads them on the GPU.  Weights are float32, so the two backends' arithmetic
is compared: logits within 2e-3 of their largest, the bound of tests/test_gpu_archs2.py, and within each projector's
own test's tolerance of libmtmd's (tests/test_vision_*.py, the same committed fixtures).

M-RoPE: a picture of ny x nx rows takes max(nx, ny) positions but nx * ny slots, so the text after it turns at its slot
plus a shift.  A captured decode step reads its position from the buffer each replay refills (runtime/graphs.py): the
text's rope positions are that position plus the shift, made on the device (ops/gpu/mrope.cu), the shift a scalar the
graph's key holds (models/mrope_text.py).  Per-row tables, as the pictures' own rows use, would be the first capture's
in every replay."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gpu_checks import rel_err

from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

BOUND = 2e-3
STEPS = (5, 9, 14, 3)  # decode steps after the prompt: the first captured, the rest replayed


def _visions(text: Path, mmproj: Path, n_ctx: int):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    return [Vision(Engine(text, device=d, n_ctx=n_ctx, n_batch=64, threads=1), mmproj) for d in ("cpu", "gpu")]


def _check(cpu, gpu, fx, pics: dict, prompt: str, key: str, tol: float, steps=STEPS, **kw):
    """``prompt`` on both backends: libmtmd's ids and logits within ``tol`` (tests/vision_checks.check_logits), the GPU's
    within 2e-3 of the CPU's, then ``steps`` decoded on both, the GPU's from captured graphs.  The two caches."""
    from vision_checks import check_logits

    ca = check_logits(cpu, fx, pics, prompt, key, tol, **kw)
    n0 = gpu.engine.graphs.n_captures + gpu.engine.graphs.n_replays
    cb = check_logits(gpu, fx, pics, prompt, key, tol, **kw)
    assert type(cb[0]).__name__ == "GPUPlainLayerCache"
    for tok in steps:
        assert rel_err(cpu.engine.eval(ca, [tok])[-1], gpu.engine.eval(cb, [tok])[-1]) < BOUND
    assert gpu.engine.graphs.n_captures + gpu.engine.graphs.n_replays - n0 >= len(steps) - 1  # (prompt's last token: a graph too)
    return ca, cb


def _same_rows(cpu, gpu, pic: np.ndarray) -> None:
    """The encoder runs on the GPU beside the GPU's text model: the CPU's rows within 2e-3
    (tests/test_gpu_vision_encoders*.py)."""
    assert type(gpu.encoder.be).__name__ == "GPUBackend"
    assert rel_err(cpu.image_rows(pic), gpu.image_rows(pic)) < BOUND


# ---------------------------------------------------------------- M-RoPE pictures

MROPE = {  # fixture name: (tool module, text pair key, libmtmd tolerance of tests/test_vision_<name>.py)
    "qwen2vl": ("make_vision_qwen2vl_fixtures", "q2", 1.5e-2),
    "qwen3vl": ("make_vision_qwen3vl_fixtures", "q3", 1.5e-2),
    "glm4v": ("make_vision_glm4v_fixtures", "g4", 2e-2),
    "glm45v": ("make_vision_glm45v_fixtures", "g45", 2e-2),  # (GLM-4.5V: GLM-4's MoE text model, ops/gpu/moe.cu)
    "paddleocr": ("make_vision_paddleocr_fixtures", "po", 2e-2),
}


@pytest.fixture(scope="module")
def mrope(tmp_path_factory, emulated):
    """Each M-RoPE fixture's tiny pair on both backends (built on first use)."""
    import importlib

    from vision_checks import check_files, fixture, pictures

    made: dict = {}

    def get(name: str):
        if name not in made:
            tool, t, tol = MROPE[name]
            m = importlib.import_module(tool)
            fx = fixture(name)
            files = check_files(m.write_pair(tmp_path_factory.mktemp(f"gpu_vision2_{name}")), fx)
            proj = files[m.PAIRS[t]] if hasattr(m, "PAIRS") else files[t]
            made[name] = (*_visions(files["text"], proj, 512), fx, pictures(m.IMAGES), m.PROMPTS, t, tol)
        return made[name]

    return get


@pytest.mark.parametrize("name", list(MROPE))
def test_m_rope_pictures_on_the_gpu_give_the_cpus_rows_and_logits_and_then_decode_from_graphs(mrope, name):
    """Two pictures of other grids between text: libmtmd's ids and logits, the CPU's rows, then decode steps replayed
    from one captured graph with the CPU's logits (each step turned by its own position, not the capture's)."""
    cpu, gpu, fx, pics, prompts, t, tol = mrope(name)
    _same_rows(cpu, gpu, next(iter(pics.values())))
    _check(cpu, gpu, fx, pics, prompts[1], f"{t}_1", tol)
    assert gpu.engine.graphs.n_replays >= len(STEPS) - 1


def test_a_second_picture_on_the_same_cache_decodes_by_its_own_shift(mrope):
    """A chat's second picture on the same cache moves the text's shift further (a tall grid's nx * ny - max(nx, ny)):
    the step after it is captured anew (the shift is in the graph's key), the rest replayed, with the CPU's logits."""
    from kvrun.models import mrope_images

    cpu, gpu, fx, pics, prompts, t, tol = mrope("qwen2vl")
    ca, cb = _check(cpu, gpu, fx, pics, prompts[0], f"{t}_0", tol)
    shift = mrope_images.text_position(mrope_images.images_of(cb), cb.offset) - cb.offset
    n0 = gpu.engine.graphs.n_captures
    for v, c in ((cpu, ca), (gpu, cb)):
        v.engine.eval(c, v.prefill(c, v.segments(" and <__media__>", [pics["tall"]])))
    assert mrope_images.text_position(mrope_images.images_of(cb), cb.offset) - cb.offset < shift
    r0 = gpu.engine.graphs.n_replays
    for tok in STEPS:
        assert rel_err(cpu.engine.eval(ca, [tok])[-1], gpu.engine.eval(cb, [tok])[-1]) < BOUND
    assert gpu.engine.graphs.n_captures == n0 + 1 and gpu.engine.graphs.n_replays == r0 + len(STEPS)


def test_the_graph_key_has_teeth_a_replay_with_the_first_pictures_shift_is_far_off(mrope, monkeypatch):
    """Left out of the key, the shift of the first picture stays in the replayed steps after a second one."""
    from kvrun.models.qwen2vl import Qwen2VLModel

    cpu, gpu, fx, pics, prompts, t, tol = mrope("qwen2vl")
    monkeypatch.setattr(Qwen2VLModel, "decode_graph_key", lambda self, cache, pos: 0)
    ca, cb = _check(cpu, gpu, fx, pics, prompts[0], f"{t}_0", tol, steps=(5, 9))
    for v, c in ((cpu, ca), (gpu, cb)):
        v.engine.eval(c, v.prefill(c, v.segments(" and <__media__>", [pics["tall"]])))
    errs = [rel_err(cpu.engine.eval(ca, [tok])[-1], gpu.engine.eval(cb, [tok])[-1]) for tok in STEPS]
    assert max(errs) > 10 * BOUND


def test_per_row_tables_in_a_captured_step_would_turn_every_replay_by_the_first_steps_position(mrope, monkeypatch):
    """The check has teeth: text after a picture turned by per-row tables (the pictures' own way, here forced by
    treating every cache as a batch's) passes the capture's own check, then the replays drift off the CPU's logits."""
    import kvrun.models.mrope_text as mrope_text

    cpu, gpu, fx, pics, prompts, t, tol = mrope("qwen2vl")
    monkeypatch.setattr(mrope_text, "BatchedKVCache", object)
    from vision_checks import check_logits

    ca = check_logits(cpu, fx, pics, prompts[0], f"{t}_0", tol)
    cb = check_logits(gpu, fx, pics, prompts[0], f"{t}_0", tol)
    errs = [rel_err(cpu.engine.eval(ca, [tok])[-1], gpu.engine.eval(cb, [tok])[-1]) for tok in STEPS]
    assert errs[0] < BOUND and max(errs) > 10 * BOUND


# ---------------------------------------------------------------- rows that go in causally as a block

BLOCK = {  # fixture name: (tool module, how the tool writes the pair, projector file, fixture key prefix, tolerance)
    "pixtral": ("make_vision_pixtral_fixtures", "pixtral", "f32", "", 1e-2),
    "internvl": ("make_vision_internvl_fixtures", "internvl", "f32", "", 1e-2),
    "llava": ("make_vision_llava_fixtures", None, "f32", "f32_", 1e-2),
}


def _block_files(name: str, d: Path) -> dict[str, Path]:
    from gguf import GGMLQuantizationType as Q

    if name == "llava":
        from make_vision_llava_fixtures import write_files

        return write_files(d)
    if name == "pixtral":
        from tiny_vision_pixtral import write_tiny_pixtral_mmproj, write_tiny_pixtral_text

        return {"text": write_tiny_pixtral_text(d / "text.gguf"), "f32": write_tiny_pixtral_mmproj(d / "mmproj-f32.gguf", Q.F32)}
    from tiny_vision_internvl import write_tiny_internvl_mmproj, write_tiny_internvl_text

    return {"text": write_tiny_internvl_text(d / "text.gguf"), "f32": write_tiny_internvl_mmproj(d / "mmproj-f32.gguf", Q.F32)}


@pytest.mark.parametrize("name", list(BLOCK))
def test_block_pictures_on_the_gpu_give_the_cpus_rows_and_logits_and_libmtmds(tmp_path, emulated, name):
    """The encoder on the GPU beside the GPU's text model: the CPU's rows (2e-3), libmtmd's ids and logits after two
    pictures, the CPU's within 2e-3, then decode steps from graphs."""
    import importlib

    from vision_checks import check_files, fixture, pictures

    tool, _, proj, prefix, tol = BLOCK[name]
    m = importlib.import_module(tool)
    fx = fixture(name)
    files = _block_files(name, tmp_path)
    for k in ("text", proj):
        assert k in files
    check_files({k: files[k] for k in ("text", proj)}, fx)
    cpu, gpu = _visions(files["text"], files[proj], 1024)
    pics = pictures(m.IMAGES)
    _same_rows(cpu, gpu, next(iter(pics.values())))
    _check(cpu, gpu, fx, pics, m.PROMPTS[1], f"{prefix}1" if prefix else "1", tol)


def test_kimi_vl_pictures_on_the_gpu_give_the_cpus_logits(tmp_path, emulated):
    """A text model with a forward of its own reading the block (Kimi-VL's DeepSeek-V3 MLA): the CPU's logits within
    2e-3 after a picture and in the decode steps after it (its libmtmd fixture holds the CPU: test_vision_kimivl.py)."""
    from gguf import GGMLQuantizationType as Q
    from tiny_vision import sample_image
    from tiny_vision_kimivl import write_tiny_kimivl_mmproj, write_tiny_kimivl_text

    cpu, gpu = _visions(write_tiny_kimivl_text(tmp_path / "text.gguf"), write_tiny_kimivl_mmproj(tmp_path / "mmproj.gguf", Q.F32), 1024)
    pic = sample_image(64, 48, seed=1)
    _same_rows(cpu, gpu, pic)
    ca, cb = (cpu.engine.new_cache(), gpu.engine.new_cache())
    want = cpu.engine.eval(ca, cpu.prefill(ca, cpu.segments("Look: <__media__> what?", [pic])))[-1]
    got = gpu.engine.eval(cb, gpu.prefill(cb, gpu.segments("Look: <__media__> what?", [pic])))[-1]
    assert rel_err(want, got) < BOUND
    for tok in STEPS:
        assert rel_err(cpu.engine.eval(ca, [tok])[-1], gpu.engine.eval(cb, [tok])[-1]) < BOUND
    assert gpu.engine.graphs.n_replays >= len(STEPS) - 1


def test_m_rope_pictures_go_up_as_cupy_takes_them_and_decode_brings_down_only_logits(tmp_path, emulated):
    """On the strict CuPy stand-in (tests/devicexp.py: host arrays refused in device arithmetic, every copy down
    logged), Qwen3-VL's picture (per-row tables and DeepStack levels uploaded) goes in, and each decode step after it,
    captured then replayed, brings down its logits and nothing else."""
    if gpu_available():
        pytest.skip("the strict stand-in is for machines without a GPU")
    from devicexp import COPIES, StrictRuntime
    from make_vision_qwen3vl_fixtures import IMAGES, write_pair
    from vision_checks import pictures

    from kvrun.ops.gpu import kernels as K

    files = write_pair(tmp_path)
    prev = K.set_runtime(StrictRuntime())
    try:
        v = _visions(files["text"], files["q3_f32"], 512)[1]
        cache = v.engine.new_cache()
        v.engine.eval(cache, v.prefill(cache, v.segments("Look: <__media__> what?", [pictures(IMAGES)["wide"]])))
        for i, tok in enumerate(STEPS):
            COPIES.clear()
            v.engine.eval(cache, [tok])
            n_vocab = v.engine.cfg.n_vocab  # (the capture, step 0, also brings down the logits its replay is checked by)
            assert COPIES == [("asnumpy", (1, n_vocab))] * (1 if i else 2)
        assert v.engine.graphs.n_replays == len(STEPS) - 1
    finally:
        K.set_runtime(prev)


def test_every_projector_has_a_tiny_pair_the_gpu_tests_run(tmp_path):
    """Every projector type kvrun reads (runtime/projectors.py PROJECTORS) is written by one of the tiny writers
    (tests/tiny_vision.py TINY_MMPROJS) whose rows the GPU encoder tests hold to the CPU's
    (tests/test_gpu_vision_encoders*.py): no encoder is left without a device check."""
    from tiny_vision import TINY_MMPROJS, tiny_mmproj

    from kvrun.loaders.gguf_file import GGUFFile
    from kvrun.runtime.projectors import PROJECTORS

    written = set()
    for name in TINY_MMPROJS:
        g = GGUFFile(tiny_mmproj(name, 0, tmp_path))
        written.add(g.get("clip.projector_type"))
        g.close()
    assert set(PROJECTORS) <= written
