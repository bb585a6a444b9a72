"""Images in, for Kimi-VL (llama.cpp's projector type "kimivl"): the mmproj file (loaders/mmproj.py), pictures kept at
their own size within 8 to 1024 merged rows, MoonViT with its position grid interpolated to the picture and a 2-D
rope, the 2x2 merge, the projector's per-patch LayerNorm and MLP (models/kimivl_image.py), laid out between
``<|media_start|>`` and ``<|media_end|>`` (runtime/vision_kimivl.py) and read causally by a deepseek2 text model, held
to llama.cpp's libmtmd on the tiny pair of tiny_vision_kimivl.py (fixture: tools/make_vision_kimivl_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import KvrunError
from kvrun.models import kimivl_image
from kvrun.models.kimivl_image import KimiVLEncoder
from kvrun.ops import get_backend
from tiny_vision_kimivl import MERGE, PATCH, V_EMBD, write_tiny_kimivl_mmproj, write_tiny_kimivl_text
from vision_checks import check_between, fixture, load_vision, tiny_pair

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_kimivl_fixtures import IMAGES, PROMPTS, STRIDE, images  # noqa: E402

FIX = fixture("kimivl")
PICTURES = images()
PROJECTORS = ("f32", "f16")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors (F32 and F16), the fixture's bytes."""
    return tiny_pair(tmp_path_factory, "kimivl", write_tiny_kimivl_text, write_tiny_kimivl_mmproj, FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, KimiVLEncoder]:
    return {q: KimiVLEncoder.load(pair[q], get_backend("cpu")) for q in PROJECTORS}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 2048)


def test_mmproj_config_reads_the_merge_and_libmtmds_pixel_limits(encoders):
    c = encoders["f32"].cfg
    assert (c.projector_type, c.patch_size, c.n_embd, c.n_merge, c.n_text_embd, c.ffn_op) == ("kimivl", PATCH, V_EMBD, MERGE, 64, "gelu")
    assert (c.min_pixels, c.max_pixels) == (8 * 16 * 16, 1024 * 16 * 16)  # 8 to 1024 merged rows of 16 x 16 pixels


@pytest.mark.parametrize("name, n", [("small", 12), ("wide", 18), ("square", 16), ("tall", 18), ("odd", 12), ("large", 1015)])
def test_a_picture_keeps_its_size_in_whole_blocks_within_8_to_1024_rows(encoders, name, n):
    """24x20 scaled up to 4x3 blocks, 600x500 down to 35x29 (1015 rows); one image chunk between the markers."""
    img = PICTURES[name]
    assert kimivl_image.n_rows(img.shape[1], img.shape[0], encoders["f32"].cfg) == n
    assert FIX[f"ids_f32_{name}"].tolist() == [262] + [-1] * n + [264]  # <|media_start|> ... <|media_end|>


@pytest.mark.parametrize("q, tol", [("f32", 1e-2), ("f16", 3e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, tol, name):
    """Resize (bicubic, padded with black, as the oracle runs it), MoonViT with the position grid interpolated
    (bilinear with antialias; the square picture's 8 x 8 patches take it as it is) and the 2-D rope, the 2x2 merge,
    the per-patch LayerNorm and MLP: the rows mtmd_encode_chunk gives (encoder flash attention off), on rows near 20."""
    enc = encoders[q]
    rows = enc.encode(kimivl_image.preprocess(PICTURES[name], enc.cfg))
    np.testing.assert_allclose(rows[:: STRIDE.get(name, 1)], FIX[f"embd_{q}_{name}"], atol=tol)


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_lie_between_media_start_and_media_end(vision, name):
    check_between(vision, FIX, PICTURES[name], f"f32_{name}", "<|media_start|>", "<|media_end|>")


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally through DeepSeek's latent attention and experts, then <|media_end|> and the
    text: logits within 2e-2 of mtmd_helper_eval_chunks'."""
    imgs = [PICTURES[n] for n in list(IMAGES)[: PROMPTS[k].count("<__media__>")]]
    segs = vision.segments(PROMPTS[k], imgs)
    ids = [i for s in segs for i in (s if isinstance(s, list) else [-1] * len(s))]
    assert ids == FIX[f"pids_{k}"].tolist()
    cache = vision.engine.new_cache()
    logits = vision.engine.eval(cache, vision.prefill(cache, segs))[-1]
    np.testing.assert_allclose(logits, FIX[f"logits_{k}"], atol=2e-2)
    assert logits.argmax() == FIX[f"logits_{k}"].argmax()


def test_a_text_model_without_media_start_is_refused(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with pytest.raises(KvrunError, match=r"the vocabulary has no <\|media_start\|> token; not a Kimi-VL model") as e:
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])
    assert "\n" not in str(e.value)


def test_cli_run_takes_a_kimivl_picture(pair, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from kvrun.cli import main

    png = tmp_path / "wide.png"
    Image.fromarray(PICTURES["wide"]).save(png)
    r = CliRunner().invoke(main, ["run", str(pair["text"]), "--mmproj", str(pair["f32"]), "--image", str(png),
                                  "-p", "describe", "-n", "4", "--temp", "0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"prompt {len(FIX['ids_f32_wide']) + len('describe')} tok" in r.output  # 6 x 3 blocks, 2 markers, 8 bytes
