"""Images in, for InternVL (llama.cpp's projector type "internvl"): the mmproj file (loaders/mmproj.py), pictures cut
into the best of InternVL's grids of tiles and a thumbnail, the InternViT encoder with LayerScale, the pixel shuffle
and the LayerNorm + MLP projector (models/internvl_image.py), laid out between ``<img>`` and ``</img>``
(runtime/vision_internvl.py) and read by a Qwen2 text model, held to llama.cpp's libmtmd on the tiny pair of
tiny_vision_internvl.py (fixture: tools/make_vision_internvl_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import KvrunError
from kvrun.models import internvl_image
from kvrun.models.internvl_image import InternVLEncoder
from kvrun.ops import get_backend
from tiny_vision_internvl import IMAGE_SIZE, PATCH, SCALE, V_EMBD, write_tiny_internvl_mmproj, write_tiny_internvl_text
from vision_checks import (
    CHATML, check_between, check_chat_keeps_picture, check_cli_run, check_logits, fixture, load_vision, mmproj_config,
    pictures, tiny_pair,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_internvl_fixtures import IMAGES, PROMPTS  # noqa: E402

FIX = fixture("internvl")
PICTURES = pictures(IMAGES)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector (F32 and F16), the very bytes the fixture was made from."""
    return tiny_pair(tmp_path_factory, "internvl", write_tiny_internvl_text, write_tiny_internvl_mmproj, FIX)


@pytest.fixture(scope="module")
def cfg(pair):
    return mmproj_config(pair["f32"])


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 1024)


# ---------------------------------------------------------------- the projector file


def test_mmproj_config_reads_internvls_shuffle_and_default_tile_range(cfg):
    assert (cfg.projector_type, cfg.image_size, cfg.patch_size, cfg.n_embd, cfg.n_merge) == ("internvl", IMAGE_SIZE, PATCH, V_EMBD, SCALE)
    assert (cfg.min_tiles, cfg.max_tiles, cfg.n_tokens, cfg.n_text_embd) == (1, 12, 4, 64)  # (n_text_embd: mlp.3's rows)


def test_a_file_without_the_class_token_is_refused_in_one_line(tmp_path):
    """(A SigLIP-style file mislabelled internvl: the InternViT needs its CLS row.)"""
    from tiny_vision_lfm2 import write_tiny_lfm2_mmproj

    from kvrun.loaders.gguf_file import GGUFFile
    from kvrun.loaders.mmproj import load_mmproj_config

    from dataclasses import replace

    g = GGUFFile(write_tiny_lfm2_mmproj(tmp_path / "m.gguf"))
    cfg = replace(load_mmproj_config(g), projector_type="internvl")
    with pytest.raises(KvrunError, match="tensor 'v.class_embd' is missing") as e:
        InternVLEncoder(g, cfg, get_backend("cpu"))
    assert "\n" not in str(e.value)



def test_info_gives_the_rows_a_tile_and_a_picture_take(pair, cfg):
    """`kvrun info` on InternVL's projector: the rows of a tile, how a picture is tiled, and the fewest and most rows a
    picture takes (a small one: the thumbnail alone; one of 4x3 tiles' shape: 12 tiles and the thumbnail), as
    internvl_image.grid cuts them; --json says the same."""
    import json

    from click.testing import CliRunner

    from kvrun.cli import main

    rows = [(c * r + 1) * cfg.n_tokens for c, r in (internvl_image.grid(24, 20, cfg), internvl_image.grid(128, 96, cfg))]
    assert rows == [4, 52]
    r = CliRunner().invoke(main, ["info", str(pair["f32"])])
    assert r.exit_code == 0 and "32x32 tiles in 8-pixel patches, 4 rows a tile; a picture no larger than a tile is its thumbnail alone" in r.output
    assert "the grid of 1 to 12 tiles that fits it best, then the thumbnail: 4 to 52 rows a picture" in r.output, r.output
    f = json.loads(CliRunner().invoke(main, ["info", str(pair["f32"]), "--json"]).output)
    assert (f["rows_per_tile"], f["min_tiles"], f["max_tiles"], f["rows_per_picture"]) == (4, 1, 12, rows)

# ---------------------------------------------------------------- tiles


@pytest.mark.parametrize("w, h, grid", [(24, 20, (0, 0)), (32, 32, (0, 0)), (100, 40, (4, 2)), (64, 64, (2, 2)), (50, 130, (2, 5)),
                                         (33, 20, (2, 1)), (1000, 30, (12, 1))])  # fmt: skip
def test_a_picture_past_one_tile_takes_the_grid_showing_most_of_it_with_least_waste(cfg, w, h, grid):
    """libmtmd's llava-uhd choice among InternVL's 1 to 12 tile grids (not Hugging Face's closest aspect: 100x40 is
    4x2, the smallest grid it fits whole, not 5x2)."""
    assert internvl_image.grid(w, h, cfg) == grid


@pytest.mark.parametrize("q, tol", [("f32", 5e-3), ("f16", 1.5e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_every_tile_and_the_thumbnail_encode_to_libmtmds_rows(pair, q, tol, name):
    """Tiles row by row, then the thumbnail, each through InternViT (CLS token last, LayerScale), the 2x2 shuffle,
    LayerNorm and the MLP: the rows of the image chunk mtmd_encode_chunk gives (encoder flash attention off)."""
    enc = InternVLEncoder.load(pair[q], get_backend("cpu"))
    c = internvl_image.cut(PICTURES[name], enc.cfg)
    rows = np.concatenate([enc.encode(internvl_image.normalise(x, enc.cfg)) for x in c.images])
    np.testing.assert_allclose(rows, FIX[f"embd_{q}_{name}"], atol=tol)


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_lie_between_img_and_close_img(vision, name):
    assert len(vision.image_rows(PICTURES[name])) == check_between(vision, FIX, PICTURES[name], f"f32_{name}", "<img>", "</img>")


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally, as llama.cpp feeds Qwen2 an image, then the text: logits within 1e-2 of
    mtmd_helper_eval_chunks'."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 1e-2)


def test_a_text_model_without_img_tokens_is_refused(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with pytest.raises(KvrunError, match="the vocabulary has no <img> token; not an InternVL model") as e:
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- kvrun run, and a chat


def test_cli_run_takes_an_internvl_picture(pair, tmp_path):
    rows = len(FIX["ids_f32_tall"])  # 10 tiles and the thumbnail, markers, 8 bytes
    check_cli_run(pair["text"], pair["f32"], PICTURES["tall"], tmp_path, rows)


def test_a_chat_keeps_a_pictures_rows_in_its_cache(pair, tmp_path, monkeypatch):
    """The next turn feeds only its new text, the picture is not encoded again, the reply is a fresh chat's."""
    text = write_tiny_internvl_text(tmp_path / "chat.gguf", chat_template=CHATML)
    block = len(FIX["ids_f32_wide"])  # (8 tiles and the thumbnail: 36 rows and the markers, kept)
    check_chat_keeps_picture(text, pair["f32"], PICTURES["wide"], monkeypatch, block=block)
