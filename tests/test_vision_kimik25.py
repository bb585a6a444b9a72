"""Images in, for Kimi-K2.5 (llama.cpp's projector type "kimik25"): the mmproj file (loaders/mmproj.py), pictures kept
at their own size within the file's pixel limits, MoonViT3d with its 3-D position grid resized bicubic to the picture,
one fused QKV and the 2-D rope, the 2x2 merge, the projector's per-patch LayerNorm (the file's epsilon) and MLP
(models/kimik25_image.py), laid out between ``<|media_begin|>`` and ``<|media_end|>`` (runtime/vision_kimik25.py) and
read causally by a deepseek2 (DeepSeek-V3) text model, held to llama.cpp's libmtmd on the tiny pair of
tiny_vision_kimik25.py (fixture: tools/make_vision_kimik25_fixtures.py); and the encoder on the GPU backend's kernel
emulator against the CPU's."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from kvrun.models import kimik25_image
from kvrun.models.kimik25_image import KimiK25Encoder
from kvrun.models.lfm2vl_image import _aa_weights
from kvrun.ops import get_backend
from tiny_vision_kimik25 import EPS, IN_PATCH_LIMIT, MERGE, PATCH, POS_H, POS_W, V_EMBD, write_tiny_kimik25_mmproj, write_tiny_kimik25_text
from vision_checks import check_between, check_cli_run, check_logits, fixture, load_vision, one_line_error, tiny_pair, without_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_kimik25_fixtures import IMAGES, PROMPTS, STRIDE, images  # noqa: E402

FIX = fixture("kimik25")
PICTURES = images()
ROWS = {"small": 2, "wide": 18, "grid": 12, "tall": 18, "odd": 6, "large": 238}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors (F32 and F16), the fixture's bytes."""
    return tiny_pair(tmp_path_factory, "kimik25", write_tiny_kimik25_text, write_tiny_kimik25_mmproj, FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, KimiK25Encoder]:
    return {q: KimiK25Encoder.load(pair[q], get_backend("cpu")) for q in ("f32", "f16")}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 2048)


def _off(enc: KimiK25Encoder, name: str, q: str = "f32") -> float:
    """The encoder's rows for picture ``name`` against libmtmd's (the kept ones), the largest difference over the
    largest row value (~15 to 20)."""
    want = FIX[f"embd_{q}_{name}"]
    got = enc.encode(kimik25_image.preprocess(PICTURES[name], enc.cfg))[:: STRIDE.get(name, 1)]
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_mmproj_config_reads_the_merge_the_files_pixel_limits_and_epsilon(encoders):
    e = encoders["f32"]
    c = e.cfg
    assert (c.projector_type, c.patch_size, c.n_embd, c.n_merge, c.n_text_embd, c.ffn_op, c.eps) == ("kimik25", PATCH, V_EMBD, MERGE, 64, "gelu", pytest.approx(EPS))
    assert (c.min_pixels, c.max_pixels) == (8 * PATCH * PATCH, IN_PATCH_LIMIT * PATCH * PATCH)  # 8 to 1024 patches' worth
    assert e.pos_grid.shape == (POS_H, POS_W, V_EMBD)  # (the grid as stored: height, width, channels)


def test_without_pixel_limits_a_file_takes_2_to_4096_merged_rows(pair, tmp_path):
    """clip.cpp's set_limit_image_tokens(2, 4096) where the file states no limits (a file without image_min_pixels)."""
    from gguf import GGUFReader, GGUFWriter

    from kvrun.loaders.mmproj import open_mmproj

    r = GGUFReader(pair["f32"])
    w = GGUFWriter(str(tmp_path / "m.gguf"), "clip")
    for f in r.fields.values():
        if not f.name.startswith("GGUF.") and f.name not in ("general.architecture", "clip.vision.image_min_pixels"):
            sub = f.types[-1] if len(f.types) > 1 else None
            w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=list(reversed([int(x) for x in t.shape])), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    g, c = open_mmproj(tmp_path / "m.gguf")
    g.close()
    assert (c.min_pixels, c.max_pixels) == (2 * 16 * 16, 4096 * 16 * 16)


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_picture_keeps_its_size_in_whole_blocks_within_the_files_limits(encoders, name):
    """24x20 scaled up to 2 blocks (8 patches' worth), 600x500 down to 17 x 14 (1024 patches' worth at most); one
    image chunk between <|media_begin|> (262) and <|media_end|> (264)."""
    img = PICTURES[name]
    assert kimik25_image.n_rows(img.shape[1], img.shape[0], encoders["f32"].cfg) == ROWS[name]
    assert FIX[f"ids_f32_{name}"].tolist() == [262] + [-1] * ROWS[name] + [264]


@pytest.mark.parametrize("q, tol", [("f32", 5e-4), ("f16", 2e-3)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, tol, name):
    """Resize (bicubic, padded with black), MoonViT3d with the grid resized bicubic (the 64 x 48 picture's 8 x 6
    patches take it as stored), the fused QKV and the 2-D rope, the 2x2 merge, the per-patch LayerNorm and MLP: the
    rows mtmd_encode_chunk gives (encoder flash attention off), as a fraction of their largest (~15 to 20).
    Measured: F32 within 2.3e-4 (4e-3 absolute), F16 within 7.2e-4 (1.3e-2 absolute)."""
    assert _off(encoders[q], name, q) < tol


def test_the_fixture_tells_the_bicubic_3d_grid_and_the_projectors_epsilon(encoders, monkeypatch):
    """Each of what sets Kimi-K2.5's encoder apart from Kimi-VL's, dropped, puts the wide picture's rows (its 12 x 6
    patches resized from the 8 x 6 grid) far outside the tolerance: Kimi-VL's bilinear resize with antialias, the
    grid's height and width read swapped, Kimi-VL's fixed 1e-5 for the file's epsilon (measured: 0.26, 1.2 and
    5.6e-3 of the largest value off, where the rows are within 2.3e-4)."""
    enc = encoders["f32"]
    assert _off(enc, "wide") < 5e-4

    def bilinear(grid: np.ndarray, nx: int, ny: int) -> np.ndarray:
        g = np.einsum("yi,ixe->yxe", _aa_weights(grid.shape[0], ny), grid.astype(np.float64))
        return np.einsum("xj,yje->yxe", _aa_weights(grid.shape[1], nx), g).reshape(ny * nx, -1).astype(np.float32)

    monkeypatch.setattr(kimik25_image, "resize_positions", bilinear)
    assert _off(enc, "wide") > 0.02
    monkeypatch.undo()
    monkeypatch.setattr(enc, "pos_grid", np.ascontiguousarray(enc.pos_grid.reshape(POS_W, POS_H, V_EMBD)))
    assert _off(enc, "wide") > 0.02
    monkeypatch.undo()
    monkeypatch.setattr(enc, "cfg", replace(enc.cfg, eps=1e-5))
    assert _off(enc, "wide") > 1e-3


def test_pixels_not_of_whole_blocks_are_refused_in_one_line(encoders):
    with one_line_error("sides multiples of 16"):
        encoders["f32"].encode(np.zeros((3, 24, 32), np.float32))


def test_a_file_without_its_projector_norm_is_refused_in_one_line(pair, tmp_path):
    bad = without_tensor(pair["f32"], tmp_path / "m.gguf", "mm.input_norm.bias")
    with one_line_error("mm.input_norm.bias"):
        KimiK25Encoder.load(bad, get_backend("cpu"))


@pytest.mark.parametrize("name", ["grid", "odd"])
def test_a_pictures_rows_lie_between_media_begin_and_media_end(vision, name):
    check_between(vision, FIX, PICTURES[name], f"f32_{name}", "<|media_begin|>", "<|media_end|>")


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally through DeepSeek-V3's latent attention and experts, then <|media_end|> and the
    text: logits within 2e-2 of mtmd_helper_eval_chunks' (measured 8.9e-3 and 5.8e-3, logits ~15)."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 2e-2)


def test_a_text_model_of_another_architecture_is_refused_in_one_line(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with one_line_error(r"a kimik25 projector goes with a Kimi-K2.5 text model \(deepseek2\), not llama"):
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])


def test_a_deepseek2_text_model_without_media_begin_is_refused_in_one_line(pair, tmp_path):
    """Kimi-VL's vocabulary (<|media_start|>, not <|media_begin|>) beside a Kimi-K2.5 projector."""
    from tiny_vision_kimivl import write_tiny_kimivl_text

    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with one_line_error(r"the vocabulary has no <\|media_begin\|> token; not a Kimi-K2.5 model"):
        Vision(Engine(write_tiny_kimivl_text(tmp_path / "t.gguf"), n_ctx=64), pair["f32"])


def test_a_glm52v_vocabulary_is_refused_in_one_line(pair, tmp_path):
    """libmtmd marks a vocabulary with <|begin_of_image|> (GLM-5.2-V's, which reuses this projector) with its own
    markers: kvrun lays out Kimi-K2.5's alone and says so."""
    from tiny_vision_kimik25 import IMAGE_TOKENS
    from tinymodel import _write_tiny_deepseek2

    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    text = _write_tiny_deepseek2(tmp_path / "t.gguf", Q.F32, 1, "v3", extra_tokens=IMAGE_TOKENS + ("<|begin_of_image|>",))
    with one_line_error(r"has <\|begin_of_image\|> \(GLM-5.2-V's markers\); kvrun lays out Kimi-K2.5's pictures only"):
        Vision(Engine(text, n_ctx=64), pair["f32"])


def test_cli_run_takes_a_kimik25_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["f32"], PICTURES["wide"], tmp_path, len(FIX["ids_f32_wide"]))  # 6 x 3 blocks, 2 markers


def test_the_encoder_runs_on_the_gpu_and_gives_the_cpus_rows(tmp_path, emulated):
    """On the kernel emulator (or a GPU): the encoder's rows within 2e-3 of the CPU encoder's, of their largest."""
    from gpu_checks import check_encoder_rows
    from tiny_vision import tiny_mmproj

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate
    from kvrun.runtime.projectors import load_encoder

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    path = tiny_mmproj("kimik25", Q.F32, tmp_path)
    pixels = np.random.default_rng(0).standard_normal((3, 32, 80)).astype(np.float32)  # (10 x 4 patches: the grid resized)
    check_encoder_rows(load_encoder(path, get_backend("cpu")), load_encoder(path, get_backend("gpu")), pixels, bound=2e-3)
