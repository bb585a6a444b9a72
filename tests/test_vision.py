"""Images in, for Gemma 3: the mmproj file (loaders/mmproj.py), the SigLIP encoder and projector (models/siglip.py),
and image rows in the prompt (runtime/vision.py), held to llama.cpp's libmtmd on the tiny pair of tiny_vision.py
(fixture: tools/make_vision_fixtures.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter

from kvrun.loaders.errors import KvrunError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.loaders.mmproj import load_mmproj_config, open_mmproj
from kvrun.models.siglip import SiglipEncoder, load_image, preprocess
from kvrun.ops import get_backend
from tiny_vision import IMAGE_SIZE, MEAN, PATCH, STD, V_EMBD, sample_image, write_tiny_gemma3_vl, write_tiny_mmproj

FIX = np.load(Path(__file__).parent / "fixtures" / "vision_gemma3.npz")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector (F32 and F16), the very bytes the fixture was made from."""
    d = tmp_path_factory.mktemp("vision")
    files = {"text": write_tiny_gemma3_vl(d / "text.gguf"), "f32": write_tiny_mmproj(d / "mmproj-f32.gguf", Q.F32),
             "f16": write_tiny_mmproj(d / "mmproj-f16.gguf", Q.F16)}  # fmt: skip
    for k, p in files.items():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == str(FIX[f"sha256_{k}"]), f"{k}: not the fixture's file"
    return files


# ---------------------------------------------------------------- the projector file


def test_mmproj_config_reads_the_clip_vision_hyperparameters(pair):
    g, cfg = open_mmproj(pair["f32"])
    assert (cfg.projector_type, cfg.image_size, cfg.patch_size, cfg.n_embd) == ("gemma3", IMAGE_SIZE, PATCH, V_EMBD)
    assert (cfg.n_layer, cfg.n_head, cfg.n_ff, cfg.n_merge) == (2, 2, 48, 4)
    assert cfg.image_mean == pytest.approx(MEAN) and cfg.image_std == pytest.approx(STD)
    assert cfg.n_text_embd == 64 and cfg.n_tokens == 16  # 16x16 patches pooled 4x4
    g.close()


def _clip_file(path: Path, projector: str | None) -> Path:
    w = GGUFWriter(str(path), "clip")
    if projector is not None:
        w.add_string("clip.projector_type", projector)
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


def test_other_projector_types_are_refused_in_one_line_naming_the_supported_one(tmp_path):
    with pytest.raises(KvrunError, match="projector type 'qwen2vl' is not supported; kvrun reads gemma3") as e:
        load_mmproj_config(GGUFFile(_clip_file(tmp_path / "q.gguf", "qwen2vl")))
    assert "\n" not in str(e.value)


def test_a_text_model_given_as_mmproj_is_refused(pair):
    with pytest.raises(KvrunError, match="not 'clip': not a multimodal projector"):
        open_mmproj(pair["text"])


def test_info_describes_a_projector_and_run_sends_it_to_mmproj(pair):
    """`kvrun info mmproj.gguf` says what the file is and how to use it; given as the model, one line says where it goes."""
    from click.testing import CliRunner

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(pair["f32"])])
    assert r.exit_code == 0 and r.output.startswith("multimodal projector") and "16 rows an image" in r.output, r.output
    assert "give it with --mmproj" in r.output
    r = CliRunner().invoke(main, ["run", str(pair["f32"]), "-p", "hi", "-n", "2"])
    assert r.exit_code != 0 and "a multimodal projector (mmproj), not a model; give it with --mmproj" in r.output
    assert "Traceback" not in r.output


# ---------------------------------------------------------------- the encoder and projector


@pytest.mark.parametrize("q, tol", [("f32", 3e-3), ("f16", 4e-3)])
def test_image_rows_match_libmtmd_for_a_picture_at_the_encoders_size(pair, q, tol):
    """224x224 in: no resizing, so this is the encoder and projector alone.  libmtmd's default flash attention
    (F16 K/V) is 1.7e-3 from kvrun's float32 attention (rows ~6 in magnitude); without it, 1e-4 (below)."""
    enc = SiglipEncoder.load(pair[q], get_backend("cpu"))
    rows = enc.encode(preprocess(sample_image(), enc.cfg))
    assert rows.shape == (16, 64)
    np.testing.assert_allclose(rows, FIX[f"embd_{q}_square"], atol=tol)


@pytest.mark.parametrize("name, img, tol", [("square", sample_image(), 2e-4), ("wide", sample_image(300, 180, seed=1), 5e-4)])
def test_image_rows_match_libmtmd_without_flash_attention(pair, name, img, tol):
    """300x180 in: scaled to 224x135 (bilinear, Pillow's filter as clip.cpp's port of it) and centred on black."""
    enc = SiglipEncoder.load(pair["f32"], get_backend("cpu"))
    np.testing.assert_allclose(enc.encode(preprocess(img, enc.cfg)), FIX[f"embd_f32_nofa_{name}"], atol=tol)


def test_preprocess_pads_a_wide_picture_to_a_centred_square():
    from kvrun.loaders.mmproj import MmprojConfig

    cfg = MmprojConfig("gemma3", 8, 2, 4, 4, 1, 1, 1e-6, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 2, 4)
    px = preprocess(np.full((4, 8, 3), 255, np.uint8), cfg)  # 8 wide, 4 high -> 8x4, rows 2..5 of 8
    assert px.shape == (3, 8, 8)
    assert (px[:, 2:6] == 1.0).all() and (px[:, :2] == 0.0).all() and (px[:, 6:] == 0.0).all()


def test_unreadable_images_are_one_line_errors(tmp_path):
    with pytest.raises(KvrunError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a picture")
    with pytest.raises(KvrunError, match="cannot read it as an image") as e:
        load_image(tmp_path / "bad.png")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- image rows in the prompt

PROMPTS = ["Look: <__media__> what?", "<__media__>a<__media__> two", "the the the in in a <__media__>the"]


@pytest.fixture(scope="module")
def vision(pair):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    return Vision(Engine(pair["text"], n_ctx=256, n_batch=64, threads=1), pair["f32"])


def _images(prompt: str) -> list[np.ndarray]:
    return [sample_image() if j % 2 == 0 else sample_image(300, 180, seed=1) for j in range(prompt.count("<__media__>"))]


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_prompt_layout_is_mtmds_and_logits_after_image_and_text_match_llama_cpp(vision, k):
    """<start_of_image>, the rows, <end_of_image>, text tokenized piece by piece: mtmd_tokenize's ids (-1 an image
    row); the rows fed unscaled, seeing each other both ways (prompt 2's image straddles the window of 8), then the
    text: logits within 6e-3 of mtmd_helper_eval_chunks' (logits ~25; fed causally they are 1.2 to 2.4 off)."""
    segs = vision.segments(PROMPTS[k], _images(PROMPTS[k]))
    assert [i for s in segs for i in (s if isinstance(s, list) else [-1] * len(s))] == FIX[f"ids_{k}"].tolist()
    cache = vision.engine.new_cache()
    last = vision.prefill(cache, segs)
    logits = vision.engine.eval(cache, last)[-1]
    np.testing.assert_allclose(logits, FIX[f"logits_{k}"], atol=1e-2)
    assert logits.argmax() == FIX[f"logits_{k}"].argmax()


def test_an_image_is_fed_in_n_batch_pieces_each_seeing_itself_whole(pair):
    """n_batch 4 < 16 rows: four forwards, as llama.cpp splits an image chunk by n_batch (not the fixture's setting:
    checked against feeding it whole only for running, and for the cache's length)."""
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    v = Vision(Engine(pair["text"], n_ctx=256, n_batch=4, threads=1), pair["f32"])
    cache = v.engine.new_cache()
    last = v.prefill(cache, v.segments(PROMPTS[0], _images(PROMPTS[0])))
    assert cache.offset == len(FIX["ids_0"]) - len(last)
    assert np.isfinite(v.engine.eval(cache, last)).all()


def test_image_count_and_markers_must_agree_and_images_go_first_without_markers(vision):
    with pytest.raises(KvrunError, match="2 image markers"):
        vision.segments("<__media__><__media__>", [sample_image()])
    segs = vision.segments("what?", [sample_image()])
    assert isinstance(segs[1], np.ndarray) and vision.engine.tokenizer.decode(segs[-1]) == "<end_of_image>what?"


def test_rows_of_another_width_and_models_without_images_are_refused(vision, tmp_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tinymodel import write_tiny_model

    with pytest.raises(KvrunError, match="not this model's projector"):
        vision.engine.eval_embd(vision.engine.new_cache(), np.zeros((4, 32), np.float32))
    with pytest.raises(KvrunError, match="phi2 models take no images"):  # (llama takes SmolVLM's: test_vision_idefics3.py)
        Vision(Engine(write_tiny_model(tmp_path / "phi2.gguf", arch="phi2"), n_ctx=64), tmp_path / "unused.gguf")


# ---------------------------------------------------------------- kvrun run --mmproj --image


def test_cli_run_takes_images_with_mmproj_and_refuses_them_without(pair, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from kvrun.cli import main

    png = tmp_path / "wide.png"
    Image.fromarray(sample_image(300, 180, seed=1)).save(png)
    r = CliRunner().invoke(main, ["run", str(pair["text"]), "--mmproj", str(pair["f32"]), "--image", str(png), "--image", str(png),
                                  "-p", "describe", "-n", "4", "--temp", "0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "prompt 44 tok" in r.output  # <start_of_image>, 16 rows, <end_of_image> twice, then "describe"
    r = CliRunner().invoke(main, ["run", str(pair["text"]), "--image", str(png), "-p", "x"])
    assert r.exit_code == 2 and "--image needs --mmproj FILE" in r.output
