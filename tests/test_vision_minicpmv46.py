"""Images in, for MiniCPM-V 4.6 (llama.cpp's projector type "minicpmv4_6"): the mmproj file (loaders/mmproj.py), the
picture's overview and slices cut in blocks of merged patches, the SigLIP encoder with its ViT merger (window attention
and a 2x2 downsample after ``wa_layer_indexes[0]``) and the final 2x2 merger (models/minicpmv46_image.py), laid out as
MiniCPM-V 2.6's (runtime/vision_minicpmv46.py), held to llama.cpp's libmtmd on the tiny projectors of
tiny_vision_minicpmv46.py beside tiny_vision_minicpmv.py's Qwen3 (fixture: tools/make_vision_minicpmv46_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import KvrunError
from kvrun.models import minicpmv46_image, minicpmv_image
from kvrun.models.minicpmv46_image import MiniCPMV46Encoder
from kvrun.ops import get_backend
from tiny_vision_minicpmv46 import IMAGE_SIZE, PATCH, write_tiny_minicpmv46_mmproj
from vision_checks import block_ids, check_cli_run, check_files, check_logits, fixture, load_vision, mmproj_config, pictures

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_minicpmv46_fixtures import IMAGES, PAIRS, PROMPTS, write_pair  # noqa: E402

FIX = fixture("minicpmv46")
PICTURES = pictures(IMAGES)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and the projectors, the very bytes the fixture was made from."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_minicpmv46")), FIX)


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair[PAIRS["m46"]], 1024)


def _rows(enc: MiniCPMV46Encoder, img: np.ndarray) -> np.ndarray:
    c = minicpmv46_image.cut46(img, enc.cfg)
    return np.concatenate([enc.encode(minicpmv_image.normalise(x, enc.cfg)) for x in [c.overview, *c.slices]])


# ---------------------------------------------------------------- the projector file and the picture's parts


def test_mmproj_config_reads_the_merge_clip_cpp_defaults_to_four(pair, tmp_path):
    cfg = mmproj_config(pair["m46_f32"])
    assert (cfg.projector_type, cfg.image_size, cfg.patch_size, cfg.n_merge, cfg.minicpmv_version) == ("minicpmv4_6", IMAGE_SIZE, PATCH, 4, 0)
    assert mmproj_config(pair["m46x4_f32"]).n_merge == 2
    with pytest.raises(KvrunError, match="scale_factor is 3; libmtmd's MiniCPM-V 4.6 merges 2 or 4 a side") as e:
        mmproj_config(write_tiny_minicpmv46_mmproj(tmp_path / "m3.gguf", scale=3))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("q", ["m46_f32", "m46x4_f32"])
@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_parts_take_libmtmds_rows(pair, q, name):
    """Each part (the overview, then the slices) one image chunk of (h/p/m)(w/p/m) rows, m the merge a side: slices cut
    in blocks of 56 pixels (4 x 4 patches); with scale_factor 2, blocks of 28, and a picture no larger than a slice
    scaled keeping its aspect (80 x 60 -> 140 x 84: 15 rows) where 4 stretches it to the square slice (4 rows)."""
    cfg = mmproj_config(pair[q])
    c = minicpmv46_image.cut46(PICTURES[name], cfg)
    f = PATCH * cfg.n_merge
    counts = [(x.shape[0] // f) * (x.shape[1] // f) for x in [c.overview, *c.slices]]
    ids = FIX[f"ids_{q}_{name}"]
    assert sum(counts) == int((ids == -1).sum())
    if name == "small":
        assert counts == ([4] if q == "m46_f32" else [15])


# ---------------------------------------------------------------- the encoder


@pytest.mark.parametrize("q, tol", [("m46_f32", 1e-2), ("m46_f16", 4e-2), ("m46x4_f32", 1e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_overview_and_every_slice_encode_to_libmtmds_rows(pair, q, tol, name):
    """Through SigLIP (bucketed positions), the ViT merger after layer 1 (scale_factor 4), the remaining layers, the
    post-norm and the final merger: the rows of the image chunks mtmd_encode_chunk gives (encoder flash attention off;
    rows up to ~31; measured: F32 2.9e-3 at most, F16 2.1e-2, the 4x variant 5.7e-3)."""
    enc = MiniCPMV46Encoder.load(pair[q], get_backend("cpu"))
    np.testing.assert_allclose(_rows(enc, PICTURES[name]), FIX[f"embd_{q}_{name}"], atol=tol)


def test_the_fixture_sees_the_vit_mergers_windows(pair, monkeypatch):
    """What sets the projector apart, each taken away, misses libmtmd's rows by far more than the tolerance: the ViT
    merger's attention over the whole part (not within its 2x2 windows), its windows taken as four consecutive patches
    in raster order, the downsamples' 2x2 windows so taken.  (The final merger's GELU is erf's, the ViT's tanh's: on
    these rows the two are 7e-3 apart, within the tolerance.)"""
    enc = MiniCPMV46Encoder.load(pair["m46_f32"], get_backend("cpu"))
    img, ref = PICTURES["wide"], FIX["embd_m46_f32_wide"]

    def err() -> float:
        return float(np.abs(_rows(enc, img) - ref).max())

    assert err() < 1e-2
    with monkeypatch.context() as m:  # (one window: every patch sees every other)
        m.setattr(enc, "_attention", lambda L, hh, group, a=enc._attention: a(L, hh, hh.shape[0]))
        assert err() > 0.3
    with monkeypatch.context() as m:
        m.setattr(minicpmv46_image, "window_order", lambda ny, nx: np.arange(ny * nx))
        assert err() > 0.3
    with monkeypatch.context() as m:
        m.setattr(minicpmv46_image, "quads", lambda x, ny, nx: [np.ascontiguousarray(x[i::4]) for i in range(4)])
        assert err() > 0.3


def test_pixels_not_of_whole_blocks_and_a_missing_merger_tensor_are_refused_in_one_line(pair, tmp_path):
    enc = MiniCPMV46Encoder.load(pair["m46_f32"], get_backend("cpu"))
    with pytest.raises(KvrunError, match="whole 56-pixel blocks") as e:
        enc.encode(np.zeros((3, 42, 56), np.float32))
    assert "\n" not in str(e.value)
    for drop in ("v.vit_merger.ds_ln.weight", "mm.up.bias"):
        path = write_tiny_minicpmv46_mmproj(tmp_path / "d.gguf", drop=(drop,))
        with pytest.raises(KvrunError, match=f"tensor '{drop}' is missing") as e:
            MiniCPMV46Encoder.load(path, get_backend("cpu"))
        assert "\n" not in str(e.value)
    path = write_tiny_minicpmv46_mmproj(tmp_path / "n.gguf", insert=None)
    with pytest.raises(KvrunError, match="wa_layer_indexes .* is missing") as e:
        MiniCPMV46Encoder.load(path, get_backend("cpu"))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_block_is_libmtmds_image_and_slice_markers(vision, name):
    img = PICTURES[name]
    assert vision.idefics3.ids(img) == FIX[f"ids_m46_f32_{name}"].tolist()
    assert vision.image_positions(img) == len(vision.image_rows(img)) == len(FIX[f"ids_m46_f32_{name}"])


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's block fed causally, as llama.cpp feeds Qwen3 an image, then the text: logits within 2.5e-2 of
    mtmd_helper_eval_chunks' (measured 1.4e-2 and 1.9e-2 on logits up to 14 and 16: the bound tests/test_vision_minicpmv.py
    holds the same Qwen3 to, whose own float noise it is)."""
    cache = check_logits(vision, FIX, PICTURES, PROMPTS[k], f"m46_{k}", 2.5e-2, ids=block_ids(vision))
    assert cache.offset == int(FIX[f"npast_m46_{k}"])


def test_a_text_model_without_the_markers_is_refused_in_one_line(pair, tmp_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision
    from tiny_vision import write_vl_text
    from tiny_vision_minicpmv import TEXT_GEOMETRY

    text = write_vl_text(tmp_path / "t.gguf", "llama", "no-markers", TEXT_GEOMETRY, [], [], 1e-6, 10000.0, 0, 1)
    with pytest.raises(KvrunError, match="the vocabulary has no '<image>' token; not a MiniCPM-V model") as e:
        Vision(Engine(text, n_ctx=64), pair["m46_f32"])
    assert "\n" not in str(e.value)


def test_cli_run_takes_a_minicpmv46_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["m46_f32"], PICTURES["tall"], tmp_path, len(FIX["ids_m46_f32_tall"]))
