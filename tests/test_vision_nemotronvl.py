"""Images in, for Nemotron Nano VL (llama.cpp's projector type "nemotron_v2_vl"): the mmproj file (loaders/mmproj.py),
any picture resized into one fixed square, RADIO's ViT with its register rows before the patches, the 2x2 pixel
shuffle and the RMSNorm + squared-ReLU projector (models/nemotronvl_image.py), its rows where the media marker was with
no markers around them (runtime/vision_nemotronvl.py), read by a ``nemotron_h`` text model; held to llama.cpp's
libmtmd 0.3.36 on the tiny pair of tiny_vision_nemotronvl.py (fixture: tools/make_vision_nemotronvl_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from kvrun.models import nemotronvl_image
from kvrun.models.nemotronvl_image import NemotronVLEncoder
from kvrun.ops import get_backend
from tiny_vision import tiny_mmproj
from tiny_vision_nemotronvl import IMAGE_SIZE, N_REG, PATCH, SCALE, V_EMBD, write_tiny_nemotronvl_mmproj, write_tiny_nemotronvl_text
from vision_checks import check_cli_run, check_logits, fixture, load_vision, mmproj_config, one_line_error, pictures, tiny_pair, without_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_nemotronvl_fixtures import IMAGES, PROMPTS  # noqa: E402

FIX = fixture("nemotronvl")
PICTURES = pictures(IMAGES)
#: the largest difference from libmtmd's rows (values up to ~40) each projector is held to; measured: F32 1.1e-3
#: (the tall picture; 1.2e-5 for the square one, kept as it is), F16 2.6e-2 (the F16 products' roundings)
TOL = {"f32": 5e-3, "f16": 5e-2}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector (F32 and F16), the very bytes the fixture was made from."""
    return tiny_pair(tmp_path_factory, "nemotronvl", write_tiny_nemotronvl_text, write_tiny_nemotronvl_mmproj, FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, NemotronVLEncoder]:
    return {q: NemotronVLEncoder.load(pair[q], get_backend("cpu")) for q in ("f32", "f16")}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 256)


def rows(enc: NemotronVLEncoder, name: str) -> np.ndarray:
    return enc.encode(nemotronvl_image.preprocess(PICTURES[name], enc.cfg))


# ---------------------------------------------------------------- the projector file


def test_mmproj_config_reads_the_square_the_shuffle_and_the_width_of_mlp3(pair):
    cfg = mmproj_config(pair["f32"])
    assert (cfg.projector_type, cfg.image_size, cfg.patch_size, cfg.n_embd, cfg.n_merge) == ("nemotron_v2_vl", IMAGE_SIZE, PATCH, V_EMBD, SCALE)
    assert (cfg.n_tokens, cfg.n_text_embd) == (4, 64)  # (4x4 patches merged 2x2; n_text_embd: mlp.3's rows)


def test_a_file_without_the_register_rows_is_refused_in_one_line(pair, tmp_path):
    bad = without_tensor(pair["f32"], tmp_path / "m.gguf", "v.class_embd")
    with one_line_error("tensor 'v.class_embd' is missing; the nemotron_v2_vl projector file is incomplete"):
        NemotronVLEncoder.load(bad, get_backend("cpu"))


def test_a_text_model_of_another_width_is_refused_in_one_line(pair, tmp_path):
    """(No tokens to check a vocabulary by: the width is what tells the projector's text model.)"""
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    narrow = write_tiny_nemotronvl_mmproj(tmp_path / "narrow.gguf", n_text_embd=48)
    with one_line_error("the projector makes rows 48 wide and .* embeds 64.*not this model's mmproj"):
        Vision(Engine(pair["text"], n_ctx=64), narrow)


# ---------------------------------------------------------------- the encoder


@pytest.mark.parametrize("q", ["f32", "f16"])
@pytest.mark.parametrize("name", list(IMAGES))
def test_every_picture_encodes_to_libmtmds_rows(encoders, q, name):
    """The picture resized into the square (bicubic, centred on black; the square one kept), the registers before the
    patches, RADIO's blocks, the registers dropped, the 2x2 shuffle, RMSNorm and the squared-ReLU MLP: the rows
    mtmd_encode_chunk gives (encoder flash attention off), within TOL."""
    np.testing.assert_allclose(rows(encoders[q], name), FIX[f"embd_{q}_{name}"], atol=TOL[q])


def test_the_fixture_fails_when_a_step_that_sets_nemotron_apart_is_dropped(encoders, monkeypatch):
    """Each of RADIO's register rows (InternVL has one CLS row), and the projector's squared ReLU (InternVL's is GELU),
    shows in the rows: without either they are far off libmtmd's."""
    from kvrun.models.siglip import activation

    enc, want = encoders["f32"], FIX["embd_f32_wide"]
    assert enc.n_registers == N_REG and np.abs(rows(enc, "wide") - want).max() < TOL["f32"]
    monkeypatch.setattr(enc, "registers", enc.registers[:1])
    assert np.abs(rows(enc, "wide") - want).max() > 0.1
    monkeypatch.undo()
    monkeypatch.setattr(nemotronvl_image, "relu_sqr", lambda ops, x: activation(x, "gelu"))
    assert np.abs(rows(enc, "wide") - want).max() > 0.1


# ---------------------------------------------------------------- the layout in the prompt, and the logits


@pytest.mark.parametrize("name", list(IMAGES))
def test_any_picture_is_one_squares_rows_and_no_markers(vision, name):
    assert vision.idefics3.ids(PICTURES[name]) == FIX[f"ids_f32_{name}"].tolist() == [-1] * 4


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally into the Nemotron-H (its Mamba-2 layers' states run through them as any
    token's), then the text: logits within 1e-2 of mtmd_helper_eval_chunks'."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 1e-2)


def test_cli_run_takes_a_nemotron_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["f32"], PICTURES["tall"], tmp_path, 4)


def test_a_file_with_parakeets_audio_side_too_takes_the_same_pictures(pair, tmp_path):
    """Nemotron Nano VL's own mmproj holds both encoders: kvrun reads it as Qwen2.5-Omni's (runtime/omni.py), its
    pictures through this encoder, their rows libmtmd's (which gives the same rows from both files)."""
    from tiny_vision_nemotronvl import write_tiny_nemotronvl_omni_mmproj

    v = load_vision(pair["text"], write_tiny_nemotronvl_omni_mmproj(tmp_path / "both.gguf"), 256)
    assert type(v).__name__ == "Omni" and v.takes_audio
    np.testing.assert_allclose(v.image_rows(PICTURES["wide"]), FIX["embd_f32_wide"], atol=TOL["f32"])


# ---------------------------------------------------------------- the GPU


def test_the_encoder_runs_on_the_gpu_emulator_within_2e_3_of_the_cpu(tmp_path, emulated):
    """The forward written once against models/vit_ops.py's ops, on the F16 projector through the strict CuPy
    stand-in: one copy down, the CPU encoder's rows within 2e-3 of their largest."""
    from gpu_checks import check_rows_come_down_once

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate
    from kvrun.runtime.projectors import load_encoder

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    path = tiny_mmproj("nemotronvl", Q.F16, tmp_path)

    def both():
        return load_encoder(path, get_backend("cpu")), load_encoder(path, get_backend("gpu"))

    check_rows_come_down_once(both, nemotronvl_image.preprocess(PICTURES["wide"], both()[0].cfg))
