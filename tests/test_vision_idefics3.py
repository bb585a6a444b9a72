"""Images in, for SmolVLM (llama.cpp's projector type "idefics3"): the mmproj file (loaders/mmproj.py), the SigLIP
encoder with a pixel shuffle and ``mm.model.fc`` (models/siglip.py), pictures cut into tiles and a global view
(models/idefics3_image.py) and laid out between SmolVLM's image tokens (runtime/vision_idefics3.py), held to
llama.cpp's libmtmd on the tiny pair of tiny_vision_idefics3.py (fixture: tools/make_vision_idefics3_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import KvrunError
from kvrun.loaders.mmproj import open_mmproj
from kvrun.models import idefics3_image
from kvrun.models.siglip import SiglipEncoder, pixel_shuffle
from kvrun.ops import get_backend
from tiny_vision_idefics3 import IMAGE_SIZE, LONGEST_EDGE, PATCH, SCALE, V_EMBD, write_tiny_idefics3_mmproj, write_tiny_smolvlm
from vision_checks import (
    block_ids, check_chat_keeps_picture, check_cli_run, check_logits, fixture, load_vision, pictures,
    tiny_pair,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_idefics3_fixtures import IMAGES, PROMPTS  # noqa: E402

FIX = fixture("idefics3")
PICTURES = pictures(IMAGES)
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<end_of_utterance>\n{% endfor %}Assistant:"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector (F32 and F16), the very bytes the fixture was made from."""
    return tiny_pair(tmp_path_factory, "idefics3", write_tiny_smolvlm, write_tiny_idefics3_mmproj, FIX)


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 512)


# ---------------------------------------------------------------- the projector file


def test_mmproj_config_reads_smolvlms_pixel_shuffle_longest_edge_and_projection(pair):
    g, cfg = open_mmproj(pair["f32"])
    assert (cfg.projector_type, cfg.image_size, cfg.patch_size, cfg.n_embd) == ("idefics3", IMAGE_SIZE, PATCH, V_EMBD)
    assert (cfg.n_merge, cfg.longest_edge, cfg.n_text_embd) == (SCALE, LONGEST_EDGE, 64)  # (n_text_embd: mm.model.fc's rows)
    assert cfg.n_tokens == 4  # 4x4 patches a tile, shuffled 2x2
    g.close()


def test_projectors_kvrun_does_not_run_are_still_refused_in_one_line(tmp_path):
    from test_vision import _clip_file

    from kvrun.loaders.gguf_file import GGUFFile
    from kvrun.loaders.mmproj import load_mmproj_config

    with pytest.raises(KvrunError, match="projector type 'deepseek4v' is not supported; kvrun reads gemma3, idefics3") as e:
        load_mmproj_config(GGUFFile(_clip_file(tmp_path / "l.gguf", "deepseek4v")))  # (kimivl's, cogvlm's, yasa2's and ling3vl's, once the example, are read now)
    assert "\n" not in str(e.value)



def test_info_gives_the_rows_a_tile_and_a_picture_take(pair):
    """`kvrun info` on SmolVLM's projector: the rows of a tile, how a picture is tiled, and the fewest and most rows a
    picture takes (every picture has LONGEST_EDGE on its longest side: 2 tiles along it, 1 or 2 across, and the
    global view), as idefics3_image.grid cuts them; --json says the same."""
    import json

    from click.testing import CliRunner

    from kvrun.cli import main

    _, cfg = open_mmproj(pair["f32"])
    rows = [(c * r + 1) * cfg.n_tokens for c, r in (idefics3_image.grid(1000, 10, cfg), idefics3_image.grid(64, 64, cfg))]
    assert rows == [12, 20]
    r = CliRunner().invoke(main, ["info", str(pair["f32"])])
    assert r.exit_code == 0 and "32x32 tiles in 8-pixel patches, 4 rows a tile; a picture is scaled to 64 pixels on its longest edge" in r.output
    assert "up to 2x2 tiles, then a global view: 12 to 20 rows a picture" in r.output, r.output
    f = json.loads(CliRunner().invoke(main, ["info", str(pair["f32"]), "--json"]).output)
    assert (f["rows_per_tile"], f["min_tiles"], f["max_tiles"], f["rows_per_picture"]) == (4, 2, 4, rows)

# ---------------------------------------------------------------- tiles, encoder and projector


def test_pixel_shuffle_puts_each_2x2_block_of_patches_side_by_side_in_raster_order():
    x = np.arange(16, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # 4x4 patches, patch p's row all p
    y = pixel_shuffle(x, 4, 2)
    assert y.shape == (4, 12)
    assert y[:, ::3].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


@pytest.mark.parametrize("w, h, grid, size", [(64, 64, (2, 2), (64, 64)), (150, 50, (2, 1), (64, 22)), (40, 70, (2, 2), (36, 64)),
                                                (20, 20, (2, 2), (64, 64)), (1000, 10, (2, 1), (64, 1))])  # fmt: skip
def test_a_picture_is_scaled_to_the_longest_edge_keeping_its_aspect_then_cut_into_whole_tiles(pair, w, h, grid, size):
    """Idefics3's processor: the other side truncated and made even (21.3 -> 22, 36.6 -> 36; 0.64 -> 0 -> at least 1),
    then up to whole tiles; a picture smaller than a tile is scaled up all the same."""
    _, cfg = open_mmproj(pair["f32"])
    assert idefics3_image.longest_edge_size(w, h, LONGEST_EDGE) == size
    assert idefics3_image.grid(w, h, cfg) == grid
    t = idefics3_image.cut(np.zeros((h, w, 3), np.uint8), cfg)
    assert (t.n_cols, t.n_rows, len(t.tiles)) == (*grid, grid[0] * grid[1]) and t.overview.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_resize_is_pillows_lanczos():
    """clip.cpp's resize_lanczos_pillow is a port of Pillow's: the same bytes (here Pillow is the check, not the path)."""
    from PIL import Image

    img = PICTURES["wide"]
    for w, h in [(64, 22), (32, 32), (200, 90), (7, 3)]:
        assert (idefics3_image.resize(img, w, h) == np.asarray(Image.fromarray(img).resize((w, h), Image.LANCZOS))).all()


@pytest.mark.parametrize("q, tol", [("f32", 1e-3), ("f16", 5e-3)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_every_tile_and_the_global_view_encode_to_libmtmds_rows(pair, q, tol, name):
    """Tiles row by row, then the global view, each through SigLIP, the 2x2 pixel shuffle and mm.model.fc: the rows
    of every image chunk mtmd_encode_chunk gives (encoder flash attention off), rows ~10 in magnitude."""
    enc = SiglipEncoder.load(pair[q], get_backend("cpu"))
    t = idefics3_image.cut(PICTURES[name], enc.cfg)
    rows = np.concatenate([enc.encode(idefics3_image.normalise(x, enc.cfg)) for x in [*t.tiles, t.overview]])
    np.testing.assert_allclose(rows, FIX[f"embd_{q}_{name}"], atol=tol)


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_block_is_mtmds_tiles_between_row_col_tokens_then_the_global_view(vision, name):
    """<fake_token_around_image><row_R_col_C> before each tile, "\\n" after each row but the last, then "\\n\\n"
    <fake_token_around_image><global-img>, the global view, <fake_token_around_image>: mtmd_tokenize's ids (-1 a row)."""
    img = PICTURES[name]
    assert vision.idefics3.ids(img) == FIX[f"ids_f32_{name}"].tolist()
    assert vision.image_positions(img) == len(FIX[f"ids_f32_{name}"]) == len(vision.image_rows(img))


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each block fed as rows (its tokens as their embedding rows: the same numbers as feeding them), causally as
    llama.cpp feeds SmolLM2 an image, then the text: logits within 1.5e-2 of mtmd_helper_eval_chunks' (logits ~15)."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 1.5e-2, ids=block_ids(vision))


def test_without_a_longest_edge_a_picture_is_the_global_view_alone(pair, tmp_path):
    """(kvrun's reading of libmtmd's code: no fixture.)  No tiles: "\\n\\n" <fake><global-img> rows <fake>."""
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    v = Vision(Engine(pair["text"], n_ctx=256, threads=1), write_tiny_idefics3_mmproj(tmp_path / "m.gguf", longest_edge=None))
    lay = v.idefics3
    assert lay.ids(PICTURES["wide"]) == [lay.nn, lay.fake, lay.glob, -1, -1, -1, -1, lay.fake]
    assert v.image_positions(PICTURES["wide"]) == 8


def test_a_text_model_without_smolvlms_image_tokens_is_refused(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with pytest.raises(KvrunError, match=r"has no '\\n\\n' token; not a SmolVLM \(Idefics3\) model") as e:
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- kvrun run, and a chat


def test_cli_run_takes_a_smolvlm_picture(pair, tmp_path):
    rows = len(FIX["ids_f32_wide"])  # the block's 20 positions, 8 bytes
    check_cli_run(pair["text"], pair["f32"], PICTURES["wide"], tmp_path, rows)


def test_a_chat_keeps_a_pictures_block_in_its_cache(pair, tmp_path, monkeypatch):
    """A picture's block takes as many positions as its grid asks (vision_chat reads image_positions): the next turn
    feeds only its new text, the picture is not encoded again, the reply is a fresh chat's."""
    text = write_tiny_smolvlm(tmp_path / "chat.gguf", chat_template=TEMPLATE)
    block = len(FIX["ids_f32_tall"])  # (2x2 tiles: 33 positions, kept)
    check_chat_keeps_picture(text, pair["f32"], PICTURES["tall"], monkeypatch, n_ctx=512, block=block, prefix="<|im_start|>user: ")
