"""Images in, for Llama 4 (llama.cpp's projector type "llama4"): the mmproj file (loaders/mmproj.py), pictures cut into
tiles of ``image_size`` (grids up to 3 x 3) plus an overview, the ViT with a CLS token, learned positions and a 2-D
rope, clip.cpp's pixel shuffle, the adapter MLP and the projector (models/llama4_image.py), laid out between
``<|image_start|>`` and ``<|image_end|>`` (runtime/vision_llama4.py) and read causally by a llama4 text model, held to
llama.cpp's libmtmd on the tiny pair of tiny_vision_llama4.py (fixture: tools/make_vision_llama4_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import KvrunError
from kvrun.models import llama4_image
from kvrun.models.llama4_image import Llama4VisionEncoder
from kvrun.ops import get_backend
from tiny_vision_llama4 import IMAGE_SIZE, MERGE, PATCH, V_EMBD, write_tiny_llama4_mmproj, write_tiny_llama4_vl_text
from vision_checks import check_between, fixture, load_vision, tiny_pair

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_llama4_fixtures import IMAGES, PROMPTS, images  # noqa: E402

FIX = fixture("llama4")
PICTURES = images()
PROJECTORS = ("f32", "f16")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors (F32 and F16), the fixture's bytes."""
    return tiny_pair(tmp_path_factory, "llama4", write_tiny_llama4_vl_text, write_tiny_llama4_mmproj, FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, Llama4VisionEncoder]:
    return {q: Llama4VisionEncoder.load(pair[q], get_backend("cpu")) for q in PROJECTORS}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 1024)


# ---------------------------------------------------------------- the projector file and the tiles


def test_mmproj_config_reads_the_pixel_shuffle_and_the_gelu_mlp(encoders):
    c = encoders["f32"].cfg
    assert (c.projector_type, c.image_size, c.patch_size, c.n_embd, c.n_merge, c.n_text_embd, c.ffn_op) == (
        "llama4", IMAGE_SIZE, PATCH, V_EMBD, MERGE, 64, "gelu")  # fmt: skip
    assert c.n_tokens == 4  # 4 x 4 patches a tile, shuffled 2 x 2


@pytest.mark.parametrize("name, grid", [("small", (0, 0)), ("tile", (0, 0)), ("wide", (3, 2)), ("square", (2, 2)), ("tall", (1, 3)),
                                        ("odd", (2, 2)), ("large", (3, 3))])  # fmt: skip
def test_a_picture_larger_than_a_tile_is_cut_into_the_grid_showing_most_of_it(encoders, name, grid):
    """Of the grids up to 3 x 3 but the single tile, the one fitting the most of the picture's pixels, then the least
    waste (llava's select_best_resolution); one no larger than a tile is the overview alone."""
    img = PICTURES[name]
    cols, rows = llama4_image.grid(img.shape[1], img.shape[0], encoders["f32"].cfg)
    assert (cols, rows) == grid
    assert FIX[f"ids_f32_{name}"].tolist() == [262] + [-1] * ((cols * rows + 1) * 4) + [263]  # <|image_start|> ... <|image_end|>


def test_info_gives_the_rows_a_tile_and_a_picture_take(pair, encoders):
    """`kvrun info` on Llama 4's projector: the rows of a tile, how a picture is tiled, and the fewest and most rows a
    picture takes (a small one: the overview alone; a large one: 3x3 tiles and the overview), as llama4_image.grid cuts
    them; --json says the same."""
    import json

    from click.testing import CliRunner

    from kvrun.cli import main

    cfg = encoders["f32"].cfg
    grids = [llama4_image.grid(w, h, cfg) for w, h in ((20, 20), (40, 20), (200, 200))]
    assert grids == [(0, 0), (2, 1), (3, 3)]
    rows = [(c * r + 1) * cfg.n_tokens for c, r in grids[::2]]
    assert rows == [4, 40]
    r = CliRunner().invoke(main, ["info", str(pair["f32"])])
    assert r.exit_code == 0 and "32x32 tiles in 8-pixel patches, 4 rows a tile; a picture no larger than a tile is its overview alone" in r.output
    assert "the grid of 2 to 9 tiles (up to 3x3) that fits it best, then the overview: 4 to 40 rows a picture" in r.output, r.output
    f = json.loads(CliRunner().invoke(main, ["info", str(pair["f32"]), "--json"]).output)
    assert (f["rows_per_image"], f["rows_per_tile"], f["min_tiles"], f["max_tiles"], f["rows_per_picture"]) == (4, 4, 2, 9, rows)


@pytest.mark.parametrize("q, tol", [("f32", 2e-2), ("f16", 5e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, tol, name):
    """Tiles (bicubic, padded into the grid) row by row, then the overview (stretched), each through the ViT, pixel
    shuffle, adapter and projector: the image chunks' rows mtmd_encode_chunk gives (encoder flash attention off), up to
    ggml's F16 rounding (GELU's table; the F16 weights'), on rows reaching about 30."""
    enc = encoders[q]
    c = llama4_image.cut(PICTURES[name], enc.cfg)
    rows = np.concatenate([enc.encode(llama4_image.normalise(p, enc.cfg)) for p in [*c.tiles, c.overview]])
    np.testing.assert_allclose(rows, FIX[f"embd_{q}_{name}"], atol=tol)


def test_rope_2d_turns_the_first_half_of_a_head_by_the_column_and_the_second_by_the_row():
    cos, sin = llama4_image.rope_2d(np.array([2]), np.array([1]), 8)  # row 2, column 1: two pairs a half
    np.testing.assert_allclose(np.arctan2(sin[0], cos[0]), [1.0, 10000.0**-0.5, 2.0, 2 * 10000.0**-0.5], rtol=1e-6)


def test_the_pixel_shuffle_puts_rows_out_column_major_with_2x2_patches_side_by_side():
    """clip.cpp's reshape/permute order (Llama4VisionPixelShuffleMLP's): output row (x', y') at x' * n/s + y', its
    features [patch (2y', 2x'), (2y', 2x'+1), (2y'+1, 2x'), (2y'+1, 2x'+1)] -- the row pair outer, then the column."""
    n, s = 4, 2
    x = np.arange(n * n, dtype=np.float32)[:, None]  # patch index, raster order, one feature
    out = llama4_image.pixel_shuffle(x, n, s)
    assert out.shape == (4, 4)
    assert out[1].tolist() == [8, 9, 12, 13]  # x' = 0, y' = 1: patches of rows 2 and 3, columns 0 and 1
    assert out[2].tolist() == [2, 3, 6, 7]  # x' = 1, y' = 0


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_tiles_then_its_overview_lie_between_image_start_and_image_end(vision, name):
    """As the oracle's libmtmd lays Llama 4 out: no tile separators, no <|image|> (newer sources add them)."""
    check_between(vision, FIX, PICTURES[name], f"f32_{name}", "<|image_start|>", "<|image_end|>")


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally (llama.cpp's non-causal image attention is Gemma 3's alone) through the
    chunked and NoPE layers, then <|image_end|> and the text: logits within 2e-2 of mtmd_helper_eval_chunks'."""
    imgs = [PICTURES[n] for n in list(IMAGES)[: PROMPTS[k].count("<__media__>")]]
    segs = vision.segments(PROMPTS[k], imgs)
    ids = [i for s in segs for i in (s if isinstance(s, list) else [-1] * len(s))]
    assert ids == FIX[f"pids_{k}"].tolist()
    cache = vision.engine.new_cache()
    logits = vision.engine.eval(cache, vision.prefill(cache, segs))[-1]
    np.testing.assert_allclose(logits, FIX[f"logits_{k}"], atol=2e-2)
    assert logits.argmax() == FIX[f"logits_{k}"].argmax()


def test_a_text_model_without_image_start_is_refused(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with pytest.raises(KvrunError, match=r"the vocabulary has no <\|image_start\|> token; not a Llama 4 model") as e:
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])
    assert "\n" not in str(e.value)


def test_cli_run_takes_a_llama4_picture(pair, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from kvrun.cli import main

    png = tmp_path / "wide.png"
    Image.fromarray(PICTURES["wide"]).save(png)
    r = CliRunner().invoke(main, ["run", str(pair["text"]), "--mmproj", str(pair["f32"]), "--image", str(png),
                                  "-p", "describe", "-n", "4", "--temp", "0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"prompt {len(FIX['ids_f32_wide']) + len('describe')} tok" in r.output  # 6 tiles and the overview, 2 markers, 8 bytes
