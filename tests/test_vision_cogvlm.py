"""Images in, for CogVLM (llama.cpp's projector type "cogvlm"): the mmproj file (loaders/mmproj.py), pictures resized to
the projector's square on LLaVA's mean colour, the EVA2-CLIP ViT (CLS token appended, fused QKV, post-norm blocks) and
the GLU projector with the begin/end-of-image rows (models/cogvlm_image.py), placed with no markers around them
(runtime/vision_cogvlm.py) and read by the cogvlm text model through its visual expert (models/cogvlm.py), held to
llama.cpp's libmtmd on the tiny pair of tiny_vision_cogvlm.py (fixture: tools/make_vision_cogvlm_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import KvrunError
from kvrun.models import cogvlm_image
from kvrun.models.cogvlm_image import CogVLMEncoder
from kvrun.ops import get_backend
from tiny_vision_cogvlm import IMAGE_SIZE, PATCH, write_tiny_cogvlm_mmproj, write_tiny_cogvlm_text
from vision_checks import check_cli_run, check_logits, fixture, load_vision, pictures, tiny_pair, without_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_cogvlm_fixtures import IMAGES, PROMPTS  # noqa: E402

FIX = fixture("cogvlm")
PICTURES = pictures(IMAGES)
N_ROWS = (IMAGE_SIZE // PATCH) ** 2 + 2  # 27: a row a patch, and the begin/end-of-image rows


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector (F32 and F16), the very bytes the fixture was made from."""
    return tiny_pair(tmp_path_factory, "cogvlm", write_tiny_cogvlm_text, write_tiny_cogvlm_mmproj, FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, CogVLMEncoder]:
    return {q: CogVLMEncoder.load(pair[q], get_backend("cpu")) for q in ("f32", "f16")}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 1024)


# ---------------------------------------------------------------- the projector file


def test_mmproj_config_reads_cogvlm(encoders):
    c = encoders["f32"].cfg
    assert (c.projector_type, c.image_size, c.patch_size, c.n_merge, c.ffn_op, c.n_text_embd) == ("cogvlm", IMAGE_SIZE, PATCH, 1, "gelu", 64)


@pytest.mark.parametrize("name", ["v.boi", "v.class_embd", "mm.post_fc_norm.bias", "v.blk.1.attn_qkv.weight", "mm.down.weight"])
def test_a_missing_tensor_is_refused_in_one_line(pair, tmp_path, name):
    from kvrun.runtime.projectors import load_encoder

    with pytest.raises(KvrunError, match=f"tensor '{name}' is missing") as e:
        load_encoder(without_tensor(pair["f32"], tmp_path / "m.gguf", name), get_backend("cpu"))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the rows


@pytest.mark.parametrize("q, tol", [("f32", 5e-3), ("f16", 1e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, tol, name):
    """Resize (Pillow's bicubic, on (122, 116, 104)), EVA2-CLIP, the GLU projector, the begin/end rows: the rows of the
    image chunk mtmd_encode_chunk gives (encoder flash attention off), up to ggml's F16 rounding (measured: F32 2.8e-3,
    F16 6.3e-3 on rows ~6)."""
    enc = encoders[q]
    rows = enc.encode(cogvlm_image.preprocess(PICTURES[name], enc.cfg))
    assert rows.shape == (N_ROWS, 64)
    np.testing.assert_allclose(rows, FIX[f"embd_{q}_{name}"], atol=tol)


def test_the_begin_and_end_of_image_rows_are_the_projectors_own(encoders):
    enc = encoders["f32"]
    rows = enc.encode(cogvlm_image.preprocess(PICTURES["square"], enc.cfg))
    assert (rows[0] == enc.boi).all() and (rows[-1] == enc.eoi).all()


@pytest.mark.parametrize("name", ["wide", "tall"])
def test_the_fixture_sees_llavas_pad_colour(encoders, name):
    """On black (clip.cpp's default) a picture not square is not libmtmd's: (122, 116, 104) is cogvlm's."""
    from kvrun.models import janus_image

    enc = encoders["f32"]
    rows = enc.encode(janus_image.preprocess(PICTURES[name], enc.cfg, pad=(0, 0, 0)))
    assert np.abs(rows - FIX[f"embd_f32_{name}"]).max() > 0.1


def test_the_fixture_sees_the_cls_token_after_the_patches(encoders):
    """The CLS token placed first, the position table in order (Hugging Face's EVA-CLIP layout), is not clip.cpp's
    graph, which appends it.  (The same as the CLS token last with the table turned by one row: attention does not
    see the rows' order, only which position each row has.)"""
    enc = encoders["f32"]
    pos = enc.pos_embd
    try:
        enc.pos_embd = np.concatenate([pos[1:], pos[:1]])
        rows = enc.encode(cogvlm_image.preprocess(PICTURES["square"], enc.cfg))
    finally:
        enc.pos_embd = pos
    assert np.abs(rows - FIX["embd_f32_square"]).max() > 0.1


# ---------------------------------------------------------------- the text model's visual expert


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_stand_alone_in_the_prompt(vision, name):
    img = PICTURES[name]
    assert vision.idefics3.ids(img) == FIX[f"ids_f32_{name}"].tolist() == [-1] * N_ROWS
    assert vision.image_positions(img) == len(vision.image_rows(img)) == N_ROWS


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows through the visual expert, causally, the text through the language weights: logits within
    1e-2 of mtmd_helper_eval_chunks' (the prompts end in one token: the tool's PROMPTS say why)."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 1e-2)


def test_the_fixture_sees_the_visual_expert(vision):
    """The rows run through the language weights instead are far from llama.cpp's logits."""
    m = vision.engine.model
    expert = m.vis_layers
    m.vis_layers = m.text_layers
    try:
        with pytest.raises(AssertionError):
            check_logits(vision, FIX, PICTURES, PROMPTS[0], "0", 0.5)
    finally:
        m.vis_layers = expert


def test_a_text_model_other_than_cogvlm_is_refused(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with pytest.raises(KvrunError, match="read by CogVLM's visual expert; this is a llama model") as e:
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])
    assert "\n" not in str(e.value)


def test_a_cogvlm_text_model_without_its_visual_expert_takes_no_images(pair, tmp_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    text = pair["text"]
    for i in range(2):  # (the visual expert's QKV gone from every layer: the file is text alone)
        text = without_tensor(text, tmp_path / f"t{i}.gguf", f"blk.{i}.vis_attn_qkv.weight")
    engine = Engine(text, n_ctx=64)
    assert not engine.model.takes_images
    with pytest.raises(KvrunError, match="cogvlm models take no images") as e:
        Vision(engine, pair["f32"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- kvrun run


def test_cli_run_takes_a_cogvlm_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["f32"], PICTURES["wide"], tmp_path, N_ROWS)
