"""Images in, for DeepSeek-OCR 2 (llama.cpp's projector type "deepseekocr2"): the mmproj file (loaders/mmproj.py), a
picture cut into 768-pixel tiles (the grid of 2 to 6 nearest its aspect) and a letterboxed 1024-pixel global view,
each through DeepSeek-OCR's SAM ViT-B, then a Qwen2 encoder over SAM's features and learned queries (grouped-query
attention, NEOX rope, clip.cpp's feature/causal-query mask), the projector ``mm.model.fc`` on the queries' rows, the
view-separator row (models/deepseekocr2_image.py), laid out with the ``"\\n"`` after them (runtime/vision_deepseekocr2.py)
and read by the DeepSeek-OCR text model (deepseek2-ocr), held to llama.cpp's libmtmd on the tiny pair of
tiny_vision_deepseekocr2.py (fixture: tools/make_vision_deepseekocr2_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.models import deepseekocr2_image
from kvrun.models.deepseekocr2_image import DeepseekOCR2Encoder
from kvrun.ops import get_backend
from kvrun.runtime import vision_deepseekocr2
from tiny_vision_deepseekocr2 import V_HEAD_KV, write_tiny_deepseekocr2_mmproj, write_tiny_deepseekocr2_text
from vision_checks import (
    block_ids, check_cli_run, check_logits, check_newline_after, check_refused_beside, fixture, load_vision, one_line_error, pictures,
    tiny_pair, without_tensor,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_deepseekocr2_fixtures import IMAGES, PROMPTS, STRIDE  # noqa: E402

FIX = fixture("deepseekocr2")
PICTURES = pictures(IMAGES)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector (F32 and F16), the very bytes the fixture was made from."""
    return tiny_pair(tmp_path_factory, "deepseekocr2", write_tiny_deepseekocr2_text, write_tiny_deepseekocr2_mmproj, FIX)


def _once(layout: vision_deepseekocr2.DeepseekOCR2Layout) -> vision_deepseekocr2.DeepseekOCR2Layout:
    """``layout`` encoding each picture once (the CPU's SAM takes seconds a view; the rows and logits tests share them)."""
    done: dict[int, np.ndarray] = {}
    chunk = layout.image_chunk
    layout.image_chunk = lambda image: done[id(image)] if id(image) in done else done.setdefault(id(image), chunk(image))
    return layout


@pytest.fixture(scope="module")
def vision(pair):
    v = load_vision(pair["text"], pair["f32"], 2048)
    _once(v.idefics3)
    return v


@pytest.fixture(scope="module")
def layouts(pair, vision) -> dict[str, vision_deepseekocr2.DeepseekOCR2Layout]:
    """The layout on each projector (F32: the pair's own; F16 beside the same text model)."""
    f16 = vision_deepseekocr2.DeepseekOCR2Layout(vision.engine, DeepseekOCR2Encoder.load(pair["f16"], get_backend("cpu")))
    return {"f32": vision.idefics3, "f16": _once(f16)}


# ---------------------------------------------------------------- the projector file


def test_the_encoder_reads_the_grouped_heads_and_the_tile_counts(layouts):
    enc = layouts["f32"].encoder
    assert (enc.n_head_kv, enc.min_tiles, enc.max_tiles, sorted(enc.queries)) == (V_HEAD_KV, 2, 6, [144, 256])


def test_a_file_without_its_queries_is_refused_in_one_line(pair, tmp_path):
    bad = without_tensor(pair["f32"], tmp_path / "m.gguf", "v.resample_query_1024.weight")
    with one_line_error("tensor 'v.resample_query_1024.weight' is missing"):
        DeepseekOCR2Encoder.load(bad, get_backend("cpu"))


# ---------------------------------------------------------------- the picture's views


@pytest.mark.parametrize("w, h, grid", [(200, 150, (0, 0)), (768, 768, (0, 0)), (1600, 800, (2, 1)), (800, 1700, (1, 2)),
                                         (769, 100, (6, 1)), (1000, 1000, (2, 2)), (2000, 2000, (2, 2))])  # fmt: skip
def test_a_picture_past_a_tile_takes_the_grid_nearest_its_aspect(w, h, grid):
    """libmtmd's choice among the grids of 2 to 6 tiles of 768 pixels (DeepSeek-OCR 2's): the closest aspect (no
    3x3 for a square: it is 9 tiles)."""
    assert vision_deepseekocr2.grid(w, h) == grid


@pytest.mark.parametrize("q, name, tol", [("f32", "small", 5e-3), ("f32", "wide", 5e-3), ("f16", "small", 2e-2)])
def test_the_image_chunk_is_libmtmds_rows(layouts, q, name, tol):
    """The tiles' query rows (144 each), then the global view's 256 and the separator: the image chunk
    mtmd_encode_chunk gives (encoder flash attention off; rows ~4: measured 1.3e-3 F32, 1.2e-2 F16)."""
    rows = layouts[q].image_chunk(PICTURES[name])
    assert len(rows) == len(FIX[f"ids_{q}_{name}"]) - 1
    np.testing.assert_allclose(rows[:: STRIDE[name]], FIX[f"embd_{q}_{name}"], atol=tol)


@pytest.mark.parametrize("drop", ["mask", "rope"])
def test_the_fixture_tells_the_query_encoders_steps(pair, monkeypatch, drop):
    """Without clip.cpp's mask (features blind to the queries, queries causal), or without the rope, the rows are no
    longer libmtmd's: the fixture holds each step."""
    if drop == "mask":
        monkeypatch.setattr(deepseekocr2_image, "query_mask", lambda n: np.zeros((2 * n, 2 * n), np.float32))
    else:
        monkeypatch.setattr(deepseekocr2_image, "rope_table", lambda n, d: (np.ones((n, d // 2), np.float32), np.zeros((n, d // 2), np.float32)))
    lay = load_vision(pair["text"], pair["f32"], 512).idefics3
    rows = lay.image_chunk(PICTURES["small"])
    assert np.abs(rows[:: STRIDE["small"]] - FIX["embd_f32_small"]).max() > 0.3


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_come_before_a_newline(vision, name):
    """No token before the image chunk, ``"\\n"`` after it (libmtmd's img_end, tokenized on its own)."""
    check_newline_after(vision, FIX, PICTURES[name], name)


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows and its newline fed causally, then the text: logits within 5e-2 of
    mtmd_helper_eval_chunks' (logits ~14; measured 1.8e-2 after 270 positions, 3.9e-2 after 808.  The gap is the text
    model's on picture rows, as DeepSeek-OCR's: the rows moved by noise of 1e-3, their own error, move the logits by
    under 1e-3, and text-only prompts of those lengths are 8e-4 off)."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 5e-2, block_ids(vision))


def test_another_text_model_is_refused_in_one_line(pair, tiny_llama_path):
    says = r"a deepseekocr2 projector goes with a DeepSeek-OCR text model \(deepseek2-ocr\), not llama"
    check_refused_beside(tiny_llama_path, pair["f32"], says)


def test_cli_run_takes_a_deepseekocr2_picture(pair, tmp_path, monkeypatch, vision):
    rows = vision.idefics3.image_chunk(PICTURES["small"])  # (the global view's 257 rows, encoded once)
    monkeypatch.setattr(vision_deepseekocr2.DeepseekOCR2Layout, "image_chunk", lambda self, image: rows)
    check_cli_run(pair["text"], pair["f32"], PICTURES["small"], tmp_path, len(FIX["ids_f32_small"]))


def test_kvrun_info_counts_the_views_rows(pair):
    """The global view's 256 query rows and its separator alone, or after up to six tiles of 144 rows each."""
    from click.testing import CliRunner

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(pair["f32"])])
    assert r.exit_code == 0 and "(257 rows: its queries and the view separator)" in r.output, r.output
    assert "2 to 6 768x768 tiles nearest its aspect (144 rows each): 257 to 1121 rows a picture" in r.output


# ---------------------------------------------------------------- on the GPU


def test_on_the_gpu_the_query_encoders_rows_are_the_cpus(pair, layouts, monkeypatch, emulated):
    """`--device gpu` (a real GPU, else the kernel emulator): the Qwen2 query encoder on the GPU's ops
    (models/vit_device.py: grouped-query attention under the mask, encoder.cu's kernel with it as its bias; the rope
    kernel; RMSNorm, SwiGLU, the projector) over a 768-pixel tile's SAM features gives its rows within 2e-3 of the
    CPU's (relative to their largest: tests/test_gpu_vision_encoders4.py's bound, where SAM's own device steps are
    held to the CPU's; the features are the CPU's here, the emulator being slow on SAM's 2304 rows)."""
    from gpu_checks import rel_err

    from kvrun.models import deepseekocr_image
    from kvrun.models.vit_ops import HostViT
    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    cpu = layouts["f32"].encoder
    tile = vision_deepseekocr2.normalise(vision_deepseekocr2.tiles(PICTURES["wide"])[0], cpu.cfg.image_mean, cpu.cfg.image_std)
    sam = deepseekocr_image._sam_features(HostViT(cpu), cpu, tile)
    monkeypatch.setattr(deepseekocr2_image, "_sam_features", lambda ops, enc, pixels: ops.vector(sam))
    gpu = DeepseekOCR2Encoder.load(pair["f32"], get_backend("gpu"))
    rows = gpu.encode(tile)
    assert type(gpu.be).__name__ == "GPUBackend" and rel_err(cpu.encode(tile), rows) < 2e-3
