"""Images in, for DeepSeek-OCR (llama.cpp's projector type "deepseekocr"): the mmproj file (loaders/mmproj.py), a
picture cut into rows of 640-pixel tiles (the grid of 2 to 9 nearest its aspect) and a letterboxed 1024-pixel global
view, each through SAM ViT-B (windowed and global attention with relative positions, the neck) and CLIP-L, the
projector ``mm.model.fc``, the newline and view-separator rows (models/deepseekocr_image.py), laid out with the
``"\\n"`` after them (runtime/vision_deepseekocr.py) and read by the DeepSeek-OCR text model (deepseek2-ocr), held to
llama.cpp's libmtmd on the tiny pair of tiny_vision_deepseekocr.py (fixture: tools/make_vision_deepseekocr_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.models import deepseekocr_image
from kvrun.models.deepseekocr_image import DeepseekOCREncoder
from kvrun.ops import get_backend
from kvrun.runtime import vision_deepseekocr
from tiny_vision_deepseekocr import V_EMBD, write_tiny_deepseekocr_mmproj, write_tiny_deepseekocr_text
from vision_checks import (
    block_ids, check_cli_run, check_logits, check_newline_after, check_refused_beside, fixture, load_vision, mmproj_config, one_line_error,
    pictures, tiny_pair, without_tensor,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_deepseekocr_fixtures import IMAGES, PROMPTS, STRIDE  # noqa: E402

FIX = fixture("deepseekocr")
PICTURES = pictures(IMAGES)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector (F32 and F16), the very bytes the fixture was made from."""
    return tiny_pair(tmp_path_factory, "deepseekocr", write_tiny_deepseekocr_text, write_tiny_deepseekocr_mmproj, FIX)


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 2048)


@pytest.fixture(scope="module")
def layouts(pair, vision) -> dict[str, vision_deepseekocr.DeepseekOCRLayout]:
    """The layout on each projector (F32: the pair's own; F16 beside the same text model)."""
    f16 = vision_deepseekocr.DeepseekOCRLayout(vision.engine, DeepseekOCREncoder.load(pair["f16"], get_backend("cpu")))
    return {"f32": vision.idefics3, "f16": f16}


# ---------------------------------------------------------------- the projector file


def test_mmproj_config_reads_the_clip_width_and_the_projection(pair):
    cfg = mmproj_config(pair["f32"])
    assert (cfg.projector_type, cfg.n_embd, cfg.n_text_embd) == ("deepseekocr", V_EMBD, 64)


def test_info_gives_the_global_views_rows_and_the_tiles(pair):
    """`kvrun info` on DeepSeek-OCR's projector: the global view's 16 x (16 + 1) + 1 rows, 640-pixel tiles of 10 x 10
    rows, and the most rows a picture takes (1 x 9 tiles: 9 rows of 10 x (10 + 1)); --json says the same."""
    import json

    from click.testing import CliRunner

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(pair["f32"])])
    assert r.exit_code == 0 and "a 1024x1024 global view in 16-pixel patches (273 rows" in r.output, r.output
    assert "the grid of 2 to 9 640x640 tiles nearest its aspect (100 rows each, and a newline a grid row): 273 to 1263 rows" in r.output
    f = json.loads(CliRunner().invoke(main, ["info", str(pair["f32"]), "--json"]).output)
    assert (f["rows_per_image"], f["rows_per_tile"], f["min_tiles"], f["max_tiles"], f["rows_per_picture"]) == (273, 100, 2, 9, [273, 1263])


def test_a_file_without_a_sam_tensor_is_refused_in_one_line(pair, tmp_path):
    bad = without_tensor(pair["f32"], tmp_path / "m.gguf", "v.sam.net_3.weight")
    with one_line_error("tensor 'v.sam.net_3.weight' is missing"):
        DeepseekOCREncoder.load(bad, get_backend("cpu"))


# ---------------------------------------------------------------- the picture's views


@pytest.mark.parametrize("w, h, grid", [(200, 150, (0, 0)), (640, 640, (0, 0)), (1400, 700, (2, 1)), (660, 1300, (1, 2)),
                                         (641, 100, (6, 1)), (900, 900, (2, 2)), (1400, 1400, (3, 3))])  # fmt: skip
def test_a_picture_past_a_tile_takes_the_grid_nearest_its_aspect(w, h, grid):
    """libmtmd's choice among the grids of 2 to 9 tiles: the closest aspect; on a tie (2x2 and 3x3 for a square) the
    larger grid where the picture has more than half its pixels (1400^2 > 9 x 640^2 / 2; 900^2 is not)."""
    assert vision_deepseekocr.grid(w, h) == grid


@pytest.mark.parametrize("q, tol", [("f32", 5e-3), ("f16", 2e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_image_chunk_is_libmtmds_rows(layouts, q, tol, name):
    """Rows of tiles (each grid row across the row's tiles, then the newline row), then the global view (its rows
    with newlines, the separator): the image chunk mtmd_encode_chunk gives (encoder flash attention off; rows ~25)."""
    rows = layouts[q].image_chunk(PICTURES[name])
    ref = FIX[f"embd_{q}_{name}"]
    assert len(rows) == len(FIX[f"ids_{q}_{name}"]) - 1
    np.testing.assert_allclose(rows[:: STRIDE[name]], ref, atol=tol)


@pytest.mark.parametrize("drop", ["relative positions", "global attention"])
def test_the_fixture_tells_each_of_sams_attention_steps(layouts, monkeypatch, drop):
    """Without SAM's relative position biases, or with its layer 2 windowed as the others, the rows are no longer
    libmtmd's: the fixture holds each step."""
    if drop == "relative positions":
        monkeypatch.setattr(deepseekocr_image, "rel_table", lambda t, n: np.zeros((n, n, t.shape[1]), np.float32))
    else:
        monkeypatch.setattr(deepseekocr_image, "GLOBAL_LAYERS", ())
    rows = layouts["f32"].image_chunk(PICTURES["small"])
    assert np.abs(rows[:: STRIDE["small"]] - FIX["embd_f32_small"]).max() > 0.5


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_come_before_a_newline(vision, name):
    """No token before the image chunk, ``"\\n"`` after it (libmtmd's img_end, tokenized on its own)."""
    check_newline_after(vision, FIX, PICTURES[name], name)


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows and its newline fed causally, as llama.cpp feeds DeepSeek-OCR's text model an image, then the
    text: logits within 3e-2 of mtmd_helper_eval_chunks' (measured 2.3e-2 on logits ~14; llama.cpp given kvrun's own
    rows through llama_batch.embd is as far off, 2.4e-2: the gap is the text model's on ~280 rows of picture, where a
    text prompt of that length is 6e-4 off)."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 3e-2, block_ids(vision))


def test_another_text_model_is_refused_in_one_line(pair, tiny_llama_path):
    says = r"a deepseekocr projector goes with a DeepSeek-OCR text model \(deepseek2-ocr\), not llama"
    check_refused_beside(tiny_llama_path, pair["f32"], says)


def test_cli_run_takes_a_deepseekocr_picture(pair, tmp_path):
    rows = len(FIX["ids_f32_small"])  # the global view's 273 rows and the newline
    check_cli_run(pair["text"], pair["f32"], PICTURES["small"], tmp_path, rows)


# ---------------------------------------------------------------- beside a text model on the GPU


@pytest.mark.heavy_emulation  # (on the emulator, tens of seconds: tests/conftest.py's sample leaves it out)
def test_on_the_gpu_the_cpus_rows_go_up_with_the_cpus_logits_then_decode_from_graphs(pair, emulated):
    """`--device gpu` (a real GPU, else the kernel emulator): the encoder runs on the GPU beside the GPU's deepseek2-ocr
    (models/siglip.py ON_GPU), its rows the CPU's within 2e-3 (tests/test_gpu_vision_encoders4.py), the logits after the
    picture within 2e-3 of the CPU's (relative to their largest: tests/test_gpu_pictures3.py's bound), then decode steps from captured graphs."""
    from gpu_checks import rel_err

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    cpu, gpu = (Vision(Engine(pair["text"], device=d, n_ctx=512, n_batch=64, threads=1), pair["f32"]) for d in ("cpu", "gpu"))
    pic = PICTURES["small"]
    rows = gpu.image_rows(pic)
    want = cpu.image_rows(pic)
    assert type(gpu.encoder.be).__name__ == "GPUBackend" and rel_err(want, rows) < 2e-3
    gpu.image_rows = lambda image: rows  # (the view encoded once: the emulator's LayerNorm is slow on SAM's 4096 rows)
    cpu.image_rows = lambda image: want  # (and once on the CPU: each prompt below reads the rows checked here)
    caches, logits = [], []
    for v in (cpu, gpu):
        c = v.engine.new_cache()
        logits.append(v.engine.eval(c, v.prefill(c, v.segments(PROMPTS[0], [pic])))[-1])
        caches.append(c)
    assert rel_err(logits[0], logits[1]) < 2e-3
    n0 = gpu.engine.graphs.n_replays
    errs = [rel_err(cpu.engine.eval(caches[0], [t])[-1], gpu.engine.eval(caches[1], [t])[-1]) for t in (5, 9, 14)]
    assert max(errs) < 2e-3 and gpu.engine.graphs.n_replays - n0 >= 2, errs
