"""Images in, for Granite 4 Vision (llama.cpp's projector type "granite4_vision"): the mmproj file (loaders/mmproj.py),
llava-next's anyres tiles (an overview and the best pinpoint grid, always), the SigLIP tower with every layer's
output kept, the WindowQFormer blocks (windows, the queries pooled or picked from each 2x2, self- and
cross-attention) side by side, the tiles' grid unpadded with a newline row each (models/granite4v_image.py), laid out
with the ``"\\n"`` after them (runtime/vision_granite4.py) and read by a Granite text model, held to llama.cpp's
libmtmd on the tiny pair of tiny_vision_granite4.py (fixture: tools/make_vision_granite4_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.models import granite4v_image
from kvrun.models.granite4v_image import Granite4VisionEncoder
from kvrun.ops import get_backend
from tiny_vision_granite4 import BLOCKS, PINPOINTS, QUERY, V_EMBD, WINDOW, write_tiny_granite4v_mmproj, write_tiny_granite4v_text
from vision_checks import (
    block_ids, check_between, check_cli_run, check_logits, fixture, load_vision, mmproj_config, one_line_error, pictures, tiny_pair,
    without_tensor,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_granite4_fixtures import IMAGES, PROMPTS  # noqa: E402

FIX = fixture("granite4")
PICTURES = pictures(IMAGES)
#: each projector's largest difference from libmtmd's rows (measured: 2.6e-3 F32, 1.7e-2 F16, on rows ~8: ggml's F16
#: rounding of the patches and of the F16 products' inputs, and its summation order)
TOL = {"f32": 5e-3, "f16": 3e-2}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projector (F32 and F16), the very bytes the fixture was made from."""
    return tiny_pair(tmp_path_factory, "granite4", write_tiny_granite4v_text, write_tiny_granite4v_mmproj, FIX)


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 1024)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, Granite4VisionEncoder]:
    return {q: Granite4VisionEncoder.load(pair[q], get_backend("cpu")) for q in ("f32", "f16")}


# ---------------------------------------------------------------- the projector file


def test_the_config_reads_the_blocks_and_a_row_is_all_of_them_side_by_side(pair, encoders):
    """A row is the four blocks' projections side by side (4 x 16: the text model's width); a tile's rows, its 8 x 8
    patches brought down window / query = 2 a side; each block on its feature layer with its spatial offset; only
    the layers read run."""
    c = mmproj_config(pair["f32"])
    assert (c.projector_type, c.n_text_embd, c.n_merge, c.n_tokens) == ("granite4_vision", 64, 2, 16)
    e = encoders["f32"]
    assert (e.cfg.n_embd, e.cfg.n_text_embd, e.window, e.query, e.out_side) == (V_EMBD, 64, WINDOW, QUERY, 4)
    assert list(zip(e.feature_layers, e.offsets)) == BLOCKS and len(e.layers) == 2 and e.cands == PINPOINTS


def test_a_file_without_a_qformer_tensor_is_refused_in_one_line(pair, tmp_path):
    bad = without_tensor(pair["f32"], tmp_path / "m.gguf", "v.proj_blk.2.cross_attn_k.weight")
    with one_line_error("tensor 'v.proj_blk.2.cross_attn_k.weight' is missing"):
        Granite4VisionEncoder.load(bad, get_backend("cpu"))
    bad = without_tensor(pair["f32"], tmp_path / "q.gguf", "v.proj_blk.1.query")
    with one_line_error("tensor 'v.proj_blk.1.query' is missing"):
        Granite4VisionEncoder.load(bad, get_backend("cpu"))


# ---------------------------------------------------------------- the picture's tiles and rows


@pytest.mark.parametrize("w, h, grid, kept", [(50, 30, (2, 1), (1, 0, 6, 4)), (20, 12, (2, 1), (1, 0, 6, 4)), (30, 70, (1, 2), (0, 0, 4, 8)),
                                              (90, 70, (2, 2), (0, 1, 8, 6)), (32, 32, (2, 1), (2, 0, 4, 4)), (64, 64, (2, 2), (0, 0, 8, 8))])  # fmt: skip
def test_every_picture_is_tiled_and_the_rows_over_padding_are_dropped(w, h, grid, kept):
    """Always the best pinpoint grid (even for a picture smaller than a tile), then llava-next's unpadding of the
    grid's 4 x 4 rows a tile: (off_x, off_y, w, h) kept (a column each side of 50 x 30's, a row each side of 90 x
    70's; 30 x 70's padding is under half a row each side, none dropped)."""
    assert granite4v_image.grid(w, h, 32, PINPOINTS) == grid
    assert granite4v_image.unpad(grid[0] * 4, grid[1] * 4, w, h) == kept


@pytest.mark.parametrize("q, name", [("f32", n) for n in IMAGES] + [("f16", "wide"), ("f16", "big")])
def test_the_image_chunk_is_libmtmds_rows(encoders, q, name):
    """The overview's 16 rows, then the unpadded grid with a newline row after each of its rows: the image chunk
    mtmd_encode_chunk gives (encoder flash attention off), within TOL (the F16 projector on two pictures: its
    products are the F32 one's, rounded)."""
    rows = encoders[q].encode(PICTURES[name])
    ref = FIX[f"embd_{q}_{name}"]
    assert rows.shape == ref.shape == (len(FIX[f"ids_{q}_{name}"]) - 1, 64)
    np.testing.assert_allclose(rows, ref, atol=TOL[q])


def _pool_everywhere(monkeypatch, enc: Granite4VisionEncoder) -> None:  # (offsets 1 and 2 pooled as offset -1)
    monkeypatch.setattr(enc, "offsets", [-1] * len(enc.offsets))


def _keep_the_padding(monkeypatch, enc: Granite4VisionEncoder) -> None:  # (no unpadding: the whole grid's rows)
    monkeypatch.setattr(granite4v_image, "unpad", lambda cw, ch, w, h: (0, 0, cw, ch))


def _tiles_unwindowed(monkeypatch, enc: Granite4VisionEncoder) -> None:  # (windows as plain runs of raster rows)
    monkeypatch.setattr(granite4v_image, "windows", lambda xp, x, n, side, win: x.reshape(n * (side // win) ** 2, win * win, -1))


@pytest.mark.parametrize("drop", [_pool_everywhere, _keep_the_padding, _tiles_unwindowed], ids=["spatial-offsets", "unpad", "windows"])
def test_the_fixture_tells_each_distinguishing_step(encoders, monkeypatch, drop):
    """The spatial offsets' picked pixels pooled instead, the padding's rows kept, or the windows taken as runs of
    raster rows: the rows are no longer libmtmd's (a different count, or far off)."""
    enc = encoders["f32"]
    drop(monkeypatch, enc)
    rows, ref = enc.encode(PICTURES["wide"]), FIX["embd_f32_wide"]
    assert rows.shape != ref.shape or np.abs(rows - ref).max() > 0.5


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_come_before_a_newline(vision, name):
    """No token before the image chunk, ``"\\n"`` after it (libmtmd's img_end, tokenized on its own)."""
    n = check_between(vision, FIX, PICTURES[name], f"f32_{name}", "", "")
    assert FIX[f"ids_f32_{name}"][-1] == 10 and n == len(FIX[f"ids_f32_{name}"])


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows and its newline fed causally and scaled as Granite's embeddings (a text model without
    DeepStack, as llama.cpp's graph scales them), then the text: logits within 2e-3 of mtmd_helper_eval_chunks'
    (measured 6e-4 on logits ~8)."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 2e-3, block_ids(vision))


def _with_key(src: Path, dst: Path, key: str, value: list[int]) -> Path:
    """The text model ``src`` written again to ``dst`` with the int32 array ``key`` added."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(src)
    w = GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for f in r.fields.values():
        if not f.name.startswith("GGUF.") and f.name != "general.architecture":
            w.add_key_value(f.name, f.contents(), f.types[0], sub_type=f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None)
    w.add_array(key, value)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=list(reversed([int(x) for x in t.shape])), raw_dtype=t.tensor_type)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return dst


def test_a_deepstack_text_model_or_another_width_is_refused_in_one_line(pair, tmp_path):
    """A DeepStack text model (``granite.deepstack_mapping``: here 2 levels, rows 64 x 3 wide) beside a projector of
    its n_embd, or a projector of another width, is not this model's (test_vision_granite4_ds.py runs one that is)."""
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    ds = _with_key(pair["text"], tmp_path / "ds.gguf", "granite.deepstack_mapping", [0, 1])
    with one_line_error(r"its image rows are 192 wide \(DeepStack levels included\) and the projector makes 64"):
        Vision(Engine(ds, n_ctx=64), pair["f32"])
    narrow = write_tiny_granite4v_mmproj(tmp_path / "narrow.gguf", n_text_embd=32)
    with one_line_error("the projector makes rows 32 wide"):
        Vision(Engine(pair["text"], n_ctx=64), narrow)


def test_cli_run_takes_a_granite4_vision_picture(pair, tmp_path):
    rows = len(FIX["ids_f32_wide"])  # the overview's 16 rows, 2 grid rows of 8 and a newline each, the "\n"
    check_cli_run(pair["text"], pair["f32"], PICTURES["wide"], tmp_path, rows)
