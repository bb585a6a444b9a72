"""Images in, for LFM2-VL (llama.cpp's projector type "lfm2"): the mmproj file (loaders/mmproj.py), pictures sized
within libmtmd's image-token limits or cut into 512-pixel tiles and a thumbnail (models/lfm2vl_image.py), the SigLIP2
NaFlex encoder with a pixel unshuffle and the LayerNorm + MLP projector (models/lfm2vl_image.py), laid out between
LFM2-VL's image tokens (runtime/vision_lfm2.py) and read by the LFM2 text model (models/lfm2.py), held to llama.cpp's
libmtmd on the tiny pair of tiny_vision_lfm2.py (fixture: tools/make_vision_lfm2_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import KvrunError
from kvrun.models import lfm2vl_image
from kvrun.models.lfm2vl_image import Lfm2VLEncoder
from kvrun.ops import get_backend
from tiny_vision_lfm2 import IMAGE_SIZE, PATCH, SCALE, V_EMBD, write_tiny_lfm2_mmproj, write_tiny_lfm2vl
from vision_checks import (
    CHATML, SAMPLE, block_ids, call, check_chat_keeps_picture, check_cli_run, check_logits, fixture,
    load_vision, mmproj_config, pictures, png_url, serving, tiny_pair,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_lfm2_fixtures import IMAGES, PROMPTS, STRIDE  # noqa: E402

FIX = fixture("lfm2")
PICTURES = pictures(IMAGES)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector (F32 and F16), the very bytes the fixture was made from."""
    return tiny_pair(tmp_path_factory, "lfm2", write_tiny_lfm2vl, write_tiny_lfm2_mmproj, FIX)


@pytest.fixture(scope="module")
def cfg(pair):
    return mmproj_config(pair["f32"])


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 4096)


# ---------------------------------------------------------------- the projector file


def test_mmproj_config_reads_lfm2s_unshuffle_and_libmtmds_image_token_limits(cfg):
    """clip.cpp's set_limit_image_tokens(64, 256) for lfm2: 64 to 256 merged rows' worth of 16-pixel blocks."""
    assert (cfg.projector_type, cfg.image_size, cfg.patch_size, cfg.n_embd, cfg.n_merge) == ("lfm2", IMAGE_SIZE, PATCH, V_EMBD, SCALE)
    assert (cfg.min_pixels, cfg.max_pixels, cfg.n_text_embd) == (64 * 16 * 16, 256 * 16 * 16, 64)  # (n_text_embd: mm.2's rows)


# ---------------------------------------------------------------- the picture's size and tiles


@pytest.mark.parametrize("w, h, size", [(40, 30, (160, 112)), (300, 100, (304, 96)), (300, 260, (272, 224)), (600, 300, (352, 176)),
                                         (256, 128, (256, 128)), (1100, 200, (592, 96))])  # fmt: skip
def test_a_picture_is_sized_in_whole_blocks_within_the_image_token_limits(cfg, w, h, size):
    """Sides rounded to 16-pixel blocks; scaled up (ceiled) short of 64 rows' worth, down (floored) past 256 (the
    sizes libmtmd logs for these pictures)."""
    assert lfm2vl_image.target_size(w, h, cfg) == size
    assert 64 <= lfm2vl_image.n_rows_of(*size, cfg) <= 256


@pytest.mark.parametrize("w, h, grid", [(520, 260, (0, 0)), (600, 300, (2, 1)), (1025, 300, (3, 1)), (1100, 200, (5, 1)),
                                         (800, 800, (2, 2)), (2100, 300, (7, 1)), (256, 256, (0, 0))])  # fmt: skip
def test_pictures_past_twice_the_most_pixels_are_cut_into_512_pixel_tiles_of_the_closest_aspect(cfg, w, h, grid):
    """libmtmd's grids for these sizes: 520x260 rounds (half to even) to 512x256, exactly twice 256 rows' worth, so is
    not tiled; 1100x200 (5.5) ties 5:1 and 6:1 and keeps the smaller, the picture filling under half of 6 tiles."""
    assert lfm2vl_image.grid(w, h, cfg) == grid


@pytest.mark.parametrize("q, tol", [("f32", 5e-3), ("f16", 1.5e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_every_tile_and_the_image_encode_to_libmtmds_rows(pair, q, tol, name):
    """Tiles row by row, then the image (or thumbnail), each through SigLIP2 at its own size (position grid resized),
    the 2x2 unshuffle, LayerNorm and the MLP: the rows of every image chunk mtmd_encode_chunk gives (encoder flash
    attention off), rows ~15 in magnitude."""
    enc = Lfm2VLEncoder.load(pair[q], get_backend("cpu"))
    c = lfm2vl_image.cut(PICTURES[name], enc.cfg)
    rows = np.concatenate([enc.encode(lfm2vl_image.normalise(x, enc.cfg)) for x in [*c.tiles, c.image]])
    np.testing.assert_allclose(rows[:: STRIDE.get(name, 1)], FIX[f"embd_{q}_{name}"], atol=tol)


def test_the_encoder_refuses_pixels_not_in_whole_blocks(pair):
    enc = Lfm2VLEncoder.load(pair["f32"], get_backend("cpu"))
    with pytest.raises(KvrunError, match="whole 16-pixel blocks") as e:
        enc.encode(np.zeros((3, 24, 32), np.float32))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_block_is_mtmds_between_image_start_and_image_end(vision, name):
    """<|image_start|> the image <|image_end|>; tiled: <|img_row_R_col_C|> before each tile, <|img_thumbnail|> before
    the thumbnail: mtmd_tokenize's ids (-1 a row), the markers from the text around."""
    img = PICTURES[name]
    lay, tok = vision.idefics3, vision.engine.tokenizer
    start, end = (tok.encode(t, add_bos=False, parse_special=True) for t in ("<|image_start|>", "<|image_end|>"))
    assert start + lay.ids(img) + end == FIX[f"ids_f32_{name}"].tolist()
    assert vision.image_positions(img) + 2 == len(FIX[f"ids_f32_{name}"])


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture fed as rows, causally through LFM2's convolution and attention layers as llama.cpp feeds them,
    then the text: logits within 1.5e-2 of mtmd_helper_eval_chunks' (logits ~5)."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 1.5e-2, ids=block_ids(vision))


def test_a_text_model_without_lfm2vls_image_tokens_is_refused(pair, tmp_path):
    from tinymodel import write_tiny_model

    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with pytest.raises(KvrunError, match=r"has no <\|image_start\|> token; not an LFM2-VL model") as e:
        Vision(Engine(write_tiny_model(tmp_path / "lfm2.gguf", "lfm2"), n_ctx=64), pair["f32"])
    assert "\n" not in str(e.value)


def test_an_lfm2_projector_beside_another_text_model_is_refused(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with pytest.raises(KvrunError, match="an lfm2 projector goes with an LFM2-VL text model") as e:
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- kvrun run, and a chat


def test_cli_run_takes_an_lfm2vl_picture(pair, tmp_path):
    rows = len(FIX["ids_f32_wide"])  # 114 rows and the markers, 8 bytes
    check_cli_run(pair["text"], pair["f32"], PICTURES["wide"], tmp_path, rows, "--ctx-size", "1024")


def test_a_chat_keeps_a_pictures_rows_in_its_cache(pair, tmp_path, monkeypatch):
    """The next turn feeds only its new text, the picture is not encoded again, the reply is a fresh chat's."""
    text = write_tiny_lfm2vl(tmp_path / "chat.gguf", chat_template=CHATML)
    block = len(FIX["ids_f32_small"])  # (the picture's 70 rows and its markers, kept)
    check_chat_keeps_picture(text, pair["f32"], PICTURES["small"], monkeypatch, block=block)


def test_the_server_takes_an_lfm2vl_picture_as_the_python_api_does(pair, tmp_path):
    """An OpenAI image_url part on /v1/chat/completions: the Python API's reply, every position counted."""
    import kvrun

    m = kvrun.load(str(write_tiny_lfm2vl(tmp_path / "srv.gguf", chat_template=CHATML)), n_ctx=1024, n_batch=64, threads=1,
                   mmproj=str(pair["f32"]))  # fmt: skip
    picture = {"type": "image_url", "image_url": {"url": png_url(PICTURES["big"])}}
    msgs = [{"role": "user", "content": [{"type": "text", "text": "describe"}, picture]}]
    want = m.chat(msgs, **SAMPLE)
    with serving(m, "tiny-lfm2vl") as port:
        status, r = call(port, "/v1/chat/completions", {"messages": msgs, **SAMPLE})
    assert status == 200 and r["choices"][0]["message"]["content"] == want
    assert r["usage"]["prompt_tokens"] > len(FIX["ids_f32_big"])  # (the picture's 238 rows and markers, and the text)
