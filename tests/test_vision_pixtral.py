"""Images in, for Pixtral and Mistral Small 3.1+ (llama.cpp's projector type "pixtral"): the mmproj file
(loaders/mmproj.py), pictures kept at their own size within 8 to 1024 merged rows, the ViT with RMSNorms, SwiGLU and a
2-D rope over the patches' rows and columns, Mistral Small's 2x2 patch merger, the adapter and the [IMG_BREAK] rows
(models/pixtral_image.py), laid out before ``[IMG_END]`` (runtime/vision_pixtral.py) and read by a mistral3 text model,
held to llama.cpp's libmtmd on the tiny pair of tiny_vision_pixtral.py (fixture: tools/make_vision_pixtral_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import KvrunError
from kvrun.models import pixtral_image
from kvrun.models.pixtral_image import PixtralEncoder
from kvrun.ops import get_backend
from tiny_vision_pixtral import MERGE, PATCH, V_EMBD, write_tiny_pixtral_mmproj, write_tiny_pixtral_text
from vision_checks import check_between, check_chat_keeps_picture, check_cli_run, check_files, check_logits, fixture, load_vision, pictures

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_pixtral_fixtures import IMAGES, PROMPTS, write_pair  # noqa: E402

FIX = fixture("pixtral")
PICTURES = pictures(IMAGES)
PROJECTORS = ("f32", "f16", "nomerge")
TEMPLATE = "{% for m in messages %}[INST]{{ m['content'] }}[/INST]{% endfor %}"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors (merging 2x2 in F32 and F16, and merging none), the fixture's bytes."""
    return check_files(write_pair(tmp_path_factory.mktemp("vision_pixtral")), FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, PixtralEncoder]:
    return {q: PixtralEncoder.load(pair[q], get_backend("cpu")) for q in PROJECTORS}


@pytest.fixture(scope="module")
def vision(pair):
    return load_vision(pair["text"], pair["f32"], 2048)


# ---------------------------------------------------------------- the projector file


def test_mmproj_config_reads_the_spatial_merge_and_libmtmds_pixel_limits(encoders):
    c = encoders["f32"].cfg
    assert (c.projector_type, c.patch_size, c.n_embd, c.n_merge, c.n_text_embd, c.ffn_op) == ("pixtral", PATCH, V_EMBD, MERGE, 64, "silu")
    assert (c.min_pixels, c.max_pixels) == (8 * 16 * 16, 1024 * 16 * 16)  # 8 to 1024 merged rows of 16 x 16 pixels
    n = encoders["nomerge"].cfg  # (Pixtral 12B's: no spatial_merge_size, one row a patch)
    assert (n.n_merge, n.min_pixels, n.max_pixels, encoders["nomerge"].merger) == (1, 8 * 64, 1024 * 64, None)


def test_a_merge_without_the_merger_tensor_is_refused_in_one_line(tmp_path):
    from gguf import GGUFReader, GGUFWriter

    src = GGUFReader(write_tiny_pixtral_mmproj(tmp_path / "full.gguf"))
    w = GGUFWriter(str(tmp_path / "m.gguf"), "clip")
    for f in src.fields.values():
        if f.name.startswith("clip."):
            v = f.contents()
            {bool: w.add_bool, str: w.add_string, float: w.add_float32, list: w.add_array}.get(type(v), w.add_uint32)(f.name, v)
    for t in src.tensors:
        if t.name != "mm.patch_merger.weight":
            w.add_tensor(t.name, np.asarray(t.data).reshape([int(x) for x in reversed(t.shape)]))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(KvrunError, match="spatial_merge_size is 2 but mm.patch_merger.weight is missing") as e:
        PixtralEncoder.load(tmp_path / "m.gguf", get_backend("cpu"))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the picture's size


@pytest.mark.parametrize("w, h, grid", [(48, 48, (3, 3)), (100, 40, (6, 3)), (40, 90, (3, 6)), (53, 37, (4, 3)), (24, 20, (4, 3)),
                                         (800, 400, (45, 22)), (16, 16, (3, 3))])  # fmt: skip
def test_a_picture_keeps_its_size_in_whole_blocks_within_8_to_1024_rows(encoders, w, h, grid):
    """Sides rounded to 16-pixel blocks, halves up as std::round (100x40: 6x3, not numpy's 6x2); too few pixels scaled
    up (53x37, 3x2 blocks: 4x3, 12 rows), too many down (800x400: 45x22, 990 rows)."""
    assert pixtral_image.grid(w, h, encoders["f32"].cfg) == grid


@pytest.mark.parametrize("q", PROJECTORS)
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_image_chunk_is_its_rows_of_blocks_with_img_break_rows_between(encoders, q, name):
    """Without a merger (Pixtral 12B), rows of patches (24x20: 3x3 patches of 8 pixels after scaling up)."""
    img = PICTURES[name]
    nx, ny = pixtral_image.grid(img.shape[1], img.shape[0], encoders[q].cfg)
    assert FIX[f"ids_{q}_{name}"].tolist() == [-1] * (nx * ny + ny - 1) + [264]  # (then [IMG_END], the text token 264)


@pytest.mark.parametrize("q, tol", [("f32", 5e-3), ("f16", 2e-2), ("nomerge", 1e-2)])
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, tol, name):
    """Resize (Pillow's bicubic, padded), ViT with the 2-D rope, merger, adapter, [IMG_BREAK] rows: the rows of the
    image chunk mtmd_encode_chunk gives (encoder flash attention off), up to ggml's F16 rounding."""
    enc = encoders[q]
    rows = enc.encode(pixtral_image.preprocess(PICTURES[name], enc.cfg))
    np.testing.assert_allclose(rows, FIX[f"embd_{q}_{name}"], atol=tol)


def test_img_break_rows_are_the_projectors_own_row(encoders):
    enc = encoders["f32"]
    rows = enc.encode(pixtral_image.preprocess(PICTURES["tall"], enc.cfg))  # 3 x 6 blocks
    assert all((rows[r * 4 + 3] == enc.img_break).all() for r in range(5)) and len(rows) == 3 * 6 + 5


def test_rope_2d_turns_the_first_half_by_row_and_the_second_by_column_at_interleaved_frequencies():
    cos, sin = pixtral_image.rope_2d(np.array([1]), np.array([1]), 8)
    angles = np.arctan2(sin[0], cos[0])
    np.testing.assert_allclose(angles, [1.0, 10000.0 ** -0.5, 10000.0 ** -0.25, 10000.0 ** -0.75], rtol=1e-6)


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("name", list(IMAGES))
def test_a_pictures_rows_come_before_img_end(vision, name):
    check_between(vision, FIX, PICTURES[name], f"f32_{name}", "", "[IMG_END]")


@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(vision, k):
    """Each picture's rows fed causally, as llama.cpp feeds Mistral's text model an image, then [IMG_END] and the
    text: logits within 1e-2 of mtmd_helper_eval_chunks'."""
    check_logits(vision, FIX, PICTURES, PROMPTS[k], str(k), 1e-2)


def test_a_text_model_without_img_end_is_refused(pair, tiny_llama_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    with pytest.raises(KvrunError, match=r"the vocabulary has no \[IMG_END\] token; not a Pixtral") as e:
        Vision(Engine(tiny_llama_path, n_ctx=64), pair["f32"])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- kvrun run, and a chat


def test_cli_run_takes_a_pixtral_picture(pair, tmp_path):
    rows = len(FIX["ids_f32_wide"])  # 6x3 blocks, 2 breaks, [IMG_END], 8 bytes
    check_cli_run(pair["text"], pair["f32"], PICTURES["wide"], tmp_path, rows)


def test_a_chat_keeps_a_pictures_rows_in_its_cache(pair, tmp_path, monkeypatch):
    """The next turn feeds only its new text, the picture is not encoded again, the reply is a fresh chat's."""
    text = write_tiny_pixtral_text(tmp_path / "chat.gguf", chat_template=TEMPLATE)
    block = len(FIX["ids_f32_tall"])  # (3x6 blocks, 5 breaks and [IMG_END], kept)
    check_chat_keeps_picture(text, pair["f32"], PICTURES["tall"], monkeypatch, block=block, prefix="[INST]")
