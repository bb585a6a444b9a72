"""The multimodal projector file (llama.cpp's ``--mmproj``): a vision encoder and the projector into a text model.

llama.cpp keeps a vision model's image side in a GGUF of its own, ``general.architecture`` "clip", beside the
text model's file: the encoder's hyperparameters under ``clip.vision.*`` and the projector's kind in
``clip.projector_type``.  kvrun reads Gemma 3's (projector type "gemma3": a SigLIP ViT, 4x4 average pooling,
RMSNorm and one matrix into the text width; models/siglip.py runs it) and SmolVLM's (projector type "idefics3":
the same SigLIP ViT, a pixel shuffle of ``clip.vision.projector.scale_factor`` patches a side and one matrix
``mm.model.fc``, on tiles of a picture first scaled to ``clip.vision.preproc_image_size`` on its longest edge), and
Qwen2-VL's and Qwen2.5-VL's ("qwen2vl_merger", "qwen2.5vl_merger": a ViT with a 2-D rope over a picture of its own
size, 2x2 patches merged by the MLP ``mm.0``/``mm.2``; models/qwen2vl_image.py) and LFM2-VL's ("lfm2": SigLIP2
NaFlex at the picture's own size, a pixel unshuffle, LayerNorm and the MLP ``mm.1``/``mm.2``; models/lfm2vl_image.py)
and InternVL's ("internvl": InternViT on tiles of ``image_size``, a pixel shuffle, ``mm.model.mlp.*``;
models/internvl_image.py) and Pixtral's and Mistral Small 3.1+'s ("pixtral": a ViT with a 2-D rope at the picture's
own size, Mistral Small's 2x2 patch merger, the MLP ``mm.1``/``mm.2``; models/pixtral_image.py) and Gemma 4's ("gemma4v":
a ViT with a 2-D rope at the picture's own size, 3x3 average pooling, ``mm.input_projection``; models/gemma4v_image.py)
and Qwen3-VL's ("qwen3vl_merger": Qwen2-VL's picture sizes, learned positions interpolated to the picture,
DeepStack levels beside each row; models/qwen3vl_image.py) and MiniCPM-V's ("resampler", ``clip.minicpmv_version`` 2 to 6 or 100045:
SigLIP on an overview and slices of a picture, a perceiver resampler of ``clip.minicpmv_query_num`` queries;
models/minicpmv_image.py) and GLM-4V's ("glm4v": Qwen2-VL's picture sizes, an RMSNorm ViT with learned positions, a 2x2
conv and a SwiGLU merger; models/glm4v_image.py).
Llama 4's ("llama4": a 2-D rope ViT with a CLS token on 336-pixel tiles and an overview, a pixel shuffle, the adapter
``mm.model.mlp.1``/``.2`` and ``mm.model.fc``; models/llama4_image.py) and Kimi-VL's ("kimivl": MoonViT at the picture's
own size, its position grid interpolated, a 2x2 merge, ``mm.input_norm`` and ``mm.1``/``mm.2``; models/kimivl_image.py).
LightOnOCR's ("lightonocr": Pixtral's ViT and merger without [IMG_BREAK] rows, a picture scaled to its longest edge
``clip.vision.preproc_image_size``, else ``image_size``; models/lightonocr_image.py), Janus-Pro's ("janus_pro": SigLIP
and the MLP ``mm.0``/``mm.1``; models/janus_image.py) and CogVLM's ("cogvlm": EVA2-CLIP with an appended CLS token,
the GLU projector ``mm.model.fc``, ``mm.up``/``mm.gate``/``mm.down`` and the rows ``v.boi``/``v.eoi``;
models/cogvlm_image.py).
Any other projector is refused in one line that names what is supported, before a weight is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from .errors import GGUFError, UnsupportedModelError
from .gguf_file import GGUFFile

#: projector types kvrun runs (clip.projector_type)
SUPPORTED_PROJECTORS = ("gemma3", "idefics3", "qwen2vl_merger", "qwen2.5vl_merger", "lfm2", "internvl", "pixtral", "gemma4v", "qwen3vl_merger", "resampler", "glm4v", "llama4", "kimivl")
#: the tensor each projector type projects into the text width with, [n_embd (x merged patches), n_text_embd]
PROJECTION_TENSORS = {"gemma3": "mm.input_projection.weight", "idefics3": "mm.model.fc.weight",
                      "qwen2vl_merger": "mm.2.weight", "qwen2.5vl_merger": "mm.2.weight", "lfm2": "mm.2.weight",
                      "internvl": "mm.model.mlp.3.weight", "pixtral": "mm.2.weight",
                      "gemma4v": "mm.input_projection.weight",
                      "qwen3vl_merger": "mm.2.weight", "resampler": "resampler.proj.weight", "llama4": "mm.model.fc.weight", "kimivl": "mm.2.weight",
                      "glm4v": "mm.down.weight"}  # fmt: skip
SUPPORTED_PROJECTORS += ("lightonocr", "janus_pro", "cogvlm")  # (models/lightonocr_image.py, janus_image.py, cogvlm_image.py)
PROJECTION_TENSORS["lightonocr"] = "mm.2.weight"
PROJECTION_TENSORS["janus_pro"] = "mm.1.weight"
PROJECTION_TENSORS["cogvlm"] = "mm.down.weight"
#: Gemma 4's (gemma4v) fewest and most rows a picture becomes: libmtmd's set_limit_image_tokens in the oracle
#: (llama.cpp 0.3.36; other versions' sources say 40..280 and 252..280)
GEMMA4V_TOKENS = (70, 1120)
#: Qwen2-VL's and Qwen2.5-VL's projectors (models/qwen2vl_image.py): pictures of any size, M-RoPE positions; Qwen3-VL's
#: sizes its pictures and places its rows alike (models/qwen3vl_image.py)
QWEN2VL_PROJECTORS = ("qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger")
QWEN2VL_PROJECTORS += ("ling3vl",)  # (Ling 3 VL: Qwen3-VL's tower, a norm-only merger, the MLP mm.0/mm.2; models/ling3vl_image.py)
#: MiniCPM-V's versions (clip.minicpmv_version) whose resampler and layout libmtmd builds: 2 (2.5), 3 (2.6), 4 (4.0),
#: 5 (4.5), 6 and 100045 (MiniCPM-o's); every one but 2 lays slices out as 2.6 does
MINICPMV_VERSIONS = (2, 3, 4, 5, 6, 100045)
SUPPORTED_PROJECTORS += ("paddleocr", "hunyuanvl")  # PaddleOCR-VL, HunyuanOCR / Hunyuan-VL (models/paddleocr_image.py, hunyuanvl_image.py)
PROJECTION_TENSORS["paddleocr"] = "mm.2.weight"
PROJECTION_TENSORS["hunyuanvl"] = "mm.model.fc.weight"
SUPPORTED_PROJECTORS += ("mlp", "ldp", "ldpv2")  # LLaVA 1.5 / 1.6, MobileVLM 1 / 2 (models/llava_image.py)
PROJECTION_TENSORS["mlp"] = "mm.2.weight"
PROJECTION_TENSORS["ldp"] = "mm.model.mb_block.2.block.2.1.bias"
PROJECTION_TENSORS["ldpv2"] = "mm.model.peg.0.bias"
SUPPORTED_PROJECTORS += ("gemma3nv",)  # Gemma 3n: MobileNetV5 and embed_vision (models/gemma3nv_image.py)
PROJECTION_TENSORS["gemma3nv"] = "mm.input_projection.weight"
SUPPORTED_PROJECTORS += ("minicpmv4_6",)  # MiniCPM-V 4.6: SigLIP with a ViT merger, a final 2x2 merger (models/minicpmv46_image.py)
PROJECTION_TENSORS["minicpmv4_6"] = "mm.down.weight"
SUPPORTED_PROJECTORS += ("step3vl",)  # Step3-VL: PE-lang ViT on crops and an overview, two stride-2 convs (models/step3vl_image.py)
PROJECTION_TENSORS["step3vl"] = "mm.model.fc.weight"
SUPPORTED_PROJECTORS += ("youtuvl",)  # Youtu-VL: SigLIP2 at the picture's own size, windows, a 2x2 merger (models/youtuvl_image.py)
PROJECTION_TENSORS["youtuvl"] = "mm.2.weight"
SUPPORTED_PROJECTORS += ("deepseekocr",)  # DeepSeek-OCR: SAM ViT-B into CLIP-L, global view and tiles (models/deepseekocr_image.py)
PROJECTION_TENSORS["deepseekocr"] = "mm.model.fc.weight"
SUPPORTED_PROJECTORS += ("deepseekocr2",)  # DeepSeek-OCR 2: SAM ViT-B into a Qwen2 encoder with learned queries (models/deepseekocr2_image.py)
PROJECTION_TENSORS["deepseekocr2"] = "mm.model.fc.weight"
SUPPORTED_PROJECTORS += ("granite4_vision",)  # Granite 4 Vision: SigLIP, WindowQFormer blocks, anyres tiles (models/granite4v_image.py)
PROJECTION_TENSORS["granite4_vision"] = "v.proj_blk.0.linear.weight"  # (one block's: n_text_embd is K times it, below)
SUPPORTED_PROJECTORS += ("dots_ocr",)  # dots.ocr: a NaViT with a 2-D rope at the picture's own size, a 2x2 merger (models/dotsocr_image.py)
PROJECTION_TENSORS["dots_ocr"] = "mm.2.weight"
SUPPORTED_PROJECTORS += ("dots3note_v",)  # dots.note: dots.ocr's NaViT with per-head Q/K norms and blocks of routed experts (models/dots3note_image.py)
PROJECTION_TENSORS["dots3note_v"] = "mm.2.weight"
SUPPORTED_PROJECTORS += ("gemma4uv",)  # Gemma 4 12B's encoder-free "unified" embedder (models/gemma4uv_image.py)
PROJECTION_TENSORS["gemma4uv"] = "mm.input_projection.weight"
SUPPORTED_PROJECTORS += ("nemotron_v2_vl",)  # Nemotron Nano VL: RADIO ViT with registers, a 2x2 shuffle, RMSNorm + squared-ReLU MLP (models/nemotronvl_image.py)
PROJECTION_TENSORS["nemotron_v2_vl"] = "mm.model.mlp.3.weight"
SUPPORTED_PROJECTORS += ("mimovl",)  # MiMo-V2.5: Qwen2.5-VL's ViT, grouped heads, banded row/column windows with sinks (models/mimovl_image.py)
PROJECTION_TENSORS["mimovl"] = "mm.2.weight"
SUPPORTED_PROJECTORS += ("exaone4_5",)  # EXAONE 4.5: Qwen2.5-VL's ViT with grouped-query attention (models/exaone45_image.py)
PROJECTION_TENSORS["exaone4_5"] = "mm.2.weight"
SUPPORTED_PROJECTORS += ("yasa2",)  # Reka Edge: Yasa2, a ConvNeXtV2 backbone pooled to 8 x 8, a two-layer MLP (models/yasa2_image.py)
PROJECTION_TENSORS["yasa2"] = "mm.2.weight"
SUPPORTED_PROJECTORS += ("ling3vl",)  # Ling 3 VL: Qwen3-VL's ViT without DeepStack, the merger norm mm.input_norm (models/ling3vl_image.py)
PROJECTION_TENSORS["ling3vl"] = "mm.2.weight"
SUPPORTED_PROJECTORS += ("kimik25",)  # Kimi-K2.5: MoonViT3d, a 3-D position grid resized bicubic, a 2x2 merge (models/kimik25_image.py)
PROJECTION_TENSORS["kimik25"] = "mm.2.weight"
SUPPORTED_PROJECTORS += ("muse-glimmer",)  # Muse Glimmer: a ViT with square windows and a 2-D rope, a channel-major 2x2 shuffle, 3 products (models/muse_glimmer_image.py)
PROJECTION_TENSORS["muse-glimmer"] = "mm.2.weight"
SUPPORTED_PROJECTORS += ("minimax_m3",)  # MiniMax-M3: Qwen2-VL's ViT, a partial 2-D rope, a per-patch MLP, a 2x2 merger MLP (models/minimax_m3_image.py)
PROJECTION_TENSORS["minimax_m3"] = "mm.merger.fc2.weight"
#: projectors whose pictures keep their size within the file's (or clip.cpp's) pixel limits, ``image_size`` only
#: nominal (PaddleOCR-VL's is sqrt(max_pixels), its position grid another size): :func:`pixel_limits_config`
PIXEL_LIMIT_PROJECTORS = ("paddleocr", "hunyuanvl")
PIXEL_LIMIT_PROJECTORS += ("mimovl",)  # (MiMo-V2.5: the file's image_min_pixels / image_max_pixels, required; 2x2 merges)
#: Hunyuan-VL's fewest and most merged blocks a picture becomes where its file states no pixel limits (clip.cpp's
#: set_limit_image_tokens(256, 16384))
HUNYUANVL_TOKENS = (256, 16384)


@dataclass(frozen=True)
class MmprojConfig:
    """A vision encoder's and projector's hyperparameters, as clip.cpp's ``clip_hparams`` reads them."""

    projector_type: str
    image_size: int  # the encoder's square input, pixels a side (896 for Gemma 3)
    patch_size: int  # pixels a side of one patch (14)
    n_embd: int  # the encoder's width (1152)
    n_ff: int  # its FFN width (4304)
    n_layer: int
    n_head: int
    eps: float  # every LayerNorm's and the projector's RMSNorm's epsilon
    image_mean: tuple[float, float, float]  # per RGB channel, on pixels scaled to [0, 1]
    image_std: tuple[float, float, float]
    n_merge: int  # patches a side pooled into one output row (Gemma 3: 4, 64x64 patches -> 16x16 rows)
    n_text_embd: int  # the projector's output width: the text model's n_embd
    longest_edge: int = 0  # (idefics3) clip.vision.preproc_image_size: a picture's longest edge before tiling; 0: none
    # (Qwen2-VL, Qwen2.5-VL) the pixels a picture is scaled within (clip.cpp: 8 to 4096 merged rows' worth), the
    # window-attention pattern (every n-th layer sees the whole picture; 0: no windows), the ViT MLP's activation
    # (clip.cpp's: "gelu" with clip.use_gelu, "silu" with clip.use_silu, else "gelu_quick")
    min_pixels: int = 0
    max_pixels: int = 0
    n_wa_pattern: int = 0
    ffn_op: str = ""
    # (InternVL) the fewest and most tiles a picture is cut into (clip.cpp's defaults 1 and 12 unless the file says)
    min_tiles: int = 0
    max_tiles: int = 0
    # (MiniCPM-V) clip.minicpmv_version and the resampler's queries (clip.minicpmv_query_num; clip.cpp's fallback 64)
    minicpmv_version: int = 0
    n_query: int = 0

    @property
    def n_patches_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_tokens(self) -> int:
        """Embedding rows one image becomes (Gemma 3: 256)."""
        return (self.n_patches_side // self.n_merge) ** 2


def load_mmproj_config(g: GGUFFile) -> MmprojConfig:
    """The config of an opened mmproj file, or a one-line error: not a projector file, a projector kvrun
    does not run, or missing/inconsistent hyperparameters."""
    arch = g.get("general.architecture")
    if arch != "clip":
        raise GGUFError(f"{g.path}: general.architecture is {arch!r}, not 'clip': not a multimodal projector "
                        "(--mmproj takes the mmproj-*.gguf file published beside the model)")  # fmt: skip
    ptype = g.get("clip.projector_type") or g.get("clip.vision.projector_type")
    if ptype == "qwen2.5o":  # (Qwen2.5-Omni's combined file: clip.cpp reads its vision side as Qwen2.5-VL's)
        ptype = "qwen2.5vl_merger"
    if not g.get("clip.has_vision_encoder", True) or ptype is None:
        raise UnsupportedModelError(f"{g.path}: the projector has no vision encoder (an audio one?); "
                                    f"kvrun reads image projectors of type {', '.join(SUPPORTED_PROJECTORS)}")  # fmt: skip
    if ptype not in SUPPORTED_PROJECTORS:
        raise UnsupportedModelError(f"{g.path}: projector type {ptype!r} is not supported; "
                                    f"kvrun reads {', '.join(SUPPORTED_PROJECTORS)} (Gemma 3's, SmolVLM's, Qwen2-VL's, Qwen2.5-VL's, LFM2-VL's, InternVL's, Pixtral's, Gemma 4's, Qwen3-VL's, MiniCPM-V's)")  # fmt: skip

    def need(key: str) -> int | float:
        v = g.get(f"clip.vision.{key}")
        if v is None:
            raise GGUFError(f"{g.path}: clip.vision.{key} is missing; the projector file is incomplete")
        return v

    def triple(key: str) -> tuple[float, float, float]:
        v = [float(x) for x in need(key)]  # type: ignore[union-attr]
        if len(v) < 3:
            raise GGUFError(f"{g.path}: clip.vision.{key} has {len(v)} values, not 3 (R, G, B)")
        return (v[0], v[1], v[2])

    image_size, patch_size = int(need("image_size")), int(need("patch_size"))
    n_embd, n_head = int(need("embedding_length")), int(need("attention.head_count"))
    # Gemma 3 pools 4x4 patches into a row; the file may say otherwise (llama.cpp's tiny test model does); SmolVLM's
    # states its pixel shuffle (clip.cpp reads it for idefics3 without a default: a file without one shuffles none)
    n_merge = int(g.get("clip.vision.projector.scale_factor", {"gemma3": 4, "gemma4v": 3}.get(str(ptype), 1)))
    qwen = ptype in QWEN2VL_PROJECTORS or ptype == "glm4v"  # (GLM-4V: Qwen2-VL's picture sizes and 2x2 merge)
    if qwen:  # (clip.cpp's spatial merge: 2 unless the file says; its graph merges 2x2 patches whatever it says)
        n_merge = int(g.get("clip.vision.spatial_merge_size", 2))
        if n_merge != 2:
            raise UnsupportedModelError(f"{g.path}: clip.vision.spatial_merge_size is {n_merge}; llama.cpp's Qwen2-VL graph merges 2x2")
    if ptype == "minicpmv4_6":  # (clip.cpp's n_merge: 4 unless stated (both mergers), 2 its "4x" variant (the final one alone))
        n_merge = int(g.get("clip.vision.projector.scale_factor", 4) or 4)
        if n_merge not in (2, 4):
            raise UnsupportedModelError(f"{g.path}: clip.vision.projector.scale_factor is {n_merge}; libmtmd's MiniCPM-V 4.6 merges 2 or 4 a side")
    if ptype in ("pixtral", "lightonocr"):  # (Mistral Small 3.1's patch merger: clip.cpp's n_merge, 1 for Pixtral 12B, which has none)
        n_merge = int(g.get("clip.vision.spatial_merge_size", 1) or 1)
    proj_name = PROJECTION_TENSORS[str(ptype)]
    proj = g.tensors.get(proj_name)
    if proj is None:
        raise GGUFError(f"{g.path}: tensor {proj_name!r} is missing; the projector file is incomplete")
    cfg = MmprojConfig(
        projector_type=str(ptype),
        image_size=image_size,
        patch_size=patch_size,
        n_embd=n_embd,
        n_ff=int(need("feed_forward_length")),
        n_layer=int(need("block_count")),
        n_head=n_head,
        eps=float(g.get("clip.vision.attention.layer_norm_epsilon", 1e-6)),
        image_mean=triple("image_mean"),
        image_std=triple("image_std"),
        n_merge=n_merge,
        # (Gemma 3's stored [n_embd, n_text_embd]: clip.cpp multiplies by its transpose; SmolVLM's fc [n_text_embd, in])
        n_text_embd=int(proj.shape[-1] if ptype == "gemma3" else proj.shape[0]),
        longest_edge=int(g.get("clip.vision.preproc_image_size", 0) or 0) if ptype == "idefics3" else 0,
        # (clip.cpp's set_limit_image_tokens(8, 4096): merged rows' worth of pixels)
        min_pixels=8 * (patch_size * 2) ** 2 if qwen else 0,
        max_pixels=4096 * (patch_size * 2) ** 2 if qwen else 0,
        n_wa_pattern=int(g.get("clip.vision.n_wa_pattern", 0) or 0) if ptype == "qwen2.5vl_merger" else 0,
        ffn_op=("gelu" if g.get("clip.use_gelu", False) else "silu" if g.get("clip.use_silu", False) else "gelu_quick") if qwen else "",
    )
    if ptype == "lfm2":  # (clip.cpp's set_limit_image_tokens(64, 256): LFM2-VL's processor_config, merged rows' worth)
        cfg = replace(cfg, min_pixels=64 * (patch_size * n_merge) ** 2, max_pixels=256 * (patch_size * n_merge) ** 2)
    if ptype == "pixtral":  # (clip.cpp's set_limit_image_tokens(8, 1024): merged rows' worth; its ViT MLP is SwiGLU)
        f = (patch_size * n_merge) ** 2
        cfg = replace(cfg, min_pixels=8 * f, max_pixels=1024 * f,
                      ffn_op="gelu" if g.get("clip.use_gelu", False) else "silu" if g.get("clip.use_silu", False) else "gelu_quick")
    if ptype == "gemma4v":  # (clip.cpp's set_limit_image_tokens, pooled rows' worth; its ViT MLP's activation as any file's)
        f = patch_size * n_merge
        op = "gelu" if g.get("clip.use_gelu", False) else "silu" if g.get("clip.use_silu", False) else "gelu_quick"
        cfg = replace(cfg, min_pixels=GEMMA4V_TOKENS[0] * f * f, max_pixels=GEMMA4V_TOKENS[1] * f * f, ffn_op=op)
    if ptype == "gemma4uv":  # (clip.cpp: the 3x3 pooling folded into the patch, n_merge 1; gemma4v's 70 to 1120 rows; no ViT)
        f = patch_size * int(g.get("clip.vision.projector.scale_factor", 3) or 3)
        return replace(cfg, patch_size=f, n_merge=1, min_pixels=GEMMA4V_TOKENS[0] * f * f, max_pixels=GEMMA4V_TOKENS[1] * f * f)
    if ptype == "kimivl":  # (Kimi-VL: clip.cpp's set_limit_image_tokens(8, 1024), merged rows' worth; its ViT MLP's activation)
        f = (patch_size * n_merge) ** 2
        cfg = replace(cfg, min_pixels=8 * f, max_pixels=1024 * f,
                      ffn_op="gelu" if g.get("clip.use_gelu", False) else "silu" if g.get("clip.use_silu", False) else "gelu_quick")
    if ptype == "kimik25":  # (Kimi-K2.5: the file's pixel limits where it states both, else set_limit_image_tokens(2, 4096))
        f, lo, hi = (patch_size * n_merge) ** 2, int(g.get("clip.vision.image_min_pixels", 0) or 0), int(g.get("clip.vision.image_max_pixels", 0) or 0)
        cfg = replace(cfg, min_pixels=lo if lo > 0 and hi > 0 else 2 * f, max_pixels=hi if lo > 0 and hi > 0 else 4096 * f,
                      ffn_op="gelu" if g.get("clip.use_gelu", False) else "silu" if g.get("clip.use_silu", False) else "gelu_quick")
    if ptype == "llama4":  # (Llama 4: the pixel shuffle's scale_factor read above; its ViT MLP's activation as any file's)
        cfg = replace(cfg, ffn_op="gelu" if g.get("clip.use_gelu", False) else "silu" if g.get("clip.use_silu", False) else "gelu_quick")
    if ptype in ("lightonocr", "janus_pro", "cogvlm"):  # (their ViT MLP's activation; LightOnOCR's longest edge, as clip.cpp's)
        op = "gelu" if g.get("clip.use_gelu", False) else "silu" if g.get("clip.use_silu", False) else "gelu_quick"
        edge = int(g.get("clip.vision.preproc_image_size", 0) or image_size) if ptype == "lightonocr" else 0
        cfg = replace(cfg, ffn_op=op, longest_edge=edge)
    if ptype == "gemma3nv":  # (Gemma 3n: clip.cpp counts image_size / patch_size rows, MobileNetV5's 16 x 16, the
        # converter's patch_size image_size / 256: 256 "patches" a side, 16 x 16 a row)
        from math import isqrt

        cfg = replace(cfg, n_merge=max(1, isqrt(cfg.n_patches_side)))
    if ptype == "internvl":
        lo, hi = int(g.get("clip.vision.preproc_min_tiles", 1) or 1), int(g.get("clip.vision.preproc_max_tiles", 12) or 12)
        if not 1 <= lo <= hi:
            raise GGUFError(f"{g.path}: preproc_min_tiles {lo} and preproc_max_tiles {hi} are not a range of tile counts")
        cfg = replace(cfg, min_tiles=lo, max_tiles=hi)
    if ptype == "resampler":  # (MiniCPM-V: which layout is the version's; the resampler's rows are its queries)
        ver = int(g.get("clip.minicpmv_version", 0) or 0)
        if ver not in MINICPMV_VERSIONS:
            raise UnsupportedModelError(f"{g.path}: clip.minicpmv_version is {ver}; kvrun (as libmtmd) lays out MiniCPM-V versions "
                                        f"{', '.join(map(str, MINICPMV_VERSIONS))}")  # fmt: skip
        cfg = replace(cfg, minicpmv_version=ver, n_query=int(g.get("clip.minicpmv_query_num", 0) or 64))
    if ptype == "step3vl":  # (clip.cpp: two stride-2 convs (n_merge 4 unless stated), the longest edge 3024 unless stated)
        op = "gelu" if g.get("clip.use_gelu", False) else "silu" if g.get("clip.use_silu", False) else "gelu_quick"
        cfg = replace(cfg, n_merge=int(g.get("clip.vision.projector.scale_factor", 4) or 4), ffn_op=op,
                      longest_edge=int(g.get("clip.vision.preproc_image_size", 0) or 3024))
    if ptype == "youtuvl":  # (clip.cpp: 2x2 merges, set_limit_image_tokens(1, 62500) merged rows' worth of pixels; a
        # picture keeps its own size, image_size nominal (Youtu-VL's 560: 35 patches)

        op = "gelu" if g.get("clip.use_gelu", False) else "silu" if g.get("clip.use_silu", False) else "gelu_quick"
        merge = int(g.get("clip.vision.spatial_merge_size", 2) or 2)
        if merge != 2 or patch_size <= 0 or n_embd % n_head:
            raise GGUFError(f"{g.path}: inconsistent vision hyperparameters (patch_size {patch_size}, spatial merge {merge}, "
                            f"width {n_embd}, heads {n_head}); llama.cpp's Youtu-VL graph merges 2x2")  # fmt: skip
        f = (patch_size * 2) ** 2
        return replace(cfg, n_merge=2, min_pixels=f, max_pixels=62500 * f, ffn_op=op)
    if ptype == "granite4_vision":  # (Granite 4 Vision: a row is its K blocks' projections side by side; a tile's rows are
        # its patches pooled window_side / query_side a side: models/granite4v_image.py)
        layers, win, qs = g.get("clip.vision.feature_layer"), g.get("clip.vision.projector.window_side"), g.get("clip.vision.projector.query_side")
        k = 1 if layers is None else max(1, len(layers))
        cfg = replace(cfg, n_text_embd=k * cfg.n_text_embd, n_merge=int(win) // int(qs) if win and qs and int(win) % int(qs) == 0 else 1)
    if ptype == "minimax_m3":  # (clip.cpp: 2x2 merges unless the file says, set_limit_image_tokens(8, 576) merged rows' worth)
        f = (patch_size * int(g.get("clip.vision.spatial_merge_size", 2) or 2)) ** 2
        return replace(cfg, n_merge=int(g.get("clip.vision.spatial_merge_size", 2) or 2), min_pixels=8 * f, max_pixels=576 * f, ffn_op="gelu_erf")
    if ptype == "qwen2.5vl_merger" and cfg.n_wa_pattern <= 0:  # (clip.cpp requires it of 2.5's files)
        raise GGUFError(f"{g.path}: clip.vision.n_wa_pattern is missing; the Qwen2.5-VL projector file is incomplete")
    if ptype == "dots_ocr":  # (dots.ocr: clip.cpp's merge is the file's projector scale_factor, required; pixel limits as PaddleOCR-VL's)
        if int(g.get("clip.vision.projector.scale_factor", 0) or 0) < 2:
            raise GGUFError(f"{g.path}: clip.vision.projector.scale_factor is missing or under 2; the dots_ocr projector file is incomplete")
        return replace(pixel_limits_config(g, cfg), n_merge=n_merge)
    if ptype == "dots3note_v":  # (dots.note: dots.ocr's config, its merge clip.vision.spatial_merge_size, required by clip.cpp)
        if int(g.get("clip.vision.spatial_merge_size", 0) or 0) < 2:
            raise GGUFError(f"{g.path}: clip.vision.spatial_merge_size is missing or under 2; the dots3note_v projector file is incomplete")
        return replace(pixel_limits_config(g, cfg), n_merge=int(g.get("clip.vision.spatial_merge_size")))
    if ptype in PIXEL_LIMIT_PROJECTORS:  # (their image_size need not be whole patches: checked there)
        return pixel_limits_config(g, cfg)
    if ptype == "exaone4_5":  # (EXAONE 4.5: the file's pixel limits and kv heads, Qwen2-VL's 2x2 merge: exaone45_config)
        return exaone45_config(g, cfg)
    side = cfg.n_patches_side
    if patch_size <= 0 or image_size % patch_size or n_merge <= 0 or side % n_merge or n_embd % n_head:
        raise GGUFError(f"{g.path}: inconsistent vision hyperparameters (image_size {image_size}, patch_size {patch_size}, "
                        f"pooling {n_merge}, width {n_embd}, heads {n_head})")  # fmt: skip
    return cfg


def open_mmproj(path: str | os.PathLike | GGUFFile) -> tuple[GGUFFile, MmprojConfig]:
    """Open ``path`` as a projector file: the file and its config (the file is closed again on an error); ``path`` may
    be the file already open (its header is not parsed again)."""
    g = path if isinstance(path, GGUFFile) else GGUFFile(path)
    try:
        return g, load_mmproj_config(g)
    except Exception:
        g.close()
        raise


def pixel_limits_config(g: GGUFFile, cfg: MmprojConfig) -> MmprojConfig:
    """The config of a :data:`PIXEL_LIMIT_PROJECTORS` file: clip.cpp's merge, pixel limits and ViT MLP activation for
    it.  PaddleOCR-VL (clip.cpp: n_merge 2, ``clip.vision.image_min_pixels``/``image_max_pixels`` required, the
    file's activation); Hunyuan-VL (n_merge ``clip.vision.spatial_merge_size``, 2 unless stated; the file's pixel
    limits where stated, else :data:`HUNYUANVL_TOKENS` blocks of 2x2 patches' worth; GELU whatever the file says)."""
    hunyuan = cfg.projector_type == "hunyuanvl"

    def pixels(key: str, default: int | None) -> int:
        v = g.get(f"clip.vision.{key}")
        if v is None and default is not None:
            return default
        if v is None or int(v) <= 0:
            raise GGUFError(f"{g.path}: clip.vision.{key} is missing; the {cfg.projector_type} projector file is incomplete")
        return int(v)

    op = "gelu" if g.get("clip.use_gelu", False) else "silu" if g.get("clip.use_silu", False) else "gelu_quick"
    block = (cfg.patch_size * 2) ** 2  # (clip.cpp sets Hunyuan's defaults before it reads the merge: 2x2 blocks)
    lo = pixels("image_min_pixels", HUNYUANVL_TOKENS[0] * block if hunyuan else None)
    hi = pixels("image_max_pixels", HUNYUANVL_TOKENS[1] * block if hunyuan else None)
    merge = int(g.get("clip.vision.spatial_merge_size", 2) or 2) if hunyuan else 2
    if cfg.patch_size <= 0 or cfg.n_embd % cfg.n_head or hi < lo or merge <= 0:
        raise GGUFError(f"{g.path}: inconsistent vision hyperparameters (patch_size {cfg.patch_size}, width {cfg.n_embd}, "
                        f"heads {cfg.n_head}, merge {merge}, pixels {lo} to {hi})")  # fmt: skip
    return replace(cfg, n_merge=merge, min_pixels=lo, max_pixels=hi, ffn_op="gelu" if hunyuan else op)


def exaone45_config(g: GGUFFile, cfg: MmprojConfig) -> MmprojConfig:
    """The config of an EXAONE 4.5 projector file, as clip.cpp reads it for PROJECTOR_TYPE_EXAONE4_5: n_merge
    ``clip.vision.spatial_merge_size`` (2 unless stated; its graph merges 2x2), ``clip.vision.n_wa_pattern`` (0
    unless stated: no windows), the pixel limits ``clip.vision.image_min_pixels`` / ``image_max_pixels`` and the
    key/value heads ``clip.vision.attention.head_count_kv`` (all three required), the ViT MLP's activation as any
    file's; ``image_size`` is nominal."""

    def need(key: str) -> int:
        v = g.get(f"clip.vision.{key}")
        if v is None or int(v) <= 0:
            raise GGUFError(f"{g.path}: clip.vision.{key} is missing; the exaone4_5 projector file is incomplete")
        return int(v)

    lo, hi, kv = need("image_min_pixels"), need("image_max_pixels"), need("attention.head_count_kv")
    merge = int(g.get("clip.vision.spatial_merge_size", 2) or 2)
    p, E, H = cfg.patch_size, cfg.n_embd, cfg.n_head
    if merge != 2 or p <= 0 or E % H or H % kv or (E // H) % 4 or hi < lo:
        raise GGUFError(f"{g.path}: inconsistent vision hyperparameters (patch_size {p}, spatial merge {merge}, width {E}, "
                        f"heads {H}, kv heads {kv}, pixels {lo} to {hi}); llama.cpp's EXAONE 4.5 graph merges 2x2")  # fmt: skip
    op = "gelu" if g.get("clip.use_gelu", False) else "silu" if g.get("clip.use_silu", False) else "gelu_quick"
    wa = int(g.get("clip.vision.n_wa_pattern", 0) or 0)
    return replace(cfg, n_merge=2, min_pixels=lo, max_pixels=hi, n_wa_pattern=wa, ffn_op=op)
