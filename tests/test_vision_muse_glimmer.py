"""Images in, for Muse Glimmer (llama.cpp's projector type "muse-glimmer"): the mmproj file (loaders/mmproj.py),
pictures stretched to whole merged blocks of about their own aspect (at most 4096), the ViT with its position grid
resized to the picture, a 2-D rope counted from 1 and square windows on three layers of four, the channel-major 2x2
shuffle and the three products (models/muse_glimmer_image.py), laid out between ``<|image_start|>`` and
``<|image_end|>`` (runtime/vision_muse_glimmer.py) and read causally, RMS-normed at the input, by the muse-glimmer text
model (models/muse_glimmer.py), held to llama.cpp's libmtmd on the tiny pair of tiny_vision_muse_glimmer.py (fixture:
tools/make_vision_muse_glimmer_fixtures.py).

Measured against libmtmd 0.3.36: the F32 projector's rows within 6e-7 of their largest, the F16 one's within 6e-4
(ggml's F16 products round the activations), the logits after pictures and text within 5.2e-3 (absolute, of logits up
to 5.7; dropping the input norm on the picture rows costs 1.3).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import kvrun.models.muse_glimmer_image as mg
from kvrun.models.muse_glimmer_image import MuseGlimmerEncoder
from kvrun.ops import get_backend
from tiny_vision_muse_glimmer import PATCH, V_EMBD, write_tiny_muse_glimmer_mmproj, write_tiny_muse_glimmer_text
from vision_checks import (check_between, check_cli_run, check_logits, check_refused_beside, fixture, load_vision, one_line_error,
                           tiny_pair, without_tensor)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_muse_glimmer_fixtures import IMAGES, PROMPTS, images  # noqa: E402

FIX = fixture("muse_glimmer")
PICTURES = images()
PROJECTORS = ("f32", "f16")
#: the rows' largest error, relative to their largest value, each projector (measured: 6e-7, 6e-4)
ROWS_TOL = {"f32": 1e-5, "f16": 2e-3}
#: the logits' (about 5 at most) largest error, absolute (measured: 5.2e-3, llama.cpp's float16 K/V and Q as text alone)
LOGITS_TOL = 2e-2


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors (F32 and F16), the fixture's bytes."""
    return tiny_pair(tmp_path_factory, "muse_glimmer", write_tiny_muse_glimmer_text, write_tiny_muse_glimmer_mmproj, FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, MuseGlimmerEncoder]:
    return {q: MuseGlimmerEncoder.load(pair[q], get_backend("cpu")) for q in PROJECTORS}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 1024)


def _rows_error(enc: MuseGlimmerEncoder, q: str, name: str) -> float:
    ref = FIX[f"embd_{q}_{name}"]
    rows = enc.encode(mg.preprocess(PICTURES[name], enc.cfg))
    return float(np.abs(rows - ref).max() / np.abs(ref).max())


def test_mmproj_config_reads_the_merge_and_libmtmds_limit(encoders):
    c = encoders["f32"].cfg
    assert (c.projector_type, c.patch_size, c.n_embd, c.n_merge, c.n_text_embd) == ("muse-glimmer", PATCH, V_EMBD, 2, 64)
    assert c.ffn_op == "gelu_erf"  # (clip.cpp's FFN_GELU_ERF, whatever the file's flags)
    assert c.max_pixels == 4096 * 8 * 8 and encoders["f32"].side == 4  # (4096 blocks of 8 x 8 pixels; windows of 4 x 4 patches)


@pytest.mark.parametrize("name, size", [("grid", (16, 16)), ("wide", (104, 40)), ("tall", (40, 96)), ("odd", (56, 40)),
                                        ("small", (8, 8))])  # fmt: skip
def test_a_picture_is_stretched_to_the_nearest_aspect_in_whole_blocks(encoders, name, size):
    """100x40 (12.5 x 5 blocks) to 13 x 5, the nearest aspect of the floor/ceil pairs; 5x7 to one block."""
    img, cfg = PICTURES[name], encoders["f32"].cfg
    assert mg.target_size(img.shape[1], img.shape[0], cfg) == size
    n = mg.n_rows(img.shape[1], img.shape[0], cfg)
    assert n == (size[0] // 8) * (size[1] // 8) and FIX[f"ids_f32_{name}"].tolist() == [262] + [-1] * n + [263]


def test_a_large_picture_is_scaled_within_4096_blocks(encoders):
    cfg = encoders["f32"].cfg
    w, h = mg.target_size(3000, 2000, cfg)
    assert (w // 8) * (h // 8) <= 4096 and (w // 8, h // 8) == (78, 52)


@pytest.mark.parametrize("q", PROJECTORS)
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, name):
    """Lanczos stretch, the ViT with the grid resized (the 16x16 picture's 4 x 4 patches take it as it is), the windows
    (the wide picture's 26 x 10 patches: 7 x 3 windows, cut short), the shuffle and products: mtmd_encode_chunk's rows."""
    assert _rows_error(encoders[q], q, name) < ROWS_TOL[q]


def test_the_fixture_sees_what_sets_the_encoder_apart(encoders, monkeypatch):
    """Each step of libmtmd's graph taken away costs the rows over 10x the F32 tolerance on the wide picture (the tanh
    GELU for the exact one the least: 5e-4).  (The rope's positions counted from 1, not 0, are not among them: Q and K
    both turned one step more, the scores are the same.)"""
    enc = encoders["f32"]
    E = V_EMBD
    drops = {
        "windows": lambda m: m.setattr(mg, "windows", lambda nx, ny, side: np.zeros(nx * ny, np.int64)),
        "global every 4th layer": lambda m: m.setattr(mg, "GLOBAL_EVERY", 100),
        "position grid resize": lambda m: m.setattr(mg, "_bilinear_weights", lambda n_in, n_out: np.eye(n_out, n_in)),
        "channel-major shuffle": lambda m: m.setattr(mg, "merge_permute", lambda x, nx, ny, k: _patch_major(x, nx, ny, k, E)),
        "pre-norm": lambda m: m.setattr(enc, "pre_ln", None),
        "post-norm": lambda m: m.setattr(enc, "post_ln", None),
        "exact GELU": lambda m: _with_act(m, "gelu"),
    }
    assert _rows_error(enc, "f32", "wide") < ROWS_TOL["f32"]
    for what, drop in drops.items():
        with monkeypatch.context() as m:
            drop(m)
            assert _rows_error(enc, "f32", "wide") > 10 * ROWS_TOL["f32"], what


def _patch_major(x, nx: int, ny: int, k: int, E: int):
    """The merge as Kimi-VL's (patch-major), laid out so that the encoder's transpose gives it back."""
    from kvrun.models.vit_ops import merge_permute

    return merge_permute(x, nx, ny, k).reshape(-1, E, 4).transpose(0, 2, 1)


def _with_act(m, op: str) -> None:
    """The host's activations ``op`` where the encoder asks for "gelu_erf"."""
    from kvrun.models import vit_ops

    act = vit_ops.HostViT.act
    m.setattr(vit_ops.HostViT, "act", staticmethod(lambda x, o: act(x, op if o == "gelu_erf" else o)))


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_lie_between_image_start_and_image_end(vision, name):
    check_between(vision, FIX, PICTURES[name], f"f32_{name}", "<|image_start|>", "<|image_end|>")


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally, RMS-normed at the input as the tokens are, then <|image_end|> and the text."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), LOGITS_TOL)


def test_the_text_model_norms_the_picture_rows_too(vision, monkeypatch):
    """Without the input RMSNorm on the rows (the tokens' kept) the logits leave llama.cpp's (by 1.3)."""
    model = vision.engine.model
    plain = model.embed

    def rows_unnormed(tokens, x, xn):
        if model.input_embd is None:
            return plain(tokens, x, xn)
        x[...] = model.input_embd

    monkeypatch.setattr(model, "embed", rows_unnormed)
    with pytest.raises(AssertionError):
        check_logits(vision, FIX, PICTURES, PROMPTS[0], "0", LOGITS_TOL)


def test_a_missing_tensor_is_one_line(pair, tmp_path):
    path = without_tensor(pair["f32"], tmp_path / "no-mm1.gguf", "mm.1.weight")
    with one_line_error(r"mm\.1\.weight"):
        MuseGlimmerEncoder.load(path, get_backend("cpu"))


def test_a_text_model_without_image_start_is_refused(pair, tiny_llama_path):
    check_refused_beside(tiny_llama_path, pair["f32"], r"(no <\|image_start\|> token|take no images)")


def test_the_projector_beside_a_muse_glimmer_without_markers_is_refused(pair, tmp_path):
    from tinymodel import write_tiny_model

    check_refused_beside(write_tiny_model(tmp_path / "m.gguf", "muse-glimmer"), pair["f32"], r"no <\|image_start\|> token")


def test_cli_run_takes_a_muse_glimmer_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["f32"], PICTURES["wide"], tmp_path, len(FIX["ids_f32_wide"]))


def test_the_encoder_on_the_gpu_gives_the_cpus_rows(tmp_path, emulated):
    """The same forward on models/vit_device.py's ops (the emulator where there is no GPU; the strict CuPy stand-in),
    F16 matrices: one copy down, the CPU's rows within 2e-3 of their largest."""
    from gguf import GGMLQuantizationType as Q
    from gpu_checks import check_rows_come_down_once
    from tiny_vision import tiny_mmproj

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate
    from kvrun.runtime.projectors import load_encoder

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    path = tiny_mmproj("muse_glimmer", Q.F16, tmp_path)

    def both():
        return load_encoder(path, get_backend("cpu")), load_encoder(path, get_backend("gpu"))

    check_rows_come_down_once(both, mg.preprocess(PICTURES["wide"], both()[0].cfg))
