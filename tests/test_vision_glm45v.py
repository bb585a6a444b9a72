"""GLM-4.5V's language side, as llama.cpp 0.3.36 runs it: no architecture of its own but GLM-4.5's ``glm4moe`` (its
experts, QK norm, leading dense layer: models/glm4.py) with multimodal rope sections (``rope.dimension_sections``,
llama.cpp's rope type MROPE: models/mrope_text.py), beside GLM-4V's "glm4v" projector (models/glm4v_image.py,
runtime/vision_glm4v.py).  Held to llama.cpp on the arch fixture ``glm4moe-mrope`` (text alone,
tools/make_arch_fixtures.py) and to libmtmd on the tiny pair of tiny_vision_glm45v.py (pictures and text,
tools/make_vision_glm45v_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from test_models import _build, _fixture_error
from tiny_glm4 import write_tiny_glm4
from tiny_vision_glm45v import ARCH_SECTIONS, SECTIONS
from tinymodel import FIXTURE_MODELS, write_tiny_model
from vision_checks import check_cli_run, check_files, check_logits, fixture, pictures

from kvrun.loaders.errors import GGUFError, KvrunError
from kvrun.models import mrope_images

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_glm45v_fixtures import IMAGES, PROMPTS, write_pair  # noqa: E402

FIX = fixture("glm45v")
PICTURES = pictures(IMAGES)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector, the very bytes the fixture was made from."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_glm45v")), FIX)


@pytest.fixture(scope="module")
def vision(pair):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    return Vision(Engine(pair["text"], n_ctx=512, n_batch=64, threads=1), pair["g45"])


# ---------------------------------------------------------------- the text model alone


def test_a_sectioned_glm4moe_turns_text_by_llama_cpps_multimodal_tables(tmp_path):
    """The arch fixture's sections [1, 1, 1, 5] put pairs 3..7 of each head's 8 in the extra sector, which a text token
    turns by position 0 (not at all): its logits (test_models.test_forward_matches_llamacpp, 2.6e-4 from llama.cpp's,
    as the plain glm4moe's 2.4e-4) are far off with plain neox rope."""
    _, model = _build(write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS["glm4moe-mrope"]))
    assert model.sections == ARCH_SECTIONS and model.cfg.rope_neox and model.takes_images
    assert _fixture_error(tmp_path, "glm4moe-mrope", lambda m: None) < 1e-3

    def plain_neox(m):
        m.rope_cos, m.rope_sin = m.neox_cos, m.neox_sin

    assert _fixture_error(tmp_path, "glm4moe-mrope", plain_neox) > 3e-2


def test_a_plain_glm4moe_takes_no_images(vision, tmp_path):
    """GLM-4.5's glm4moe (no sections) keeps its plain neox rope, and a glm4v projector beside it is refused in one line."""
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    plain = Engine(write_tiny_model(tmp_path / "g.gguf", **FIXTURE_MODELS["glm4moe"]), n_ctx=64)
    assert plain.model.sections is None and not plain.model.takes_images
    with pytest.raises(KvrunError, match="glm4moe models take no images") as e:
        Vision(plain, vision.encoder.path)
    assert "\n" not in str(e.value)


def test_a_sectioned_glm4moe_missing_a_tensor_is_named_in_one_line(tmp_path):
    path = write_tiny_glm4(tmp_path / "m.gguf", "glm4moe", qk_norm=True, sections=ARCH_SECTIONS, drop=("blk.2.ffn_up_shexp.weight",))
    with pytest.raises(GGUFError, match="tensor 'blk.2.ffn_up_shexp.weight' is missing") as e:
        _build(path)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- pictures


@pytest.mark.parametrize("name", list(IMAGES))
def test_an_images_grid_is_libmtmds(vision, name):
    nx, ny, n_pos = FIX[f"grid_g45_{name}"].tolist()
    enc = vision.encoder
    from kvrun.models import qwen2vl_image

    img = PICTURES[name]
    assert qwen2vl_image.grid(img.shape[1], img.shape[0], enc.cfg) == (nx, ny) and n_pos == max(nx, ny)


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """<|begin_of_image|> rows <|end_of_image|> at each marker, the rows turned by (t, t + y, t + x) under glm4moe's
    multimodal rope (sections [2, 3, 3, 0] over 8 pairs), through its experts: mtmd_tokenize's ids, and logits within
    2e-2 of mtmd_helper_eval_chunks' (measured: 9.3e-3 and 8.6e-3 on logits up to 9 and 13, the projector's rows
    being ~7e-3 from libmtmd's: test_vision_glm4v.py); the position after them all is llama.cpp's n_past."""
    assert vision.engine.model.sections == SECTIONS
    cache = check_logits(vision, FIX, PICTURES, PROMPTS[k], f"g45_{k}", 2e-2)
    assert mrope_images.text_position(mrope_images.images_of(cache), cache.offset) == int(FIX[f"npast_g45_{k}"])


def test_image_rows_at_plain_positions_miss_llama_cpps_logits(vision, monkeypatch):
    """What the M-RoPE positions are worth here: the same rows fed without their grid (each at its slot, as text)
    miss libmtmd's logits by far more than the tolerance (2.9)."""
    import kvrun.runtime.vision_qwen2vl as layout

    monkeypatch.setattr(layout, "add_image", lambda cache, nx, ny: None)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        check_logits(vision, FIX, PICTURES, PROMPTS[1], "g45_1", 0.1)


def test_cli_run_takes_a_glm45v_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["g45"], PICTURES["odd"], tmp_path, 2 + 20)  # the markers, 5 x 4 rows


def test_a_sectioned_glm4moe_on_the_gpu_gives_the_cpus_logits(tmp_path, monkeypatch):
    """Text on ``--device gpu`` (the kernel emulator where no GPU is at hand): the multimodal tables are plain rope
    tables to the GPU's kernels, the experts its own (models/moe.py); measured 1.1e-6 relative.  (Pictures are the
    CPU's: the glm4v encoder refuses the GPU in one line.)"""
    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate
    from kvrun.runtime.engine import Engine

    if not gpu_available():
        if not emulate.available():
            pytest.skip("no GPU and no host C++ compiler for the emulator")
        monkeypatch.setenv("KVRUN_GPU_EMULATE", "1")
    path = write_tiny_model(tmp_path / "m.gguf", **FIXTURE_MODELS["glm4moe-mrope"])
    ids = list(np.random.default_rng(3).integers(0, 200, 20))
    cpu = Engine(path, device="cpu", n_ctx=64, n_batch=16)
    gpu = Engine(path, device="gpu", n_ctx=64, n_batch=16)
    a = cpu.eval(cpu.new_cache(), ids, logits_all=True)
    b = gpu.eval(gpu.new_cache(), ids, logits_all=True)
    assert np.abs(a - b).max() / np.abs(a).max() < 1e-3
