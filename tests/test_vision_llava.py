"""Images in, for LLaVA 1.5 / 1.6 and MobileVLM 1 / 2 (llama.cpp's projector types "mlp", "ldp", "ldpv2"): the mmproj
file (loaders/mmproj.py), LLaVA 1.5's picture padded to a square in its mean colour and 1.6's tiles and overview, the
CLIP ViT with its pre-LayerNorm, GELU-quick and the penultimate layer's features, the MLP projector and MobileVLM's
convolutional ones (models/llava_image.py), laid out with no markers (runtime/vision_llava.py) and read by a llama
text model, held to llama.cpp's libmtmd on the tiny pairs of tiny_vision_llava.py (fixture:
tools/make_vision_llava_fixtures.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kvrun.loaders.errors import KvrunError
from kvrun.loaders.gguf_file import GGUFFile
from kvrun.models import llava_image
from kvrun.models.common import WeightLoader
from kvrun.models.llava_image import LlavaEncoder
from kvrun.models.siglip import vit_layer
from kvrun.ops import get_backend
from tiny_vision_llava import IMAGE_SIZE, PATCH, PINPOINTS, V_EMBD, write_tiny_llava_mmproj, write_tiny_llava_text
from vision_checks import CHATML, check_chat_keeps_picture, check_cli_run, check_files, check_logits, fixture, load_vision, pictures

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from make_vision_llava_fixtures import IMAGES, PAIRS, PROMPTS, write_files  # noqa: E402

FIX = fixture("llava")
PICTURES = pictures(IMAGES)
PROJECTORS = ("f32", "f16", "any", "feat", "ldp", "ldpv2")
#: each projector's largest difference from libmtmd's rows (measured: 3e-3, 1.5e-2, 3e-3, 2e-3, 1.4e-3, 6e-3 on rows
#: ~30 (MobileVLM 1's ~4): ggml's F16 rounding and summation order)
TOL = {"f32": 1e-2, "f16": 3e-2, "any": 1e-2, "feat": 1e-2, "ldp": 1e-2, "ldpv2": 2e-2}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """The tiny text model and its projectors, the fixture's bytes."""
    return check_files(write_files(tmp_path_factory.mktemp("vision_llava")), FIX)


@pytest.fixture(scope="module")
def encoders(pair) -> dict[str, LlavaEncoder]:
    return {q: LlavaEncoder.load(pair[q], get_backend("cpu")) for q in PROJECTORS}


@pytest.fixture(scope="module")
def visions(pair):
    return {q: load_vision(pair["text"], pair[q], 1024) for q in PAIRS}


def rows_of(enc: LlavaEncoder, img: np.ndarray) -> np.ndarray:
    return np.concatenate([enc.encode(x) for x in llava_image.prepare(img, enc)])


# ---------------------------------------------------------------- the projector file


def test_mmproj_config_reads_clips_geometry_and_the_pinpoints(encoders):
    e = encoders["f32"]
    c = e.cfg
    assert (c.projector_type, c.image_size, c.patch_size, c.n_embd, c.n_text_embd) == ("mlp", IMAGE_SIZE, PATCH, V_EMBD, 64)
    assert (e.ffn_op, len(e.layers), e.feature_layers, e.cands) == ("gelu_quick", 2, [], [])  # (3 layers, the last not run)
    assert encoders["any"].cands == PINPOINTS
    assert (encoders["feat"].feature_layers, len(encoders["feat"].layers)) == ([1, 3], 3)
    assert [encoders[q].cfg.projector_type for q in ("ldp", "ldpv2")] == ["ldp", "ldpv2"]


def without(src: Path, drop: str, out: Path) -> Path:
    """The projector file ``src`` written again to ``out`` without the tensor ``drop``."""
    from gguf import GGUFReader, GGUFWriter

    r = GGUFReader(src)
    w = GGUFWriter(str(out), "clip")
    for f in r.fields.values():
        if f.name.startswith("clip."):
            v = f.contents()
            {bool: w.add_bool, str: w.add_string, float: w.add_float32, list: w.add_array}.get(type(v), w.add_uint32)(f.name, v)
    for t in r.tensors:
        if t.name != drop:
            w.add_tensor(t.name, np.asarray(t.data).reshape([int(x) for x in reversed(t.shape)]))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return out


@pytest.mark.parametrize("q, drop", [("f32", "mm.0.weight"), ("f32", "v.class_embd"), ("ldp", "mm.model.mb_block.1.block.0.0.weight"),
                                     ("ldpv2", "mm.model.peg.0.bias")])  # fmt: skip
def test_a_file_without_a_tensor_it_needs_is_refused_in_one_line(pair, tmp_path, q, drop):
    """(peg.0.bias: the loader reads the projection's width from it.)"""
    with pytest.raises(KvrunError, match=drop.replace(".", r"\.")) as e:
        LlavaEncoder.load(without(pair[q], drop, tmp_path / "m.gguf"), get_backend("cpu"))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the picture


def test_llava_15_pads_a_picture_to_a_square_in_its_mean_colour():
    sq = llava_image.squares(PICTURES["wide"], IMAGE_SIZE, []).images  # 50x30 -> 32x20 (sides rounded up), centred
    assert len(sq) == 1 and sq[0].shape == (32, 32, 3)
    assert (sq[0][:6] == llava_image.PAD_COLOUR).all() and (sq[0][26:] == llava_image.PAD_COLOUR).all()


@pytest.mark.parametrize("name, grid", [("small", (0, 0)), ("square", (0, 0)), ("wide", (2, 1)), ("tall", (1, 3)), ("big", (2, 2)),
                                        ("long", (3, 1))])  # fmt: skip
def test_llava_16_cuts_a_picture_past_one_square_into_the_best_pinpoint_grid(name, grid):
    h, w = PICTURES[name].shape[:2]
    assert llava_image.grid(w, h, IMAGE_SIZE, PINPOINTS) == grid


@pytest.mark.parametrize("q", PROJECTORS)
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_image_chunk_is_rows_alone(encoders, q, name):
    """No marker tokens: 16 rows a square (4x4 patches; LLaVA 1.6: times its tiles and the overview), MobileVLM's 144."""
    img = PICTURES[name]
    cols, rows = llava_image.grid(img.shape[1], img.shape[0], IMAGE_SIZE, encoders[q].cands)
    assert FIX[f"ids_{q}_{name}"].tolist() == [-1] * ((1 + cols * rows) * encoders[q].n_rows())


@pytest.mark.parametrize("q", PROJECTORS)
@pytest.mark.parametrize("name", list(IMAGES))
def test_the_encoder_gives_libmtmds_rows(encoders, q, name):
    """Resize (Pillow's bicubic, padded), CLIP ViT to the feature layer, projector: the rows of the image chunk
    mtmd_encode_chunk gives (encoder flash attention off), up to ggml's F16 rounding."""
    np.testing.assert_allclose(rows_of(encoders[q], PICTURES[name]), FIX[f"embd_{q}_{name}"], atol=TOL[q])


def test_libmtmd_keeps_the_class_tokens_row_last_and_drops_the_first_patchs(encoders, monkeypatch):
    """libmtmd 0.3.36 appends the class token after the patches and keeps rows 1..: taking the reference LLaVA's rows
    (the class token first, then dropped) is far off its rows."""
    enc = encoders["f32"]
    ref = FIX["embd_f32_square"]
    real = LlavaEncoder.features

    def hf_order(self, pixels):
        cls, self.cls = self.cls, None  # (no class token: the positions shifted as the reference's)
        pos = self.pos_embd
        try:
            self.pos_embd = pos[1:]
            return real(self, pixels)
        finally:
            self.cls, self.pos_embd = cls, pos

    monkeypatch.setattr(LlavaEncoder, "features", hf_order)
    assert np.abs(rows_of(enc, PICTURES["square"]) - ref).max() > 0.5


def test_the_penultimate_layer_is_the_feature_layer(encoders, monkeypatch):
    """Running every layer (the last one too) is far off libmtmd's rows."""
    enc = encoders["f32"]
    monkeypatch.setattr(enc, "layers", enc.layers + [vit_layer(WeightLoader(GGUFFile(enc.path), enc.be), 2)])
    assert np.abs(rows_of(enc, PICTURES["square"]) - FIX["embd_f32_square"]).max() > 0.5


def test_llava_16s_overview_comes_after_its_tiles(encoders):
    """libmtmd 0.3.36 puts the overview last (the reference LLaVA 1.6 first): the other order is far off its rows."""
    enc = encoders["any"]
    sq = llava_image.squares(PICTURES["wide"], IMAGE_SIZE, enc.cands).images
    rows = np.concatenate([enc.encode(llava_image.normalise(x, enc.cfg)) for x in [sq[-1], *sq[:-1]]])
    assert np.abs(rows - FIX["embd_any_wide"]).max() > 0.5


# ---------------------------------------------------------------- the layout in the prompt


@pytest.mark.parametrize("q", PAIRS)
@pytest.mark.parametrize("name", ["big", "wide"])
def test_a_pictures_rows_stand_where_its_marker_was(visions, q, name):
    img = PICTURES[name]
    v = visions[q]
    assert (v.begin, v.end) == ("", "")
    assert v.idefics3.ids(img) == FIX[f"ids_{q}_{name}"].tolist()
    assert v.image_positions(img) == len(FIX[f"ids_{q}_{name}"])


@pytest.mark.parametrize("q", PAIRS)
@pytest.mark.parametrize("k", range(len(PROMPTS)))
def test_logits_after_pictures_and_text_match_llama_cpp(visions, q, k):
    """Each picture's rows fed causally, as llama.cpp feeds llama an image, then the text: logits within 1e-2 of
    mtmd_helper_eval_chunks', 3e-2 past 100 positions (two pictures, MobileVLM's 144 rows each: measured up to 2.2e-2,
    the same with libmtmd's own rows fed in ours' place, so the text model's difference, not the pictures')."""
    tol = 1e-2 if k == 0 and not q.startswith("ldp") else 3e-2
    check_logits(visions[q], FIX, PICTURES, PROMPTS[k], f"{q}_{k}", tol)


def test_a_text_model_of_another_width_is_refused_in_one_line(pair, tmp_path):
    from kvrun.runtime.engine import Engine
    from kvrun.runtime.vision import Vision

    wide = write_tiny_llava_mmproj(tmp_path / "wide.gguf", n_text_embd=96)
    with pytest.raises(KvrunError, match="makes rows 96 wide and .* embeds 64: not this model's mmproj") as e:
        Vision(Engine(pair["text"], n_ctx=64), wide)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- kvrun run, and a chat


@pytest.mark.parametrize("q", ["f32", "any"])
def test_cli_run_takes_a_llava_picture(pair, tmp_path, q):
    check_cli_run(pair["text"], pair[q], PICTURES["big"], tmp_path, len(FIX[f"ids_{q}_big"]))


def test_a_chat_keeps_a_pictures_rows_in_its_cache(pair, tmp_path, monkeypatch):
    """The next turn feeds only its new text, the picture is not encoded again, the reply is a fresh chat's."""
    text = write_tiny_llava_text(tmp_path / "chat.gguf", chat_template=CHATML)
    check_chat_keeps_picture(text, pair["any"], PICTURES["wide"], monkeypatch, block=len(FIX["ids_any_wide"]))
