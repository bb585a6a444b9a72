"""Images in, for HunyuanOCR / Hunyuan-VL (llama.cpp's projector type "hunyuanvl"): the mmproj file and its pixel limits
(loaders/mmproj.py), the ViT at the picture's own size with its position grid resized on the CPU as clip.cpp fills
``hunyuanvl_pos_embd``, the perceiver projector with its newline column and begin/end rows
(models/hunyuanvl_image.py), the hunyuan_vl text model's XD-RoPE positions for a picture's rows (models/hunyuan_vl.py)
and the prompt's layout (runtime/vision_hunyuanvl.py), held to llama.cpp's libmtmd on the tiny pair of
tiny_vision_hunyuanvl.py (fixture: tools/make_vision_hunyuanvl_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.cache.base import KVCache
from kvrun.loaders.errors import KvrunError
from kvrun.models import hunyuan_vl, hunyuanvl_image
from kvrun.models.hunyuanvl_image import HunyuanVLEncoder
from kvrun.ops import get_backend
from tiny_vision_hunyuanvl import MAX_PIXELS, MIN_PIXELS, N_TEXT_EMBD, PATCH, POS_SIDE, V_EMBD, write_tiny_hunyuanvl_mmproj
from vision_checks import CHATML, check_chat_keeps_picture, check_cli_run, check_files, check_logits, fixture, mmproj_config, pictures
from vision_checks import without_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_hunyuanvl_fixtures import IMAGES, PAIRS, PROMPTS, write_pair  # noqa: E402

FIX = fixture("hunyuanvl")
PICTURES = pictures(IMAGES)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors, the very bytes the fixture was made from."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_hunyuanvl")), FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, HunyuanVLEncoder]:
    return {q: HunyuanVLEncoder.load(pair[q], get_backend("cpu")) for q in ("hv_f32", "hv_f16")}


@pytest.fixture(scope="module")
def vision(pair):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    return Vision(Engine(pair["text"], n_ctx=512, n_batch=64, threads=1), pair[PAIRS["hv"]])


def feed_logits(vision, k: int) -> np.ndarray:
    """The logits after prompt ``k`` with the fixture's pictures (kvrun's way)."""
    prompt = PROMPTS[k]
    segs = vision.segments(prompt, [PICTURES[n] for n in list(PICTURES)[: prompt.count("<__media__>")]])
    cache = vision.engine.new_cache()
    return vision.engine.eval(cache, vision.prefill(cache, segs))[-1]


# ---------------------------------------------------------------- the projector file and the picture's size


def test_mmproj_config_reads_the_merge_pixel_limits_and_gelu(pair, tmp_path):
    """The file's limits where it states them; else clip.cpp's set_limit_image_tokens(256, 16384) in 2x2 blocks."""
    cfg = mmproj_config(pair["hv_f32"])
    assert (cfg.projector_type, cfg.patch_size, cfg.n_embd, cfg.n_merge, cfg.n_text_embd) == ("hunyuanvl", PATCH, V_EMBD, 2, N_TEXT_EMBD)
    assert (cfg.min_pixels, cfg.max_pixels, cfg.ffn_op) == (MIN_PIXELS, MAX_PIXELS, "gelu")
    bare = mmproj_config(write_tiny_hunyuanvl_mmproj(tmp_path / "bare.gguf", limits=False))
    assert (bare.min_pixels, bare.max_pixels) == (256 * 16 * 16, 16384 * 16 * 16)


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_grid_and_rows_are_libmtmds(pair, name):
    """Smart resize in 16-pixel blocks within the file's limits; the chunk's rows: begin, ny rows of nx blocks and a
    newline, end; it takes as many positions as rows."""
    cfg = mmproj_config(pair["hv_f32"])
    img = PICTURES[name]
    nx, ny, n_pos = FIX[f"grid_hv_f32_{name}"].tolist()
    assert hunyuanvl_image.grid(img.shape[1], img.shape[0], cfg) == (nx, ny)
    assert hunyuanvl_image.n_rows(nx, ny) == n_pos == len(FIX[f"embd_hv_f32_{name}"]) == len(FIX[f"ids_hv_f32_{name}"]) - 2


# ---------------------------------------------------------------- the encoder


@pytest.mark.parametrize("proj, tol", [("hv_f32", 5e-3), ("hv_f16", 5e-3)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_are_libmtmds(encoders, proj, tol, name):
    """Stretched (Lanczos), normalised, through the ViT (patch kernel and bias, the 6 x 6 grid resized, LayerNorms,
    GELU MLP), the perceiver (RMSNorm, 2x2 conv, GELU, 1x1 conv, newlines, fc, begin/end rows, RMSNorm): the rows
    mtmd_encode_chunk gives (encoder flash attention off), rows ~4; measured 2.3e-3 (F32) and 2.5e-3 (F16) at most."""
    enc = encoders[proj]
    rows = enc.encode(hunyuanvl_image.preprocess(PICTURES[name], enc.cfg))
    np.testing.assert_allclose(rows, FIX[f"embd_{proj}_{name}"], atol=tol)


def test_the_position_grid_moves_even_at_its_own_size():
    """Hugging Face's scale factor (n + 0.1) / side: a constant grid stays constant, the grid's own size does not
    come back unchanged (the first output samples the first input, the last one a little before the last)."""
    pos = np.ones((POS_SIDE * POS_SIDE, 2), np.float32)
    np.testing.assert_allclose(hunyuanvl_image.resize_positions(pos, POS_SIDE, 10, 3), 1.0, rtol=1e-6)
    w = hunyuanvl_image._bilinear_weights(POS_SIDE, POS_SIDE)
    assert w[0, 0] == 1.0 and 0.0 < w[-1, -1] < 1.0


def test_a_plain_resize_of_the_position_grid_misses_libmtmds_rows(encoders, monkeypatch):
    """PaddleOCR's antialiased bilinear (clip.cpp's resize_position_embeddings) instead: the rows far off."""
    from kvrun.models import lfm2vl_image

    enc = encoders["hv_f32"]
    px = hunyuanvl_image.preprocess(PICTURES["exact"], enc.cfg)
    monkeypatch.setattr(hunyuanvl_image, "resize_positions", lfm2vl_image.resize_positions)
    assert np.abs(enc.encode(px) - FIX["embd_hv_f32_exact"]).max() > 0.1


def test_a_projector_without_its_newline_is_a_one_line_error(pair, tmp_path):
    bad = without_tensor(pair["hv_f32"], tmp_path / "bad.gguf", "v.image_newline")
    with pytest.raises(KvrunError, match="'v.image_newline' is missing") as e:
        HunyuanVLEncoder.load(bad, get_backend("cpu"))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- positions and the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_take_libmtmds_decoder_positions(name):
    """Begin and end rows at their slot in every section; block (r, c) (c = nx: the newline) at (slot, c, r, 0) for the
    first picture, as mtmd_image_tokens_get_decoder_pos (t, x = row, y = column, z = picture) at position 0."""
    nx, ny, _ = FIX[f"grid_hv_f32_{name}"].tolist()
    cache = KVCache([])  # (no layers: the pictures' record alone)
    im = hunyuan_vl.add_picture(cache, nx, ny)
    P = hunyuan_vl.xd_positions(cache, np.arange(im.slot, im.end))
    d = FIX[f"dpos_hv_f32_{name}"]
    assert P[:, 0].tolist() == d[:, 0].tolist() and P[:, 1].tolist() == d[:, 2].tolist()
    assert P[:, 2].tolist() == d[:, 1].tolist() and P[:, 3].tolist() == d[:, 3].tolist()


def test_a_second_picture_is_numbered_and_a_truncation_forgets():
    cache = KVCache([])
    cache.offset = 3
    hunyuan_vl.add_picture(cache, 2, 2)
    cache.offset = 20
    second = hunyuan_vl.add_picture(cache, 2, 1)
    assert second.index == 1 and hunyuan_vl.xd_positions(cache, np.array([21]))[0].tolist() == [21, 0, 0, 1]
    assert [p.index for p in hunyuan_vl.pictures_of(cache)] == [0, 1]
    cache.truncate(20)  # (a truncation through the second picture forgets it: it is fed again whole)
    assert [p.slot for p in hunyuan_vl.pictures_of(cache)] == [3]
    cache.offset = 5  # (a picture fed over the first one's slots: the first forgotten too)
    assert hunyuan_vl.add_picture(cache, 1, 1).index == 0 and len(hunyuan_vl.pictures_of(cache)) == 1


def test_text_fed_over_a_picture_never_fed_forgets_it(vision):
    """A picture recorded whose rows never went in (a refused feed) does not count as the next picture's elder."""
    eng = vision.engine
    cache = eng.new_cache()
    eng.eval(cache, [76, 111])
    hunyuan_vl.add_picture(cache, 2, 2)  # (recorded at slot 2; its rows never fed)
    eng.eval(cache, [111, 107])
    assert hunyuan_vl.pictures_of(cache) == () and hunyuan_vl.add_picture(cache, 1, 1).index == 0


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """<｜hy_place▁holder▁no▁100｜> rows <｜hy_place▁holder▁no▁101｜> at each marker, the rows fed causally and turned by
    their XD-RoPE positions (the second picture's fourth section by its index, 1), the text at its slot: mtmd's ids,
    logits within 2e-2 of mtmd_helper_eval_chunks' (measured 8.6e-3 at most, logits ~11), and n_past the slots."""
    cache = check_logits(vision, FIX, PICTURES, PROMPTS[k], f"hv_{k}", 2e-2)
    assert cache.offset == int(FIX[f"npast_hv_{k}"])


def test_picture_rows_at_plain_positions_or_all_numbered_0_miss_llama_cpps_logits(vision, monkeypatch):
    """What the positions are worth: rows fed without their picture recorded (each at its slot, as text) are 2 off
    llama.cpp's logits; every picture numbered 0 (the second's fourth section unturned) is 5e-2 off."""
    import kvrun.runtime.vision_hunyuanvl as layout

    with monkeypatch.context() as m:
        m.setattr(layout, "add_picture", lambda cache, nx, ny: None)
        assert np.abs(feed_logits(vision, 0) - FIX["logits_hv_0"]).max() > 0.5
    real = hunyuan_vl.add_picture

    def first(cache, nx, ny):
        real(cache, nx, ny)
        pics = tuple(hunyuan_vl.XdPicture(p.slot, p.nx, p.ny, 0) for p in hunyuan_vl.pictures_of(cache))
        cache.media[hunyuan_vl.XdPictures] = hunyuan_vl.XdPictures(pics)

    monkeypatch.setattr(layout, "add_picture", first)
    assert np.abs(feed_logits(vision, 1) - FIX["logits_hv_1"]).max() > 3e-2


def test_a_plain_hunyuan_vl_takes_no_images(tmp_path, pair):
    """Without rope sections the text model is plain neox rope (text_sides): no positions for a picture's rows."""
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tinymodel import write_tiny_model

    plain = Engine(write_tiny_model(tmp_path / "plain.gguf", arch="hunyuan_vl", variant="plain"), n_ctx=64)
    assert not plain.model.takes_images
    with pytest.raises(KvrunError, match="hunyuan_vl models take no images") as e:
        Vision(plain, pair["hv_f32"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- refusals, kvrun run, a chat


def test_a_hunyuanvl_projector_beside_another_text_model_is_refused(pair, tmp_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tiny_vision_paddleocr import write_tiny_paddleocr_text

    with pytest.raises(KvrunError, match="goes with a HunyuanOCR / Hunyuan-VL text model") as e:
        Vision(Engine(write_tiny_paddleocr_text(tmp_path / "po.gguf"), n_ctx=64), pair["hv_f32"])
    assert "\n" not in str(e.value)


def test_cli_run_takes_a_hunyuanvl_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["hv_f32"], PICTURES["odd"], tmp_path, 2 + 20)  # the markers, 1 + 3 x 6 + 1 rows, 8 bytes


def test_a_chat_keeps_a_picture_in_its_cache(tmp_path, pair, monkeypatch):
    """The next turn feeds only its new text (the picture's rows and record stay in the cache), and its reply is a
    fresh chat's."""
    from tiny_vision_hunyuanvl import write_tiny_hunyuanvl_text

    text = write_tiny_hunyuanvl_text(tmp_path / "chat.gguf", chat_template=CHATML)
    check_chat_keeps_picture(text, pair["hv_f32"], PICTURES["tall"], monkeypatch, n_ctx=512)
