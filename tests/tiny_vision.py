"""A tiny random Gemma 3 vision pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "gemma3") and a Gemma 3 text model whose width is the
projector's output.

The projector is laid out as llama.cpp's converter writes Gemma 3's (``v.patch_embd``, ``v.position_embd``,
``v.blk.N.*``, ``v.post_ln``, ``mm.soft_emb_norm``, ``mm.input_projection``), at toy sizes: 224-pixel images
in 14-pixel patches (16x16 patches, pooled 4x4 into 16 rows), a 32-wide encoder of 2 layers.  The text
model is tinymodel's gemma3 (6 layers, a window of 8, so the image rows straddle the sliding window)
with ``<start_of_image>`` and ``<end_of_image>`` added to the byte vocabulary as control tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tinymodel import ARCH_GEOMETRY, _finish, _random_tensors, byte_vocab

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD = 224, 14, 32, 48, 2, 2
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (Gemma 3's are 0.5 each: distinct ones catch a channel mix-up)
IMAGE_TOKENS = ("<start_of_image>", "<end_of_image>")


def mmproj_writer(path: Path, name: str, projector_type: str, flags: dict[str, bool | int], image_size: int, patch: int,
                  geometry: tuple[int, int, int, int], n_text_embd: int, mean: tuple[float, ...], std: tuple[float, ...],
                  preproc_size: int | None = None, scale: int | None = None, merge: int | None = None,
                  eps: float = 1e-6) -> GGUFWriter:  # fmt: skip
    """A projector file's writer holding the vision encoder's keys in the order llama.cpp's converter writes them:
    ``flags`` (key: a bool, or a uint32) after the projector type; ``geometry`` (n_embd, n_ff, n_layer, n_head);
    ``preproc_size`` (``clip.vision.preproc_image_size``), ``scale`` (the projector's scale_factor) and ``merge``
    (``clip.vision.spatial_merge_size``) where given; ``eps`` the encoder's LayerNorm epsilon."""
    w = GGUFWriter(str(path), "clip")
    w.add_name(name)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", False)
    w.add_string("clip.projector_type", projector_type)
    for key, v in flags.items():
        w.add_bool(key, v) if isinstance(v, bool) else w.add_uint32(key, v)
    w.add_uint32("clip.vision.image_size", image_size)
    if preproc_size is not None:
        w.add_uint32("clip.vision.preproc_image_size", preproc_size)
    w.add_uint32("clip.vision.patch_size", patch)
    n_embd, n_ff, n_layer, n_head = geometry
    w.add_uint32("clip.vision.embedding_length", n_embd)
    w.add_uint32("clip.vision.feed_forward_length", n_ff)
    w.add_uint32("clip.vision.projection_dim", n_text_embd)
    w.add_uint32("clip.vision.block_count", n_layer)
    w.add_uint32("clip.vision.attention.head_count", n_head)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", eps)
    if scale is not None:
        w.add_uint32("clip.vision.projector.scale_factor", scale)
    if merge is not None:
        w.add_uint32("clip.vision.spatial_merge_size", merge)
    w.add_array("clip.vision.image_mean", list(mean))
    w.add_array("clip.vision.image_std", list(std))
    return w


def tensor_writer(w: GGUFWriter, rng: np.random.Generator, qtype: int) -> Callable[[str, tuple[int, ...], float], None]:
    """``tensor(name, shape, scale)``: a random tensor drawn from ``rng`` (a kernel, or a matrix stored untransposed),
    as ``qtype`` F16 or else F32."""

    def tensor(name: str, shape: tuple[int, ...], scale: float) -> None:
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        w.add_tensor(name, a.astype(np.float16) if qtype == Q.F16 else a)

    return tensor


def write_vit(w: GGUFWriter, rng: np.random.Generator, qtype: int, geometry: tuple[int, int, int, int], patch: int,
              image_size: int | None = None, norm_bias: bool = True, gate: bool = False,
              internvit: bool = False) -> tuple[Callable[..., None], ...]:  # fmt: skip
    """The vision encoder's tensors, drawn from ``rng`` in order: the patch kernel, with its bias and learned positions
    given ``image_size``, else with the conv3d's second temporal kernel (Qwen2-VL's: the rope places the patches); the
    blocks (LayerNorms with biases unless ``norm_bias`` is off: RMSNorms; a gated MLP with ``gate``) and ``v.post_ln``;
    with ``internvit``, InternViT's: a CLS token (``v.class_embd``, its position the table's last row), LayerScale
    (``ls1``, ``ls2``) and no ``v.post_ln``.
    Returns ``(mat, vec, tensor)`` for the projector's own: ``tensor(name, shape, scale)`` a kernel, or a matrix
    stored untransposed, as ``qtype`` F16 or else F32."""
    n_embd, n_ff, n_layer, _ = geometry
    mat, vec = _random_tensors(w, rng, qtype)
    tensor = tensor_writer(w, rng, qtype)
    tensor("v.patch_embd.weight", (n_embd, 3, patch, patch), 0.05)
    if image_size is None:
        tensor("v.patch_embd.weight.1", (n_embd, 3, patch, patch), 0.05)
    else:
        vec("v.patch_embd.bias", n_embd, 0.0)
        if internvit:
            w.add_tensor("v.class_embd", (rng.standard_normal(n_embd) * 0.5).astype(np.float32))
        n_pos = (image_size // patch) ** 2 + internvit
        w.add_tensor("v.position_embd.weight", (rng.standard_normal((n_pos, n_embd)) * 0.5).astype(np.float32))
    write_vit_blocks(mat, vec, n_layer, n_embd, n_ff, norm_bias, gate, internvit)
    if not internvit:
        vec("v.post_ln.weight", n_embd)
        if norm_bias:
            vec("v.post_ln.bias", n_embd, 0.0)
    return mat, vec, tensor


def write_vit_blocks(mat: Callable[..., None], vec: Callable[..., None], n_layer: int, n_embd: int, n_ff: int,
                     norm_bias: bool = True, gate: bool = False, internvit: bool = False) -> None:  # fmt: skip
    """The ViT's ``v.blk.*`` tensors through ``mat`` / ``vec`` (tinymodel's ``_random_tensors``), layer by layer in
    order: LayerNorms with biases (unless ``norm_bias`` is off: RMSNorms), the four attention products and the MLP's
    (gated with ``gate``), each with its bias; with ``internvit``, LayerScale's ``ls1`` and ``ls2``."""
    for i in range(n_layer):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", n_embd)
        if norm_bias:
            vec(b + "ln1.bias", n_embd, 0.0)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            mat(b + t + ".weight", n_embd, n_embd, 0.3)
            vec(b + t + ".bias", n_embd, 0.0)
        if internvit:
            vec(b + "ls1.weight", n_embd, 0.5, 0.3)
        vec(b + "ln2.weight", n_embd)
        if norm_bias:
            vec(b + "ln2.bias", n_embd, 0.0)
        for t, rows, cols in ([("ffn_gate", n_ff, n_embd)] if gate else []) + [("ffn_up", n_ff, n_embd), ("ffn_down", n_embd, n_ff)]:
            mat(b + t + ".weight", rows, cols, 0.3)
            vec(b + t + ".bias", rows, 0.0)
        if internvit:
            vec(b + "ls2.weight", n_embd, 0.5, 0.3)


def add_geometry(w: GGUFWriter, context: int, n_embd: int, n_layer: int, n_ff: int, n_head: int, n_head_kv: int | list[int]) -> None:
    """A text model's context length and geometry keys, in the converter's order."""
    w.add_context_length(context)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)


def add_vocab(w: GGUFWriter, toks: list[str], merges: list[str], types: list[int], chat_template: str | None) -> None:
    """The file type (F32) and a byte vocabulary's keys (``tinymodel.byte_vocab``'s, image tokens appended): BOS and EOS
    <|endoftext|>, no BOS added, and ``chat_template`` where given."""
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    eot = toks.index("<|endoftext|>")
    w.add_eos_token_id(eot)
    w.add_bos_token_id(eot)
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)


def write_vl_text(path: Path, arch: str, name: str, geometry: tuple[int, ...], image_tokens: list[str], image_types: list[int],
                  eps: float, rope_base: float, qtype: int, seed: int, chat_template: str | None = None,
                  sections: list[int] | None = None, deepstack: int = 0) -> Path:  # fmt: skip
    """A random text model of ``arch`` (gemma3: a window of 8, tied output; llama; qwen2vl: Q/K/V biases, M-RoPE
    ``sections``; qwen3vl: Q/K norms, ``deepstack`` DeepStack levels) at ``geometry`` (tinymodel's order), its byte
    vocabulary (BOS and EOS <|endoftext|>) followed by ``image_tokens`` of the token types ``image_types``."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = geometry
    toks, merges, types = byte_vocab()
    toks, types = toks + list(image_tokens), types + list(image_types)
    w = GGUFWriter(str(path), arch)
    w.add_name(name)
    add_geometry(w, 1024, n_embd, n_layer, n_ff, n_head, n_head_kv)
    w.add_layer_norm_rms_eps(eps)
    w.add_rope_freq_base(rope_base)
    if arch == "gemma3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_sliding_window(8)
    elif sections is not None:
        w.add_rope_dimension_sections(sections)
    else:
        w.add_rope_dimension_count(head_dim)
    if deepstack:
        w.add_uint32(f"{arch}.n_deepstack_layers", deepstack)
    add_vocab(w, toks, merges, types, chat_template)
    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", len(toks), n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if arch != "gemma3":
        mat("output.weight", len(toks), n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * head_dim, n_embd)
        mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        if arch == "qwen2vl":
            vec(b + "attn_q.bias", n_head * head_dim, 0.0, 0.5)
            vec(b + "attn_k.bias", n_head_kv * head_dim, 0.0, 0.5)
            vec(b + "attn_v.bias", n_head_kv * head_dim, 0.0, 0.5)
        if arch in ("qwen3vl", "qwen3"):  # (qwen3: LightOnOCR's text model, tiny_vision_lightonocr.py)
            vec(b + "attn_q_norm.weight", head_dim)
            vec(b + "attn_k_norm.weight", head_dim)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
        if arch == "gemma3":
            for t, n in (("attn_q_norm", head_dim), ("attn_k_norm", head_dim), ("post_attention_norm", n_embd), ("post_ffw_norm", n_embd)):
                vec(b + t + ".weight", n)
    return _finish(w, path)


def write_qwen3_text(path: Path, name: str, geometry: tuple[int, ...], markers: list[str], qtype: int, seed: int,
                     chat_template: str | None = None) -> Path:  # fmt: skip
    """A random Qwen3 text model (Q/K norms, explicit key and value widths, a 4096 context, RoPE base 1e6) at
    ``geometry`` (tinymodel's order) whose byte vocabulary ends in the control tokens ``markers``: MiniCPM-V 4's and
    Step3-VL's text models (tiny_vision_minicpmv.py, tiny_vision_step3vl.py), one writer so their files stay alike."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = geometry
    toks, merges, types = byte_vocab()
    toks, types = toks + list(markers), types + [3] * len(markers)
    w = GGUFWriter(str(path), "qwen3")
    w.add_name(name)
    add_geometry(w, 4096, n_embd, n_layer, n_ff, n_head, n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1000000.0)
    add_vocab(w, toks, merges, types, chat_template)
    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", len(toks), n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", len(toks), n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * head_dim, n_embd)
        mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        vec(b + "attn_q_norm.weight", head_dim)
        vec(b + "attn_k_norm.weight", head_dim)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)


def write_tiny_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = ARCH_GEOMETRY["gemma3"][0]) -> Path:
    """A random Gemma 3 projector; its matrices (patch kernel and projection included) stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    geometry = (V_EMBD, V_FF, V_LAYER, V_HEAD)
    w = mmproj_writer(path, "tiny-gemma3-mmproj", "gemma3", {"clip.use_gelu": True}, IMAGE_SIZE, PATCH, geometry, n_text_embd, MEAN, STD)
    mat, vec, tensor = write_vit(w, rng, qtype, geometry, PATCH, IMAGE_SIZE)
    vec("mm.soft_emb_norm.weight", V_EMBD)
    tensor("mm.input_projection.weight", (V_EMBD, n_text_embd), 0.3)  # [n_embd, n_text_embd], as the converter stores it
    return _finish(w, path)


def write_tiny_gemma3_vl(path: Path, qtype: int = Q.F32, seed: int = 1) -> Path:
    """A random Gemma 3 text model (tinymodel's geometry, a window of 8) whose vocabulary knows the image markers."""
    return write_vl_text(path, "gemma3", "tiny-gemma3-vl", ARCH_GEOMETRY["gemma3"], list(IMAGE_TOKENS), [3, 3], 1e-6, 10000.0, qtype, seed)


def sample_image(width: int = IMAGE_SIZE, height: int = IMAGE_SIZE, seed: int = 0) -> np.ndarray:
    """An RGB test picture ``[height, width, 3]`` uint8: smooth gradients with noise (resampling shows in it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 128 + 100 * np.sin((x + y) / 9.0)], -1)
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- the tiny projectors by name (the GPU encoder tests')


def _writer(module: str, fn: str, **kw: object) -> Callable[[Path, int], Path]:
    """``module.fn(path, qtype, **kw)``, the module imported when called (each imports this one)."""

    def write(path: Path, qtype: int) -> Path:
        import importlib

        return getattr(importlib.import_module(module), fn)(path, qtype, **kw)

    return write


#: each tiny projector tests/test_gpu_vision_encoders*.py run on both devices, by name: its writer (path, qtype)
TINY_MMPROJS: dict[str, Callable[[Path, int], Path]] = {
    "gemma3": lambda path, qtype: write_tiny_mmproj(path, qtype),
    "idefics3": _writer("tiny_vision_idefics3", "write_tiny_idefics3_mmproj"),
    "lfm2": _writer("tiny_vision_lfm2", "write_tiny_lfm2_mmproj"),
    "hunyuanvl": _writer("tiny_vision_hunyuanvl", "write_tiny_hunyuanvl_mmproj"),
    "janus": _writer("tiny_vision_janus", "write_tiny_janus_mmproj"),
    "pixtral": _writer("tiny_vision_pixtral", "write_tiny_pixtral_mmproj"),  # (Mistral Small 3.1's: the 2x2 merger)
    "pixtral-nomerge": _writer("tiny_vision_pixtral", "write_tiny_pixtral_mmproj", merge=None),  # (Pixtral 12B's)
    "lightonocr": _writer("tiny_vision_lightonocr", "write_tiny_lightonocr_mmproj"),
    "glm4v": _writer("tiny_vision_glm4v", "write_tiny_glm4v_mmproj"),
    "gemma4v": _writer("tiny_vision_gemma4", "write_tiny_gemma4v_mmproj"),
    "gemma4v-noclamp": _writer("tiny_vision_gemma4", "write_tiny_gemma4v_mmproj", clamps=False),
    "minicpmv": _writer("tiny_vision_minicpmv", "write_tiny_minicpmv_mmproj"),
    "llava": _writer("tiny_vision_llava", "write_tiny_llava_mmproj"),
    "llava-feat": _writer("tiny_vision_llava", "write_tiny_llava_mmproj", post_ln=True, feature_layer=[1, 3]),  # (Granite's: two layers' inputs)
    "internvl": _writer("tiny_vision_internvl", "write_tiny_internvl_mmproj"),
    "qwen2vl": _writer("tiny_vision_qwen2vl", "write_tiny_qwen2vl_mmproj"),
    "qwen25vl": _writer("tiny_vision_qwen2vl", "write_tiny_qwen2vl_mmproj", qwen25=True),
    "qwen3vl": _writer("tiny_vision_qwen3vl", "write_tiny_qwen3vl_mmproj"),
    "llama4": _writer("tiny_vision_llama4", "write_tiny_llama4_mmproj"),
    "kimivl": _writer("tiny_vision_kimivl", "write_tiny_kimivl_mmproj"),
    "paddleocr": _writer("tiny_vision_paddleocr", "write_tiny_paddleocr_mmproj"),
    "minicpmv46": _writer("tiny_vision_minicpmv46", "write_tiny_minicpmv46_mmproj"),  # (its ViT merger: scale 4)
    "minicpmv46-x2": _writer("tiny_vision_minicpmv46", "write_tiny_minicpmv46_mmproj", scale=2),
    "step3vl": _writer("tiny_vision_step3vl", "write_tiny_step3vl_mmproj"),  # (p95: tests/test_gpu_vision_encoders4.py)
    "youtuvl": _writer("tiny_vision_youtuvl", "write_tiny_youtuvl_mmproj"),
    "cogvlm": _writer("tiny_vision_cogvlm", "write_tiny_cogvlm_mmproj"),
    "deepseekocr": _writer("tiny_vision_deepseekocr", "write_tiny_deepseekocr_mmproj"),
    "deepseekocr2": _writer("tiny_vision_deepseekocr2", "write_tiny_deepseekocr2_mmproj"),
    # (MobileVLM's: its writer takes the version before the qtype)
    "ldp": lambda path, qtype: __import__("tiny_vision_llava").write_tiny_ldp_mmproj(path, 1, qtype),
    "ldpv2": lambda path, qtype: __import__("tiny_vision_llava").write_tiny_ldp_mmproj(path, 2, qtype),
    "gemma3nv": _writer("tiny_vision_gemma3n", "write_tiny_gemma3nv_mmproj"),
    "granite4v": _writer("tiny_vision_granite4", "write_tiny_granite4v_mmproj"),  # (p109: tests/test_gpu_vision_granite4.py)
    "dotsocr": _writer("tiny_vision_dotsocr", "write_tiny_dotsocr_mmproj"),  # (p113: tests/test_gpu_vision_dotsocr.py)
    "dots3note": _writer("tiny_vision_dots3note", "write_tiny_dots3note_v_mmproj"),  # (p130: tests/test_vision_dots3note.py)
    "gemma4uv": _writer("tiny_vision_gemma4u", "write_tiny_gemma4u_mmproj", audio=False),  # (p117: tests/test_vision_gemma4u.py)
    "nemotronvl": _writer("tiny_vision_nemotronvl", "write_tiny_nemotronvl_mmproj"),  # (p118: tests/test_vision_nemotronvl.py)
    "mimovl": _writer("tiny_vision_mimovl", "write_tiny_mimovl_mmproj"),  # (p120: tests/test_vision_mimovl.py)
    "minimax_m3": _writer("tiny_vision_minimax_m3", "write_tiny_minimax_m3_mmproj"),  # (p134: tests/test_vision_minimax_m3.py)
    "exaone45": _writer("tiny_vision_exaone45", "write_tiny_exaone45_mmproj"),  # (p121: tests/test_vision_exaone45.py)
    "yasa2": _writer("tiny_vision_yasa2", "write_tiny_yasa2_mmproj"),  # (p124: tests/test_vision_yasa2.py)
    "ling3vl": _writer("tiny_vision_ling3vl", "write_tiny_ling3vl_mmproj", extras=True),  # (p129: tests/test_vision_ling3vl.py)
    "kimik25": _writer("tiny_vision_kimik25", "write_tiny_kimik25_mmproj"),  # (p132: tests/test_vision_kimik25.py)
    "muse_glimmer": _writer("tiny_vision_muse_glimmer", "write_tiny_muse_glimmer_mmproj"),  # (p133: tests/test_vision_muse_glimmer.py)
}  # fmt: skip


def tiny_mmproj(name: str, qtype: int, d: Path) -> Path:
    """The tiny projector ``name`` (:data:`TINY_MMPROJS`) written as ``qtype`` to ``d/{name}-{qtype}.gguf``."""
    return TINY_MMPROJS[name](d / f"{name}-{GGMLQuantizationType(qtype).name}.gguf", qtype)
