"""Images in, for dots.ocr (llama.cpp's projector type "dots_ocr"): the mmproj file (loaders/mmproj.py), pictures kept at
about their own size within the file's pixel limits, the raster-order NaViT (RMSNorms, fused QKV, the 2-D vision rope,
SwiGLU) and the 2x2 patch merger (models/dotsocr_image.py), laid out between ``<|img|>`` and ``<|endofimg|>``
(runtime/vision_dotsocr.py) and read by a qwen2 text model, held to llama.cpp's libmtmd on the tiny pair of
tiny_vision_dotsocr.py (fixture: tools/make_vision_dotsocr_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import GGUFError, KvrunError
from kvrun.models import dotsocr_image
from kvrun.models.dotsocr_image import DotsOCREncoder
from kvrun.ops import get_backend
from tiny_vision_dotsocr import MAX_PIXELS, MIN_PIXELS
from vision_checks import check_between, check_cli_run, check_files, check_logits, fixture, load_vision, pictures, without_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_dotsocr_fixtures import IMAGES, PROMPTS, write_pair  # noqa: E402

FIX = fixture("dotsocr")
PICTURES = pictures(IMAGES)
PROJECTORS = ("f32", "f16")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors (F32 and F16), the fixture's bytes."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_dotsocr")), FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, DotsOCREncoder]:
    return {q: DotsOCREncoder.load(pair[q], get_backend("cpu")) for q in PROJECTORS}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 1024)


def _rows(enc: DotsOCREncoder, name: str) -> np.ndarray:
    return enc.encode(dotsocr_image.preprocess(PICTURES[name], enc.cfg))


# ---------------------------------------------------------------- the projector file


def test_mmproj_config_reads_the_merge_the_pixel_limits_and_silu(encoders):
    c = encoders["f32"].cfg
    assert (c.projector_type, c.n_merge, c.min_pixels, c.max_pixels, c.ffn_op, c.n_text_embd) == ("dots_ocr", 2, MIN_PIXELS, MAX_PIXELS, "silu", 64)
    assert c.image_size == 0 and np.isclose(c.eps, 1e-5)  # (no square input; the file's RMSNorm epsilon)


@pytest.mark.parametrize("name, err, match", [
    ("mm.post_norm.weight", GGUFError, "tensor 'mm.post_norm.weight' is missing"),
    ("v.blk.1.attn_qkv.weight", GGUFError, "tensor 'v.blk.1.attn_qkv.weight' is missing"),
    ("mm.2.weight", GGUFError, "tensor 'mm.2.weight' is missing"),
])  # fmt: skip
def test_a_missing_tensor_is_refused_in_one_line(pair, tmp_path, name, err, match):
    from kvrun.runtime.projectors import load_encoder

    with pytest.raises(err, match=match) as e:
        load_encoder(without_tensor(pair["f32"], tmp_path / "m.gguf", name), get_backend("cpu"))
    assert "\n" not in str(e.value)


def test_a_file_without_the_merge_is_refused_in_one_line(tmp_path):
    """clip.cpp requires dots.ocr's ``clip.vision.projector.scale_factor`` (its merge); kvrun refuses a file without it."""
    from tiny_vision_dotsocr import write_tiny_dotsocr_mmproj

    from kvrun.loaders.mmproj import open_mmproj

    with pytest.raises(GGUFError, match="scale_factor is missing or under 2; the dots_ocr projector file is incomplete") as e:
        open_mmproj(write_tiny_dotsocr_mmproj(tmp_path / "m.gguf", scale=None))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the picture's size and rows


@pytest.mark.parametrize("name", list(IMAGES))
def test_the_picture_becomes_libmtmds_count_of_rows(encoders, name):
    """Sides rounded to whole 16-pixel blocks, scaled into 9..64 blocks' worth of pixels (24x20 up to 4 x 3, 400x300 down
    to 9 x 6): as many rows as libmtmd's image chunk."""
    nx, ny = dotsocr_image.grid(*PICTURES[name].shape[1::-1], encoders["f32"].cfg)
    assert nx * ny == len(FIX[f"embd_f32_{name}"]) and nx * ny <= MAX_PIXELS // 256


@pytest.mark.parametrize("q, tol", [("f32", 1e-4), ("f16", 2e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, tol, name):
    """Resize (clip.cpp's bicubic, padded), the NaViT, the merger: the rows of the image chunk mtmd_encode_chunk gives
    (encoder flash attention off), up to ggml's F16 rounding (measured: F32 3e-5, F16 6e-3 at most; rows of up to 10)."""
    np.testing.assert_allclose(_rows(encoders[q], name), FIX[f"embd_{q}_{name}"], atol=tol)


def _stack_consecutive(x, nx, ny, k):
    """PaddleOCR-VL's merge: k*k consecutive raster-order patches side by side, not a k x k block."""
    return x.reshape(-1, k * k * x.shape[-1])


def _rope_x_then_y(ys, xs, head_dim):
    """The 2-D rope with row and column swapped (the column turning a head's first quarter)."""
    from kvrun.models.qwen2vl_image import vision_rope

    return vision_rope(xs, ys, head_dim)


@pytest.mark.parametrize("step, patch", [
    ("the merge of 2x2 blocks (PaddleOCR's consecutive stack instead)", ("merge_permute", _stack_consecutive)),
    ("the rope's row-then-column order", ("vision_rope", _rope_x_then_y)),
    ("the pre-norm v.pre_ln", None),
    ("the merger's exact GELU (ggml's tanh table instead)", None),
])  # fmt: skip
def test_the_fixture_fails_without_a_distinguishing_step(encoders, monkeypatch, step, patch):
    """Each of dots.ocr's own steps shows in the rows: without it the square picture's rows are far from libmtmd's."""
    from kvrun.models import vit_ops

    enc = encoders["f32"]
    if patch is not None:
        monkeypatch.setattr(dotsocr_image, *patch)
    elif "pre_ln" in step:
        monkeypatch.setattr(enc, "pre_ln", None)
    else:
        real = vit_ops.HostViT.act
        monkeypatch.setattr(vit_ops.HostViT, "act", staticmethod(lambda x, op: real(x, "gelu" if op == "gelu_erf" else op)))
    err = np.abs(_rows(enc, "square") - FIX["embd_f32_square"]).max()
    assert err > 1e-3, f"{step}: rows still within {err:.1e}"


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", ["small", "odd", "large"])
def test_a_pictures_rows_lie_between_img_and_endofimg(vision, name):
    assert len(vision.image_rows(PICTURES[name])) == check_between(vision, FIX, PICTURES[name], f"f32_{name}", "<|img|>", "<|endofimg|>")


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally at consecutive positions, as llama.cpp feeds qwen2 an image, then the text:
    logits within 1e-2 of mtmd_helper_eval_chunks' (measured: 7e-3, the tiny model's float32 sums apart)."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 1e-2)


def test_a_text_model_without_the_markers_is_refused(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with pytest.raises(KvrunError, match=r"the vocabulary has no <\|img\|> token; not a dots.ocr model") as e:
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- kvrun run


def test_cli_run_takes_a_dotsocr_picture(pair, tmp_path):
    rows = len(FIX["ids_f32_wide"])  # 6x3 blocks and the markers, then 8 bytes
    check_cli_run(pair["text"], pair["f32"], PICTURES["wide"], tmp_path, rows)
