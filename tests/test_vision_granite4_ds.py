"""Granite 4.1 Vision's own text model with its pictures: granite with ``granite.deepstack_mapping`` (models/granite.py),
as llama.cpp 0.3.36's granite graph reads it.  The projector's rows (models/granite4v_image.py: K blocks side by
side) are the model's ``n_embd_inp`` wide, n_embd x (1 + the mapping's distinct blocks); block 0 is the input, not
multiplied by ``embedding_scale``, and layer il > 0 gets the block its entry names added to its input.  Held to
libmtmd on the tiny pair of tiny_vision_granite4_ds.py (fixture: tools/make_vision_granite4_ds_fixtures.py), on the
CPU and on the kernel emulator's GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_vision_granite4 import write_tiny_granite4v_mmproj
from tiny_vision_granite4_ds import MAPPING, N_EMBD, N_ROW, write_tiny_granite4v_ds_text
from vision_checks import block_ids, check_between, check_files, check_logits, fixture, load_vision, one_line_error, pictures

from kvrun.models.granite import GraniteModel
from kvrun.models.llama import LlamaModel
from kvrun.ops import gpu_available
from kvrun.ops.gpu import emulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_granite4_ds_fixtures import IMAGES, PROMPTS, write_pair  # noqa: E402

FIX = fixture("granite4_ds")
PICTURES = pictures(IMAGES)
#: the logits' bound against libmtmd's (test_vision_granite4.py's; measured 3.4e-4 on logits ~4)
TOL = 2e-3
#: the GPU's logits against the CPU's, relative to their largest (tests/test_gpu_archs2.py's bound)
BOUND = 2e-3


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its F32 projector, the very bytes the fixture was made from."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_granite4_ds")), FIX)


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 1024)


def _logits(vision, k: int) -> np.ndarray:
    """The logits after prompt ``k`` with its pictures."""
    prompt = PROMPTS[k]
    segs = vision.segments(prompt, [PICTURES[n] for n in list(PICTURES)[: prompt.count("<__media__>")]])
    cache = vision.engine.new_cache()
    return vision.engine.eval(cache, vision.prefill(cache, segs))[-1]


def test_the_mapping_makes_the_models_image_rows_four_blocks_wide(vision):
    """Three distinct blocks in the mapping: rows 32 x (1 + 3) wide, the projector's four blocks of 32."""
    m = vision.engine.model
    assert isinstance(m, GraniteModel) and m.deepstack == MAPPING
    assert (m.n_deepstack_layers, m.n_embd_inp, vision.encoder.cfg.n_text_embd) == (3, N_ROW, N_ROW)


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_come_before_a_newline_as_libmtmd_lays_them_out(vision, name):
    n = check_between(vision, FIX, PICTURES[name], f"f32_{name}", "", "")
    assert FIX[f"ids_f32_{name}"][-1] == 10 and n == len(FIX[f"ids_f32_{name}"])


def test_the_newline_after_a_picture_is_a_scaled_token_with_no_levels(pair, vision):
    """The ``"\\n"`` row of a picture's block: its token embedding times ``embedding_scale`` (3: llama.cpp scales
    tokens, and the model does not scale image rows), zeros where the levels go (a token adds none)."""
    from gguf import GGUFReader

    embd = next(t for t in GGUFReader(pair["text"]).tensors if t.name == "token_embd.weight")
    nl = vision.idefics3.rows(PICTURES["wide"])[-1]
    assert nl.shape == (N_ROW,) and not nl[N_EMBD:].any()
    np.testing.assert_array_equal(nl[:N_EMBD], np.float32(3.0) * np.asarray(embd.data)[10])


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Block 0 unscaled into the input, blocks 1, 2, 3 added at layers 1, 3, 4, then the text: logits within 2e-3 of
    mtmd_helper_eval_chunks', the same argmax, every row one position."""
    cache = check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), TOL, block_ids(vision))
    assert cache.offset == int(FIX[f"npast_{k}"])


def test_the_fixture_fails_when_the_levels_are_not_added(vision, monkeypatch):
    """With layer_input Llama's (no block added at any layer), the logits are far from libmtmd's (measured 0.31)."""
    monkeypatch.setattr(GraniteModel, "layer_input", LlamaModel.layer_input)
    assert np.abs(_logits(vision, 0) - FIX["logits_0"]).max() > 25 * TOL


@pytest.mark.parametrize("mapping", [[-1, 1, 2, 3, -1], [-1, 3, -1, 2, 1]], ids=["block-b-at-layer-b", "blocks-reversed"])
def test_the_fixture_fails_when_the_levels_go_to_the_wrong_layers(vision, monkeypatch, mapping):
    """Block b added at layer b (the mapping's gap at layer 2 ignored), or the blocks at their layers in reverse: far
    from libmtmd's (measured 0.084 and 0.29)."""
    monkeypatch.setattr(vision.engine.model, "deepstack", mapping)
    assert np.abs(_logits(vision, 0) - FIX["logits_0"]).max() > 25 * TOL


def test_the_fixture_fails_when_image_rows_are_scaled(vision, monkeypatch):
    """Image rows multiplied by ``embedding_scale`` as tokens are (as a Granite text model without DeepStack has
    them): far from libmtmd's (measured 0.17)."""
    monkeypatch.setattr(GraniteModel, "embedding_scale", lambda self: self.cfg.embedding_scale)
    assert np.abs(_logits(vision, 0) - FIX["logits_0"]).max() > 25 * TOL


def test_a_projector_of_another_width_or_a_bad_mapping_is_refused_in_one_line(pair, tmp_path):
    """The 64-wide projector of test_vision_granite4.py (n_embd x 2) beside this model, whose rows are 128 wide; a
    mapping naming block 5 of 2 levels (llama.cpp refuses it on load)."""
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    narrow = write_tiny_granite4v_mmproj(tmp_path / "narrow.gguf", n_text_embd=64)
    with one_line_error("the projector makes rows 64 wide and .* embeds 32 \\(128 with its DeepStack levels\\)"):
        Vision(Engine(pair["text"], n_ctx=64), narrow)
    bad = write_tiny_granite4v_ds_text(tmp_path / "bad.gguf", mapping=[-1, 5, 2])
    with one_line_error("granite.deepstack_mapping names block 5 of 2 DeepStack levels"):
        Engine(bad, n_ctx=64)


@pytest.mark.skipif(not gpu_available() and not emulate.available(), reason="no GPU and no host C++ compiler for the emulator")
def test_on_the_gpu_the_logits_are_the_cpus(pair, vision, emulated, monkeypatch):
    """The text model on the GPU (the kernel emulator here) with the CPU encoder's rows (the GPU encoder is checked by
    test_gpu_vision_granite4.py): the levels go up and are added on the device, the logits within 2e-3 of the CPU's
    (relative to their largest) and of libmtmd's within TOL; then decode steps from captured graphs as the CPU's."""
    from gpu_checks import rel_err

    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    gpu = Vision(Engine(pair["text"], device="gpu", n_ctx=256, n_batch=64, threads=1), pair["f32"])
    assert gpu.engine.backend.name == "gpu"
    monkeypatch.setattr(gpu.idefics3.encoder, "encode", vision.encoder.encode)
    segs = [v.segments(PROMPTS[0], [PICTURES["wide"]]) for v in (vision, gpu)]  # (the GPU's "\n" row from its token_embd)
    caches = [v.engine.new_cache() for v in (vision, gpu)]
    a, b = (v.engine.eval(c, v.prefill(c, s))[-1] for v, c, s in zip((vision, gpu), caches, segs))
    assert rel_err(a, b) < BOUND and np.abs(b - FIX["logits_0"]).max() < TOL
    n0 = gpu.engine.graphs.n_replays
    for t in (5, 9, 14):  # (text steps: nothing added, the first captured, the rest replayed)
        assert rel_err(vision.engine.eval(caches[0], [t])[-1], gpu.engine.eval(caches[1], [t])[-1]) < BOUND
    assert gpu.engine.graphs.n_replays - n0 >= 2
