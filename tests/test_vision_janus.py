"""Images in, for Janus-Pro (llama.cpp's projector type "janus_pro"): the mmproj file (loaders/mmproj.py), pictures
resized to the projector's square on grey, the SigLIP ViT and the two-layer GELU MLP (models/janus_image.py on
models/siglip.py), placed with no markers around them (runtime/vision_janus.py) and read by a llama text model, held to
llama.cpp's libmtmd on the tiny pair of tiny_vision_janus.py (fixture: tools/make_vision_janus_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import KvrunError, UnsupportedModelError
from kvrun.models import janus_image
from kvrun.models.janus_image import JanusProEncoder
from kvrun.ops import get_backend
from tiny_vision_janus import IMAGE_SIZE, PATCH, write_tiny_janus_mmproj, write_tiny_janus_text
from vision_checks import (
    CHATML, check_chat_keeps_picture, check_cli_run, check_logits, fixture, load_vision, pictures, tiny_pair,
    without_tensor,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_janus_fixtures import IMAGES, PROMPTS  # noqa: E402

FIX = fixture("janus")
PICTURES = pictures(IMAGES)
N_ROWS = (IMAGE_SIZE // PATCH) ** 2  # 36: one row a patch, whatever the picture's size


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector (F32 and F16), the very bytes the fixture was made from."""
    return tiny_pair(tmp_path_factory, "janus", write_tiny_janus_text, write_tiny_janus_mmproj, FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, JanusProEncoder]:
    return {q: JanusProEncoder.load(pair[q], get_backend("cpu")) for q in ("f32", "f16")}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 1024)


# ---------------------------------------------------------------- the projector file


def test_mmproj_config_reads_janus_pro(encoders):
    c = encoders["f32"].cfg
    assert (c.projector_type, c.image_size, c.patch_size, c.n_merge, c.n_tokens, c.ffn_op, c.n_text_embd) == (
        "janus_pro", IMAGE_SIZE, PATCH, 1, N_ROWS, "gelu", 64)


def test_a_missing_tensor_is_refused_in_one_line(pair, tmp_path):
    from kvrun.runtime.projectors import load_encoder

    for name in ("mm.1.weight", "mm.0.bias", "v.position_embd.weight"):
        with pytest.raises(KvrunError, match=f"'{name}'") as e:
            load_encoder(without_tensor(pair["f32"], tmp_path / "m.gguf", name), get_backend("cpu"))
        assert "\n" not in str(e.value) and "missing" in str(e.value)


def test_another_vit_activation_is_refused_in_one_line(pair, tmp_path):
    from dataclasses import replace

    from kvrun.loaders.gguf_file import GGUFFile
    from kvrun.loaders.mmproj import load_mmproj_config

    g = GGUFFile(pair["f32"])
    with pytest.raises(UnsupportedModelError, match="GELU") as e:
        JanusProEncoder(g, replace(load_mmproj_config(g), ffn_op="gelu_quick"), get_backend("cpu"))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the rows


@pytest.mark.parametrize("q, tol", [("f32", 5e-3), ("f16", 1e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, tol, name):
    """Resize (Pillow's bicubic, on grey 127), SigLIP, the MLP: the rows of the image chunk mtmd_encode_chunk gives
    (encoder flash attention off), up to ggml's F16 rounding."""
    enc = encoders[q]
    rows = enc.encode(janus_image.preprocess(PICTURES[name], enc.cfg))
    assert rows.shape == (N_ROWS, 64)
    np.testing.assert_allclose(rows, FIX[f"embd_{q}_{name}"], atol=tol)


@pytest.mark.parametrize("name", ["wide", "tall"])
def test_the_fixture_sees_the_grey_padding(encoders, name):
    """On black (clip.cpp's default pad colour) a picture not square is not libmtmd's: grey 127 is Janus-Pro's."""
    enc = encoders["f32"]
    rows = enc.encode(janus_image.preprocess(PICTURES[name], enc.cfg, pad=(0, 0, 0)))
    assert np.abs(rows - FIX[f"embd_f32_{name}"]).max() > 0.5


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_stand_alone_in_the_prompt(vision, name):
    img = PICTURES[name]
    assert vision.idefics3.ids(img) == FIX[f"ids_f32_{name}"].tolist() == [-1] * N_ROWS
    assert vision.image_positions(img) == len(vision.image_rows(img)) == N_ROWS


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally, as llama.cpp feeds llama an image, the text around them tokenized alone:
    logits within 2e-2 of mtmd_helper_eval_chunks' (measured 1.4e-2 on two pictures, the oracle's own rows fed in
    place of kvrun's too: the text side's float noise on rows of magnitude 5, not the encoder's)."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 2e-2)


def test_a_text_model_of_another_width_is_refused(pair, tmp_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    mm = write_tiny_janus_mmproj(tmp_path / "narrow.gguf", n_text_embd=32)
    with pytest.raises(KvrunError, match="makes rows 32 wide") as e:
        Vision(Engine(pair["text"], n_ctx=64), mm)
    assert "\n" not in str(e.value)


def test_a_text_model_that_takes_no_images_is_refused(pair, tmp_path):
    from tinymodel import write_tiny_model

    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with pytest.raises(KvrunError, match="take no images") as e:  # (a text model whose forward reads no rows)
        Vision(Engine(write_tiny_model(tmp_path / "d.gguf", "phi2"), n_ctx=64), pair["f32"])  # (deepseek2-ocr takes DeepSeek-OCR's)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- kvrun run, and a chat


def test_cli_run_takes_a_janus_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["f32"], PICTURES["wide"], tmp_path, N_ROWS)


def test_a_chat_keeps_a_pictures_rows_in_its_cache(pair, tmp_path, monkeypatch):
    """The next turn feeds only its new text, the picture is not encoded again, the reply is a fresh chat's."""
    text = write_tiny_janus_text(tmp_path / "chat.gguf", chat_template=CHATML)
    check_chat_keeps_picture(text, pair["f32"], PICTURES["tall"], monkeypatch, block=N_ROWS)
