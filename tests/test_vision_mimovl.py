"""Images in, for MiMo-V2.5 (llama.cpp's projector type "mimovl"): the mmproj file (loaders/mmproj.py), pictures sized
within the file's pixel limits as Qwen2-VL's, the ViT with grouped heads from a fused QKV, banded windows with
attention sinks by rows or by columns layer by layer, the merger (models/mimovl_image.py), laid out between
``<|vision_start|>`` and ``<|vision_end|>`` (runtime/vision_mimovl.py) and read causally by a mimo2 text model
(models/mimo2.py), held to llama.cpp's libmtmd on the tiny pair of tiny_vision_mimovl.py (fixture:
tools/make_vision_mimovl_fixtures.py); and the encoder on the GPU backend's kernel emulator against the CPU's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from kvrun.loaders.mmproj import open_mmproj
from kvrun.models import mimovl_image
from kvrun.models.mimovl_image import MimoVLEncoder
from kvrun.ops import get_backend
from tiny_vision_mimovl import HEAD_DIM, MAX_PIXELS, MIN_PIXELS, MODES, PATCH, V_EMBD, V_HEAD_KV, WINDOW
from vision_checks import check_between, check_cli_run, check_files, check_logits, fixture, load_vision, one_line_error, pictures, without_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_mimovl_fixtures import IMAGES, PAIRS, PROMPTS, write_pair  # noqa: E402

FIX = fixture("mimovl")
PICTURES = pictures(IMAGES)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors (F32 and F16), the very bytes the fixture was made from."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_mimovl")), FIX)


def _encoder(path: Path) -> MimoVLEncoder:
    g, cfg = open_mmproj(path)
    return MimoVLEncoder(g, cfg, get_backend("cpu"))


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, MimoVLEncoder]:
    return {q: _encoder(pair[q]) for q in ("f32", "f16")}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair[PAIRS["t"]], 512)


def _off(enc: MimoVLEncoder, name: str, q: str = "f32") -> float:
    """The encoder's rows for picture ``name`` against libmtmd's, the largest difference over the largest row value."""
    want = FIX[f"embd_{q}_{name}"]
    return float(np.abs(enc.encode(mimovl_image.preprocess(PICTURES[name], enc.cfg)) - want).max() / np.abs(want).max())


def test_mmproj_config_reads_the_pixel_limits_heads_windows_and_layer_modes(encoders):
    e = encoders["f32"]
    c = e.cfg
    assert (c.projector_type, c.patch_size, c.n_embd, c.n_merge, c.n_text_embd, c.ffn_op) == ("mimovl", PATCH, V_EMBD, 2, 64, "silu")
    assert (c.min_pixels, c.max_pixels) == (MIN_PIXELS, MAX_PIXELS)
    assert (e.n_head_kv, e.head_dim, e.window, e.modes) == (V_HEAD_KV, HEAD_DIM, WINDOW, MODES)  # (heads wider than n_embd / n_head)


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_are_libmtmds_grid_between_the_markers(encoders, name):
    """Sides rounded to 32-pixel blocks and scaled within 8 to 64 blocks' worth: 400 x 300 down to 9 x 6, 40 x 30 up
    to 4 x 3; one image chunk between <|vision_start|> and <|vision_end|>."""
    img = PICTURES[name]
    nx, ny = mimovl_image.grid(img.shape[1], img.shape[0], encoders["f32"].cfg)
    assert FIX[f"ids_f32_{name}"].tolist() == [262] + [-1] * (nx * ny) + [263]


@pytest.mark.parametrize("q, tol", [("f32", 1e-3), ("f16", 5e-3)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, tol, name):
    """Resize, the two patch kernels, the blocks (row windows, column windows, the whole picture, column windows), the
    merger: the rows mtmd_encode_chunk gives (encoder flash attention off), as a fraction of their largest (~10).
    Measured: F32 within 1.6e-4, F16 within 1.2e-3."""
    assert _off(encoders[q], name, q) < tol


def test_the_fixture_tells_the_sinks_the_column_order_the_band_and_the_full_layer(encoders, monkeypatch):
    """Each of what sets MiMo-V2.5's ViT apart, dropped, puts the tall picture's rows (3 x 4 blocks: its column order
    is not its row order) far outside the tolerance: the sinks left out of the softmax, the column layers scored in
    row order, a band twice as wide, the full layer windowed (measured: 0.13, 0.71, 0.62, 0.38 of the largest value
    off, where the rows are within 1.5e-4)."""
    enc = encoders["f32"]
    assert _off(enc, "tall") < 1e-3
    attend = mimovl_image.attend
    monkeypatch.setattr(mimovl_image, "attend", lambda xp, q, k, v, rank, w, sinks, scale: attend(xp, q, k, v, rank, w, None, scale))
    assert _off(enc, "tall") > 0.02
    monkeypatch.setattr(mimovl_image, "attend", attend)
    monkeypatch.setattr(enc, "modes", [0, 0, -1, 0])
    assert _off(enc, "tall") > 0.02
    monkeypatch.setattr(enc, "modes", MODES)
    monkeypatch.setattr(enc, "window", 2 * WINDOW)
    assert _off(enc, "tall") > 0.02
    monkeypatch.setattr(enc, "window", WINDOW)
    monkeypatch.setattr(enc, "modes", [0, 1, 0, 1])
    enc.layers[2]["sinks"] = enc.layers[1]["sinks"]
    try:
        assert _off(enc, "tall") > 0.02
    finally:
        enc.layers[2]["sinks"] = None


def test_pixels_not_of_whole_blocks_are_refused_in_one_line(encoders):
    with one_line_error("sides multiples of 32"):
        encoders["f32"].encode(np.zeros((3, 48, 64), np.float32))


def test_a_file_without_a_window_layers_sinks_is_refused_in_one_line(pair, tmp_path):
    bad = without_tensor(pair["f32"], tmp_path / "m.gguf", "v.blk.1.attn_sinks")
    with one_line_error("v.blk.1.attn_sinks.* missing"):
        _encoder(bad)


@pytest.mark.parametrize("name", ["exact", "big"])
def test_a_pictures_rows_lie_between_vision_start_and_vision_end(vision, name):
    check_between(vision, FIX, PICTURES[name], f"f32_{name}", "<|vision_start|>", "<|vision_end|>")


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally at consecutive positions (mimo2's rope is not M-RoPE) through its window
    layers with sinks and its experts, then <|vision_end|> and the text: logits within 2e-2 of
    mtmd_helper_eval_chunks' (measured 3.5e-3 and 6.7e-3, logits ~11 and ~17)."""
    cache = check_logits(vision, FIX, PICTURES, PROMPTS[k], f"t_{k}", 2e-2)
    assert cache.offset == int(FIX[f"npast_t_{k}"])


def test_a_text_model_of_another_architecture_is_refused_in_one_line(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with one_line_error(r"a mimovl projector goes with a MiMo-V2.5 text model \(mimo2\), not llama"):
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])


def test_cli_run_takes_a_mimovl_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["f32"], PICTURES["exact"], tmp_path, len(FIX["ids_f32_exact"]))  # 4 x 3 blocks, 2 markers


def test_the_encoder_runs_on_the_gpu_and_gives_the_cpus_rows(tmp_path, emulated):
    """On the kernel emulator (or a GPU): the encoder beside a GPU text model, its attention on the device's arrays,
    writes the CPU encoder's rows within 2e-3 of their largest."""
    from gpu_checks import check_encoder_rows
    from tiny_vision import tiny_mmproj

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate
    from kvrun.runtime.projectors import load_encoder

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    path = tiny_mmproj("mimovl", Q.F32, tmp_path)
    pixels = np.random.default_rng(0).standard_normal((3, 96, 64)).astype(np.float32)  # (4 x 6 patches: column order differs)
    check_encoder_rows(load_encoder(path, get_backend("cpu")), load_encoder(path, get_backend("gpu")), pixels, bound=2e-3)
