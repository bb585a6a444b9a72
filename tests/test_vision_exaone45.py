"""Images in, for EXAONE 4.5 (llama.cpp's projector type "exaone4_5"): the mmproj file (loaders/mmproj.py), pictures
sized as Qwen2-VL's within the file's own pixel limits, Qwen2.5-VL's ViT with a fused QKV product and grouped-query
attention, its 112-pixel windows on all but every n_wa_pattern-th layer, the 2x2 merger (models/exaone45_image.py),
laid out between ``<vision>`` and ``</vision>`` (runtime/vision_exaone45.py) and read causally by an exaone4 text model,
held to llama.cpp's libmtmd on the tiny pair of tiny_vision_exaone45.py (fixture: tools/make_vision_exaone45_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from kvrun.models import exaone45_image
from kvrun.models.exaone45_image import Exaone45Encoder
from kvrun.ops import get_backend, gpu_available
from kvrun.ops.gpu import emulate
from tiny_vision_exaone45 import MAX_PIXELS, MIN_PIXELS, PATCH, V_EMBD, V_HEAD_KV
from vision_checks import check_between, check_cli_run, check_files, check_logits, fixture, load_vision, one_line_error, pictures, without_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_exaone45_fixtures import IMAGES, PAIRS, PROMPTS, write_pair  # noqa: E402

FIX = fixture("exaone45")
PICTURES = pictures(IMAGES)
PROJECTORS = ("ex_f32", "ex_f16")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors (F32 and F16), the very bytes the fixture was made from."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_exaone45")), FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, Exaone45Encoder]:
    return {q: Exaone45Encoder.load(pair[q], get_backend("cpu")) for q in PROJECTORS}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair[PAIRS["ex"]], 1024)


def test_mmproj_config_reads_the_pixel_limits_the_kv_heads_and_the_windows(encoders):
    e = encoders["ex_f32"]
    c = e.cfg
    assert (c.projector_type, c.patch_size, c.n_embd, c.n_merge, c.n_text_embd, c.ffn_op) == ("exaone4_5", PATCH, V_EMBD, 2, 64, "silu")
    assert (c.min_pixels, c.max_pixels, c.n_wa_pattern, e.n_head_kv) == (MIN_PIXELS, MAX_PIXELS, 2, V_HEAD_KV)


@pytest.mark.parametrize("name, size", [("small", (112, 84)), ("wide", (224, 84)), ("square", (112, 112)), ("large", (252, 140))])
def test_a_picture_is_sized_within_the_files_pixel_limits(encoders, name, size):
    """30x20 scaled up to the 8-row minimum (4 x 3 blocks of 28 pixels), 220x80 rounded to 8 x 3, 112x112 kept, 300x170
    scaled down under the 48-row maximum (9 x 5); one image chunk between the markers."""
    img = PICTURES[name]
    assert exaone45_image.target_size(img.shape[1], img.shape[0], encoders["ex_f32"].cfg) == size
    n = (size[0] // 28) * (size[1] // 28)
    assert FIX[f"ids_ex_f32_{name}"].tolist() == [262] + [-1] * n + [263]  # <vision> ... </vision>


@pytest.mark.parametrize("q, tol", [("ex_f32", 5e-3), ("ex_f16", 4e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, tol, name):
    """Resize (bicubic, padded), both patch kernels over 2x2-block-ordered patches, the ViT with its fused QKV, GQA,
    windows and vision rope, the merger: the rows mtmd_encode_chunk gives (encoder flash attention off), on rows near
    25.  Measured: F32 within 2.1e-3 (single rows, where a GELU table step flips), F16 within 2.6e-2 (ggml's F16
    products)."""
    enc = encoders[q]
    rows = enc.encode(exaone45_image.preprocess(PICTURES[name], enc.cfg))
    np.testing.assert_allclose(rows, FIX[f"embd_{q}_{name}"], atol=tol)


def test_the_fixture_tells_the_kv_head_mapping_and_the_windows(encoders, monkeypatch):
    """Query head h reading kv head h % n_head_kv (the heads tiled, not each repeated as ggml broadcasts), or attention
    over the whole picture on every layer, put the rows far outside the tolerance (the large picture: 9 x 5 blocks,
    windows cut short at its edges)."""
    enc, want = encoders["ex_f32"], FIX["embd_ex_f32_large"]
    px = exaone45_image.preprocess(PICTURES["large"], enc.cfg)

    def off() -> float:
        return float(np.abs(enc.encode(px) - want).max())

    assert off() < 5e-3
    with monkeypatch.context() as m:
        m.setattr(exaone45_image, "kv_heads", lambda t, xp, n: xp.tile(t, (1, n // t.shape[1], 1)))
        assert off() > 0.5
    with monkeypatch.context() as m:
        m.setattr(enc, "cfg", enc.cfg.__class__(**{**enc.cfg.__dict__, "n_wa_pattern": 0}))
        assert off() > 0.5


def test_pixels_not_of_whole_blocks_are_refused_in_one_line(encoders):
    with one_line_error("sides multiples of 28"):
        encoders["ex_f32"].encode(np.zeros((3, 28, 42), np.float32))


def test_a_file_without_its_fused_qkv_is_refused_in_one_line(pair, tmp_path):
    bad = without_tensor(pair["ex_f32"], tmp_path / "m.gguf", "v.blk.1.attn_qkv.weight")
    with one_line_error("attn_qkv.weight.* missing"):
        Exaone45Encoder.load(bad, get_backend("cpu"))


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_lie_between_vision_and_end_vision(vision, name):
    check_between(vision, FIX, PICTURES[name], f"ex_f32_{name}", "<vision>", "</vision>")


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally at consecutive positions (exaone4's rope is NORM: no M-RoPE), then </vision>
    and the text: logits within 2e-2 of mtmd_helper_eval_chunks' (logits ~11; measured 9.9e-3 and 1.5e-2, the same
    with libmtmd's own rows fed in: the text side's rounding, llama.cpp's F16 KV cache, not the picture's)."""
    cache = check_logits(vision, FIX, PICTURES, PROMPTS[k], f"ex_{k}", 2e-2)
    assert cache.offset == int(FIX[f"npast_ex_{k}"])


def test_a_text_model_of_another_architecture_is_refused_in_one_line(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with one_line_error(r"a exaone4_5 projector goes with a EXAONE 4.5 text model \(exaone4\), not llama"):
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["ex_f32"])


def test_a_text_model_without_the_vision_marker_is_refused_in_one_line(pair, tmp_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tinymodel import write_tiny_model

    text = write_tiny_model(tmp_path / "t.gguf", "exaone4")
    with one_line_error(r"the vocabulary has no <vision> token; not a EXAONE 4.5 vision model"):
        Vision(Engine(text, n_ctx=64), pair["ex_f32"])


def test_cli_run_takes_an_exaone45_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["ex_f32"], PICTURES["wide"], tmp_path, len(FIX["ids_ex_f32_wide"]))  # 8 x 3 blocks, 2 markers


@pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")
def test_the_encoder_runs_on_the_gpu_and_brings_its_rows_down_once(tmp_path, emulated):
    """The 220 x 80 picture (8 x 3 blocks: two windows, the second cut short) of the F16 projector on the strict CuPy
    stand-in (tests/devicexp.py): one copy down, its 24 rows, the CPU encoder's within 2e-3 of their largest."""
    from gpu_checks import check_rows_come_down_once
    from tiny_vision import tiny_mmproj

    from kvrun.runtime.projectors import load_encoder

    path = tiny_mmproj("exaone45", Q.F16, tmp_path)

    def encoders():
        return load_encoder(path, get_backend("cpu")), load_encoder(path, get_backend("gpu"))

    pixels = exaone45_image.preprocess(PICTURES["wide"], encoders()[0].cfg)
    assert pixels.shape == (3, 84, 224)
    check_rows_come_down_once(encoders, pixels)
