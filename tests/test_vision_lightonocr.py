"""Images in, for LightOnOCR (llama.cpp's projector type "lightonocr"): the mmproj file (loaders/mmproj.py), pictures
scaled to the longest edge with their sides rounded up to whole merged blocks, Pixtral's ViT, Mistral Small's 2x2 patch
merger and the adapter without [IMG_BREAK] rows (models/lightonocr_image.py on models/pixtral_image.py), laid out
between ``<|im_start|>`` and ``<|im_end|>`` (runtime/vision_lightonocr.py) and read by a qwen3 text model, held to
llama.cpp's libmtmd on the tiny pair of tiny_vision_lightonocr.py (fixture: tools/make_vision_lightonocr_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import GGUFError, KvrunError
from kvrun.models import lightonocr_image, pixtral_image
from kvrun.models.lightonocr_image import LightOnOCREncoder
from kvrun.ops import get_backend
from tiny_vision_lightonocr import LONGEST_EDGE, write_tiny_lightonocr_text
from vision_checks import (
    CHATML, check_between, check_chat_keeps_picture, check_cli_run, check_files, check_logits, fixture, load_vision, pictures, without_tensor,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_lightonocr_fixtures import IMAGES, PROMPTS, write_pair  # noqa: E402

FIX = fixture("lightonocr")
PICTURES = pictures(IMAGES)
PROJECTORS = ("f32", "f16", "edge")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors (the longest edge stated, in F32 and F16; none stated), the fixture's bytes."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_lightonocr")), FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, LightOnOCREncoder]:
    return {q: LightOnOCREncoder.load(pair[q], get_backend("cpu")) for q in PROJECTORS}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 1024)


# ---------------------------------------------------------------- the projector file


def test_mmproj_config_reads_the_longest_edge_else_the_image_size(encoders):
    c = encoders["f32"].cfg
    assert (c.projector_type, c.n_merge, c.longest_edge, c.ffn_op, c.n_text_embd) == ("lightonocr", 2, LONGEST_EDGE, "silu", 64)
    assert encoders["edge"].cfg.longest_edge == 64  # (clip.vision.image_size where preproc_image_size is not stated)
    assert encoders["f32"].img_break is None and encoders["f32"].merger is not None


def test_a_missing_tensor_is_refused_in_one_line(pair, tmp_path):
    from kvrun.runtime.projectors import load_encoder

    for name, err, match in [("mm.2.weight", GGUFError, "tensor 'mm.2.weight' is missing"),
                             ("mm.patch_merger.weight", KvrunError, "spatial_merge_size is 2 but mm.patch_merger.weight is missing")]:  # fmt: skip
        with pytest.raises(err, match=match) as e:
            load_encoder(without_tensor(pair["f32"], tmp_path / "m.gguf", name), get_backend("cpu"))
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the picture's size


@pytest.mark.parametrize("w, h, grid", [(24, 20, (5, 5)), (100, 40, (5, 2)), (48, 48, (5, 5)), (40, 90, (3, 5)), (53, 37, (5, 4)),
                                         (400, 300, (5, 4)), (80, 80, (5, 5))])  # fmt: skip
def test_the_longest_side_becomes_the_longest_edge_and_sides_round_up_to_blocks(encoders, w, h, grid):
    """Scaled up or down to 80 pixels on the longest side; the other side rounded up to 16-pixel blocks (24x20: 80 x
    66.7 -> 5 x 5 blocks; 53x37: 80 x 55.8 -> 5 x 4), the rest black padding."""
    assert lightonocr_image.grid(w, h, encoders["f32"].cfg) == grid


def test_the_fixture_sees_the_sides_rounded_up_not_to_nearest(encoders):
    """Rounding each side to the nearest block (as Pixtral's smart_resize rounds first) gives 5 x 3 for 53x37, not the
    20 rows libmtmd makes: the round-up is LightOnOCR's."""
    c = encoders["f32"].cfg
    w, h = 53 * np.float32(80 / 53), 37 * np.float32(80 / 53)
    assert (round(w / 16), round(h / 16)) == (5, 3) and len(FIX["embd_f32_odd"]) == 5 * 4 == np.prod(lightonocr_image.grid(53, 37, c))


@pytest.mark.parametrize("q, tol", [("f32", 5e-3), ("f16", 2e-2), ("edge", 5e-3)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, tol, name):
    """Resize (Pillow's bicubic, padded), Pixtral's ViT, merger, adapter: the rows of the image chunk
    mtmd_encode_chunk gives (encoder flash attention off), up to ggml's F16 rounding."""
    enc = encoders[q]
    rows = enc.encode(lightonocr_image.preprocess(PICTURES[name], enc.cfg))
    np.testing.assert_allclose(rows, FIX[f"embd_{q}_{name}"], atol=tol)


def test_pixtrals_sizing_does_not_give_libmtmds_rows(encoders):
    """The same encoder on the picture sized as Pixtral's (its sides rounded to nearest within 8 to 1024 rows) is not
    libmtmd's: the longest edge is what LightOnOCR's preprocessor adds."""
    from dataclasses import replace

    enc = encoders["f32"]
    cfg = replace(enc.cfg, min_pixels=8 * 256, max_pixels=1024 * 256)
    rows = enc.encode(pixtral_image.preprocess(PICTURES["square"], cfg))  # (48x48: 3x3 blocks, not 5x5)
    assert rows.shape != FIX["embd_f32_square"].shape


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_lie_between_im_start_and_im_end(vision, name):
    assert len(vision.image_rows(PICTURES[name])) == check_between(vision, FIX, PICTURES[name], f"f32_{name}", "<|im_start|>", "<|im_end|>")


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally, as llama.cpp feeds qwen3 an image, then the text: logits within 1e-2 of
    mtmd_helper_eval_chunks'."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 1e-2)


def test_a_text_model_without_the_markers_is_refused(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with pytest.raises(KvrunError, match=r"the vocabulary has no <\|im_start\|> token; not a LightOnOCR model") as e:
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- kvrun run, and a chat


def test_cli_run_takes_a_lightonocr_picture(pair, tmp_path):
    rows = len(FIX["ids_f32_wide"])  # 5x2 blocks, the markers, 8 bytes
    check_cli_run(pair["text"], pair["f32"], PICTURES["wide"], tmp_path, rows)


def test_a_chat_keeps_a_pictures_rows_in_its_cache(pair, tmp_path, monkeypatch):
    """The next turn feeds only its new text, the picture is not encoded again, the reply is a fresh chat's."""
    text = write_tiny_lightonocr_text(tmp_path / "chat.gguf", chat_template=CHATML)
    block = len(FIX["ids_f32_tall"])  # (3x5 blocks and the markers, kept)
    check_chat_keeps_picture(text, pair["f32"], PICTURES["tall"], monkeypatch, block=block)
