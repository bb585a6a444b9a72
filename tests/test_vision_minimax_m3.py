"""Images in, for MiniMax-M3 (llama.cpp's projector type "minimax_m3"): the mmproj file (loaders/mmproj.py), pictures
sized as Qwen2-VL's within clip.cpp's fixed 8 to 576 rows and stretched to it (no padding), Qwen2-VL's ViT with its own
partial 2-D rope and erf GELU, the per-patch MLP and the 2x2 merger MLP (models/minimax_m3_image.py), laid out between
``]<]start of image[>[`` and ``]<]end of image[>[`` (runtime/vision_minimax_m3.py) and read causally by a minimax-m3
text model (models/minimax_m3.py), held to llama.cpp's libmtmd on the tiny pair of tiny_vision_minimax_m3.py (fixture:
tools/make_vision_minimax_m3_fixtures.py).  The encoder on ``--device gpu``: tests/test_gpu_vision_encoders4.py."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from kvrun.loaders.mmproj import open_mmproj
from kvrun.models import minimax_m3_image, qwen2vl_image
from kvrun.models.minimax_m3_image import MiniMaxM3Encoder
from kvrun.models.vit_ops import HostViT
from kvrun.ops import get_backend
from tiny_vision_minimax_m3 import MARKERS, PATCH, V_EMBD
from vision_checks import check_between, check_cli_run, check_files, check_logits, check_refused_beside, fixture, load_vision, one_line_error, pictures, without_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_minimax_m3_fixtures import IMAGES, PAIRS, PROMPTS, write_pair  # noqa: E402

FIX = fixture("minimax_m3")
PICTURES = pictures(IMAGES)


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors (F32 and F16), the very bytes the fixture was made from."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_minimax_m3")), FIX)


def _encoder(path: Path) -> MiniMaxM3Encoder:
    g, cfg = open_mmproj(path)
    return MiniMaxM3Encoder(g, cfg, get_backend("cpu"))


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, MiniMaxM3Encoder]:
    return {q: _encoder(pair[q]) for q in ("f32", "f16")}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair[PAIRS["t"]], 512)  # (the tiny text model's MSA keeps every key up to 512)


def _off(enc: MiniMaxM3Encoder, name: str, q: str = "f32", preprocess=minimax_m3_image.preprocess) -> float:
    """The encoder's rows for picture ``name`` against libmtmd's, the largest difference over the largest row value."""
    want = FIX[f"embd_{q}_{name}"]
    return float(np.abs(enc.encode(preprocess(PICTURES[name], enc.cfg)) - want).max() / np.abs(want).max())


def test_mmproj_config_fixes_the_pixel_limits_and_the_merge(encoders):
    c = encoders["f32"].cfg
    assert (c.projector_type, c.patch_size, c.n_embd, c.n_merge, c.n_text_embd) == ("minimax_m3", PATCH, V_EMBD, 2, 64)
    assert (c.min_pixels, c.max_pixels) == (8 * 32 * 32, 576 * 32 * 32)  # (set_limit_image_tokens(8, 576), 32-pixel rows)
    assert minimax_m3_image.rope_width(16) == 4 and minimax_m3_image.rope_width(72) == 24  # (clip.cpp's axd)


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_are_libmtmds_grid_between_the_markers(encoders, name):
    """Sides rounded to 32-pixel blocks, 40 x 30 scaled up to 8 blocks' worth (4 x 3); one image chunk between the
    markers (ids 262 and 263 of the tiny vocabulary)."""
    img = PICTURES[name]
    nx, ny = minimax_m3_image.grid(img.shape[1], img.shape[0], encoders["f32"].cfg)
    assert FIX[f"ids_f32_{name}"].tolist() == [262] + [-1] * (nx * ny) + [263]


@pytest.mark.parametrize("q, tol", [("f32", 2e-5), ("f16", 5e-3)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, tol, name):
    """Resize, the two patch kernels, the blocks, the per-patch MLP, the merger: the rows mtmd_encode_chunk gives
    (encoder flash attention off), as a fraction of their largest (~28).  Measured: F32 within 1.4e-6, F16 within
    9.1e-4 (ggml's F16 products)."""
    assert _off(encoders[q], name, q) < tol


def test_the_fixture_tells_each_step_that_sets_minimax_m3_apart(encoders):
    """Each dropped puts the rows far outside the F32 tolerance (2e-5): the picture padded to keep its aspect (Qwen2-VL's)
    rather than stretched (0.74 of the largest value off, the 150 x 100 picture), no rope (0.59), the rope's parts from
    dimension 0 (no unturned time part: 0.91), the row's and the column's parts swapped (0.49), tanh GELU for erf
    (6.6e-4); the tall picture's (3 x 4 blocks), where the rows are within 1.4e-6."""
    enc = encoders["f32"]
    assert _off(enc, "tall") < 2e-5
    assert _off(enc, "odd", preprocess=qwen2vl_image.preprocess) > 0.1
    rope, tables, act = minimax_m3_image.rope, minimax_m3_image.rope_tables, HostViT.act

    def from_zero(ops, q, k, parts):  # (the row's part over dimensions 0..a, the column's over a..2a)
        a = 2 * parts[0][0].shape[1]
        out = rope(ops, *(np.concatenate([t[..., a:], t[..., :a]], axis=-1) for t in (q, k)), parts)
        return tuple(np.concatenate([t[..., -a:], t[..., :-a]], axis=-1) for t in out)

    drops = {
        "no rope": mock.patch.object(minimax_m3_image, "rope", lambda ops, q, k, parts: (q, k)),
        "rope from dimension 0": mock.patch.object(minimax_m3_image, "rope", from_zero),
        "row and column swapped": mock.patch.object(minimax_m3_image, "rope_tables", lambda ys, xs, d: tables(xs, ys, d)),
        "tanh GELU": mock.patch.object(HostViT, "act", staticmethod(lambda x, op: act(x, "gelu" if op == "gelu_erf" else op))),
    }
    for what, drop in drops.items():
        with drop:
            assert _off(enc, "tall") > 2e-4, what


def test_pixels_not_of_whole_blocks_are_refused_in_one_line(encoders):
    with one_line_error("sides multiples of 32"):
        encoders["f32"].encode(np.zeros((3, 48, 64), np.float32))


@pytest.mark.parametrize("tensor", ["mm.merger.fc1.bias", "mm.1.weight", "v.patch_embd.weight.1"])
def test_a_file_without_a_projector_tensor_is_refused_in_one_line(pair, tmp_path, tensor):
    bad = without_tensor(pair["f32"], tmp_path / "m.gguf", tensor)
    with one_line_error(f"{tensor.replace('.', '[.]')}.* missing"):
        _encoder(bad)


@pytest.mark.parametrize("name", ["exact", "odd"])
def test_a_pictures_rows_lie_between_the_markers(vision, name):
    check_between(vision, FIX, PICTURES[name], f"f32_{name}", *MARKERS)


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally at consecutive positions (minimax-m3's rope is not M-RoPE) through its dense
    layer and experts, then the end marker and the text: logits within 2e-2 of mtmd_helper_eval_chunks' (llama.cpp's
    float16 KV cache; measured 1.2e-2 and 1.4e-2, logits ~11 and ~12)."""
    cache = check_logits(vision, FIX, PICTURES, PROMPTS[k], f"t_{k}", 2e-2)
    assert cache.offset == int(FIX[f"npast_t_{k}"])


def test_a_text_model_of_another_architecture_is_refused_in_one_line(pair, tiny_llama_path):
    check_refused_beside(tiny_llama_path, pair["f32"], r"a minimax_m3 projector goes with a MiniMax-M3 text model \(minimax-m3\), not llama")



def test_cli_run_takes_a_minimax_m3_picture(pair, tmp_path):
    check_cli_run(pair["text"], pair["f32"], PICTURES["exact"], tmp_path, len(FIX["ids_f32_exact"]), "-c", "512")  # 4 x 3 blocks, 2 markers
