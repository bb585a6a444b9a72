"""The picture layouts' first checks, written once (runtime/vision_markers.py): a projector beside the wrong text model
and a vocabulary without a layout's markers are refused in one line each, in the words each layout has always used.

Each layout is built here on a stand-in engine (its path, architecture, model and tokenizer only), so that the exact
texts are pinned without a model file; the layouts' own test files refuse real pairings (tests/test_vision_*.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kvrun.loaders.errors import KvrunError
from kvrun.runtime.vision_markers import lookup_markers, require_arch, require_markers, require_text_model


class Vocabulary:
    """A tokenizer whose special tokens are ``known`` (each one id); any other text is a token a character."""

    def __init__(self, *known: str) -> None:
        self.pieces = [t.encode() for t in known] + [bytes([b]) for b in range(256)]

    @property
    def n_vocab(self) -> int:
        return len(self.pieces)

    def encode(self, text: str, add_bos: bool = False, parse_special: bool = True) -> list[int]:
        b = text.encode()
        return [self.pieces.index(b)] if b in self.pieces[: self.n_vocab - 256] else list(b)

    def token_bytes(self, i: int, special: bool = True) -> bytes:
        return self.pieces[i]


def engine(arch: str, *known: str, takes_images: bool = True) -> SimpleNamespace:
    return SimpleNamespace(path="m.gguf", cfg=SimpleNamespace(arch=arch), model=SimpleNamespace(takes_images=takes_images),
                           tokenizer=Vocabulary(*known))  # fmt: skip


# ---------------------------------------------------------------- the layouts' texts, as they were written by hand

WRONG_MODEL = [
    ("vision_glm4v:Glm4VLayout", "m.gguf: a glm4v projector goes with a GLM-4.1V text model (glm4 with rope sections) or a GLM-4.5V "
     "one (glm4moe with rope sections), not llama"),
    ("vision_hunyuanvl:HunyuanVLLayout", "m.gguf: a hunyuanvl projector goes with a HunyuanOCR / Hunyuan-VL text model (hunyuan_vl "
     "with rope sections), not llama"),
    ("vision_paddleocr:PaddleOCRLayout", "m.gguf: a paddleocr projector goes with a PaddleOCR-VL text model (paddleocr), not llama"),
    ("vision_qwen2vl:Qwen2VLLayout", "m.gguf: a qwen2.5vl_merger projector goes with a Qwen2-VL / Qwen2.5-VL text model (qwen2vl), "
     "not llama"),
    ("vision_qwen3vl:Qwen3VLLayout", "m.gguf: a qwen3vl_merger projector goes with a Qwen3-VL text model (qwen3vl, qwen3vlmoe), "
     "not llama"),
    ("vision_lfm2:Lfm2Layout", "m.gguf: an lfm2 projector goes with an LFM2-VL text model (lfm2), not llama"),
    ("vision_gemma3n:Gemma3nVLayout", "m.gguf: a gemma3nv projector goes with a Gemma 3n text model (gemma3n), not llama"),
]  # fmt: skip


def layout(name: str):
    import importlib

    module, cls = name.split(":")
    return getattr(importlib.import_module(f"kvrun.runtime.{module}"), cls)


@pytest.mark.parametrize("name, text", WRONG_MODEL, ids=[n.split(":")[1] for n, _ in WRONG_MODEL])
def test_a_projector_beside_another_text_model_is_refused_in_its_own_words(name, text):
    encoder = SimpleNamespace(cfg=SimpleNamespace(projector_type="qwen2.5vl_merger"))
    with pytest.raises(KvrunError) as e:
        layout(name)(engine("llama"), encoder)
    assert str(e.value) == text


NO_MARKERS = [
    ("vision_glm4v:Glm4VLayout", "glm4", "<|begin_of_image|>", "a GLM-4V"),
    ("vision_hunyuanvl:HunyuanVLLayout", "hunyuan_vl", "<｜hy_place▁holder▁no▁100｜>", "a Hunyuan-VL"),
    ("vision_paddleocr:PaddleOCRLayout", "paddleocr", "<|IMAGE_START|>", "a PaddleOCR-VL"),
    ("vision_qwen2vl:Qwen2VLLayout", "qwen2vl", "<|vision_start|>", "a Qwen2-VL"),
    ("vision_lfm2:Lfm2Layout", "lfm2", "<|image_start|>", "an LFM2-VL"),
    ("vision_internvl:InternVLLayout", "llama", "<img>", "an InternVL"),
    ("vision_kimivl:KimiVLLayout", "deepseek2", "<|media_start|>", "a Kimi-VL"),
    ("vision_lightonocr:LightOnOCRLayout", "qwen3", "<|im_start|>", "a LightOnOCR"),
    ("vision_llama4:Llama4Layout", "llama4", "<|image_start|>", "a Llama 4"),
    ("vision_pixtral:PixtralLayout", "mistral3", "[IMG_END]", "a Pixtral / Mistral Small 3.1"),
    ("vision_gemma4:Gemma4VLayout", "gemma4", "<|image>", "a Gemma 4 vision"),
]


@pytest.mark.parametrize("name, arch, first, model", NO_MARKERS, ids=[n.split(":")[1] for n, *_ in NO_MARKERS])
def test_a_vocabulary_without_the_markers_is_refused_naming_the_first_missing(name, arch, first, model):
    with pytest.raises(KvrunError) as e:
        layout(name)(engine(arch), SimpleNamespace(cfg=SimpleNamespace(projector_type="qwen2vl_merger")))
    assert str(e.value) == f"m.gguf: the vocabulary has no {first} token; not {model} model"


@pytest.mark.parametrize("name, first, model", [("vision_idefics3:Idefics3Layout", "'\\n\\n'", "a SmolVLM (Idefics3)"),
                                                ("vision_minicpmv:MiniCPMVLayout", "'<image>'", "a MiniCPM-V")])  # fmt: skip
def test_the_looked_up_markers_are_refused_by_their_repr(name, first, model):
    with pytest.raises(KvrunError) as e:
        layout(name)(engine("llama"), SimpleNamespace(cfg=SimpleNamespace(minicpmv_version=4)))
    assert str(e.value) == f"m.gguf: the vocabulary has no {first} token; not {model} model"


# ---------------------------------------------------------------- the functions themselves


def test_require_arch_wants_a_model_built_for_pictures_where_asked():
    require_arch(engine("glm4"), ("glm4", "glm4moe"), "a glm4v projector goes with GLM-4V")
    with pytest.raises(KvrunError, match="^m.gguf: a glm4v projector goes with GLM-4V, not glm4$"):
        require_arch(engine("glm4", takes_images=False), ("glm4",), "a glm4v projector goes with GLM-4V", takes_images=True)


def test_markers_pass_as_single_tokens_and_lookups_give_the_first_token_with_the_text():
    e = engine("llama", "<a>", "<b>", "<a>")
    require_markers(e, ("<a>", "<b>"), "a test")
    assert lookup_markers(e, ("<b>", "<a>", "\n"), "a test") == [1, 0, 3 + 10]
    require_text_model(engine("gemma3n", "<s>", "</s>"), "gemma3nv", "gemma3n", "Gemma 3n", ("<s>", "</s>"))
