"""Images in, for PaddleOCR-VL (llama.cpp's projector type "paddleocr"): the mmproj file and its pixel limits
(loaders/mmproj.py), the SigLIP/NaViT at the picture's own size with its position grid resized to it, the vision rope
over the patches' rows and columns, the 2x2 merge and the ``mlp_AR`` projector (models/paddleocr_image.py), the
paddleocr text model's multimodal rope (models/paddleocr.py) and the prompt's layout (runtime/vision_paddleocr.py),
held to llama.cpp's libmtmd on the tiny pair of tiny_vision_paddleocr.py (fixture:
tools/make_vision_paddleocr_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.cache.base import KVCache
from kvrun.loaders.errors import KvrunError
from kvrun.models import mrope_images, paddleocr_image
from kvrun.models.paddleocr_image import PaddleOCREncoder
from kvrun.ops import get_backend
from tiny_vision_paddleocr import MAX_PIXELS, MIN_PIXELS, N_TEXT_EMBD, PATCH, V_EMBD
from vision_checks import CHATML, check_chat_keeps_picture, check_cli_run, check_files, check_logits, fixture, mmproj_config, pictures
from vision_checks import without_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_paddleocr_fixtures import IMAGES, PAIRS, PROMPTS, write_pair  # noqa: E402

FIX = fixture("paddleocr")
PICTURES = pictures(IMAGES)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors, the very bytes the fixture was made from."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_paddleocr")), FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, PaddleOCREncoder]:
    return {q: PaddleOCREncoder.load(pair[q], get_backend("cpu")) for q in ("po_f32", "po_f16")}


@pytest.fixture(scope="module")
def vision(pair):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    return Vision(Engine(pair["text"], n_ctx=512, n_batch=64, threads=1), pair[PAIRS["po"]])


# ---------------------------------------------------------------- the projector file and the picture's size


def test_mmproj_config_reads_the_files_pixel_limits_a_2x2_merge_and_gelu(pair):
    """image_size is the converter's sqrt(max_pixels), not whole patches of the position grid: only nominal."""
    cfg = mmproj_config(pair["po_f32"])
    assert (cfg.projector_type, cfg.patch_size, cfg.n_embd, cfg.n_merge, cfg.n_text_embd) == ("paddleocr", PATCH, V_EMBD, 2, N_TEXT_EMBD)
    assert (cfg.min_pixels, cfg.max_pixels, cfg.ffn_op) == (MIN_PIXELS, MAX_PIXELS, "gelu")


def test_a_projector_without_its_pixel_limits_is_a_one_line_error(pair, tmp_path):
    from gguf import GGUFReader, GGUFWriter

    from kvrun.loaders.errors import GGUFError

    src = GGUFReader(str(pair["po_f32"]))
    w = GGUFWriter(str(tmp_path / "m.gguf"), "clip")
    for f in src.fields.values():
        if f.name.startswith("clip.") and f.name != "clip.vision.image_max_pixels":
            v = f.contents()
            {bool: w.add_bool, str: w.add_string, float: w.add_float32, list: w.add_array}.get(type(v), w.add_uint32)(f.name, v)
    for t in src.tensors:
        w.add_tensor(t.name, np.asarray(t.data).reshape([int(x) for x in reversed(t.shape)]))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(GGUFError, match="clip.vision.image_max_pixels is missing") as e:
        mmproj_config(tmp_path / "m.gguf")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_grid_is_libmtmds(pair, name):
    """Smart resize in 16-pixel blocks within the file's limits: 75 x 53 -> 5 x 3 (halves up), 30 x 20 scaled up to
    9 rows' worth (4 x 3), 300 x 200 down to 64 rows' worth (9 x 6); positions taken: max(nx, ny)."""
    cfg = mmproj_config(pair["po_f32"])
    img = PICTURES[name]
    nx, ny, n_pos = FIX[f"grid_po_f32_{name}"].tolist()
    assert paddleocr_image.grid(img.shape[1], img.shape[0], cfg) == (nx, ny) and n_pos == max(nx, ny)


# ---------------------------------------------------------------- the encoder


@pytest.mark.parametrize("proj, tol", [("po_f32", 5e-3), ("po_f16", 1e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_are_libmtmds(encoders, proj, tol, name):
    """Resized (bicubic, padded), normalised, through the ViT (patch kernel and bias, the 6 x 6 position grid resized
    to the picture, LayerNorms, the vision rope by row and column, GELU MLP, post LayerNorm), mm.input_norm, the 2x2
    merge and the projector MLP: the rows mtmd_encode_chunk gives (encoder flash attention off), rows ~12; measured
    3.2e-3 (F32) and 7.2e-3 (F16, ggml's F16 products) at most."""
    enc = encoders[proj]
    rows = enc.encode(paddleocr_image.preprocess(PICTURES[name], enc.cfg))
    np.testing.assert_allclose(rows, FIX[f"embd_{proj}_{name}"], atol=tol)


def test_patches_merge_as_2x2_blocks_not_as_4_consecutive_patches(encoders, monkeypatch):
    """libmtmd 0.3.36 merges each 2x2 block of patches (build_patch_merge_permute); newer clip.cpp sources stack 4
    consecutive patches of a raster row instead, which puts the rows far off the oracle's."""
    enc = encoders["po_f32"]
    px = paddleocr_image.preprocess(PICTURES["wide"], enc.cfg)
    monkeypatch.setattr(paddleocr_image, "unshuffle", lambda x, nx, ny, k: x.reshape(-1, k * k * x.shape[1]))
    assert np.abs(enc.encode(px) - FIX["embd_po_f32_wide"]).max() > 0.5


def test_the_rope_turns_quarters_by_row_and_column_neox_paired(encoders, monkeypatch):
    """The vision rope of Qwen2-VL (rope_multi, sections of a quarter head; neox pairs over the whole head), with the
    patches in raster order; newer sources' build_rope_2d (column on the first half, row on the second, adjacent
    pairs) misses the oracle's rows by far."""
    from kvrun.models import llama4_image

    enc = encoders["po_f32"]
    px = paddleocr_image.preprocess(PICTURES["exact"], enc.cfg)
    monkeypatch.setattr(paddleocr_image, "vision_rope", lambda ys, xs, d: llama4_image.rope_2d(ys, xs, d))
    assert np.abs(enc.encode(px) - FIX["embd_po_f32_exact"]).max() > 0.5


def test_position_grid_resizes_bilinearly_with_antialias(encoders, monkeypatch):
    """The learned 6 x 6 grid resized to the picture's patches as ggml_interpolate's BILINEAR | ANTIALIAS (clip.cpp's
    resize_position_embeddings default); GLM-4V's bicubic puts the wide picture's rows far off."""
    from kvrun.models import glm4v_image

    enc = encoders["po_f32"]
    px = paddleocr_image.preprocess(PICTURES["wide"], enc.cfg)
    monkeypatch.setattr(paddleocr_image, "resize_positions", glm4v_image.resize_positions)
    assert np.abs(enc.encode(px) - FIX["embd_po_f32_wide"]).max() > 0.1


def test_a_projector_without_its_projection_is_a_one_line_error(pair, tmp_path):
    bad = without_tensor(pair["po_f32"], tmp_path / "bad.gguf", "mm.1.weight")
    with pytest.raises(KvrunError, match="'mm.1.weight' is missing") as e:
        PaddleOCREncoder.load(bad, get_backend("cpu"))
    assert "\n" not in str(e.value)


def test_pixels_not_in_whole_blocks_are_refused_in_one_line(encoders):
    with pytest.raises(KvrunError, match="sides multiples of 16") as e:
        encoders["po_f32"].encode(np.zeros((3, 40, 48), np.float32))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- positions and the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_an_images_rows_take_libmtmds_decoder_positions(name):
    """Row (y, x) of an image at position 0: (t, h, w) = (0, y, x), as mtmd_image_tokens_get_decoder_pos (t, x, y)."""
    nx, ny, _ = FIX[f"grid_po_f32_{name}"].tolist()
    cache = KVCache([])  # (no layers: the images' record alone)
    mrope_images.add_image(cache, nx, ny)
    P = mrope_images.section_positions(cache, np.arange(nx * ny), image=True)
    d = FIX[f"dpos_po_f32_{name}"]
    assert P[:, 0].tolist() == d[:, 0].tolist() and P[:, 1].tolist() == d[:, 2].tolist() and P[:, 2].tolist() == d[:, 1].tolist()


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """<|IMAGE_START|> rows <|IMAGE_END|> at each marker, the rows fed causally and turned by (t, t + y, t + x) under
    paddleocr's multimodal rope (sections [2, 3, 3, 0]), the text after an image going on from t + max(nx, ny):
    mtmd_tokenize's ids, and logits within 2e-2 of mtmd_helper_eval_chunks' (measured 8.7e-3 at most, logits ~12);
    the position after them all is llama.cpp's n_past."""
    cache = check_logits(vision, FIX, PICTURES, PROMPTS[k], f"po_{k}", 2e-2)
    assert mrope_images.text_position(mrope_images.images_of(cache), cache.offset) == int(FIX[f"npast_po_{k}"])


def test_image_rows_at_plain_positions_miss_llama_cpps_logits(vision, monkeypatch):
    """What the M-RoPE positions are worth: the same rows fed without their grid (each row at its slot, as text)
    miss llama.cpp's logits by far more than the tolerance (measured: 1.2 off)."""
    import kvrun.runtime.vision_qwen2vl as layout

    monkeypatch.setattr(layout, "add_image", lambda cache, nx, ny: None)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        check_logits(vision, FIX, PICTURES, PROMPTS[1], "po_1", 0.1)


def test_the_text_model_takes_images_with_neox_multimodal_tables(vision):
    m = vision.engine.model
    assert m.takes_images and m.sections == [2, 3, 3, 0]


# ---------------------------------------------------------------- refusals, kvrun run, a chat


def test_a_paddleocr_projector_beside_another_text_model_is_refused(pair, tmp_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tiny_vision_qwen2vl import write_tiny_qwen2vl_text

    text = write_tiny_qwen2vl_text(tmp_path / "q2.gguf")
    with pytest.raises(KvrunError, match="goes with a PaddleOCR-VL text model") as e:
        Vision(Engine(text, n_ctx=64), pair["po_f32"])
    assert "\n" not in str(e.value)


def test_cli_run_takes_a_paddleocr_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["po_f32"], PICTURES["odd"], tmp_path, 2 + 15)  # the markers, 5 x 3 rows, 8 bytes


def test_a_chat_keeps_a_picture_in_its_cache(tmp_path, pair, monkeypatch):
    """The next turn feeds only its new text (the picture's rows and grid stay in the cache), and its reply is a fresh
    chat's."""
    from tiny_vision_paddleocr import write_tiny_paddleocr_text

    text = write_tiny_paddleocr_text(tmp_path / "chat.gguf", chat_template=CHATML)
    check_chat_keeps_picture(text, pair["po_f32"], PICTURES["tall"], monkeypatch, n_ctx=512)
