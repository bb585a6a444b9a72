"""Images in, for Step3-VL (llama.cpp's projector type "step3vl"): the mmproj file (loaders/mmproj.py), a picture's crops
and overview, PE-lang's ViT with its learned positions interpolated and a 2-D rope, and the two stride-2 convolutions
(models/step3vl_image.py), laid out with ``<patch_start>`` / ``<im_start>`` markers (runtime/vision_step3vl.py) and read
by a Qwen3 text model, held to llama.cpp's libmtmd on the tiny pair of tiny_vision_step3vl.py (fixture:
tools/make_vision_step3vl_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.mmproj import open_mmproj
from kvrun.models import step3vl_image
from kvrun.models.step3vl_image import Step3VLEncoder
from kvrun.ops import get_backend
from tiny_vision_step3vl import IMAGE_SIZE, LONGEST_EDGE, PATCH, TEXT_GEOMETRY, V_EMBD
from vision_checks import (
    CHATML, block_ids, check_chat_keeps_picture, check_cli_run, check_files, check_logits, fixture, load_vision,
    mmproj_config, one_line_error, pictures, without_tensor,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_step3vl_fixtures import IMAGES, PAIRS, PROMPTS, STRIDE, write_pair  # noqa: E402

FIX = fixture("step3vl")
PICTURES = pictures(IMAGES)
N_TEXT = TEXT_GEOMETRY[0]
CROP_ROWS = (504 // (4 * PATCH)) ** 2  # 81: 36 patches a side, halved twice by the convolutions
OVERVIEW_ROWS = (IMAGE_SIZE // (4 * PATCH)) ** 2  # 4
#: (columns, rows) of crops each picture is cut into, as libmtmd's chunks show
GRIDS = {"small": (0, 0), "wide": (3, 1), "thin": (1, 1), "big": (1, 1), "huge": (2, 2)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors, the very bytes the fixture was made from."""
    files = write_pair(tmp_path_factory.mktemp("vision_step3vl"))
    return check_files(files, FIX)


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair[PAIRS["s3"]], 1024)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, Step3VLEncoder]:
    return {q: Step3VLEncoder.load(pair[q], get_backend("cpu")) for q in ("s3_f32", "s3_f16")}


def encode_picture(enc: Step3VLEncoder, img: np.ndarray) -> np.ndarray:
    """The picture's rows as libmtmd's image chunks give them: each crop's, row by row, then the overview's."""
    c = step3vl_image.cut(img, enc.cfg)
    return np.concatenate([enc.encode(x) for x in [*c.crops, c.overview]])


# ---------------------------------------------------------------- the projector file and the picture's crops


def test_mmproj_config_reads_the_convolutions_merge_and_the_longest_edge(pair):
    cfg = mmproj_config(pair["s3_f32"])
    assert (cfg.projector_type, cfg.image_size, cfg.patch_size, cfg.n_embd) == ("step3vl", IMAGE_SIZE, PATCH, V_EMBD)
    assert cfg.n_text_embd == N_TEXT
    assert (cfg.n_merge, cfg.longest_edge, cfg.ffn_op, cfg.n_tokens) == (4, LONGEST_EDGE, "gelu_quick", OVERVIEW_ROWS)


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_crops_are_libmtmds(pair, name):
    """Each crop makes 81 rows and the overview 4: the grid is read off the count of rows libmtmd gives."""
    cfg = mmproj_config(pair["s3_f32"])
    h, w = PICTURES[name].shape[:2]
    pl = step3vl_image.plan(w, h, cfg)
    assert (pl.n_cols, pl.n_rows) == GRIDS[name]
    n = pl.n_cols * pl.n_rows * CROP_ROWS + OVERVIEW_ROWS
    assert (FIX[f"ids_s3_f32_{name}"] == -1).sum() == n


def test_crop_arithmetic_follows_libmtmds():
    """(determine_window_size, calc_crop_extent, calc_grid: a side rounded to whole windows up past 0.2 of one, the
    last window moved back to end at the edge.)"""
    assert step3vl_image.crop_extent(600, 504) == 504 and step3vl_image.crop_extent(711, 504) == 1008
    assert step3vl_image.crop_extent(300, 504) == 300 and step3vl_image.crop_extent(100, 40) == 120
    assert step3vl_image.starts(120, 40) == [0, 40, 80] and step3vl_image.starts(1100, 504) == [0, 504, 596]


def test_a_huge_picture_is_scaled_to_the_longest_edge_first(pair):
    cfg = mmproj_config(pair["s3_f32"])
    pl = step3vl_image.plan(900, 800, cfg)
    assert (pl.size, pl.win, pl.refined) == ((800, 711), 504, (1008, 1008))
    thin = step3vl_image.plan(20, 150, cfg)  # (under 32 a side past 4:1: a black square first)
    assert (thin.size, thin.win, thin.refined) == ((150, 150), 504, (150, 150))


def test_info_gives_the_rows_a_crop_and_the_overview_take(pair):
    """`kvrun info` on Step3-VL's projector: 81 rows a 504-pixel crop (whatever the file's image size), 4 the overview,
    and when a picture is cropped; --json says the same."""
    import json

    from click.testing import CliRunner

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(pair["s3_f32"])])
    assert r.exit_code == 0, r.output
    assert "crops of 504x504 pixels (81 rows each) where a picture is longer than 112 pixels or past 1.5:1" in r.output, r.output
    assert "(one longer than 800 pixels scaled down to that first), then a 112x112 overview in 14-pixel patches (4 rows)" in r.output
    f = json.loads(CliRunner().invoke(main, ["info", str(pair["s3_f32"]), "--json"]).output)
    assert (f["projector"], f["rows_per_image"], f["rows_per_tile"]) == ("step3vl", OVERVIEW_ROWS, CROP_ROWS)


# ---------------------------------------------------------------- the encoder


@pytest.mark.parametrize("q, tol", [("s3_f32", 5e-3), ("s3_f16", 1.5e-2)])  # (rows up to ~18; F16: products on F16 copies)
@pytest.mark.parametrize("name", list(IMAGES))
def test_every_crop_and_the_overview_encode_to_libmtmds_rows(encoders, q, tol, name):
    """The crops, row by row, then the overview, each through the ViT (positions interpolated for a 504-pixel crop) and
    the convolutions: the rows of the image chunks mtmd_encode_chunk gives (encoder flash attention off).  Measured:
    F32 within 3.3e-3, F16 within 1.04e-2 of libmtmd's (rows up to ~18; a 112-pixel picture, no resize, is 1.4e-3 off:
    the convolutions' F16 im2col rounds the ViT's float noise into F16 steps)."""
    rows = encode_picture(encoders[q], PICTURES[name])[:: STRIDE.get(name, 1)]
    np.testing.assert_allclose(rows, FIX[f"embd_{q}_{name}"], atol=tol)


def test_the_fixture_tells_each_step_that_makes_the_rows(encoders, monkeypatch):
    """Done otherwise, each of these steps puts the rows far outside the tolerance: the interpolated positions
    (nearest for bilinear), the rope's axes (rows for columns), LayerScale (left out)."""
    enc, want = encoders["s3_f32"], FIX["embd_s3_f32_wide"]

    def off() -> float:
        return float(np.abs(encode_picture(enc, PICTURES["wide"]) - want).max())

    assert off() < 5e-3
    def nearest(pos: np.ndarray, side: int, nx: int, ny: int) -> np.ndarray:
        ys, xs = np.arange(ny) * side // ny, np.arange(nx) * side // nx
        return pos[ys[:, None] * side + xs[None]].reshape(nx * ny, -1)

    with monkeypatch.context() as m:
        m.setattr(step3vl_image, "positions", nearest)
        assert off() > 0.5
    with monkeypatch.context() as m:
        real = step3vl_image.rope_2d
        m.setattr(step3vl_image, "rope_2d", lambda ys, xs, d: real(xs, ys, d))
        assert off() > 0.5
    with monkeypatch.context() as m:
        m.setattr(enc, "layers", [dict(L, ls1=None, ls2=None) for L in enc.layers])
        assert off() > 0.5


def test_pixels_not_of_whole_merged_patches_are_refused_in_one_line(encoders):
    with one_line_error("whole 14-pixel patches"):
        encoders["s3_f32"].encode(np.zeros((3, 70, 112), np.float32))


def test_a_file_without_a_convolution_is_refused_in_one_line(pair, tmp_path):
    bad = without_tensor(pair["s3_f32"], tmp_path / "m.gguf", "mm.1.weight")
    with one_line_error("mm.1.weight.* missing"):
        Step3VLEncoder.load(bad, get_backend("cpu"))
    bad = without_tensor(pair["s3_f32"], tmp_path / "n.gguf", "mm.model.fc.weight")
    with one_line_error("mm.model.fc.weight.* missing"):
        open_mmproj(bad)


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_block_is_libmtmds_patch_and_image_markers(vision, name):
    """<patch_start> (crop) <patch_end> ..., <patch_newline> between rows of crops, then <im_start> (overview) <im_end>."""
    img = PICTURES[name]
    assert vision.idefics3.ids(img) == FIX[f"ids_s3_f32_{name}"].tolist()
    assert vision.image_positions(img) == len(FIX[f"ids_s3_f32_{name}"])


def test_the_block_rows_are_the_markers_embeddings_and_the_encoders_rows(vision):
    img = PICTURES["wide"]
    rows, ids = vision.image_rows(img), np.asarray(vision.idefics3.ids(img))
    assert len(rows) == len(ids)
    np.testing.assert_allclose(rows[ids == -1], FIX["embd_s3_f32_wide"], atol=5e-3)


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's block fed causally, as llama.cpp feeds Qwen3 an image, then the text: logits within 3e-2 of
    mtmd_helper_eval_chunks' (logits up to ~13; measured 6.3e-3 and 2.28e-2, and fed libmtmd's own rows in place of
    kvrun's the tiny Qwen3 is as far off, 6.0e-3 and 2.28e-2: the text model's float noise over 265 positions, not the
    pictures')."""
    cache = check_logits(vision, FIX, PICTURES, PROMPTS[k], f"s3_{k}", 3e-2, ids=block_ids(vision))
    assert cache.offset == int(FIX[f"npast_s3_{k}"])  # (every row and marker one position, as libmtmd's)


def test_a_text_model_without_the_markers_is_refused_in_one_line(pair, tmp_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tiny_vision_step3vl import write_tiny_step3vl_text

    text = write_tiny_step3vl_text(tmp_path / "t.gguf", markers=["<im_start>", "<im_end>"])
    with one_line_error("the vocabulary has no '<patch_start>' token; not a Step3-VL model"):
        Vision(Engine(text, n_ctx=64), pair["s3_f32"])


def test_a_text_model_of_another_architecture_is_refused_in_one_line(pair, tmp_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tiny_vision import write_vl_text
    from tiny_vision_step3vl import IMAGE_TOKENS

    text = write_vl_text(tmp_path / "t.gguf", "llama", "llama-vl", TEXT_GEOMETRY, IMAGE_TOKENS, [3] * 5, 1e-6, 10000.0, 0, 1)
    with one_line_error(r"a step3vl projector goes with a Step3-VL text model \(qwen3\), not llama"):
        Vision(Engine(text, n_ctx=64), pair["s3_f32"])


# ---------------------------------------------------------------- kvrun run


def test_cli_run_takes_a_step3vl_picture(pair, tmp_path):
    rows = len(FIX["ids_s3_f32_wide"])  # three crops, the overview, their markers
    check_cli_run(pair["text"], pair["s3_f32"], PICTURES["wide"], tmp_path, rows)


def test_a_chat_keeps_a_pictures_rows_in_its_cache(pair, tmp_path, monkeypatch):
    """The next turn feeds only its new text, the picture is not encoded again, the reply is a fresh chat's."""
    from tiny_vision_step3vl import write_tiny_step3vl_text

    text = write_tiny_step3vl_text(tmp_path / "chat.gguf", chat_template=CHATML)
    check_chat_keeps_picture(text, pair["s3_f32"], PICTURES["small"], monkeypatch, block=len(FIX["ids_s3_f32_small"]))
