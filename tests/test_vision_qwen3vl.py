"""Images in, for Qwen3-VL (llama.cpp's projector type "qwen3vl_merger"): the mmproj file (loaders/mmproj.py), the ViT
with its learned positions interpolated to the picture, 2-D rope, merger and DeepStack mergers
(models/qwen3vl_image.py), the text model's DeepStack levels and interleaved M-RoPE rows (models/qwen3vl.py) and the
prompt's layout (runtime/vision_qwen3vl.py), held to llama.cpp's libmtmd on the tiny pair of tiny_vision_qwen3vl.py
(fixture: tools/make_vision_qwen3vl_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.cache.base import KVCache
from kvrun.loaders.errors import KvrunError
from kvrun.loaders.mmproj import open_mmproj
from kvrun.models import mrope_images, qwen2vl_image, qwen3vl_image
from kvrun.models.qwen3vl_image import Qwen3VLEncoder
from kvrun.ops import get_backend
from tiny_vision_qwen3vl import DEEPSTACK, PATCH, POS_SIDE, SECTIONS, TEXT_GEOMETRY, V_EMBD
from vision_checks import CHATML, check_chat_keeps_picture, check_cli_run, check_files, fixture, load_vision, pictures, row_ids

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_qwen3vl_fixtures import IMAGES, PAIRS, PROMPTS, write_pair  # noqa: E402

FIX = fixture("qwen3vl")
PICTURES = pictures(IMAGES)
N_TEXT = TEXT_GEOMETRY[0]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors, the very bytes the fixture was made from."""
    files = write_pair(tmp_path_factory.mktemp("vision_qwen3vl"))
    return check_files(files, FIX)


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair[PAIRS["q3"]], 512)


# ---------------------------------------------------------------- the projector file and the picture's size


def test_mmproj_config_reads_qwen3vls_patches_pixel_limits_and_gelu(pair):
    g, cfg = open_mmproj(pair["q3_f32"])
    assert (cfg.projector_type, cfg.patch_size, cfg.n_embd, cfg.n_merge, cfg.n_text_embd) == ("qwen3vl_merger", PATCH, V_EMBD, 2, N_TEXT)
    assert (cfg.min_pixels, cfg.max_pixels) == (8 * 32 * 32, 4096 * 32 * 32)  # clip.cpp's 8 to 4096 merged rows of 32 pixels
    assert (cfg.ffn_op, cfg.n_wa_pattern) == ("gelu", 0)  # (clip.use_gelu; no windows)
    g.close()


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_grid_is_libmtmds(pair, name):
    """Qwen2-VL's smart resize in 32-pixel blocks: 150 x 100 -> 5 x 3, 40 x 30 scaled up to 8 rows' worth (4 x 3)."""
    _, cfg = open_mmproj(pair["q3_f32"])
    img = PICTURES[name]
    nx, ny, n_pos = FIX[f"grid_q3_f32_{name}"].tolist()
    assert qwen2vl_image.grid(img.shape[1], img.shape[0], cfg) == (nx, ny) and n_pos == max(nx, ny)


# ---------------------------------------------------------------- the encoder


@pytest.mark.parametrize("proj, tol", [("q3_f32", 5e-3), ("q3_f16", 1.2e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_and_deepstack_levels_are_libmtmds(pair, proj, tol, name):
    """Resized, normalised, through the ViT (two temporal kernels and a bias, learned positions at the picture's grid,
    fused QKV, 2-D rope) and the 2x2 merger, the DeepStack levels of layers 0 and 2 beside: the rows mtmd_encode_chunk
    gives, 64 x 3 wide (encoder flash attention off), rows ~12 in magnitude."""
    enc = Qwen3VLEncoder.load(pair[proj], get_backend("cpu"))
    rows = enc.encode(qwen2vl_image.preprocess(PICTURES[name], enc.cfg))
    assert rows.shape[1] == N_TEXT * (1 + len(DEEPSTACK)) and enc.n_deepstack == len(DEEPSTACK)
    np.testing.assert_allclose(rows, FIX[f"embd_{proj}_{name}"], atol=tol)


def test_learned_positions_are_resized_with_aligned_corners(pair):
    """The grid's corners land on the learned grid's corners (ggml_interpolate, bilinear, aligned corners); PyTorch's
    antialiased bilinear (LFM2-VL's way) would put the wide picture's rows ~1.5 off libmtmd's."""
    pos = np.arange(POS_SIDE * POS_SIDE * 2, dtype=np.float32).reshape(-1, 2)
    out = qwen3vl_image.resize_positions(pos, POS_SIDE, 10, 3).reshape(3, 10, 2)
    grid = pos.reshape(POS_SIDE, POS_SIDE, 2)
    for (y, x), (gy, gx) in {(0, 0): (0, 0), (0, 9): (0, 5), (2, 0): (5, 0), (2, 9): (5, 5)}.items():
        np.testing.assert_allclose(out[y, x], grid[gy, gx])
    assert qwen3vl_image.resize_positions(pos, POS_SIDE, POS_SIDE, POS_SIDE) is pos

    import kvrun.models.lfm2vl_image as lfm2

    enc = Qwen3VLEncoder.load(pair["q3_f32"], get_backend("cpu"))
    px = qwen2vl_image.preprocess(PICTURES["wide"], enc.cfg)
    real = qwen3vl_image.resize_positions
    try:
        qwen3vl_image.resize_positions = lfm2.resize_positions
        assert np.abs(enc.encode(px) - FIX["embd_q3_f32_wide"]).max() > 0.5
    finally:
        qwen3vl_image.resize_positions = real


# ---------------------------------------------------------------- positions, DeepStack and the prompt


def test_interleaved_row_tables_turn_text_as_the_text_tables_do(vision):
    """A text row's positions (p, p, p, 0) give the interleaved tables' own row p; an image row (t, t + y, t + x) turns
    pair 1 (sector 1: height) by t + y and pair 2 (width) by t + x, pair 5 (past 3 x its section) not at all."""
    from kvrun.models.qwen3vl import imrope_rows

    m = vision.engine.model
    assert m.sections == SECTIONS
    P = np.array([[7, 7, 7, 0], [3, 5, 9, 0]])
    cos, sin = imrope_rows(P, m.sections, m.neox_cos, m.neox_sin, m.rope_cos, m.rope_sin)
    np.testing.assert_allclose(cos[0], m.rope_cos[7]) and np.testing.assert_allclose(sin[0], m.rope_sin[7])
    assert cos[1, 1] == m.neox_cos[5, 1] and cos[1, 2] == m.neox_cos[9, 2] and cos[1, 0] == m.neox_cos[3, 0]
    assert (cos[1, 5], sin[1, 5]) == (1.0, 0.0)


@pytest.mark.parametrize("name", list(IMAGES))
def test_an_images_rows_take_libmtmds_decoder_positions(name):
    """Row (y, x) of an image at position 0: (t, h, w) = (0, y, x), as mtmd_image_tokens_get_decoder_pos (t, x, y)."""
    nx, ny, _ = FIX[f"grid_q3_f32_{name}"].tolist()
    cache = KVCache([])  # (no layers: the images' record alone)
    mrope_images.add_image(cache, nx, ny)
    P = mrope_images.section_positions(cache, np.arange(nx * ny), image=True)
    d = FIX[f"dpos_q3_f32_{name}"]
    assert P[:, 0].tolist() == d[:, 0].tolist() and P[:, 1].tolist() == d[:, 2].tolist() and P[:, 2].tolist() == d[:, 1].tolist()


def _logits(v, k: int) -> tuple[np.ndarray, object]:
    imgs = [PICTURES[n] for n in list(IMAGES)[: PROMPTS[k].count("<__media__>")]]
    segs = v.segments(PROMPTS[k], imgs)
    cache = v.engine.new_cache()
    return v.engine.eval(cache, v.prefill(cache, segs))[-1], (segs, cache)


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """<|vision_start|> rows <|vision_end|> at each marker, each row's embedding fed with its DeepStack levels added
    after text layers 0 and 1, turned by (t, t + y, t + x) under the interleaved sections, the text after an image
    going on from t + max(nx, ny): mtmd_tokenize's ids, and logits within 1.5e-2 of mtmd_helper_eval_chunks' (logits
    ~11); the position after them all is llama.cpp's n_past."""
    logits, (segs, cache) = _logits(vision, k)
    assert row_ids(segs, []) == FIX[f"pids_q3_{k}"].tolist()
    np.testing.assert_allclose(logits, FIX[f"logits_q3_{k}"], atol=1.5e-2)
    assert logits.argmax() == FIX[f"logits_q3_{k}"].argmax()
    assert mrope_images.text_position(mrope_images.images_of(cache), cache.offset) == int(FIX[f"npast_q3_{k}"])


def test_without_the_deepstack_levels_the_logits_are_far_off(vision, monkeypatch):
    """What DeepStack is worth: the same rows with their levels zeroed miss llama.cpp's logits by far more than the
    tolerance."""
    real = vision.image_rows

    def main_only(img):
        rows = real(img)
        rows[:, N_TEXT:] = 0.0
        return rows

    monkeypatch.setattr(vision, "image_rows", main_only)
    logits, _ = _logits(vision, 0)
    assert np.abs(logits - FIX["logits_q3_0"]).max() > 0.2


def test_text_alone_is_untouched_by_deepstack(vision):
    """Text rows carry no levels: a prompt without pictures is the text model's, the levels' layers adding nothing."""
    eng = vision.engine
    ids = FIX["pids_q3_0"][:7].tolist()
    got = eng.eval(eng.new_cache(), ids)[-1]
    assert eng.model._deepstack is None and np.isfinite(got).all()


# ---------------------------------------------------------------- refusals, kvrun run


def test_a_qwen3vl_projector_beside_a_qwen2vl_text_model_is_refused(pair, tmp_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tiny_vision_qwen2vl import write_tiny_qwen2vl_text

    text = write_tiny_qwen2vl_text(tmp_path / "q2.gguf")
    with pytest.raises(KvrunError, match="goes with a Qwen3-VL text model") as e:
        Vision(Engine(text, n_ctx=64), pair["q3_f32"])
    assert "\n" not in str(e.value)


def test_rows_of_the_wrong_width_are_a_one_line_error(vision):
    eng = vision.engine
    with pytest.raises(KvrunError, match="the image rows are 64 wide and the model's embeddings 192") as e:
        eng.eval_embd(eng.new_cache(), np.zeros((4, N_TEXT), np.float32))
    assert "\n" not in str(e.value)


def test_cli_run_takes_a_qwen3vl_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["q3_f32"], PICTURES["odd"], tmp_path, 2 + 15)  # the markers, 5 x 3 rows, 8 bytes


def test_a_chat_keeps_a_picture_with_its_deepstack_levels_in_its_cache(pair, tmp_path, monkeypatch):
    """The next turn feeds only its new text (the picture's rows, levels and grid stay in the cache), and its reply is a
    fresh chat's."""
    from tiny_vision_qwen3vl import write_tiny_qwen3vl_text

    text = write_tiny_qwen3vl_text(tmp_path / "chat.gguf", chat_template=CHATML)
    check_chat_keeps_picture(text, pair["q3_f32"], PICTURES["tall"], monkeypatch, n_ctx=512)
