"""Images in, for Gemma 3n (llama.cpp's projector type "gemma3nv"): the mmproj file (loaders/mmproj.py), MobileNetV5
with its edge residual, universal inverted residual and multi-query attention blocks, the multi-scale fusion adapter
and embed_vision (models/gemma3nv_image.py), a picture's 256 rows between ``<start_of_image>`` and ``<end_of_image>``
(runtime/vision_gemma3n.py) read causally by the Gemma 3n text model (models/gemma3n.py), held to llama.cpp's libmtmd
on the tiny pair of tiny_vision_gemma3n.py (fixture: tools/make_vision_gemma3n_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from kvrun.loaders.errors import KvrunError
from kvrun.loaders.mmproj import open_mmproj
from kvrun.models import gemma3nv_image
from kvrun.models.gemma3nv_image import Gemma3nVisionEncoder
from kvrun.ops import get_backend
from tiny_vision_gemma3n import IMAGE_SIZE, V_EMBD, with_audio_side, write_tiny_gemma3n_vl, write_tiny_gemma3nv_mmproj
from vision_checks import check_chat_keeps_picture, check_cli_run, check_files, check_logits, fixture, load_vision, pictures, without_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_gemma3n_fixtures import IMAGES, PROMPTS  # noqa: E402

FIX = fixture("gemma3n")
PICTURES = pictures(IMAGES)
TEMPLATE = "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n"
#: rows' tolerance (rows up to ~4): the picture at the encoder's size, then those libmtmd resizes first
ROW_TOL = {"exact": 5e-3, "small": 1e-2, "wide": 1e-2, "tall": 2.5e-2}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector (F16, as the converter writes it), the very bytes the fixture was made from."""
    d = tmp_path_factory.mktemp("vision_gemma3n")
    files = {"text": write_tiny_gemma3n_vl(d / "text.gguf"), "f16": write_tiny_gemma3nv_mmproj(d / "mmproj-f16.gguf", Q.F16)}
    return check_files(files, FIX)


@pytest.fixture(scope="module")
def encoder(pair) -> Gemma3nVisionEncoder:
    return Gemma3nVisionEncoder.load(pair["f16"], get_backend("cpu"))


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f16"], 1024)


# ---------------------------------------------------------------- the projector file


def test_mmproj_config_reads_gemma3ns_square_and_256_rows(pair):
    g, cfg = open_mmproj(pair["f16"])
    assert (cfg.projector_type, cfg.image_size, cfg.n_embd, cfg.n_text_embd) == ("gemma3nv", IMAGE_SIZE, V_EMBD, 64)
    assert gemma3nv_image.n_rows(cfg) == 256 == len(FIX["ids_f16_exact"]) - 2  # (image_size / patch_size, as clip.cpp counts)
    assert cfg.n_tokens == 256 and cfg.n_merge == 16  # (256 "patches" a side, 16 x 16 to a row: `kvrun info`'s rows)
    g.close()


def test_blocks_are_found_stage_by_stage_as_clip_cpp_loads_them(encoder):
    """Edge residuals, inverted residuals and attention told apart by their tensors; each stage's end recorded (its
    next block is at stride 2; the ends of stages 2 and 3 feed the fusion adapter)."""
    assert [b.kind for b in encoder.blocks] == ["edge", "edge", "uir", "uir", "uir", "attn", "uir", "uir", "attn"]
    assert encoder.stage_ends == [1, 3, 6, 8]


def test_same_padding_puts_the_odd_pixel_after():
    x = np.ones((1, 4, 4), np.float32)
    assert gemma3nv_image.pad_same(x, 3, 2).shape == (1, 5, 5)  # (ceil(4/2) = 2 outputs need 5 pixels: 0 before, 1 after)
    assert gemma3nv_image.pad_same(x, 3, 2)[0, 4].sum() == 0 and gemma3nv_image.pad_same(x, 3, 2)[0, 0].sum() == 4
    assert gemma3nv_image.pad_same(x, 5, 2).shape == (1, 7, 7)  # (1 before, 2 after)


# ---------------------------------------------------------------- encoder and projector


@pytest.mark.parametrize("name", list(IMAGES))
def test_every_picture_encodes_to_libmtmds_rows(encoder, name):
    """Resized to 512 x 512 (Gemma 3's fixed-size preprocessor), MobileNetV5, the fusion adapter pooled to 16 x 16,
    embed_vision: the 256 rows mtmd_encode_chunk gives.  Measured: 3e-3 at the encoder's size, 6e-3 to 1.7e-2 for
    resized pictures (F16 kernels: ggml's F16 activations flip an ulp here and there through 20 convolutions)."""
    rows = encoder.encode(gemma3nv_image.preprocess(PICTURES[name], encoder.cfg))
    assert rows.shape == (256, 64)
    np.testing.assert_allclose(rows, FIX[f"embd_f16_{name}"], atol=ROW_TOL[name])


@pytest.mark.parametrize("step", ["symmetric padding", "no layer scale", "unscaled attention", "no fusion of stage 2"])
def test_the_fixture_tells_each_distinguishing_step(encoder, monkeypatch, step):
    """Dropping a step the graph takes moves the rows far past the tolerance."""
    import kvrun.models.gemma3nv_image as m

    if step == "symmetric padding":
        monkeypatch.setattr(m, "pad_same", lambda x, k, s: np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2))))
    elif step == "no layer scale":
        for b in encoder.blocks:
            monkeypatch.setitem(b.tensors, "layer_scale", None)
    elif step == "unscaled attention":
        monkeypatch.setattr(m.math, "sqrt", lambda v: 1.0)
    else:
        monkeypatch.setattr(encoder, "stage_ends", [encoder.stage_ends[0], encoder.stage_ends[1], encoder.stage_ends[3], 99])
    try:
        rows = encoder.encode(gemma3nv_image.preprocess(PICTURES["exact"], encoder.cfg))
    except (KvrunError, ValueError):
        return  # (a map of another size: as far from libmtmd's as can be)
    assert np.abs(rows - FIX["embd_f16_exact"]).max() > 0.1


def test_a_missing_tensor_is_refused_in_one_line(pair, tmp_path):
    """The projection and its norm, the stem, a block's projection (the widths then do not chain)."""
    for name in ("mm.input_projection.weight", "mm.soft_emb_norm.weight", "v.conv_stem.conv.weight", "v.blk.1.0.pw_proj.conv.weight"):
        bad = without_tensor(pair["f16"], tmp_path / "bad.gguf", name)
        with pytest.raises(KvrunError) as e:
            enc = Gemma3nVisionEncoder.load(bad, get_backend("cpu"))
            enc.encode(gemma3nv_image.preprocess(PICTURES["exact"], enc.cfg))
        assert "\n" not in str(e.value) and ("missing" in str(e.value) or "incomplete" in str(e.value)), str(e.value)


# ---------------------------------------------------------------- the layout in the prompt, and the text model


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """<start_of_image>, 256 rows (64 a forward, causal, per-layer inputs token 0's), <end_of_image>, then the text:
    mtmd_tokenize's ids, logits within 0.15 of mtmd_helper_eval_chunks' (logits ~11; measured 0.07)."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 0.15)


def test_a_pictures_rows_are_read_causally_with_token_0s_per_layer_inputs(vision, monkeypatch):
    """(libmtmd decodes gemma3nv's rows causally; llama.cpp's gemma3n graph gives them token 0's per-layer inputs,
    scaled as a token's.)  Unscaled per-layer inputs put the logits far from llama.cpp's."""
    import math

    m = vision.engine.model
    real = m.per_layer_inputs

    def unscaled(tokens, x0):
        out = real(tokens, x0)
        if m.input_embd is None:
            return out
        c = m.cfg
        emb = np.empty((len(tokens), c.n_layer * c.n_embd_altup), np.float32)
        m.be.get_rows(m.per_layer_tok_embd, tokens, emb)
        emb = emb.reshape(len(tokens), c.n_layer, c.n_embd_altup).transpose(1, 0, 2)
        return (out - emb * (math.sqrt(c.n_embd_altup) - 1.0) / math.sqrt(2.0)).astype(np.float32)

    monkeypatch.setattr(m, "per_layer_inputs", unscaled)
    segs = vision.segments(PROMPTS[0], [PICTURES["exact"]])
    cache = vision.engine.new_cache()
    logits = vision.engine.eval(cache, vision.prefill(cache, segs))[-1]
    assert np.abs(logits - FIX["logits_0"]).max() > 0.5


def test_image_positions_count_256_rows(vision):
    for name in IMAGES:
        assert vision.image_positions(PICTURES[name]) == 256 == len(FIX[f"ids_f16_{name}"]) - 2


def test_the_published_file_with_its_audio_side_reads_as_pictures_alone(vision, pair, tmp_path):
    """Gemma 3n's mmproj holds an audio encoder (gemma3na) beside the vision one; libmtmd 0.3.36 loads the vision side
    alone (measured: the same rows), so kvrun reads it as a picture projector, not as Qwen2.5-Omni's pair."""
    from kvrun.runtime.vision import Vision

    both = Vision(vision.engine, with_audio_side(pair["f16"], tmp_path / "mmproj-both.gguf"))
    assert isinstance(both, Vision) and both.encoder.cfg.projector_type == "gemma3nv"
    np.testing.assert_allclose(both.image_rows(PICTURES["exact"]), FIX["embd_f16_exact"], atol=ROW_TOL["exact"])


def test_text_models_that_do_not_go_with_it_are_refused(pair, tmp_path, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tinymodel import write_tiny_model

    with pytest.raises(KvrunError, match="has no <start_of_image> token; not a Gemma 3n vision model") as e:
        Vision(Engine(write_tiny_model(tmp_path / "plain.gguf", "gemma3n"), n_ctx=64), pair["f16"])
    assert "\n" not in str(e.value)
    with pytest.raises(KvrunError, match="takes no images|goes with a Gemma 3n text model|projector makes rows") as e:
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f16"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- kvrun run, chat


def test_cli_run_takes_a_gemma3n_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["f16"], PICTURES["wide"], tmp_path, len(FIX["ids_f16_wide"]))


def test_a_chat_keeps_a_pictures_rows_in_its_cache(pair, tmp_path, monkeypatch):
    """The next turn feeds only its new text, the picture is not encoded again, the reply is a fresh chat's."""
    text = write_tiny_gemma3n_vl(tmp_path / "chat.gguf", chat_template=TEMPLATE)
    s = check_chat_keeps_picture(text, pair["f16"], PICTURES["small"], monkeypatch)
    assert s.last_stats.n_prompt < s.n_prompt_tokens - len(FIX["ids_f16_small"])
