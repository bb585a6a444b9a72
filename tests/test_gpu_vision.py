"""Pictures on `--device gpu`: Gemma 3 with its mmproj (tests/tiny_vision.py's tiny pair, the very files of
tests/test_vision.py's libmtmd fixture) on the kernel emulator, as tests/test_gpu_engine.py runs the GPU path.

The SigLIP encoder runs on the GPU too (models/vit_device.py: tests/test_gpu_vision_encoders.py), a picture's rows
within 2e-3 of the CPU's; the text model reads them on the GPU, the picture's rows seeing each other both ways in the GPU's plain
fp16 cache (cache/gpu_picture.py, ops/gpu/picture.cu).  Weights are float32, so the two backends' arithmetic is
compared: the logits after pictures and text agree within 2e-3 of their largest (measured: 4e-6), the bound of
tests/test_gpu_archs2.py; fed causally instead they are 1.2 to 2.4 off libmtmd's (tests/test_vision.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gpu_checks import rel_err
from tiny_vision import sample_image, write_tiny_gemma3_vl, write_tiny_mmproj

from kvrun.cache.base import KVCache, LayerSpec
from kvrun.loaders.errors import KvrunError
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate

pytestmark = pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")

FIX = np.load(Path(__file__).parent / "fixtures" / "vision_gemma3.npz")
PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two", "the the the in in a <__media__>the"]  # (test_vision.py's)
BOUND = 2e-3


def _images(prompt: str) -> list[np.ndarray]:
    return [sample_image() if j % 2 == 0 else sample_image(300, 180, seed=1) for j in range(prompt.count("<__media__>"))]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gpu_vision")
    files = {"text": write_tiny_gemma3_vl(d / "text.gguf"), "f32": write_tiny_mmproj(d / "mmproj-f32.gguf", Q.F32)}
    for k, p in files.items():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == str(FIX[f"sha256_{k}"]), f"{k}: not the fixture's file"
    return files


def _vision(pair, device: str, n_batch: int = 64, **kw):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    return Vision(Engine(pair["text"], device=device, n_ctx=256, n_batch=n_batch, threads=1, **kw), pair["f32"])


@pytest.fixture(scope="module")
def cpu(pair):
    return _vision(pair, "cpu")


@pytest.fixture(scope="module")
def gpu(pair, emulated):
    return _vision(pair, "gpu")


def _prefill(v, prompt: str):
    segs = v.segments(prompt, _images(prompt))
    cache = v.engine.new_cache()
    last = v.prefill(cache, segs)
    return segs, cache, v.engine.eval(cache, last)[-1]


# ---------------------------------------------------------------- the kernel


@pytest.mark.parametrize("window,softcap", [(0, 0.0), (6, 0.0), (6, 30.0)])
def test_the_picture_kernel_is_the_cpus_bidirectional_attention(emulated, window, softcap):
    """Ten text rows fed causally, then a block of eight rows seeing each other both ways (grouped-query heads, a
    sliding window shorter than the block, a ring that has wrapped): cache/gpu_picture.py on the GPU's plain cache
    writes cache/bidirectional.py's attention on the CPU's within 1e-5 (float32 sums in another order)."""
    from kvrun.cache.gpu_plain import make_gpu_plain_cache
    from kvrun.cache.picture_block import update_and_attend_block
    from kvrun.cache.plain import make_plain_cache
    from kvrun.ops import get_backend

    be = get_backend("gpu")
    spec = LayerSpec(4, 2, 16, 8, window, 0.25, softcap)
    host, dev = KVCache(make_plain_cache([spec], 32, 8)), KVCache(make_gpu_plain_cache([spec], 32, 8))
    rng = np.random.default_rng(window)
    for p0, n, block in ((0, 6, False), (6, 4, False), (10, 8, True), (18, 3, False)):
        q = rng.normal(size=(n, 4, 16)).astype(np.float32)
        k = rng.normal(size=(n, 2, 16)).astype(np.float32)
        v = rng.normal(size=(n, 2, 8)).astype(np.float32)
        pos = np.arange(p0, p0 + n, dtype=np.int32)
        a, b = np.empty((n, 4, 8), np.float32), be.zeros((n, 4, 8))
        if block:
            update_and_attend_block(host, 0, q, k, v, pos, a)
            update_and_attend_block(dev, 0, be.vector(q), be.vector(k), be.vector(v), pos, b)
        else:
            host[0].update_and_attend(q, k, v, pos, a)
            dev[0].update_and_attend(be.vector(q), be.vector(k), be.vector(v), pos, b)
        np.testing.assert_allclose(be.to_host(b), a, atol=1e-5)
    if window:  # (the ring of window + n_batch = 14 slots has wrapped: the block's rows overwrote the first text's)
        assert dev[0].capacity == 14


# ---------------------------------------------------------------- Gemma 3 with its projector


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_gemma3_pictures_on_the_gpu_give_the_cpus_rows_and_logits_and_libmtmds(cpu, gpu, k):
    """mtmd's layout, the CPU encoder's rows (within 2e-3), then logits within 2e-3 of the CPU's (the largest ~27) and within
    test_vision.py's 1e-2 of libmtmd's, the same argmax (prompt 2's picture straddles the window of 8)."""
    segs_c, _, want = _prefill(cpu, PROMPTS[k])
    segs_g, cache, got = _prefill(gpu, PROMPTS[k])
    assert type(cache[0]).__name__ == "GPUPlainLayerCache"
    assert [i for s in segs_g for i in (s if isinstance(s, list) else [-1] * len(s))] == FIX[f"ids_{k}"].tolist()
    for a, b in zip(segs_c, segs_g):  # (the ids the same; a picture's rows the GPU encoder's: models/vit_device.py)
        assert np.array_equal(a, b) if isinstance(a, list) else rel_err(a, b) < BOUND
    assert rel_err(want, got) < BOUND
    np.testing.assert_allclose(got, FIX[f"logits_{k}"], atol=1e-2)
    assert got.argmax() == FIX[f"logits_{k}"].argmax()


def test_the_fixture_fails_a_picture_fed_causally_on_the_gpu(gpu, monkeypatch):
    """The check has teeth: the GPU's ordinary causal prefill for the picture's rows is far off libmtmd's logits."""
    import kvrun.models.gemma3 as gemma3

    monkeypatch.setattr(gemma3, "update_and_attend_block", lambda cache, il, q, k, v, pos, out: cache[il].update_and_attend(q, k, v, pos, out))
    got = _prefill(gpu, PROMPTS[0])[2]
    assert np.abs(got - FIX["logits_0"]).max() > 0.5


def test_a_picture_fed_in_n_batch_pieces_on_the_gpu_is_the_cpus(pair, emulated):
    """n_batch 4 < 16 rows: each piece sees the cache and itself both ways, as on the CPU (llama.cpp's split)."""
    a = _prefill(_vision(pair, "cpu", n_batch=4), PROMPTS[0])[2]
    b = _prefill(_vision(pair, "gpu", n_batch=4), PROMPTS[0])[2]
    assert rel_err(a, b) < BOUND


def test_decode_after_a_picture_replays_captured_graphs_with_the_cpus_logits(cpu, gpu):
    """The picture's forward is a prefill (no graph); the one-token steps after it are captured once, then replayed."""
    _, ca, _ = _prefill(cpu, PROMPTS[1])
    _, cb, _ = _prefill(gpu, PROMPTS[1])
    n0 = gpu.engine.graphs.n_captures + gpu.engine.graphs.n_replays
    for tok in (5, 9, 14, 3):
        assert rel_err(cpu.engine.eval(ca, [tok])[-1], gpu.engine.eval(cb, [tok])[-1]) < BOUND
    assert gpu.engine.graphs.n_captures + gpu.engine.graphs.n_replays - n0 == 4 and gpu.engine.graphs.n_replays >= 3


def test_a_picture_goes_up_as_cupy_takes_it_and_nothing_comes_down(pair, emulated):
    """On the strict CuPy stand-in (tests/devicexp.py: host arrays refused in device arithmetic and assignments, every
    copy down logged), a picture's forward uploads its rows and brings nothing back."""
    if gpu_available():
        pytest.skip("the strict stand-in is for machines without a GPU")
    from devicexp import COPIES, StrictRuntime

    from kvrun.ops.gpu import kernels as K

    prev = K.set_runtime(StrictRuntime())
    try:
        v = _vision(pair, "gpu")
        cache = v.engine.new_cache()
        v.engine.eval(cache, v.engine.tokenizer.encode("<start_of_image>", add_bos=True, parse_special=True))
        rows, n0 = v.image_rows(sample_image()), cache.offset
        COPIES.clear()
        v.engine.eval_embd(cache, rows)
        assert COPIES == [] and cache.offset == n0 + len(rows)
    finally:
        K.set_runtime(prev)


def test_a_picture_on_the_gpus_compressed_cache_is_a_one_line_error(pair, emulated):
    from kvrun.cache.kvconfig import KVConfig

    v = _vision(pair, "gpu", kv=KVConfig.parse("4"))
    with pytest.raises(KvrunError, match="need the plain fp16 KV cache: drop the --kv-\\* flags") as e:
        _prefill(v, PROMPTS[0])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- chat and the CLI


@pytest.fixture(scope="module")
def chat_files(pair, tmp_path_factory) -> dict[str, Path]:
    from PIL import Image

    png = tmp_path_factory.mktemp("gpu_vision_png") / "wide.png"
    Image.fromarray(sample_image(300, 180, seed=1)).save(png)
    return {**pair, "png": png}


SAMPLE = {"max_tokens": 8, "temperature": 0, "repeat_penalty": 3.0}  # (test_vision_chat.py's: every logit's ranking shows)


@pytest.mark.heavy_emulation  # (on the emulator, over 10 s: tests/conftest.py's sample leaves it out)
def test_a_chat_on_the_gpu_keeps_its_picture_in_the_gpu_cache_and_writes_the_cpus_text(chat_files, emulated, monkeypatch):
    import kvrun

    kw = {"n_ctx": 256, "n_batch": 64, "threads": 1, "mmproj": str(chat_files["f32"])}
    cpu_model, gpu_model = kvrun.load(str(chat_files["text"]), **kw), kvrun.load(str(chat_files["text"]), device="gpu", **kw)
    encoded = []
    real = gpu_model.vision.image_rows
    monkeypatch.setattr(gpu_model.vision, "image_rows", lambda img: encoded.append(1) or real(img))
    want, got = cpu_model.session(), gpu_model.session()
    assert got.send("describe", images=[chat_files["png"]], **SAMPLE) == want.send("describe", images=[chat_files["png"]], **SAMPLE)
    assert type(got.cache[0]).__name__ == "GPUPlainLayerCache"
    follow = "and what else is there?"
    assert got.send(follow, **SAMPLE) == want.send(follow, **SAMPLE)
    assert len(encoded) == 1  # the second turn fed only its text: the picture stayed in the GPU cache
    assert got.last_stats.n_prompt < got.n_prompt_tokens - 16


def test_cli_run_on_the_gpu_takes_an_image_with_mmproj(chat_files, emulated):
    from click.testing import CliRunner

    from kvrun.cli import main

    out = {}
    for dev in ("cpu", "gpu"):
        r = CliRunner().invoke(main, ["run", str(chat_files["text"]), "--device", dev, "--mmproj", str(chat_files["f32"]), "--image",
                                      str(chat_files["png"]), "-p", "describe", "-n", "4", "--temp", "0", "--no-stats"])  # fmt: skip
        assert r.exit_code == 0, r.output
        out[dev] = r.stdout
    assert out["gpu"] == out["cpu"] and out["gpu"].startswith("describe")


# ---------------------------------------------------------------- SmolVLM (idefics3): rows that go in causally


@pytest.fixture(scope="module")
def smolvlm(tmp_path_factory) -> dict[str, Path]:
    from tiny_vision_idefics3 import write_tiny_idefics3_mmproj, write_tiny_smolvlm
    from vision_checks import check_files, fixture

    d = tmp_path_factory.mktemp("gpu_vision_idefics3")
    files = {"text": write_tiny_smolvlm(d / "text.gguf"), "f32": write_tiny_idefics3_mmproj(d / "mmproj-f32.gguf", Q.F32)}
    return check_files(files, fixture("idefics3"))


def test_smolvlm_pictures_on_the_gpu_give_the_cpus_logits_and_libmtmds(smolvlm, emulated):
    """SmolVLM's blocks (tiles, global view, separator rows) fed causally through the GPU's prefill: libmtmd's ids, logits
    within test_vision_idefics3.py's 1.5e-2 of libmtmd's and 2e-3 of the CPU's, then decode steps from graphs."""
    import sys

    from vision_checks import block_ids, check_logits, fixture, pictures

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from make_vision_idefics3_fixtures import IMAGES, PROMPTS

    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    fx, pics = fixture("idefics3"), pictures(IMAGES)
    cpu_v, gpu_v = (Vision(Engine(smolvlm["text"], device=d, n_ctx=512, n_batch=64, threads=1), smolvlm["f32"]) for d in ("cpu", "gpu"))
    for k, prompt in enumerate(PROMPTS):
        ca = check_logits(cpu_v, fx, pics, prompt, str(k), 1.5e-2, ids=block_ids(cpu_v))
        cb = check_logits(gpu_v, fx, pics, prompt, str(k), 1.5e-2, ids=block_ids(gpu_v))
        assert type(cb[0]).__name__ == "GPUPlainLayerCache"
        for tok in (5, 9, 14):
            assert rel_err(cpu_v.engine.eval(ca, [tok])[-1], gpu_v.engine.eval(cb, [tok])[-1]) < BOUND
    assert gpu_v.engine.graphs.n_replays >= 2

