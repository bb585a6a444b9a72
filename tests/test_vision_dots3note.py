"""Images in, for dots.note (llama.cpp's projector type "dots3note_v", models/dots3note_image.py): dots.ocr's picture
sizing, NaViT and 2x2 merger with dots.note's per-head Q/K RMSNorms and its "pyramid" of blocks whose MLP is routed to
experts (a sigmoid router, the selection bias choosing, the chosen sigmoids renormalised weighing), laid out between
``<|img|>`` and ``<|endofimg|>`` (runtime/vision_dots3note.py) and read by dots.note's own text model
(models/dots3note.py), held to llama.cpp's libmtmd on the tiny pair of tiny_vision_dots3note.py (fixture:
tools/make_vision_dots3note_fixtures.py; dots.ocr's pictures and prompts)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import GGUFError
from kvrun.models import dotsocr_image
from kvrun.models.dots3note_image import Dots3NoteVisionEncoder
from kvrun.models.dotsocr_image import DotsOCREncoder
from kvrun.ops import get_backend
from tiny_vision_dots3note import EXP_FF, N_USED, PYRAMID, write_tiny_dots3note_v_mmproj
from vision_checks import (check_between, check_cli_run, check_files, check_logits, check_refused_beside, fixture, load_vision, mmproj_config,
                           one_line_error, pictures, without_tensor)  # fmt: skip

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_dots3note_fixtures import IMAGES, PROMPTS, write_pair  # noqa: E402

FIX = fixture("dots3note")
PICTURES = pictures(IMAGES)
PROJECTORS = ("f32", "f16")
#: the rows' bounds (measured: F32 1.2e-5, F16 7.9e-3 at most over the six pictures, rows of up to 14)
ATOL = {"f32": 1e-4, "f16": 2e-2}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny dots3note text model and its projectors (F32 and F16), the fixture's bytes."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_dots3note")), FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, Dots3NoteVisionEncoder]:
    return {q: Dots3NoteVisionEncoder.load(pair[q], get_backend("cpu")) for q in PROJECTORS}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 1024)


def _rows(enc: Dots3NoteVisionEncoder, name: str) -> np.ndarray:
    return enc.encode(dotsocr_image.preprocess(PICTURES[name], enc.cfg))


# ---------------------------------------------------------------- the projector file


def test_the_config_reads_the_spatial_merge_and_the_experts(encoders):
    enc = encoders["f32"]
    c = enc.cfg
    assert (c.projector_type, c.n_merge, c.ffn_op, c.n_text_embd, enc.n_used) == ("dots3note_v", 2, "silu", 64, N_USED)
    assert ["router" in L for L in enc.layers] == [n > 0 for n in PYRAMID]  # (the pyramid: a dense block, then experts)
    assert [len(L.get("gate_exps", ())) for L in enc.layers] == list(PYRAMID)
    assert enc.layers[1]["gate_exps"][0].n_rows == EXP_FF


@pytest.mark.parametrize("name, match", [
    ("v.blk.0.attn_q_norm.weight", "tensor 'v.blk.0.attn_q_norm.weight' is missing"),
    ("v.blk.1.ffn_gate_inp.weight", "tensor 'v.blk.1.ffn_gate_inp.weight' is missing"),
    ("v.blk.2.ffn_down_exps.weight", "tensor 'v.blk.2.ffn_down_exps.weight' is missing"),
    ("v.blk.0.ffn_up.weight", "tensor 'v.blk.0.ffn_up.weight' is missing"),
])  # fmt: skip
def test_a_missing_tensor_is_refused_in_one_line(pair, tmp_path, name, match):
    from kvrun.runtime.projectors import load_encoder

    with one_line_error(match):
        load_encoder(without_tensor(pair["f32"], tmp_path / "m.gguf", name), get_backend("cpu"))


def test_a_file_without_the_merge_or_the_experts_used_is_refused_in_one_line(tmp_path):
    """clip.cpp requires ``clip.vision.spatial_merge_size`` and ``clip.vision.expert_used_count`` of this type."""
    from kvrun.runtime.projectors import load_encoder

    with one_line_error("expert_used_count is missing; the dots3note_v projector file is incomplete"):
        load_encoder(write_tiny_dots3note_v_mmproj(tmp_path / "u.gguf", used=None), get_backend("cpu"))
    with pytest.raises(GGUFError, match="spatial_merge_size is missing or under 2; the dots3note_v projector file is incomplete") as e:
        mmproj_config(write_tiny_dots3note_v_mmproj(tmp_path / "m.gguf", merge=None))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the rows


@pytest.mark.parametrize("q", PROJECTORS)
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, name):
    """dots.ocr's sizing (its block-aligned bicubic, within 9..64 blocks), the NaViT with Q/K norms and experts, the
    merger: the rows of libmtmd's image chunk (encoder flash attention off), up to ggml's F16 rounding."""
    rows = _rows(encoders[q], name)
    assert rows.shape == FIX[f"embd_{q}_{name}"].shape
    np.testing.assert_allclose(rows, FIX[f"embd_{q}_{name}"], atol=ATOL[q])


def _dense_experts(self, ops, L, h):
    """Every expert of a block run on every patch, weighed by the sigmoids renormalised over them all (no top-k)."""
    if "router" not in L:
        return DotsOCREncoder.mlp(self, ops, L, h)
    xp = ops.xp
    p = 1.0 / (1.0 + xp.exp(-ops.linear(L["router"], h)))
    w = p / p.sum(axis=1, keepdims=True)
    out = 0
    for e in range(len(L["gate_exps"])):
        act = ops.act(ops.linear(L["gate_exps"][e], h), "silu") * ops.linear(L["up_exps"][e], h)
        out = out + ops.linear(L["down_exps"][e], act) * w[:, e : e + 1]
    return out.astype(np.float32)


@pytest.mark.parametrize("step, patch", [
    ("the experts run dense (every expert, no top-k)", ("mlp", _dense_experts)),
    ("the selection bias weighing too (weights of p + exp_probs_b)", "bias"),
    ("the per-head Q/K norms", ("heads", lambda self, ops, L, r, t: t)),
])  # fmt: skip
def test_the_fixture_fails_without_a_distinguishing_step(encoders, monkeypatch, step, patch):
    """dots.note's own steps show in the rows: without one, the square picture's rows are far from libmtmd's."""
    enc = encoders["f32"]
    if patch == "bias":  # (the bias folded into the router's sigmoids: the weights then come from p + b as well)
        for L in enc.layers:
            if "router" in L:
                monkeypatch.setitem(L, "probs_b", None)
    else:
        monkeypatch.setattr(Dots3NoteVisionEncoder, *patch)
    err = np.abs(_rows(enc, "square") - FIX["embd_f32_square"]).max()
    assert err > 1e-3, f"{step}: rows still within {err:.1e}"


# ---------------------------------------------------------------- the layout and the text model


@pytest.mark.parametrize("name", ["small", "odd", "large"])
def test_a_pictures_rows_lie_between_img_and_endofimg(vision, name):
    """The markers tokenized as text, as libmtmd does (the tiny model's byte vocabulary spells them out)."""
    assert len(vision.image_rows(PICTURES[name])) == check_between(vision, FIX, PICTURES[name], f"f32_{name}", "<|img|>", "<|endofimg|>")


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """The rows through dots.note's text model's ``input_embd``, causally at consecutive positions, then the text:
    logits within 1e-2 of mtmd_helper_eval_chunks' (measured: 4.6e-3, the tiny MLA model's float32 sums apart)."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 1e-2)


def test_another_text_model_is_refused_in_one_line(pair, tiny_llama_path):
    check_refused_beside(tiny_llama_path, pair["f32"], r"a dots3note_v projector goes with a dots.note text model \(dots3note\), not llama")


def test_cli_run_takes_a_dots3note_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["f32"], PICTURES["wide"], tmp_path, len(FIX["ids_f32_wide"]))


def test_the_encoder_on_the_gpu_gives_the_cpus_rows(tmp_path, emulated):
    """The same forward on models/vit_device.py's ops (the emulator where there is no GPU; the strict CuPy stand-in),
    F16 matrices: one copy down, the CPU's rows within 2e-3 of their largest."""
    from gguf import GGMLQuantizationType as Q
    from gpu_checks import check_rows_come_down_once
    from tiny_vision import sample_image, tiny_mmproj

    from kvrun.ops import gpu_available
    from kvrun.ops.gpu import emulate
    from kvrun.runtime.projectors import load_encoder

    if not gpu_available() and not emulate.available():
        pytest.skip("no GPU and no host C++ compiler for the emulator")
    path = tiny_mmproj("dots3note", Q.F16, tmp_path)

    def both():
        return load_encoder(path, get_backend("cpu")), load_encoder(path, get_backend("gpu"))

    check_rows_come_down_once(both, dotsocr_image.preprocess(sample_image(53, 37, seed=4), both()[0].cfg))
