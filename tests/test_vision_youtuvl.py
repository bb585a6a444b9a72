"""Images in, for Youtu-VL (llama.cpp's projector type "youtuvl"): the mmproj file (loaders/mmproj.py), pictures kept at
their own size in whole 2x2 blocks, SigLIP2 with Qwen2-VL's vision rope and Qwen2.5-VL's windows on all but the named
layers, the merger's RMSNorm and MLP (models/youtuvl_image.py), laid out between ``<|vision_start|>`` and
``<|vision_end|>`` (runtime/vision_youtuvl.py) and read causally by a deepseek2 text model (Youtu-LLM), held to
llama.cpp's libmtmd on the tiny pair of tiny_vision_youtuvl.py (fixture: tools/make_vision_youtuvl_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.models import youtuvl_image
from kvrun.models.youtuvl_image import YoutuVLEncoder
from kvrun.ops import get_backend
from tiny_vision_youtuvl import PATCH, V_EMBD, WINDOW
from vision_checks import check_between, check_cli_run, check_files, check_logits, fixture, load_vision, one_line_error, pictures, without_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_youtuvl_fixtures import IMAGES, PAIRS, PROMPTS, write_pair  # noqa: E402

FIX = fixture("youtuvl")
PICTURES = pictures(IMAGES)
PROJECTORS = ("yt_f32", "yt_f16")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors (F32 and F16), the very bytes the fixture was made from."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_youtuvl")), FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, YoutuVLEncoder]:
    return {q: YoutuVLEncoder.load(pair[q], get_backend("cpu")) for q in PROJECTORS}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair[PAIRS["yt"]], 1024)


def test_mmproj_config_reads_the_merge_the_pixel_limits_and_the_windows(encoders):
    e = encoders["yt_f32"]
    c = e.cfg
    assert (c.projector_type, c.patch_size, c.n_embd, c.n_merge, c.n_text_embd, c.ffn_op) == ("youtuvl", PATCH, V_EMBD, 2, 64, "gelu")
    assert (c.min_pixels, c.max_pixels) == (16 * 16, 62500 * 16 * 16)  # (clip.cpp's set_limit_image_tokens(1, 62500))
    assert (e.window, e.whole) == (WINDOW, {1})


@pytest.mark.parametrize("name, size", [("small", (32, 32)), ("wide", (112, 48)), ("square", (64, 64)), ("tall", (64, 144))])
def test_a_picture_keeps_its_size_rounded_up_to_whole_blocks(encoders, name, size):
    """30x20 up to 2x2 blocks of 16 pixels, 100x40 to 7x3; one image chunk between the markers."""
    img = PICTURES[name]
    cfg = encoders["yt_f32"].cfg
    assert youtuvl_image.target_size(img.shape[1], img.shape[0], cfg) == size
    n = (size[0] // 16) * (size[1] // 16)
    assert FIX[f"ids_yt_f32_{name}"].tolist() == [262] + [-1] * n + [263]  # <|vision_start|> ... <|vision_end|>


def test_only_past_the_patch_limit_is_a_picture_scaled_down(encoders):
    """(libmtmd's linear search: the scale lowered from 1 by 0.02 until the patches fit, 62500 merged rows' worth, so
    250000 of the tiny file's 8-pixel patches; a picture that large is past what the fixture's oracle run encodes,
    so this holds the arithmetic alone.)"""
    cfg = encoders["yt_f32"].cfg
    assert youtuvl_image.target_size(4000, 30, cfg) == (4000, 32)  # (500 x 4 patches: no scaling)
    w, h = youtuvl_image.target_size(9000, 8000, cfg)
    assert (w, h) == (4144, 3696) and (w // PATCH) * (h // PATCH) <= 250000  # (scale 0.46: 4140 x 3680 rounded up)


@pytest.mark.parametrize("q, tol", [("yt_f32", 5e-3), ("yt_f16", 2e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, tol, name):
    """Resize (bilinear, stretched, as the oracle runs it), the patch matrix over 2x2-block-ordered patches, the ViT with
    its windows and vision rope, the merger: the rows mtmd_encode_chunk gives (encoder flash attention off), on rows
    near 20.  Measured: F32 within 3.6e-3 (single rows, where a GELU table step flips), F16 within 8.5e-3."""
    enc = encoders[q]
    rows = enc.encode(youtuvl_image.preprocess(PICTURES[name], enc.cfg))
    np.testing.assert_allclose(rows, FIX[f"embd_{q}_{name}"], atol=tol)


def test_the_fixture_tells_the_windows_and_the_patch_order(encoders, monkeypatch):
    """Attention over the whole picture on every layer, windows of another size, or each patch's pixels turned (its
    columns read as rows: the patch matrix's (row, column, channel) order) put the rows far outside the tolerance (the
    wide picture: windows cut short at its edges)."""
    enc, want = encoders["yt_f32"], FIX["embd_yt_f32_wide"]
    px = youtuvl_image.preprocess(PICTURES["wide"], enc.cfg)

    def off() -> float:
        return float(np.abs(enc.encode(px) - want).max())

    assert off() < 5e-3
    monkeypatch.setattr(enc, "whole", {0, 1})
    assert off() > 1.0
    monkeypatch.setattr(enc, "whole", {1})
    monkeypatch.setattr(enc, "window", 2 * WINDOW)
    assert off() > 1.0
    monkeypatch.setattr(enc, "window", WINDOW)
    p = PATCH
    turned = px.reshape(3, px.shape[1] // p, p, px.shape[2] // p, p).transpose(0, 1, 4, 3, 2).reshape(px.shape)
    assert float(np.abs(enc.encode(np.ascontiguousarray(turned)) - want).max()) > 1.0


def test_pixels_not_of_whole_blocks_are_refused_in_one_line(encoders):
    with one_line_error("sides multiples of 16"):
        encoders["yt_f32"].encode(np.zeros((3, 24, 32), np.float32))


def test_a_file_without_the_merger_norm_or_the_windows_is_refused_in_one_line(pair, tmp_path):
    bad = without_tensor(pair["yt_f32"], tmp_path / "m.gguf", "mm.input_norm.weight")
    with one_line_error("mm.input_norm.weight.* missing"):
        YoutuVLEncoder.load(bad, get_backend("cpu"))


def test_info_says_a_picture_keeps_its_size(pair):
    """`kvrun info` on Youtu-VL's projector: pictures of any size, 1 to 62500 rows (clip.cpp's limits)."""
    from click.testing import CliRunner

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(pair["yt_f32"])])
    assert r.exit_code == 0 and "youtuvl, a 2-layer vision encoder 32 wide" in r.output, r.output
    assert "pictures of any size in 8-pixel patches, 1 to 62500 rows a picture into a text model 64 wide" in r.output


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_lie_between_vision_start_and_vision_end(vision, name):
    check_between(vision, FIX, PICTURES[name], f"yt_f32_{name}", "<|vision_start|>", "<|vision_end|>")


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally at consecutive positions (no M-RoPE for youtuvl) through DeepSeek's latent
    attention and experts, then <|vision_end|> and the text: logits within 2e-2 of mtmd_helper_eval_chunks' (measured
    6.8e-3, logits ~15)."""
    cache = check_logits(vision, FIX, PICTURES, PROMPTS[k], f"yt_{k}", 2e-2)
    assert cache.offset == int(FIX[f"npast_yt_{k}"])


def test_a_text_model_of_another_architecture_is_refused_in_one_line(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with one_line_error(r"a youtuvl projector goes with a Youtu-VL text model \(deepseek2\), not llama"):
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["yt_f32"])


def test_a_text_model_without_vision_start_is_refused_in_one_line(pair, tmp_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tinymodel import _write_tiny_deepseek2

    text = _write_tiny_deepseek2(tmp_path / "t.gguf", 0, 1, "lite")
    with one_line_error(r"the vocabulary has no <\|vision_start\|> token; not a Youtu-VL vision model"):
        Vision(Engine(text, n_ctx=64), pair["yt_f32"])


def test_cli_run_takes_a_youtuvl_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["yt_f32"], PICTURES["wide"], tmp_path, len(FIX["ids_yt_f32_wide"]))  # 7 x 3 blocks, 2 markers
