"""Images in, for Qwen2-VL and Qwen2.5-VL (llama.cpp's projector types "qwen2vl_merger", "qwen2.5vl_merger"): the mmproj
file (loaders/mmproj.py), the picture's size and pixels and the ViT with its 2-D rope, windows and 2x2 merger
(models/qwen2vl_image.py), the rows' M-RoPE positions in the text model (models/mrope_images.py, models/qwen2vl.py)
and the prompt's layout (runtime/vision_qwen2vl.py), held to llama.cpp's libmtmd on the tiny pairs of
tiny_vision_qwen2vl.py (fixture: tools/make_vision_qwen2vl_fixtures.py)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.cache.base import KVCache
from kvrun.loaders.errors import KvrunError
from kvrun.loaders.mmproj import open_mmproj
from kvrun.models import mrope_images, qwen2vl_image
from kvrun.models.qwen2vl_image import Qwen2VLEncoder
from kvrun.ops import get_backend
from tiny_vision_qwen2vl import PATCH, V_EMBD, write_tiny_qwen2vl_mmproj, write_tiny_qwen2vl_text
from vision_checks import (
    CHATML, SAMPLE, call, check_chat_keeps_picture, check_cli_run, check_files, check_logits, fixture, load_vision,
    pictures, png_url, serving,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_qwen2vl_fixtures import IMAGES, PAIRS, PROMPTS, write_pair  # noqa: E402

FIX = fixture("qwen2vl")
PICTURES = pictures(IMAGES)
#: what CHATML renders for a picture then "describe" (the parts joined by "\n"; Jinja drops the final newline)
TEMPLATE_PROMPT = "<|im_start|>user\n\ndescribe<|im_end|>\n<|im_start|>assistant"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors, the very bytes the fixture was made from."""
    files = write_pair(tmp_path_factory.mktemp("vision_qwen2vl"))
    return check_files(files, FIX)


@pytest.fixture(scope="module")
def visions(pair):
    return {t: load_vision(pair["text"], pair[pq], 512) for t, pq in PAIRS.items()}


# ---------------------------------------------------------------- the projector file


def test_mmproj_config_reads_qwen2vls_merge_pixel_limits_activation_and_windows(pair):
    g, cfg = open_mmproj(pair["q2_f32"])
    assert (cfg.projector_type, cfg.patch_size, cfg.n_embd, cfg.n_merge, cfg.n_text_embd) == ("qwen2vl_merger", PATCH, V_EMBD, 2, 64)
    assert (cfg.min_pixels, cfg.max_pixels) == (8 * 28 * 28, 4096 * 28 * 28)  # clip.cpp's 8 to 4096 merged rows
    assert (cfg.ffn_op, cfg.n_wa_pattern) == ("gelu_quick", 0)  # (no clip.use_gelu: clip.cpp's default)
    g.close()
    g, cfg = open_mmproj(pair["q25_f32"])
    assert (cfg.projector_type, cfg.ffn_op, cfg.n_wa_pattern) == ("qwen2.5vl_merger", "silu", 2)
    g.close()


def test_a_qwen25_projector_without_its_window_pattern_is_refused_in_one_line(tmp_path):
    p = write_tiny_qwen2vl_mmproj(tmp_path / "m.gguf", qwen25=True)
    raw = p.read_bytes().replace(b"clip.vision.n_wa_pattern", b"clip.vision.n_wa_xxxxxxx")  # (renamed: the file without it)
    (tmp_path / "bad.gguf").write_bytes(raw)
    with pytest.raises(KvrunError, match="n_wa_pattern is missing") as e:
        open_mmproj(tmp_path / "bad.gguf")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the picture's size and pixels


def test_a_side_of_half_a_block_rounds_up_as_clip_cpp(pair):
    """clip.cpp rounds a side to whole blocks with std::round, halves up: 84 x 70 pixels (70 = 2.5 blocks of 28) are
    3 x 3 rows and 126 x 98 are 5 x 4, as libmtmd 0.3.36 gave them (tools/make_vision_qwen2vl_fixtures.py run with
    these two pictures); rounding halves to even would give 4 x 3 (70 -> 56, then scaled up past the minimum) and 4 x 4."""
    _, cfg = open_mmproj(pair["q2_f32"])
    assert qwen2vl_image.grid(84, 70, cfg) == (3, 3)
    assert qwen2vl_image.grid(126, 98, cfg) == (5, 4)


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_grid_is_libmtmds(pair, name):
    """Sides rounded to 28-pixel blocks (150 x 100 -> 5 x 4), scaled up to 8 rows' worth at least (40 x 30 -> 4 x 3)."""
    _, cfg = open_mmproj(pair["q2_f32"])
    img = PICTURES[name]
    nx, ny, n_pos = FIX[f"grid_q2_f32_{name}"].tolist()
    assert qwen2vl_image.grid(img.shape[1], img.shape[0], cfg) == (nx, ny) and n_pos == max(nx, ny)


@pytest.mark.parametrize("w, h, size", [(1000, 1000, (1008, 1008)), (5000, 4000, (1988, 1596)), (10, 300, (28, 308)),
                                        (3, 3, (84, 84)), (100000, 30, (99988, 28))])  # fmt: skip
def test_smart_resize_keeps_the_pixels_within_the_limits(pair, w, h, size):
    """Hugging Face's smart_resize as clip.cpp computes it: past 4096 rows' worth the sides are scaled down and floored
    to blocks (5000 x 4000 -> 1988 x 1596: 4047 rows), short of 8 scaled up and ceiled (3 x 3 -> 84 x 84); a side is
    a block at least (10 x 300 -> 28 x 308)."""
    _, cfg = open_mmproj(pair["q2_f32"])
    got = qwen2vl_image.target_size(w, h, cfg)
    assert got == size
    assert got[0] % 28 == 0 and got[1] % 28 == 0 and cfg.min_pixels <= got[0] * got[1] <= cfg.max_pixels


def test_resize_is_pillows_bicubic_a_pass_at_a_time_padded_with_black():
    """clip.cpp's resize_bicubic_pillow is a port of Pillow's (here Pillow is the check, not the path): the horizontal
    pass, then the vertical, each Pillow's; the picture keeps its aspect, centred on black."""
    from PIL import Image

    img = PICTURES["odd"]  # 150 x 100 -> 140 x 112: scaled by 14/15 to 140 x 94, 9 black rows above and below
    out = qwen2vl_image.resize(img, 140, 112)
    h = np.asarray(Image.fromarray(img).resize((140, 100), Image.BICUBIC))
    want = np.asarray(Image.fromarray(h).resize((140, 94), Image.BICUBIC))
    assert (out[9:103] == want).all() and not out[:9].any() and not out[103:].any()
    assert qwen2vl_image.resize(PICTURES["exact"], 168, 112) is PICTURES["exact"]


# ---------------------------------------------------------------- the encoder


@pytest.mark.parametrize("proj, tol", [("q2_f32", 4e-3), ("q2_f16", 1.2e-2), ("q25_f32", 2e-3)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_are_libmtmds(pair, proj, tol, name):
    """Resized, normalised, through the ViT (two temporal kernels, 2-D rope, Qwen2.5-VL's windows) and the 2x2 merger:
    the rows mtmd_encode_chunk gives (encoder flash attention off), rows ~13 in magnitude."""
    enc = Qwen2VLEncoder.load(pair[proj], get_backend("cpu"))
    rows = enc.encode(qwen2vl_image.preprocess(PICTURES[name], enc.cfg))
    np.testing.assert_allclose(rows, FIX[f"embd_{proj}_{name}"], atol=tol)


def test_qwen25s_windows_show_in_its_rows(pair):
    """The 168 x 112 picture spans two 112-pixel windows across: attending across them all layers long is far off."""
    enc = Qwen2VLEncoder.load(pair["q25_f32"], get_backend("cpu"))
    px = qwen2vl_image.preprocess(PICTURES["exact"], enc.cfg)
    enc.cfg = dataclasses.replace(enc.cfg, n_wa_pattern=0)
    assert np.abs(enc.encode(px) - FIX["embd_q25_f32_exact"]).max() > 0.1


def test_the_vision_rope_turns_a_heads_first_quarter_by_row_and_the_second_by_column():
    cos, sin = qwen2vl_image.vision_rope(np.array([0, 2]), np.array([3, 0]), 16)
    assert cos.shape == (2, 8)
    np.testing.assert_allclose(np.arctan2(sin[1, :4], cos[1, :4]), 2 * 10000.0 ** (-np.arange(4) / 4), rtol=1e-5)  # row 2
    np.testing.assert_allclose(cos[1, 4:], 1.0) and np.testing.assert_allclose(cos[0, :4], 1.0)
    np.testing.assert_allclose(sin[0, 4], np.sin(3.0), rtol=1e-6)  # column 3, the second quarter's first pair


# ---------------------------------------------------------------- positions and the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_an_images_rows_take_libmtmds_decoder_positions(name):
    """Row (y, x) of an image at position 0: (t, h, w) = (0, y, x), as mtmd_image_tokens_get_decoder_pos (t, x, y)."""
    nx, ny, _ = FIX[f"grid_q2_f32_{name}"].tolist()
    cache = KVCache([])  # (no layers: the images' record alone)
    mrope_images.add_image(cache, nx, ny)
    P = mrope_images.section_positions(cache, np.arange(nx * ny), image=True)
    d = FIX[f"dpos_q2_f32_{name}"]
    assert P[:, 0].tolist() == d[:, 0].tolist() and P[:, 1].tolist() == d[:, 2].tolist() and P[:, 2].tolist() == d[:, 1].tolist()


@pytest.mark.parametrize("t", list(PAIRS))
@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(visions, t, k):
    """<|vision_start|> rows <|vision_end|> at each marker, the rows turned by (t, t + y, t + x) and the text after
    an image going on from t + max(nx, ny): mtmd_tokenize's ids, and logits within 1.5e-2 of mtmd_helper_eval_chunks'
    (logits ~15); the position after them all is llama.cpp's n_past."""
    cache = check_logits(visions[t], FIX, PICTURES, PROMPTS[k], f"{t}_{k}", 1.5e-2)
    assert mrope_images.text_position(mrope_images.images_of(cache), cache.offset) == int(FIX[f"npast_{t}_{k}"])


def test_rows_at_plain_sequential_positions_are_far_off(visions, monkeypatch):
    """What the positions are worth: the same rows fed as a text model's sequential positions miss by ~2."""
    import kvrun.runtime.vision_qwen2vl as vq

    monkeypatch.setattr(vq, "add_image", lambda cache, nx, ny: None)
    v = visions["q2"]
    segs = v.segments(PROMPTS[0], [PICTURES["exact"]])
    cache = v.engine.new_cache()
    assert np.abs(v.engine.eval(cache, v.prefill(cache, segs))[-1] - FIX["logits_q2_0"]).max() > 0.5


def test_text_fed_where_a_truncation_dropped_an_image_turns_as_plain_text(visions):
    """The cache forgets the images a truncation cut off (KVCache.media): text fed over their slots gets the logits of
    a fresh text prompt."""
    v = visions["q2"]
    eng = v.engine
    cache = eng.new_cache()
    last = v.prefill(cache, v.segments(PROMPTS[0], [PICTURES["exact"]]))
    eng.eval(cache, last)
    cache.truncate(3)
    got = eng.eval(cache, [119, 104, 97])[-1]
    fresh = eng.new_cache()
    want = eng.eval(fresh, FIX["pids_q2_0"][:3].tolist() + [119, 104, 97])[-1]
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert mrope_images.images_of(cache) == []


def test_a_prefix_copied_into_another_cache_keeps_its_images_positions(visions):
    """A server slot that takes another's prefix (KVCache.copy_prefix) takes the images' grids with the rows."""
    v = visions["q2"]
    eng = v.engine
    a = eng.new_cache()
    last = v.prefill(a, v.segments(PROMPTS[0], [PICTURES["exact"]]))
    b = eng.new_cache()
    assert b.copy_prefix(a, a.offset) and mrope_images.images_of(b) == mrope_images.images_of(a)
    np.testing.assert_allclose(eng.eval(b, last)[-1], FIX["logits_q2_0"], atol=1.5e-2)


def test_a_qwen2vl_projector_beside_another_text_model_is_refused(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with pytest.raises(KvrunError, match="goes with a Qwen2-VL / Qwen2.5-VL text model") as e:
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["q2_f32"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- kvrun info and run, and a chat


def test_info_describes_a_qwen2vl_projector(pair):
    from click.testing import CliRunner

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(pair["q25_f32"])])
    assert r.exit_code == 0, r.output
    assert "qwen2.5vl_merger" in r.output and "pictures of any size in 14-pixel patches, 8 to 4096 rows a picture" in r.output


def test_a_prompt_past_the_context_is_a_one_line_error(pair):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    v = Vision(Engine(pair["text"], n_ctx=24, threads=1), pair["q2_f32"])
    with pytest.raises(KvrunError, match="30 tokens \\(its images' rows included\\) do not fit the context of 24") as e:
        v.prefill(v.engine.new_cache(), v.segments("abc<__media__>d", [PICTURES["exact"]]))
    assert "\n" not in str(e.value)


def test_cli_run_takes_a_qwen2vl_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["q2_f32"], PICTURES["odd"], tmp_path, 2 + 20)  # the markers, 5 x 4 rows, 8 bytes


def test_a_chat_keeps_a_picture_in_its_cache_and_its_positions(pair, tmp_path, monkeypatch):
    """The next turn feeds only its new text (the picture's rows and grid stay in the cache), and its reply is a fresh
    chat's: the text after the picture turns at the same positions either way."""
    text = write_tiny_qwen2vl_text(tmp_path / "chat.gguf", chat_template=CHATML)
    block = len(FIX["embd_q25_f32_tall"])  # (2 x 7 rows, kept)
    check_chat_keeps_picture(text, pair["q25_f32"], PICTURES["tall"], monkeypatch, n_ctx=512, block=block)


def test_the_server_takes_a_qwen2vl_picture_as_a_data_url(pair, tmp_path):
    """POST /v1/chat/completions with an image_url part: the Python API's reply for the same picture."""
    import kvrun

    text = write_tiny_qwen2vl_text(tmp_path / "srv.gguf", chat_template=CHATML)
    m = kvrun.load(str(text), n_ctx=512, n_batch=64, threads=1, mmproj=str(pair["q2_f32"]))
    parts = [{"type": "image", "image": PICTURES["small"]}, {"type": "text", "text": "describe"}]
    want = m.chat([{"role": "user", "content": parts}], **SAMPLE)
    picture = {"type": "image_url", "image_url": {"url": png_url(PICTURES["small"])}}
    msg = {"role": "user", "content": [picture, {"type": "text", "text": "describe"}]}
    with serving(m, "tiny-qwen2vl") as port:
        status, body = call(port, "/v1/chat/completions", {"messages": [msg], **SAMPLE})
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == want
    assert body["usage"]["prompt_tokens"] == len(TEMPLATE_PROMPT) + 2 + 12  # the text's bytes, the markers, 4 x 3 rows
