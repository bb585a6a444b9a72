"""Images in, for Gemma 4 (llama.cpp's projector type "gemma4v"): the mmproj file (loaders/mmproj.py), the ViT with its
2-D rope, 3x3 pooling and clippable projection (models/gemma4v_image.py), pictures at (about) their own aspect laid out
between ``<|image>`` and ``<image|>`` (runtime/vision_gemma4.py) and read by the Gemma 4 text model with the rows of
a picture seeing each other (models/gemma4.py), held to llama.cpp's libmtmd on the tiny pair of
tiny_vision_gemma4.py (fixture: tools/make_vision_gemma4_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import KvrunError
from kvrun.loaders.mmproj import open_mmproj
from kvrun.models import gemma4v_image
from kvrun.models.gemma4v_image import Gemma4VEncoder
from kvrun.ops import get_backend
from tiny_vision_gemma4 import CLAMPS, PATCH, V_EMBD, write_tiny_gemma4_vl, write_tiny_gemma4v_mmproj
from vision_checks import (
    SAMPLE, call, check_chat_keeps_picture, check_cli_run, check_logits, fixture, load_vision,
    pictures, png_url, serving, tiny_pair,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_gemma4_fixtures import IMAGES, PROMPTS, STRIDE  # noqa: E402

FIX = fixture("gemma4")
PICTURES = pictures(IMAGES)
TEMPLATE = "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector (F32 and F16), the very bytes the fixture was made from."""
    return tiny_pair(tmp_path_factory, "gemma4", write_tiny_gemma4_vl, write_tiny_gemma4v_mmproj, FIX)


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 2048)


# ---------------------------------------------------------------- the projector file and the picture's size


def test_mmproj_config_reads_gemma4s_pooling_row_limits_and_projection(pair):
    g, cfg = open_mmproj(pair["f32"])
    assert (cfg.projector_type, cfg.patch_size, cfg.n_embd, cfg.n_text_embd) == ("gemma4v", PATCH, V_EMBD, 64)
    assert cfg.n_merge == 3  # (clip.cpp's default pooling_kernel_size: the file states none)
    block = (PATCH * 3) ** 2
    assert (cfg.min_pixels, cfg.max_pixels) == (70 * block, 1120 * block)  # libmtmd's 70 to 1120 rows' worth
    assert cfg.ffn_op == "gelu"
    g.close()


@pytest.mark.parametrize("name, size", [("small", (108, 108)), ("wide", (180, 60)), ("exact", (120, 96)), ("big", (300, 264)),
                                        ("huge", (444, 348))])  # fmt: skip
def test_a_picture_keeps_its_aspect_in_whole_blocks_within_70_to_1120_rows(pair, name, size):
    """Sides rounded to 12-pixel blocks (4-pixel patches pooled 3x3); scaled up short of 70 rows, down past 1120."""
    _, cfg = open_mmproj(pair["f32"])
    w, h, _ = IMAGES[name]
    assert gemma4v_image.target(w, h, cfg) == size
    assert gemma4v_image.n_rows(w, h, cfg) == (size[0] // 12) * (size[1] // 12) == len(FIX[f"ids_f32_{name}"]) - 2


def test_rope_turns_each_half_of_a_head_by_one_coordinate():
    """The first half of a head turns with the patch's column, the second with its row (neox pairs within each half)."""
    x = np.ones((2, 1, 8), np.float32)
    y = gemma4v_image.rope_halves(x, np.array([0, 3]), np.array([0, 0]))
    assert np.allclose(y[0], x[0]) and np.allclose(y[1, 0, 4:], 1.0) and not np.allclose(y[1, 0, :4], 1.0)
    assert np.allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1))


# ---------------------------------------------------------------- encoder and projector


@pytest.mark.parametrize("q, tol", [("f32", 1e-3), ("f16", 5e-3)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_every_picture_encodes_to_libmtmds_rows(pair, q, tol, name):
    """Bicubic resize with black padding, the ViT (2-D rope, unscaled attention, sandwich norms), 3x3 pooling,
    std_bias/std_scale, the clipped projection: the rows mtmd_encode_chunk gives (encoder flash attention off), ~6."""
    enc = Gemma4VEncoder.load(pair[q], get_backend("cpu"))
    rows = enc.encode(gemma4v_image.preprocess(PICTURES[name], enc.cfg))
    assert rows.shape == (len(FIX[f"ids_{q}_{name}"]) - 2, 64)
    np.testing.assert_allclose(rows[:: STRIDE.get(name, 1)], FIX[f"embd_{q}_{name}"], atol=tol)


def test_the_clippable_linears_bounds_are_read_and_bite(pair, tmp_path):
    enc = Gemma4VEncoder.load(pair["f32"], get_backend("cpu"))
    assert len(enc.clamps) == len(CLAMPS)
    free = Gemma4VEncoder.load(write_tiny_gemma4v_mmproj(tmp_path / "free.gguf", clamps=False), get_backend("cpu"))
    px = gemma4v_image.preprocess(PICTURES["exact"], enc.cfg)
    assert np.abs(free.encode(px) - enc.encode(px)).max() > 0.05


def test_a_picture_past_the_learned_positions_is_refused_in_one_line(pair):
    enc = Gemma4VEncoder.load(pair["f32"], get_backend("cpu"))
    with pytest.raises(KvrunError, match="outgrows the 128 learned positions") as e:
        enc.encode(np.zeros((3, 12, 1200), np.float32))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the layout in the prompt, and the text model


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """<|image>, the rows (64 a forward, seeing each other both ways), <image|>, then the text: mtmd_tokenize's ids,
    logits within 2e-2 of mtmd_helper_eval_chunks' (logits ~17)."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 2e-2)


def test_a_pictures_rows_see_each_other_both_ways(vision, monkeypatch):
    """(libmtmd decodes gemma4v's rows non-causally.)  Read causally, the logits are far from llama.cpp's."""
    import kvrun.cache.picture_block as picture_block  # (models/gemma4.py feeds a picture's rows through it)

    def causal(layer, q, pos, out):  # (the rows stored, each seeing the cache up to its own position only)
        layer.attend(np.ascontiguousarray(q, np.float32), pos, out, layer.spec)

    monkeypatch.setattr(picture_block, "attend_bidirectional", causal)
    segs = vision.segments(PROMPTS[0], [PICTURES["small"]])
    cache = vision.engine.new_cache()
    logits = vision.engine.eval(cache, vision.prefill(cache, segs))[-1]
    assert np.abs(logits - FIX["logits_0"]).max() > 0.5


def test_image_positions_count_a_pictures_rows(vision):
    for name in IMAGES:
        img = PICTURES[name]
        assert vision.image_positions(img) == len(FIX[f"ids_f32_{name}"]) - 2


def test_text_models_without_gemma4s_image_tokens_are_refused(pair, tmp_path, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tiny_gemma4 import write_tiny_gemma4

    with pytest.raises(KvrunError, match=r"has no <\|image> token; not a Gemma 4 vision model") as e:
        Vision(Engine(write_tiny_gemma4(tmp_path / "plain.gguf"), n_ctx=64), pair["f32"])
    assert "\n" not in str(e.value)
    with pytest.raises(KvrunError, match="takes no images|goes with a Gemma 4 text model|projector makes rows") as e:
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- kvrun run


def test_cli_run_takes_a_gemma4_picture(pair, tmp_path):
    rows = len(FIX["ids_f32_wide"])  # <|image>, 75 rows, <image|>, 8 bytes
    check_cli_run(pair["text"], pair["f32"], PICTURES["wide"], tmp_path, rows)


def test_a_chat_keeps_a_pictures_rows_in_its_cache(pair, tmp_path, monkeypatch):
    """A picture takes as many positions as its size asks (vision_chat reads image_positions): the next turn feeds
    only its new text, the picture is not encoded again, the reply is a fresh chat's."""
    text = write_tiny_gemma4_vl(tmp_path / "chat.gguf", chat_template=TEMPLATE)
    s = check_chat_keeps_picture(text, pair["f32"], PICTURES["wide"], monkeypatch)
    assert s.last_stats.n_prompt < s.n_prompt_tokens - len(FIX["ids_f32_wide"])


def test_the_server_takes_an_openai_image_url_part(pair, tmp_path):
    """A data-URL picture to /v1/chat/completions: the Python API's reply, every position counted."""
    import kvrun

    m = kvrun.load(str(write_tiny_gemma4_vl(tmp_path / "srv.gguf", chat_template=TEMPLATE)), n_ctx=1024, n_batch=64, threads=1,
                   mmproj=str(pair["f32"]))  # fmt: skip
    picture = {"type": "image_url", "image_url": {"url": png_url(PICTURES["exact"])}}
    msgs = [{"role": "user", "content": [{"type": "text", "text": "describe"}, picture]}]
    want = m.chat(msgs, **SAMPLE)
    with serving(m, "tiny-gemma4-vl") as port:
        status, body = call(port, "/v1/chat/completions", {"messages": msgs, **SAMPLE})
    assert status == 200 and body["choices"][0]["message"]["content"] == want
    assert body["usage"]["prompt_tokens"] > len(FIX["ids_f32_exact"])  # (the picture's 80 rows and its markers counted)
