"""Each picture projector type (an mmproj file's ``clip.projector_type``) with its encoder and its prompt layout.

One registry line a projector: a new one is its encoder (models/<name>_image.py), its layout (runtime/vision_<name>.py),
a line here, and its name in loaders/mmproj.py's ``SUPPORTED_PROJECTORS`` (which refuses other files in one line
before anything here is imported).  Modules are named, not imported, so that opening one projector file loads only
its own encoder and layout.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from ..loaders.gguf_file import GGUFFile
from ..loaders.mmproj import open_mmproj


@dataclass(frozen=True)
class ProjectorKind:
    """Where a projector type's code lives; names are ``"module:attribute"`` under kvrun.models / kvrun.runtime."""

    encoder: str  # the encoder class, built as ``Encoder(gguf_file, mmproj_config, backend)``
    #: the layout class, built as ``Layout(engine, encoder)``; None: Gemma 3's fixed rows between runtime/vision.py's markers
    layout: str | None = None
    #: the layout module's names of the markers a picture's rows go between; None: no markers (the layout writes its own)
    markers: tuple[str, str] | None = ("IMAGE_START", "IMAGE_END")
    #: how the rows go in: "block", one array of rows fed as a prompt's (SmolVLM's and most), or "mrope", rows with
    #: their M-RoPE positions recorded in the cache (Qwen2-VL's, runtime/vision_qwen2vl.py)
    rows: str = "block"


_QWEN2VL = ProjectorKind("qwen2vl_image:Qwen2VLEncoder", "vision_qwen2vl:Qwen2VLLayout", ("VISION_START", "VISION_END"), "mrope")

PROJECTORS: dict[str, ProjectorKind] = {
    "gemma3": ProjectorKind("siglip:SiglipEncoder", markers=None),
    "idefics3": ProjectorKind("siglip:SiglipEncoder", "vision_idefics3:Idefics3Layout", None),  # SmolVLM: tiles, no markers around
    "qwen2vl_merger": _QWEN2VL,
    "qwen2.5vl_merger": _QWEN2VL,
    "qwen3vl_merger": ProjectorKind("qwen3vl_image:Qwen3VLEncoder", "vision_qwen3vl:Qwen3VLLayout", ("VISION_START", "VISION_END"), "mrope"),
    "glm4v": ProjectorKind("glm4v_image:Glm4VEncoder", "vision_glm4v:Glm4VLayout", rows="mrope"),  # Qwen2-VL's layout, GLM's markers
    "lfm2": ProjectorKind("lfm2vl_image:Lfm2VLEncoder", "vision_lfm2:Lfm2Layout"),  # any size, tiles past 2x max pixels
    "internvl": ProjectorKind("internvl_image:InternVLEncoder", "vision_internvl:InternVLLayout"),  # tiles and a thumbnail
    "gemma4v": ProjectorKind("gemma4v_image:Gemma4VEncoder", "vision_gemma4:Gemma4VLayout"),
    "gemma3nv": ProjectorKind("gemma3nv_image:Gemma3nVisionEncoder", "vision_gemma3n:Gemma3nVLayout"),  # MobileNetV5, 256 causal rows
    "resampler": ProjectorKind("minicpmv_image:MiniCPMVEncoder", "vision_minicpmv:MiniCPMVLayout", None),  # MiniCPM-V: overview, slices
    "minicpmv4_6": ProjectorKind("minicpmv46_image:MiniCPMV46Encoder", "vision_minicpmv46:MiniCPMV46Layout", None),  # 4.6: merged rows, 2.6's slices
    "kimivl": ProjectorKind("kimivl_image:KimiVLEncoder", "vision_kimivl:KimiVLLayout"),
    "llama4": ProjectorKind("llama4_image:Llama4VisionEncoder", "vision_llama4:Llama4Layout"),  # tiles and an overview
    "pixtral": ProjectorKind("pixtral_image:PixtralEncoder", "vision_pixtral:PixtralLayout"),  # rows and [IMG_BREAK] rows
    "paddleocr": ProjectorKind("paddleocr_image:PaddleOCREncoder", "vision_paddleocr:PaddleOCRLayout", rows="mrope"),  # Qwen2-VL's layout
    "hunyuanvl": ProjectorKind("hunyuanvl_image:HunyuanVLEncoder", "vision_hunyuanvl:HunyuanVLLayout", rows="mrope"),  # XD-RoPE rows
    **dict.fromkeys(("mlp", "ldp", "ldpv2"), ProjectorKind("llava_image:LlavaEncoder", "vision_llava:LlavaLayout", None)),  # LLaVA, MobileVLM: no markers
    "cogvlm": ProjectorKind("cogvlm_image:CogVLMEncoder", "vision_cogvlm:CogVLMLayout", None),  # boi/eoi rows, the visual expert
    "janus_pro": ProjectorKind("janus_image:JanusProEncoder", "vision_janus:JanusProLayout", None),  # SigLIP + MLP, no markers
    "lightonocr": ProjectorKind("lightonocr_image:LightOnOCREncoder", "vision_lightonocr:LightOnOCRLayout"),  # Pixtral's ViT, longest edge
    "step3vl": ProjectorKind("step3vl_image:Step3VLEncoder", "vision_step3vl:Step3VLLayout", None),  # crops, then the overview; its own markers
    "youtuvl": ProjectorKind("youtuvl_image:YoutuVLEncoder", "vision_youtuvl:YoutuVLLayout", ("VISION_START", "VISION_END")),  # own size, windows
    "deepseekocr": ProjectorKind("deepseekocr_image:DeepseekOCREncoder", "vision_deepseekocr:DeepseekOCRLayout", None),  # SAM + CLIP; tiles, then the view; its own "\n"
    "deepseekocr2": ProjectorKind("deepseekocr2_image:DeepseekOCR2Encoder", "vision_deepseekocr2:DeepseekOCR2Layout", None),  # SAM + Qwen2 queries; tiles, the view; "\n"
    "granite4_vision": ProjectorKind("granite4v_image:Granite4VisionEncoder", "vision_granite4:Granite4VisionLayout", None),  # overview, tiles, newlines; its own "\n"
    "gemma4uv": ProjectorKind("gemma4uv_image:Gemma4UVEncoder", "vision_gemma4u:Gemma4UVLayout"),  # Gemma 4 12B: encoder-free, gemma4v's layout
    "dots_ocr": ProjectorKind("dotsocr_image:DotsOCREncoder", "vision_dotsocr:DotsOCRLayout"),  # raster-order NaViT, 2x2 merger; <|img|> .. <|endofimg|>
    "dots3note_v": ProjectorKind("dots3note_image:Dots3NoteVisionEncoder", "vision_dots3note:Dots3NoteLayout"),  # dots.note: dots.ocr's, Q/K norms, experts; dots3note text
    "nemotron_v2_vl": ProjectorKind("nemotronvl_image:NemotronVLEncoder", "vision_nemotronvl:NemotronVLLayout", None),  # RADIO, one fixed square, no markers
    "mimovl": ProjectorKind("mimovl_image:MimoVLEncoder", "vision_mimovl:MimoVLLayout", ("VISION_START", "VISION_END")),  # MiMo-V2.5: Youtu-VL's layout, mimo2 text
    "minimax_m3": ProjectorKind("minimax_m3_image:MiniMaxM3Encoder", "vision_minimax_m3:MiniMaxM3Layout"),  # MiniMax-M3: Youtu-VL's layout, minimax-m3 text
    "exaone4_5": ProjectorKind("exaone45_image:Exaone45Encoder", "vision_exaone45:Exaone45Layout", ("VISION_START", "VISION_END")),  # Qwen2.5-VL's ViT, GQA; <vision> .. </vision>
    "yasa2": ProjectorKind("yasa2_image:Yasa2Encoder", "vision_yasa2:Yasa2Layout"),  # Reka Edge: ConvNeXtV2, one stretched square, 64 rows; <image> .. </image>
    "kimik25": ProjectorKind("kimik25_image:KimiK25Encoder", "vision_kimik25:KimiK25Layout"),  # Kimi-K2.5: Kimi-VL's with a 3-D grid resized bicubic; deepseek2 text
    "ling3vl": ProjectorKind("ling3vl_image:Ling3VLEncoder", "vision_ling3vl:Ling3VLLayout", ("VISION_START", "VISION_END"), "mrope"),  # Ling 3 VL: Qwen3-VL's tower, norm-only merger; bailingmoe3 text
    "muse-glimmer": ProjectorKind("muse_glimmer_image:MuseGlimmerEncoder", "vision_muse_glimmer:MuseGlimmerLayout"),  # Muse Glimmer: windowed ViT, 2x2 shuffle, 3 products; <|image_start|> .. <|image_end|>
}  # fmt: skip




def _resolve(package: str, name: str) -> Any:
    module, attr = name.split(":")
    return getattr(importlib.import_module(f"kvrun.{package}.{module}"), attr)


def load_encoder(mmproj: str | os.PathLike | GGUFFile, backend: Any) -> Any:
    """The encoder of a picture projector file, or of the file already open (a one-line error for a file that is not
    one kvrun reads)."""
    g, cfg = open_mmproj(mmproj)  # (every encoder runs on the text model's device)
    return _resolve("models", PROJECTORS[cfg.projector_type].encoder)(g, cfg, backend)


def load_layout(engine: Any, encoder: Any) -> tuple[Any, str, str, str]:
    """``(layout, begin, end, rows)`` for ``encoder``'s projector beside ``engine``'s model: its layout object (None for
    Gemma 3's fixed rows), the markers around a picture's rows ("" where the layout writes its own), and
    :attr:`ProjectorKind.rows`."""
    kind = PROJECTORS[encoder.cfg.projector_type]
    if kind.layout is None:
        return None, "", "", kind.rows
    layout = _resolve("runtime", kind.layout)(engine, encoder)
    if kind.markers is None:
        return layout, "", "", kind.rows
    module = importlib.import_module(f"kvrun.runtime.{kind.layout.split(':')[0]}")
    return layout, getattr(module, kind.markers[0]), getattr(module, kind.markers[1]), kind.rows
