"""Images in, for MiniCPM-V (llama.cpp's projector type "resampler"): the mmproj file (loaders/mmproj.py), a picture's
overview and grid of slices, the SigLIP encoder with bucketed learned positions and the perceiver resampler
(models/minicpmv_image.py), laid out with ``<image>`` and ``<slice>`` markers (runtime/vision_minicpmv.py) and read
by a Qwen3 text model, held to llama.cpp's libmtmd on the tiny pair of tiny_vision_minicpmv.py (version 5, MiniCPM-V
4.5's layout; fixture: tools/make_vision_minicpmv_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import KvrunError
from kvrun.loaders.mmproj import open_mmproj
from kvrun.models import minicpmv_image
from kvrun.models.minicpmv_image import MiniCPMVEncoder
from kvrun.ops import get_backend
from tiny_vision_minicpmv import IMAGE_SIZE, N_QUERY, PATCH, TEXT_GEOMETRY, V_EMBD, VERSION, write_tiny_minicpmv_mmproj
from vision_checks import (
    CHATML, block_ids, check_chat_keeps_picture, check_cli_run, check_files, check_logits, fixture, load_vision,
    mmproj_config, pictures,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_minicpmv_fixtures import IMAGES, PAIRS, PROMPTS, write_pair  # noqa: E402

FIX = fixture("minicpmv")
PICTURES = pictures(IMAGES)
N_TEXT = TEXT_GEOMETRY[0]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors, the very bytes the fixture was made from."""
    files = write_pair(tmp_path_factory.mktemp("vision_minicpmv"))
    return check_files(files, FIX)


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair[PAIRS["mc"]], 1024)


# ---------------------------------------------------------------- the projector file and the picture's slices


def test_mmproj_config_reads_the_version_and_the_resamplers_queries(pair):
    g, cfg = open_mmproj(pair["mc_f32"])
    assert (cfg.projector_type, cfg.image_size, cfg.patch_size, cfg.n_embd) == ("resampler", IMAGE_SIZE, PATCH, V_EMBD)
    assert (cfg.minicpmv_version, cfg.n_query, cfg.n_text_embd, cfg.n_merge) == (VERSION, N_QUERY, N_TEXT, 1)
    g.close()


def test_a_version_libmtmd_does_not_lay_out_is_refused_in_one_line(tmp_path):
    with pytest.raises(KvrunError, match="clip.minicpmv_version is 7; kvrun .* lays out MiniCPM-V versions 2, 3, 4, 5") as e:
        open_mmproj(write_tiny_minicpmv_mmproj(tmp_path / "m.gguf", version=7))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_overview_and_grid_are_libmtmds(pair, name):
    """Overview and slices each make one image chunk of N_QUERY rows: the grid is read off the chunks' count."""
    cfg = mmproj_config(pair["mc_f32"])
    h, w = PICTURES[name].shape[:2]
    pl = minicpmv_image.plan(w, h, cfg)
    assert len(FIX[f"embd_mc_f32_{name}"]) == N_QUERY * (1 + pl.n_cols * pl.n_rows)
    assert {"small": (0, 0), "wide": (3, 1), "square": (2, 2), "tall": (1, 2), "large": (4, 2)}[name] == (pl.n_cols, pl.n_rows)


def test_slices_sizes_follow_clip_cpps_arithmetic():
    """(get_best_resize: about one slice's area keeping the aspect, sides whole patches; the sizes libmtmd logged.)"""
    assert minicpmv_image.best_resize(150, 60, 56, 14, False) == (84, 42)
    assert minicpmv_image.best_resize(200, 120, 56, 14, False) == (70, 42)
    assert minicpmv_image.best_grid(200, 120, 56) == (4, 2)  # (of 7, 8 and 9 slices, 4 x 2's aspect is nearest)
    assert minicpmv_image.best_grid(100, 100, 56) == (2, 2)


def test_info_gives_the_rows_a_slice_and_a_picture_take(pair):
    """`kvrun info` on MiniCPM-V's projector: a slice's rows are the resampler's queries (not the ViT's patches), how a
    picture is sliced, and the fewest and most rows a picture takes (a small one: the overview alone; one of 3x3
    slices' area: 9 slices and the overview), as minicpmv_image.plan cuts them; --json says the same."""
    import json

    from click.testing import CliRunner

    from kvrun.cli import main

    cfg = mmproj_config(pair["mc_f32"])
    grids = [(pl.n_cols, pl.n_rows) for pl in (minicpmv_image.plan(w, h, cfg) for w, h in ((40, 30), (60, 20), (168, 168)))]
    assert grids == [(0, 0), (2, 1), (3, 3)]
    rows = [(c * r + 1) * N_QUERY for c, r in grids[::2]]
    assert rows == [8, 80] and cfg.n_tokens == 16  # (the ViT's patches a slice, which the resampler makes 8 rows)
    r = CliRunner().invoke(main, ["info", str(pair["mc_f32"])])
    assert r.exit_code == 0 and "slices of about 56x56 pixels in 14-pixel patches, 8 rows a slice (the resampler's queries)" in r.output
    assert "a larger one its overview then the grid of 2 to 9 slices nearest its aspect: 8 to 80 rows a picture" in r.output, r.output
    f = json.loads(CliRunner().invoke(main, ["info", str(pair["mc_f32"]), "--json"]).output)
    assert (f["rows_per_image"], f["rows_per_tile"], f["min_tiles"], f["max_tiles"], f["rows_per_picture"]) == (8, 8, 2, 9, rows)


def test_positions_bucket_a_parts_patches_into_the_70_by_70_table():
    assert minicpmv_image.bucket_positions(2, 3).tolist() == [0, 23, 46, 35 * 70, 35 * 70 + 23, 35 * 70 + 46]


# ---------------------------------------------------------------- the encoder


@pytest.mark.parametrize("q, tol", [("mc_f32", 1e-3), ("mc_f16", 5e-3)])  # (F16: products on F16 copies, as ggml; rows ~4)
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_overview_and_every_slice_encode_to_libmtmds_rows(pair, q, tol, name):
    """The overview, then the slices row by row, each through SigLIP (bucketed positions) and the resampler (2-D sin-cos
    keys): the rows of the image chunks mtmd_encode_chunk gives (encoder flash attention off)."""
    enc = MiniCPMVEncoder.load(pair[q], get_backend("cpu"))
    c = minicpmv_image.cut(PICTURES[name], enc.cfg)
    rows = np.concatenate([enc.encode(minicpmv_image.normalise(x, enc.cfg)) for x in [c.overview, *c.slices]])
    np.testing.assert_allclose(rows, FIX[f"embd_{q}_{name}"], atol=tol)


def test_pixels_not_of_whole_patches_are_refused_in_one_line(pair):
    enc = MiniCPMVEncoder.load(pair["mc_f32"], get_backend("cpu"))
    with pytest.raises(KvrunError, match="whole 14-pixel patches") as e:
        enc.encode(np.zeros((3, 30, 28), np.float32))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_block_is_libmtmds_image_and_slice_markers(vision, name):
    img = PICTURES[name]
    assert vision.idefics3.ids(img) == FIX[f"ids_mc_f32_{name}"].tolist()
    assert vision.image_positions(img) == len(vision.image_rows(img)) == len(FIX[f"ids_mc_f32_{name}"])


@pytest.mark.parametrize("name", list(IMAGES))
def test_version_2_puts_the_slices_between_slice_markers_each_as_an_image(pair, name):
    """MiniCPM-V 2.5's template: <image> (overview) </image><slice><image> (slice) </image>...\\n...</slice>."""
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    v = Vision(Engine(pair["text"], n_ctx=1024, n_batch=64, threads=1), pair["mc25_f32"])
    img = PICTURES[name]
    assert v.idefics3.ids(img) == FIX[f"ids_mc25_f32_{name}"].tolist()
    rows = v.image_rows(img)
    ids = np.asarray(v.idefics3.ids(img))
    np.testing.assert_allclose(rows[ids == -1], FIX[f"embd_mc25_f32_{name}"], atol=1e-3)


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's block fed causally, as llama.cpp feeds Qwen3 an image, then the text: logits within 2.5e-2 of
    mtmd_helper_eval_chunks' (logits up to ~12; measured: fed libmtmd's own rows in place of kvrun's, the tiny Qwen3
    is as far off, 1.3e-2 and 1.8e-2: the text model's float noise, not the pictures')."""
    cache = check_logits(vision, FIX, PICTURES, PROMPTS[k], f"mc_{k}", 2.5e-2, ids=block_ids(vision))
    assert cache.offset == int(FIX[f"npast_mc_{k}"])  # (every part and marker one position, as libmtmd's)


def test_a_text_model_without_the_markers_is_refused_in_one_line(pair, tmp_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tiny_vision import write_vl_text

    text = write_vl_text(tmp_path / "t.gguf", "llama", "no-markers", TEXT_GEOMETRY, [], [], 1e-6, 10000.0, 0, 1)
    with pytest.raises(KvrunError, match="the vocabulary has no '<image>' token; not a MiniCPM-V model") as e:
        Vision(Engine(text, n_ctx=64), pair["mc_f32"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- kvrun run


def test_cli_run_takes_a_minicpmv_picture(pair, tmp_path):
    rows = len(FIX["ids_mc_f32_tall"])  # overview, 1 x 2 slices, markers, 8 bytes
    check_cli_run(pair["text"], pair["mc_f32"], PICTURES["tall"], tmp_path, rows)


def test_a_chat_keeps_a_pictures_rows_in_its_cache(pair, tmp_path, monkeypatch):
    """The next turn feeds only its new text, the picture is not encoded again, the reply is a fresh chat's."""
    from tiny_vision_minicpmv import write_tiny_minicpmv_text

    text = write_tiny_minicpmv_text(tmp_path / "chat.gguf", chat_template=CHATML)
    block = len(FIX["ids_mc_f32_wide"])  # (the overview and 3 slices: 32 rows and the markers, kept)
    check_chat_keeps_picture(text, pair["mc_f32"], PICTURES["wide"], monkeypatch, block=block)
