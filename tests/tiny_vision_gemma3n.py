"""A tiny random Gemma 3n vision pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "gemma3nv": MobileNetV5 and Gemma 3n's embed_vision) and a Gemma 3n
text model (tinymodel's: AltUp, LAuReL, per-layer inputs, shared K/V) whose vocabulary knows ``<start_of_image>`` and
``<end_of_image>``.

The projector is laid out as llama.cpp's converter writes Gemma 3n's (``v.conv_stem.*``, ``v.blk.<stage>.<block>.*``,
``v.msfa.*``, ``mm.soft_emb_norm``, ``mm.input_projection``; ``patch_size`` image_size / 256 so that clip.cpp counts
256 rows), at toy widths but with every kind of block MobileNetV5 has, at the places its graph treats apart:

    stem        3x3 stride-2 conv with a bias, RMSNorm2d, GELU                              512 -> 256 px, 8 ch
    stage 0     0.0 edge residual, stride 2 (SAME padding); 0.1 edge residual, residual   -> 128, 8
    stage 1     1.0 UIR dw_start 3x3 + pw_exp + dw_mid 3x3 stride 2 + pw_proj             -> 64, 12
                1.1 UIR dw_start 5x5 + pw_exp + pw_proj + layer_scale, residual
    stage 2     2.0 UIR pw_exp + dw_mid 5x5 stride 2 + pw_proj                             -> 32, 16
                2.1 multi-query attention (2 heads of 4), K and V downsampled 3x3 stride 2 and normed, layer_scale
                2.2 UIR pw_exp + pw_proj, residual                                           (fusion input 1)
    stage 3     3.0 UIR dw_start + pw_exp + dw_mid stride 2 + pw_proj                      -> 16, 24
                3.1 multi-query attention (1 head of 8) without downsampling or layer_scale (fusion input 2)
    MSFA        stage 3 upsampled 2x (nearest) beside stage 2, pw_exp 40 -> 96, GELU, pw_proj -> 64, 2x2 average
                pooling to 16 x 16, RMSNorm2d
    embed       x sqrt(64), RMSNorm (mm.soft_emb_norm), mm.input_projection -> 64, RMSNorm

so a picture is 256 rows, as Gemma 3n's.  The encoder's width is the text model's (64), as Gemma 3n's are both 2048:
libmtmd 0.3.36 takes the projection's input width for its output width (clip_n_mmproj_embd), so it refuses a file
whose two widths differ.  Conv kernels are stored as the converter stores them ([out, in/groups,
kh, kw]; the stem bias and layer scales [1, C, 1, 1]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from tiny_vision import mmproj_writer
from tinymodel import _finish, _write_tiny_gemma3n

Q = GGMLQuantizationType

IMAGE_SIZE, V_EMBD, N_ROWS = 512, 64, 256
MEAN, STD = (0.1, 0.0, -0.1), (1.0, 0.9, 1.1)  # (Gemma 3n's are 0 and 1: distinct ones catch a channel mix-up)
IMAGE_TOKENS = ("<start_of_image>", "<end_of_image>")
N_TEXT_EMBD = 64  # tinymodel's gemma3n width

#: the blocks, stage by stage: (kind, spec); "er": edge residual (in, mid, out); "uir": universal inverted residual
#: (in, mid, out, dw_start kernel, dw_mid kernel, layer_scale); "mqa": attention (width, heads, head width, down, scale)
BLOCKS = [
    [("er", (8, 16, 8)), ("er", (8, 16, 8))],
    [("uir", (8, 16, 12, 3, 3, False)), ("uir", (12, 24, 12, 5, 0, True))],
    [("uir", (12, 24, 16, 0, 5, False)), ("mqa", (16, 2, 4, True, True)), ("uir", (16, 32, 16, 0, 0, False))],
    [("uir", (16, 32, 24, 3, 3, False)), ("mqa", (24, 1, 8, False, False))],
]


def write_tiny_gemma3nv_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = N_TEXT_EMBD) -> Path:
    """A random Gemma 3n projector; its convolution kernels and projection stored as ``qtype`` (F32 or F16), its
    norms and layer scales float32."""
    rng = np.random.default_rng(seed)
    w = mmproj_writer(path, "tiny-gemma3nv-mmproj", "gemma3nv", {}, IMAGE_SIZE, IMAGE_SIZE // N_ROWS,
                      (V_EMBD, 4 * V_EMBD, 128, 8), n_text_embd, MEAN, STD)  # fmt: skip

    def kernel(name: str, shape: tuple[int, ...]) -> None:
        fan_in = int(np.prod(shape[1:]))
        a = (rng.standard_normal(shape) * (1.2 / np.sqrt(fan_in))).astype(np.float32)
        w.add_tensor(name, a.astype(np.float16) if qtype == Q.F16 and "stem" not in name else a)

    def vec(name: str, n: int, base: float = 1.0, scale: float = 0.2, shape: tuple[int, ...] | None = None) -> None:
        w.add_tensor(name, (base + rng.standard_normal(n) * scale).astype(np.float32).reshape(shape or (n,)))

    kernel("v.conv_stem.conv.weight", (8, 3, 3, 3))
    vec("v.conv_stem.conv.bias", 8, 0.0, 0.3, (1, 8, 1, 1))
    vec("v.conv_stem.bn.weight", 8)
    for s, stage in enumerate(BLOCKS):
        for j, (kind, spec) in enumerate(stage):
            b = f"v.blk.{s}.{j}."
            if kind == "er":
                cin, mid, cout = spec
                kernel(b + "conv_exp.weight", (mid, cin, 3, 3))
                vec(b + "bn1.weight", mid)
                kernel(b + "conv_pwl.weight", (cout, mid, 1, 1))
                vec(b + "bn2.weight", cout)
            elif kind == "uir":
                cin, mid, cout, k_start, k_mid, scale = spec
                if k_start:
                    kernel(b + "dw_start.conv.weight", (cin, 1, k_start, k_start))
                    vec(b + "dw_start.bn.weight", cin)
                kernel(b + "pw_exp.conv.weight", (mid, cin, 1, 1))
                vec(b + "pw_exp.bn.weight", mid)
                if k_mid:
                    kernel(b + "dw_mid.conv.weight", (mid, 1, k_mid, k_mid))
                    vec(b + "dw_mid.bn.weight", mid)
                kernel(b + "pw_proj.conv.weight", (cout, mid, 1, 1))
                vec(b + "pw_proj.bn.weight", cout)
                if scale:
                    vec(b + "layer_scale.gamma", cout, 0.5, 0.2, (1, cout, 1, 1))
            else:
                c, heads, d, down, scale = spec
                vec(b + "norm.weight", c)
                kernel(b + "attn.query.proj.weight", (heads * d, c, 1, 1))
                for kv in ("key", "value"):
                    if down:
                        kernel(b + f"attn.{kv}.down_conv.weight", (c, 1, 3, 3))
                        vec(b + f"attn.{kv}.norm.weight", c)
                    kernel(b + f"attn.{kv}.proj.weight", (d, c, 1, 1))
                kernel(b + "attn.output.proj.weight", (c, heads * d, 1, 1))
                if scale:
                    vec(b + "layer_scale.gamma", c, 0.5, 0.2, (1, c, 1, 1))
    kernel("v.msfa.ffn.pw_exp.conv.weight", (96, 40, 1, 1))
    vec("v.msfa.ffn.pw_exp.bn.weight", 96)
    kernel("v.msfa.ffn.pw_proj.conv.weight", (V_EMBD, 96, 1, 1))
    vec("v.msfa.ffn.pw_proj.bn.weight", V_EMBD)
    vec("v.msfa.norm.weight", V_EMBD)
    vec("mm.soft_emb_norm.weight", V_EMBD)
    a = (rng.standard_normal((n_text_embd, V_EMBD)) * 0.3).astype(np.float32)  # [n_text_embd, E]: ggml_mul_mat(w, x)
    w.add_tensor("mm.input_projection.weight", a.astype(np.float16) if qtype == Q.F16 else a)
    return _finish(w, path)


def write_tiny_gemma3n_vl(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """tinymodel's Gemma 3n whose vocabulary knows the image markers."""
    return _write_tiny_gemma3n(path, qtype, seed, image_tokens=IMAGE_TOKENS, chat_template=chat_template)


def with_audio_side(src: Path, dst: Path) -> Path:
    """A copy of the projector ``src`` at ``dst`` laid out as the published Gemma 3n mmproj's header is: both encoders
    (``clip.has_audio_encoder``), the types per side (``clip.vision.projector_type`` "gemma3nv",
    ``clip.audio.projector_type`` "gemma3na"); no audio tensors (libmtmd 0.3.36 leaves Gemma 3n's audio side unloaded)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    r = GGUFReader(src)
    w = GGUFWriter(str(dst), "clip")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        if f.name == "clip.has_audio_encoder":
            w.add_bool(f.name, True)
        elif f.name == "clip.projector_type":
            w.add_string("clip.vision.projector_type", "gemma3nv")
            w.add_string("clip.audio.projector_type", "gemma3na")
        else:
            w.add_key_value(f.name, f.contents(), f.types[0], sub_type=f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=list(reversed([int(x) for x in t.shape])), raw_dtype=t.tensor_type)
    return _finish(w, dst)
