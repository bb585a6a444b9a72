"""Images in, for GLM-4.1V / GLM-4.5V (llama.cpp's projector type "glm4v"): the mmproj file (loaders/mmproj.py), the
RMSNorm ViT with its post-conv norm, learned positions resized bicubically to the picture, 2-D rope, the 2x2
downsampling conv and the SwiGLU merger (models/glm4v_image.py), the glm4 text model's multimodal rope
(models/glm4v.py) and the prompt's layout (runtime/vision_glm4v.py), held to llama.cpp's libmtmd on the tiny pair of
tiny_vision_glm4v.py (fixture: tools/make_vision_glm4v_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.cache.base import KVCache
from kvrun.loaders.errors import KvrunError
from kvrun.loaders.mmproj import open_mmproj
from kvrun.models import glm4v_image, mrope_images, qwen2vl_image
from kvrun.models.glm4v_image import Glm4VEncoder
from kvrun.ops import get_backend
from tiny_vision_glm4v import PATCH, POS_SIDE, SECTIONS, TEXT_GEOMETRY, V_EMBD
from vision_checks import CHATML, check_chat_keeps_picture, check_cli_run, check_files, check_logits, fixture, pictures

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_glm4v_fixtures import IMAGES, PAIRS, PROMPTS, write_pair  # noqa: E402

FIX = fixture("glm4v")
PICTURES = pictures(IMAGES)
N_TEXT = TEXT_GEOMETRY[0]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors, the very bytes the fixture was made from."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_glm4v")), FIX)


@pytest.fixture(scope="module")
def vision(pair):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    return Vision(Engine(pair["text"], n_ctx=512, n_batch=64, threads=1), pair[PAIRS["g4"]])


# ---------------------------------------------------------------- the projector file and the picture's size


def test_mmproj_config_reads_glm4vs_patches_pixel_limits_and_silu(pair):
    g, cfg = open_mmproj(pair["g4_f32"])
    assert (cfg.projector_type, cfg.patch_size, cfg.n_embd, cfg.n_merge, cfg.n_text_embd) == ("glm4v", PATCH, V_EMBD, 2, N_TEXT)
    assert (cfg.min_pixels, cfg.max_pixels) == (8 * 28 * 28, 4096 * 28 * 28)  # libmtmd's 6272 and 3211264
    assert cfg.ffn_op == "silu"
    g.close()


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_grid_is_libmtmds(pair, name):
    """Qwen2-VL's smart resize in 28-pixel blocks: 150 x 100 -> 5 x 4, 40 x 30 scaled up to 8 rows' worth (4 x 3)."""
    _, cfg = open_mmproj(pair["g4_f32"])
    img = PICTURES[name]
    nx, ny, n_pos = FIX[f"grid_g4_f32_{name}"].tolist()
    assert qwen2vl_image.grid(img.shape[1], img.shape[0], cfg) == (nx, ny) and n_pos == max(nx, ny)


# ---------------------------------------------------------------- the encoder


@pytest.mark.parametrize("proj, tol", [("g4_f32", 1e-2), ("g4_f16", 1.2e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_are_libmtmds(pair, proj, tol, name):
    """Resized, normalised, through the ViT (two temporal kernels and a bias, the post-conv RMSNorm, learned positions
    at the picture's grid, RMSNorms, fused QKV, 2-D rope, SwiGLU), the post RMSNorm, the 2x2 conv and the merger
    (fc, LayerNorm, GELU, SwiGLU): the rows mtmd_encode_chunk gives (encoder flash attention off), rows ~7."""
    enc = Glm4VEncoder.load(pair[proj], get_backend("cpu"))
    rows = enc.encode(qwen2vl_image.preprocess(PICTURES[name], enc.cfg))
    np.testing.assert_allclose(rows, FIX[f"embd_{proj}_{name}"], atol=tol)


def test_learned_positions_are_resized_bicubically_with_half_pixel_centres(pair, monkeypatch):
    """A constant grid stays constant (the weights sum to one, edges clamped), the learned grid's own size is kept as
    it is; Qwen3-VL's bilinear with aligned corners would put the wide picture's rows ~1 off libmtmd's."""
    pos = np.ones((POS_SIDE * POS_SIDE, 2), np.float32)
    np.testing.assert_allclose(glm4v_image.resize_positions(pos, POS_SIDE, 10, 3), 1.0, rtol=1e-6)
    assert glm4v_image.resize_positions(pos, POS_SIDE, POS_SIDE, POS_SIDE) is pos

    from kvrun.models import qwen3vl_image

    enc = Glm4VEncoder.load(pair["g4_f32"], get_backend("cpu"))
    px = qwen2vl_image.preprocess(PICTURES["wide"], enc.cfg)
    monkeypatch.setattr(glm4v_image, "resize_positions", qwen3vl_image.resize_positions)
    assert np.abs(enc.encode(px) - FIX["embd_g4_f32_wide"]).max() > 0.5


def test_the_downsampling_convs_bias_is_added(pair):
    """llama.cpp adds ``mm.patch_merger.bias`` (Hugging Face's Conv2d has one): without it the rows are far off."""
    enc = Glm4VEncoder.load(pair["g4_f32"], get_backend("cpu"))
    enc.down_conv_b = None
    rows = enc.encode(qwen2vl_image.preprocess(PICTURES["exact"], enc.cfg))
    assert np.abs(rows - FIX["embd_g4_f32_exact"]).max() > 0.5


# ---------------------------------------------------------------- positions and the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_an_images_rows_take_libmtmds_decoder_positions(name):
    """Row (y, x) of an image at position 0: (t, h, w) = (0, y, x), as mtmd_image_tokens_get_decoder_pos (t, x, y)."""
    nx, ny, _ = FIX[f"grid_g4_f32_{name}"].tolist()
    cache = KVCache([])  # (no layers: the images' record alone)
    mrope_images.add_image(cache, nx, ny)
    P = mrope_images.section_positions(cache, np.arange(nx * ny), image=True)
    d = FIX[f"dpos_g4_f32_{name}"]
    assert P[:, 0].tolist() == d[:, 0].tolist() and P[:, 1].tolist() == d[:, 2].tolist() and P[:, 2].tolist() == d[:, 1].tolist()


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """<|begin_of_image|> rows <|end_of_image|> at each marker, the rows turned by (t, t + y, t + x) under glm4's
    multimodal rope (neox-paired, sections [2, 1, 1, 0] over half of each head), the text after an image going on
    from t + max(nx, ny): mtmd_tokenize's ids, and logits within 2e-2 of mtmd_helper_eval_chunks' (logits ~11); the
    position after them all is llama.cpp's n_past."""
    cache = check_logits(vision, FIX, PICTURES, PROMPTS[k], f"g4_{k}", 2e-2)
    assert mrope_images.text_position(mrope_images.images_of(cache), cache.offset) == int(FIX[f"npast_g4_{k}"])


def test_image_rows_at_plain_positions_miss_llama_cpps_logits(vision, monkeypatch):
    """What the M-RoPE positions are worth: the same rows fed without their grid (each row at its slot, as text)
    miss llama.cpp's logits by far more than the tolerance."""
    import kvrun.runtime.vision_qwen2vl as layout

    monkeypatch.setattr(layout, "add_image", lambda cache, nx, ny: None)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        check_logits(vision, FIX, PICTURES, PROMPTS[1], "g4_1", 0.1)


def test_a_sectioned_glm4_is_neox_paired_and_a_plain_one_takes_no_images(vision, tmp_path):
    """The sectioned text model turns neox pairs under the multimodal tables (text: every pair by p, the sections
    covering all 4 pairs); GLM-4-0414's plain glm4 keeps its consecutive pairs and takes no images."""
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tinymodel import write_tiny_model

    m = vision.engine.model
    assert m.sections == SECTIONS and m.cfg.rope_neox and m.takes_images
    np.testing.assert_allclose(m.rope_cos, m.neox_cos)
    plain = Engine(write_tiny_model(tmp_path / "glm4.gguf", arch="glm4"), n_ctx=64)
    assert not plain.model.cfg.rope_neox and not plain.model.takes_images
    with pytest.raises(KvrunError, match="glm4 models take no images") as e:
        Vision(plain, vision.encoder.path)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- refusals, kvrun run


def test_a_glm4v_projector_beside_a_qwen2vl_text_model_is_refused(pair, tmp_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tiny_vision_qwen2vl import write_tiny_qwen2vl_text

    text = write_tiny_qwen2vl_text(tmp_path / "q2.gguf")
    with pytest.raises(KvrunError, match="goes with a GLM-4.1V text model") as e:
        Vision(Engine(text, n_ctx=64), pair["g4_f32"])
    assert "\n" not in str(e.value)


def test_a_projector_without_its_merger_is_a_one_line_error(pair, tmp_path):
    from gguf import GGUFReader, GGUFWriter

    src = GGUFReader(str(pair["g4_f32"]))
    bad = tmp_path / "bad.gguf"
    w = GGUFWriter(str(bad), "clip")
    for f in src.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        v = f.contents()
        if isinstance(v, list):
            w.add_array(f.name, v)
        elif isinstance(v, str):
            w.add_string(f.name, v)
        elif isinstance(v, bool):
            w.add_bool(f.name, v)
        elif isinstance(v, float):
            w.add_float32(f.name, v)
        else:
            w.add_uint32(f.name, v)
    for t in src.tensors:
        if t.name != "mm.patch_merger.weight":
            w.add_tensor(t.name, np.asarray(t.data).reshape(list(reversed([int(n) for n in t.shape]))))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(KvrunError, match="'mm.patch_merger.weight' is missing") as e:
        Glm4VEncoder.load(bad, get_backend("cpu"))
    assert "\n" not in str(e.value)


def test_cli_run_takes_a_glm4v_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["g4_f32"], PICTURES["odd"], tmp_path, 2 + 20)  # the markers, 5 x 4 rows, 8 bytes


def test_a_chat_keeps_a_picture_in_its_cache(tmp_path, pair, monkeypatch):
    """The next turn feeds only its new text (the picture's rows and grid stay in the cache), and its reply is a fresh
    chat's."""
    from tiny_vision_glm4v import write_tiny_glm4v_text

    text = write_tiny_glm4v_text(tmp_path / "chat.gguf", chat_template=CHATML)
    check_chat_keeps_picture(text, pair["g4_f32"], PICTURES["tall"], monkeypatch, n_ctx=512)
