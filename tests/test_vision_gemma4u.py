"""Pictures and audio in, for Gemma 4 12B's "unified" projector (one mmproj: "gemma4uv" pictures, "gemma4ua" clips):
the file's config (loaders/mmproj.py), the encoder-free image embedder (models/gemma4uv_image.py) and raw-waveform
audio embedder (models/gemma4ua_audio.py), both sides through one ``--mmproj`` (runtime/omni.py), pictures between
``<|image>`` and ``<image|>`` read both ways, clips between ``<|audio>`` and ``<audio|>`` read causally
(runtime/vision_gemma4u.py, models/gemma4.py), held to llama.cpp's libmtmd on the tiny pair of
tiny_vision_gemma4u.py (fixture: tools/make_vision_gemma4u_fixtures.py)."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.gguf_file import GGUFFile
from kvrun.loaders.mmproj import open_mmproj
from kvrun.models import gemma4uv_image
from kvrun.models.gemma4ua_audio import Gemma4UAudioEncoder, load_gemma4ua_config
from kvrun.models.gemma4uv_image import Gemma4UVEncoder
from kvrun.ops import get_backend
from tiny_vision_gemma4u import PATCH, V_EMBD, write_tiny_gemma4u_mmproj
from vision_checks import check_cli_run, check_files, fixture, load_vision, one_line_error, row_ids, without_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_gemma4u_fixtures import CLIPS, IMAGES, PROMPTS, STRIDE, media, write_pair  # noqa: E402

FIX = fixture("gemma4u")
MEDIA = media()


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector (F32 and F16), the very bytes the fixture was made from."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_gemma4u")), FIX)


@pytest.fixture(scope="module")
def omni(pair):
    return load_vision(pair["text"], pair["f32"], 512)


def pictures_rows(path: Path, name: str) -> np.ndarray:
    enc = Gemma4UVEncoder.load(path, get_backend("cpu"))
    return enc.encode(gemma4uv_image.preprocess(MEDIA[name], enc.cfg))


def clip_encoder(path: Path, backend: str = "cpu") -> Gemma4UAudioEncoder:
    g = GGUFFile(path)
    return Gemma4UAudioEncoder(g, load_gemma4ua_config(g), get_backend(backend))


# ---------------------------------------------------------------- the projector file


def test_the_pooling_is_folded_into_the_patch_and_rows_are_gemma4vs_70_to_1120(pair):
    g, cfg = open_mmproj(pair["f32"])
    assert (cfg.projector_type, cfg.patch_size, cfg.n_merge, cfg.n_embd, cfg.n_text_embd) == ("gemma4uv", 3 * PATCH, 1, V_EMBD, 64)
    assert (cfg.min_pixels, cfg.max_pixels) == (70 * 12 * 12, 1120 * 12 * 12)
    assert load_gemma4ua_config(g).n_text_embd == 64  # (the audio side: frames of 640 whatever num_mel_bins says)
    g.close()


@pytest.mark.parametrize("name", list(IMAGES) + list(CLIPS))
def test_each_medium_is_laid_out_as_mtmd_tokenize_does(omni, name):
    """A picture's rows (one per 12 x 12 pixels, at least 70) between <|image> and <image|>, a clip's (one per 640
    samples, the last padded) between <|audio> and <audio|>; as many positions taken as rows."""
    ids = FIX[f"ids_f32_{name}"].tolist()
    segs = omni.segments("<__media__>", [MEDIA[name]])
    assert row_ids(segs, []) == ids
    assert omni.image_positions(MEDIA[name]) == ids.count(-1)


# ---------------------------------------------------------------- the embedders' rows


@pytest.mark.parametrize("q, tol", [("f32", 2e-5), ("f16", 3e-3)])
def test_every_picture_embeds_to_libmtmds_rows(pair, q, tol):
    """Bicubic resize, the patch LayerNorm, the projection with its bias, LayerNorm, both position tables, the pos
    LayerNorm, the unweighted RMSNorm and mm.input_projection: mtmd_encode_chunk's rows (~5; measured 3e-6 F32,
    1.6e-3 F16)."""
    for name in IMAGES:
        rows = pictures_rows(pair[q], name)
        assert len(rows) == FIX[f"ids_{q}_{name}"].tolist().count(-1)
        np.testing.assert_allclose(rows[:: STRIDE.get(name, 1)], FIX[f"embd_{q}_{name}"], atol=tol, err_msg=name)


@pytest.mark.parametrize("q, tol", [("f32", 5e-5), ("f16", 2e-3)])
def test_every_clip_embeds_to_libmtmds_rows(pair, q, tol):
    """640-sample frames, the last zero-padded, RMS-normed and projected (~10; measured 1.3e-5 F32, 4e-4 F16)."""
    enc = clip_encoder(pair[q])
    for name in CLIPS:
        np.testing.assert_allclose(enc.encode(MEDIA[name]), FIX[f"embd_{q}_{name}"], atol=tol, err_msg=name)


NORMS = ["the patch LayerNorm", "the embedding LayerNorm", "the pos LayerNorm"]


@pytest.mark.parametrize("step", NORMS + ["the x and y tables swapped"])
def test_the_fixture_fails_when_a_step_is_dropped(pair, step, monkeypatch):
    """The rows are held to each of gemma4uv's own steps: any of its three LayerNorms left out (the first, over a
    patch's pixels, is what makes its rows gemma4uv's and not a plain linear patch embedding), or the x table not
    the patch's column's."""
    enc = Gemma4UVEncoder.load(pair["f32"], get_backend("cpu"))
    if step in NORMS:
        calls, real = [], gemma4uv_image._HostOps.layer_norm

        def layer_norm(x, w, b, eps):  # (the step's LayerNorm passes its input through)
            calls.append(step)
            return x if len(calls) - 1 == NORMS.index(step) else real(x, w, b, eps)

        monkeypatch.setattr(gemma4uv_image._HostOps, "layer_norm", staticmethod(layer_norm))
    else:
        enc.pos = enc.pos[::-1].copy()
    rows = enc.encode(gemma4uv_image.preprocess(MEDIA["wide"], enc.cfg))
    assert np.abs(rows - FIX["embd_f32_wide"]).max() > 0.1


# ---------------------------------------------------------------- the prompt, both sides, and the text model


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_clips_and_text_match_llama_cpp(omni, k):
    """A picture, a picture and a clip, a clip and a picture: mtmd_tokenize's ids, and the logits within 3e-2 of
    mtmd_helper_eval_chunks' (~12; measured 1.3e-2), the same argmax."""
    prompt, names = PROMPTS[k]
    segs = omni.segments(prompt, [MEDIA[n] for n in names])
    assert row_ids(segs, []) == FIX[f"pids_{k}"].tolist()
    cache = omni.engine.new_cache()
    logits = omni.engine.eval(cache, omni.prefill(cache, segs))[-1]
    np.testing.assert_allclose(logits, FIX[f"logits_{k}"], atol=3e-2)
    assert logits.argmax() == FIX[f"logits_{k}"].argmax()


def _logits(omni, k: int) -> np.ndarray:
    prompt, names = PROMPTS[k]
    cache = omni.engine.new_cache()
    return omni.engine.eval(cache, omni.prefill(cache, omni.segments(prompt, [MEDIA[n] for n in names])))[-1]


def test_a_pictures_rows_see_each_other_and_a_clips_do_not(omni, monkeypatch):
    """libmtmd decodes gemma4uv's rows non-causally and gemma4ua's causally: either read the other way, the logits
    are far from llama.cpp's."""
    import kvrun.cache.picture_block as picture_block  # (models/gemma4.py feeds a picture's rows through it)

    with monkeypatch.context() as m:  # a clip's rows read both ways
        m.setattr(Gemma4UAudioEncoder, "feed_context", lambda self, model: nullcontext())
        assert np.abs(_logits(omni, 2) - FIX["logits_2"]).max() > 0.2

    def causal(layer, q, pos, out):  # (a picture's rows stored, each seeing the cache up to its own position only)
        layer.attend(np.ascontiguousarray(q, np.float32), pos, out, layer.spec)

    monkeypatch.setattr(picture_block, "attend_bidirectional", causal)
    assert np.abs(_logits(omni, 0) - FIX["logits_0"]).max() > 0.2


# ---------------------------------------------------------------- one-line errors, a one-sided file, kvrun run


@pytest.mark.parametrize("name", ["v.patch_norm.3.bias", "mm.a.input_projection.weight"])
def test_a_projector_file_missing_a_tensor_is_refused_in_one_line(pair, tmp_path, name):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    broken = without_tensor(pair["f32"], tmp_path / "broken.gguf", name)
    with one_line_error(name):
        Vision(Engine(pair["text"], n_ctx=64), broken)


def test_text_models_that_do_not_go_with_it_are_refused_in_one_line(pair, tmp_path, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tiny_gemma4 import write_tiny_gemma4

    with one_line_error(r"has no <\|image> token; not a Gemma 4 vision model"):
        Vision(Engine(write_tiny_gemma4(tmp_path / "plain.gguf"), n_ctx=64), pair["f32"])
    with one_line_error("takes no images|goes with a Gemma 4 text model|projector makes rows"):
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])


def test_a_picture_past_the_learned_positions_is_refused_in_one_line(pair):
    enc = Gemma4UVEncoder.load(pair["f32"], get_backend("cpu"))
    with one_line_error("outgrows the 64 learned positions"):
        enc.encode(np.zeros((3, 12, 12 * 65), np.float32))


def test_a_file_with_the_picture_side_alone_opens_for_pictures(pair, tmp_path):
    from kvrun.runtime.vision import Vision

    one = write_tiny_gemma4u_mmproj(tmp_path / "vision-only.gguf", audio=False)
    v = Vision(load_vision(pair["text"], pair["f32"], 64).engine, one)
    assert type(v) is Vision and v.image_positions(MEDIA["exact"]) == 80
    np.testing.assert_allclose(pictures_rows(one, "wide"), FIX["embd_f32_wide"], atol=2e-5)


def test_cli_run_takes_a_gemma4u_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["f32"], MEDIA["wide"], tmp_path, len(FIX["ids_f32_wide"]))


# ---------------------------------------------------------------- the GPU (the emulator without one)


def test_both_embedders_on_the_gpu_give_the_cpus_rows(pair, emulated):
    """The same forwards on models/vit_device.py's ops, F16 matrices: the CPU's rows within 2e-3 of their largest."""
    from audio_checks import needs_gpu  # (skips where there is neither a GPU nor the emulator's compiler)
    from gpu_checks import rel_err

    if needs_gpu.args[0]:
        pytest.skip(needs_gpu.kwargs["reason"])
    cpu, gpu = (Gemma4UVEncoder.load(pair["f16"], get_backend(d)) for d in ("cpu", "gpu"))
    assert type(gpu.be).__name__ == "GPUBackend"
    px = gemma4uv_image.preprocess(MEDIA["exact"], cpu.cfg)
    want, got = cpu.encode(px), gpu.encode(px)
    assert isinstance(got, np.ndarray) and got.shape == want.shape == (80, 64) and rel_err(want, got) < 2e-3
    want, got = clip_encoder(pair["f16"]).encode(MEDIA["long"]), clip_encoder(pair["f16"], "gpu").encode(MEDIA["long"])
    assert isinstance(got, np.ndarray) and got.shape == want.shape == (52, 64) and rel_err(want, got) < 2e-3


def test_kvrun_info_says_both_sides_and_gemma4vs_row_range(tmp_path):
    """One row per 48-pixel patch (the 3x3 pooling folded into the patch, no merge): gemma4v's 70 to 1120 rows a
    picture, as clip.cpp limits them; and the audio side beside it."""
    from click.testing import CliRunner

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(write_tiny_gemma4u_mmproj(tmp_path / "u.gguf"))])
    assert r.exit_code == 0, r.output
    assert "70 to 1120 rows a picture" in r.output and "; and audio: gemma4ua, " in r.output and "750 rows per 30 s" in r.output
