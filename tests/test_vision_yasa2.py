"""Images in, for Reka Edge (llama.cpp's projector type "yasa2"): the mmproj file (loaders/mmproj.py), any picture
stretched to one square, the Yasa2 ConvNeXtV2 backbone (depthwise 7x7, channel LayerNorms, GRN), its sin-cos table,
the 8 x 8 pooling and the two-layer projector (models/yasa2_image.py), laid out between ``<image>`` and ``</image>``
(runtime/vision_yasa2.py) and read by a llama text model, held to llama.cpp's libmtmd on the tiny pair of
tiny_vision_yasa2.py (fixture: tools/make_vision_yasa2_fixtures.py); and the encoder on the GPU backend's kernel
emulator against the CPU's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from kvrun.loaders.errors import GGUFError, KvrunError
from kvrun.models import yasa2_image
from kvrun.models.yasa2_image import Yasa2Encoder
from kvrun.ops import get_backend, gpu_available
from kvrun.ops.gpu import emulate
from tiny_vision_yasa2 import IMAGE_SIZE
from vision_checks import check_between, check_cli_run, check_files, check_logits, fixture, load_vision, pictures, without_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_yasa2_fixtures import IMAGES, PROMPTS, write_pair  # noqa: E402

FIX = fixture("yasa2")
PICTURES = pictures(IMAGES)
PROJECTORS = ("f32", "f16")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors (F32 and F16), the fixture's bytes."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_yasa2")), FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, Yasa2Encoder]:
    return {q: Yasa2Encoder.load(pair[q], get_backend("cpu")) for q in PROJECTORS}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 1024)


def _rows(enc: Yasa2Encoder, name: str) -> np.ndarray:
    return enc.encode(yasa2_image.preprocess(PICTURES[name], enc.cfg))


# ---------------------------------------------------------------- the projector file


def test_the_encoder_reads_the_stages_blocks_and_pooling(encoders):
    enc = encoders["f32"]
    assert (enc.cfg.projector_type, enc.cfg.image_size, enc.cfg.n_text_embd) == ("yasa2", IMAGE_SIZE, 64)
    assert [(st.down is not None, len(st.blocks)) for st in enc.stages] == [(False, 1), (True, 1)]
    assert (enc.side, enc.pool) == (16, 2) and enc.pos.shape == (256, 16)  # (16 x 16 cells pooled 2 x 2 into 8 x 8)


@pytest.mark.parametrize("name", ["mm.2.weight", "v.patch_embd.weight", "v.stage.1.blk.0.pw1.weight"])
def test_a_missing_tensor_is_refused_in_one_line(pair, tmp_path, name):
    from kvrun.runtime.projectors import load_encoder

    with pytest.raises(GGUFError, match=f"tensor '{name}' is missing") as e:
        load_encoder(without_tensor(pair["f32"], tmp_path / "m.gguf", name), get_backend("cpu"))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the rows


@pytest.mark.parametrize("q, tol", [("f32", 1e-3), ("f16", 5e-3)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, tol, name):
    """Stretch (clip.cpp's bicubic, no padding), the ConvNeXtV2, the pooling and projector: the 64 rows of the image
    chunk mtmd_encode_chunk gives (rows of up to 3.4; measured: F32 2.3e-4, F16 1.6e-3 at most, float32 noise through
    the F16 im2col roundings: a 2e-7 relative nudge to the LayerNorms' outputs moves rows of 13 by 8e-4)."""
    rows = _rows(encoders[q], name)
    assert rows.shape == FIX[f"embd_{q}_{name}"].shape == (64, 64)
    np.testing.assert_allclose(rows, FIX[f"embd_{q}_{name}"], atol=tol)


def _norm_over_cells(ops, x, w, b, eps):
    xm = x - x.mean(axis=(1, 2), keepdims=True)
    y = xm / np.sqrt((xm * xm).mean(axis=(1, 2), keepdims=True) + eps)
    return (y * (1 if w is None else w[:, None, None]) + (0 if b is None else b[:, None, None])).astype(np.float32)


@pytest.mark.parametrize("step", ["GRN", "the position table", "the stretch (padded instead)",
                                  "the LayerNorm over the channels (over the cells instead)"])  # fmt: skip
def test_the_fixture_fails_without_a_distinguishing_step(encoders, monkeypatch, step):
    """Each of Yasa2's own steps shows in the rows: without it the wide picture's rows are far from libmtmd's
    (measured: 0.36 to 3.4 off).  (The exact GELU does not: the tanh form moves these rows 1.3e-3.)"""
    from kvrun.models.pillow_resize import BICUBIC, resize_padded

    enc = encoders["f32"]
    if step == "GRN":
        monkeypatch.setattr(yasa2_image, "grn", lambda ops, x, w, b: x)
    elif step == "the position table":
        monkeypatch.setattr(enc, "pos", None)
    elif step.startswith("the stretch"):
        monkeypatch.setattr(yasa2_image, "resize_axes", lambda img, w, h, f: resize_padded(img, w, h, BICUBIC))
    else:  # (each channel normalised over the cells: the wrong axis)
        monkeypatch.setattr(yasa2_image, "channel_norm", _norm_over_cells)
    err = np.abs(_rows(enc, "wide") - FIX["embd_f32_wide"]).max()
    assert err > 1e-2, f"{step}: rows still within {err:.1e}"


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", ["small", "wide"])
def test_a_pictures_64_rows_lie_between_image_and_end_image(vision, name):
    assert check_between(vision, FIX, PICTURES[name], f"f32_{name}", "<image>", "</image>") == 64


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally at consecutive positions, as llama.cpp feeds a llama model an image, then the
    text: logits within 2e-2 of mtmd_helper_eval_chunks' (measured: 1.4e-2; 1.1e-2 with libmtmd's own rows in their
    place, the text model's part, as Janus-Pro's llama)."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 2e-2)


def test_a_text_model_of_another_kind_or_without_the_markers_is_refused(pair, tmp_path, tiny_llama_path):
    from tiny_vision_dotsocr import write_tiny_dotsocr_text

    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with pytest.raises(KvrunError, match=r"a yasa2 projector goes with a Reka Edge text model \(llama\), not qwen2") as e:
        Vision(Engine(write_tiny_dotsocr_text(tmp_path / "t.gguf"), n_ctx=64), pair["f32"])
    assert "\n" not in str(e.value)
    with pytest.raises(KvrunError, match=r"the vocabulary has no <image> token; not a Reka Edge vision model") as e:
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- kvrun run, and the GPU


def test_cli_run_takes_a_reka_edge_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["f32"], PICTURES["wide"], tmp_path, len(FIX["ids_f32_wide"]))  # 64 rows, 2 markers


@pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")
def test_the_encoder_runs_on_the_gpu_and_brings_its_rows_down_once(tmp_path, emulated):
    """The F16 projector on the strict CuPy stand-in (tests/devicexp.py): one copy down, its 64 rows, the CPU
    encoder's within 2e-3 of their largest."""
    from gpu_checks import check_rows_come_down_once
    from tiny_vision import tiny_mmproj

    from kvrun.runtime.projectors import load_encoder

    path = tiny_mmproj("yasa2", Q.F16, tmp_path)

    def encoders():
        return load_encoder(path, get_backend("cpu")), load_encoder(path, get_backend("gpu"))

    check_rows_come_down_once(encoders, yasa2_image.preprocess(PICTURES["odd"], encoders()[0].cfg))
