"""Images in, for Ling 3 VL (llama.cpp's projector type "ling3vl"): the mmproj file (loaders/mmproj.py), pictures sized
as Qwen2-VL's, Qwen3-VL's ViT (learned positions resized to the picture, fused QKV, 2-D rope) without DeepStack, the
merger norm over each patch and the MLP mm.0 / mm.2 (models/ling3vl_image.py), laid out between ``<|vision_start|>``
and ``<|vision_end|>`` with M-RoPE positions (runtime/vision_ling3vl.py), held to llama.cpp's libmtmd on the tiny pair
of tiny_vision_ling3vl.py (fixture: tools/make_vision_ling3vl_fixtures.py); and the encoder on the GPU backend's
kernel emulator against the CPU's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from kvrun.cache.base import KVCache
from kvrun.loaders.mmproj import open_mmproj
from kvrun.models import ling3vl_image, mrope_images, qwen2vl_image
from kvrun.models.ling3vl_image import Ling3VLEncoder
from kvrun.ops import get_backend
from tiny_vision_ling3vl import EPS, PATCH, V_EMBD
from vision_checks import check_cli_run, check_files, fixture, load_vision, one_line_error, pictures, row_ids, without_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_ling3vl_fixtures import IMAGES, PAIRS, PROMPTS, write_pair  # noqa: E402

FIX = fixture("ling3vl")
PICTURES = pictures(IMAGES)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors (F32, F16, F32 with the optional tensors), the very bytes the fixture
    was made from."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_ling3vl")), FIX)


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair[PAIRS["t"]], 512)


def _encoder(path: Path) -> Ling3VLEncoder:
    g, cfg = open_mmproj(path)
    return Ling3VLEncoder(g, cfg, get_backend("cpu"))


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, Ling3VLEncoder]:
    return {q: _encoder(pair[q]) for q in ("f32", "f16", "extras")}


def _off(enc: Ling3VLEncoder, name: str, q: str = "f32") -> float:
    """The encoder's rows for picture ``name`` against libmtmd's, the largest difference."""
    rows = enc.encode(qwen2vl_image.preprocess(PICTURES[name], enc.cfg))
    return float(np.abs(rows - FIX[f"embd_{q}_{name}"]).max())


def test_mmproj_config_reads_qwen2vls_pixel_limits_the_merge_and_gelu(encoders):
    c = encoders["f32"].cfg
    assert (c.projector_type, c.patch_size, c.n_embd, c.n_merge, c.n_text_embd, c.ffn_op) == ("ling3vl", PATCH, V_EMBD, 2, 64, "gelu")
    assert (c.min_pixels, c.max_pixels, c.eps) == (8 * 32 * 32, 4096 * 32 * 32, pytest.approx(EPS))  # (clip.cpp's 8 to 4096 merged rows)
    e, x = encoders["f32"], encoders["extras"]
    assert (e.patch_b, e.pre_ln, e.post_ln) == (None, None, None)  # (Ling's converter writes none of them)
    assert all(v is not None for v in (x.patch_b, x.pre_ln, x.post_ln))


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_are_libmtmds_grid_between_the_markers(encoders, name):
    """Qwen2-VL's smart resize in 32-pixel blocks (150 x 100 -> 5 x 3, 40 x 30 scaled up to 8 rows' worth: 4 x 3); one
    image chunk between <|vision_start|> (262) and <|vision_end|> (263), max(nx, ny) positions taken."""
    img = PICTURES[name]
    nx, ny = qwen2vl_image.grid(img.shape[1], img.shape[0], encoders["f32"].cfg)
    assert FIX[f"grid_f32_{name}"].tolist() == [nx, ny, max(nx, ny)]
    assert FIX[f"ids_f32_{name}"].tolist() == [262] + [-1] * (nx * ny) + [263]


@pytest.mark.parametrize("name", list(IMAGES))
def test_an_images_rows_take_libmtmds_decoder_positions(name):
    """Row (y, x) of an image at position 0: (t, h, w) = (0, y, x), as mtmd_image_tokens_get_decoder_pos (t, x, y)."""
    nx, ny, _ = FIX[f"grid_f32_{name}"].tolist()
    cache = KVCache([])  # (no layers: the images' record alone)
    mrope_images.add_image(cache, nx, ny)
    P = mrope_images.section_positions(cache, np.arange(nx * ny), image=True)
    d = FIX[f"dpos_f32_{name}"]
    assert P[:, 0].tolist() == d[:, 0].tolist() and P[:, 1].tolist() == d[:, 2].tolist() and P[:, 2].tolist() == d[:, 1].tolist()


@pytest.mark.parametrize("q, tol", [("f32", 5e-3), ("extras", 5e-3), ("f16", 1.5e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, tol, name):
    """Resize, the two patch kernels (and the patch bias where there is one), the resized learned positions, pre_ln
    where there is one, the blocks, post_ln where there is one, the merger norm over each patch, the 2x2 merge, mm.0,
    GELU, mm.2: the rows mtmd_encode_chunk gives (encoder flash attention off), rows ~10 to ~13 in magnitude.
    Measured: F32 within 3.0e-3, with the optional tensors 2.5e-3, F16 within 8.9e-3."""
    assert _off(encoders[q], name, q) < tol


def test_the_fixture_tells_the_merger_norm_and_where_it_norms(encoders, monkeypatch):
    """What sets Ling 3 VL's merger apart from Qwen3-VL's, changed, puts the wide picture's rows far outside the
    tolerance: the merger norm left out (measured 58 off), or normed over the merged 4 x n_embd row as Qwen3-VL's
    DeepStack mergers norm (2.1 off), where the rows are within 2.3e-3."""
    enc = encoders["f32"]
    assert _off(enc, "wide") < 5e-3
    E = enc.cfg.n_embd

    def mlp(ops, e, x):
        return ops.linear(e.mm2, ops.act(ops.linear(e.mm0, x, e.mm0_b), "gelu"), e.mm2_b)

    monkeypatch.setattr(ling3vl_image, "merger", lambda ops, e, x: mlp(ops, e, x.reshape(len(x) // 4, 4 * E)))
    assert _off(enc, "wide") > 1.0
    row_norm = lambda ops, e, x: mlp(ops, e, ops.layer_norm(x.reshape(len(x) // 4, 4 * E), np.tile(e.in_norm, 4), np.tile(e.in_norm_b, 4), e.cfg.eps))  # noqa: E731
    monkeypatch.setattr(ling3vl_image, "merger", row_norm)
    assert _off(enc, "wide") > 0.5


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_a_prompts_ids_and_the_position_after_it_are_libmtmds(vision, k):
    """<|vision_start|> rows <|vision_end|> at each marker, the text around them tokenized as mtmd_tokenize does; the
    text after a picture goes on from its position plus max(nx, ny), to llama.cpp's n_past after it all."""
    imgs = [PICTURES[n] for n in list(IMAGES)[: PROMPTS[k].count("<__media__>")]]
    segs = vision.segments(PROMPTS[k], imgs)
    assert row_ids(segs, imgs) == FIX[f"pids_t_{k}"].tolist()
    cache = vision.engine.new_cache()
    vision.engine.eval(cache, vision.prefill(cache, segs))  # (prefill leaves the last text for eval)
    assert mrope_images.text_position(mrope_images.images_of(cache), cache.offset) == int(FIX[f"npast_t_{k}"])


def _logits(vision, k: int) -> np.ndarray:
    imgs = [PICTURES[n] for n in list(IMAGES)[: PROMPTS[k].count("<__media__>")]]
    segs = vision.segments(PROMPTS[k], imgs)
    cache = vision.engine.new_cache()
    return vision.engine.eval(cache, vision.prefill(cache, segs))[-1]


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally, turned in the MLA layers by (t, t + y, t + x) under the file's M-RoPE sections,
    the text after a picture going on from t + max(nx, ny), through bailingmoe3's KDA layers and experts: logits
    within 1.5e-2 of mtmd_helper_eval_chunks' (measured 1.6e-3 and 2.9e-3, logits ~10 and ~13), the same argmax."""
    logits, want = _logits(vision, k), FIX[f"logits_t_{k}"]
    np.testing.assert_allclose(logits, want, atol=1.5e-2)
    assert logits.argmax() == want.argmax()


def test_without_the_pictures_mrope_positions_the_logits_are_far_off(vision, monkeypatch):
    """What the M-RoPE layout is worth: the same rows of the two-picture prompt fed at consecutive positions, as text
    (their grid not recorded), miss llama.cpp's logits by far more than the tolerance (measured 2.1)."""
    import kvrun.runtime.vision_qwen2vl as layout

    monkeypatch.setattr(layout, "add_image", lambda cache, nx, ny: None)
    assert np.abs(_logits(vision, 1) - FIX["logits_t_1"]).max() > 0.5


def test_pixels_not_of_whole_blocks_are_refused_in_one_line(encoders):
    with one_line_error("sides multiples of 32"):
        encoders["f32"].encode(np.zeros((3, 48, 64), np.float32))


@pytest.mark.parametrize("name", ["mm.input_norm.weight", "v.position_embd.weight"])
def test_a_file_without_the_merger_norm_or_the_positions_is_refused_in_one_line(pair, tmp_path, name):
    bad = without_tensor(pair["f32"], tmp_path / "m.gguf", name)
    with one_line_error(name.rsplit(".", 1)[0]):
        _encoder(bad)


def test_a_text_model_of_another_architecture_is_refused_in_one_line(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with one_line_error(r"a ling3vl projector goes with a Ling 3 VL text model \(bailingmoe3 with rope sections\), not llama"):
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])


def test_cli_run_takes_a_ling3vl_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["f32"], PICTURES["exact"], tmp_path, len(FIX["ids_f32_exact"]))  # 3 x 3 rows, 2 markers


def test_a_text_only_ling3_without_rope_sections_is_refused_in_one_line(pair, tmp_path):
    """llama.cpp turns a bailingmoe3 file without rope sections by plain rope and libmtmd feeds rows at consecutive
    positions there: not the Ling 3 VL layout, so refused rather than laid out otherwise."""
    from tiny_vision_ling3vl import write_tiny_ling3vl_text

    text = write_tiny_ling3vl_text(tmp_path / "text.gguf", sections=False)
    with one_line_error("this bailingmoe3 file states none"):
        load_vision(text, pair["f32"], 64)


def test_the_encoder_runs_on_the_gpu_and_gives_the_cpus_rows(tmp_path, emulated):
    """On the kernel emulator (or a GPU): the encoder beside a GPU text model, its attention on the device's arrays,
    writes the CPU encoder's rows within 2e-3 of their largest."""
    from gpu_checks import check_encoder_rows
    from tiny_vision import tiny_mmproj

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate
    from kvrun.runtime.projectors import load_encoder

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    path = tiny_mmproj("ling3vl", Q.F32, tmp_path)
    pixels = np.random.default_rng(0).standard_normal((3, 64, 96)).astype(np.float32)  # (6 x 4 patches: positions resized)
    check_encoder_rows(load_encoder(path, get_backend("cpu")), load_encoder(path, get_backend("gpu")), pixels, bound=2e-3)
