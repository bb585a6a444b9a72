"""A tiny random Qwen2-VL / Qwen2.5-VL pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "qwen2vl_merger" or "qwen2.5vl_merger") and a ``qwen2vl`` text model
whose width is the projector's output and whose vocabulary knows ``<|vision_start|>`` and ``<|vision_end|>``.

The projector is laid out as llama.cpp's converter writes Qwen2-VL's: the conv3d's two temporal kernels as
``v.patch_embd.weight`` and ``v.patch_embd.weight.1`` (no bias, no position embeddings: the ViT's rope places the
patches), ``v.blk.N.*`` with biases everywhere, ``v.post_ln`` (the merger's ``ln_q``) and the merger's MLP ``mm.0``,
``mm.2``.  Qwen2-VL's blocks: LayerNorm and a GELU MLP; Qwen2.5-VL's (``qwen25=True``): RMSNorm (weights only),
a gated SiLU MLP (``clip.use_silu``) and window attention (``clip.vision.n_wa_pattern`` 2: layer 0 in 112-pixel
windows, layer 1 over the whole picture).  Sizes are toys but the patch is the real 14 pixels, so llama.cpp's fixed
112-pixel attention window spans 4x4 merged rows as in the real models: a 32-wide encoder, 2 heads of 16 (4 rope
pairs for a patch's row, 4 for its column), merged 2x2 into rows of the text model's 64.

The text model is tinymodel's qwen2vl geometry (heads of 16, ``rope.dimension_sections`` [2, 3, 3, 0]) with a rope
base of 100, so that the height and width sections' low-frequency pairs turn far enough across a picture's rows for
a wrong (t, h, w) to show in the logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tinymodel import _finish, _random_tensors, byte_vocab

Q = GGMLQuantizationType

PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, N_WA_PATTERN = 14, 32, 48, 2, 2, 2
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)  # (Qwen2-VL's CLIP statistics, rounded: distinct per channel)
IMAGE_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
#: the text model: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer) and its M-RoPE sections
TEXT_GEOMETRY, SECTIONS = (64, 4, 2, 16, 96, 2), [2, 3, 3, 0]


def write_tiny_qwen2vl_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, qwen25: bool = False,
                              n_text_embd: int = TEXT_GEOMETRY[0]) -> Path:  # fmt: skip
    """A random Qwen2-VL projector (``qwen25``: Qwen2.5-VL's); its matrices (patch kernels included) stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "clip")
    w.add_name("tiny-qwen2.5vl-mmproj" if qwen25 else "tiny-qwen2vl-mmproj")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", False)
    w.add_string("clip.projector_type", "qwen2.5vl_merger" if qwen25 else "qwen2vl_merger")
    if qwen25:
        w.add_bool("clip.use_silu", True)
        w.add_uint32("clip.vision.n_wa_pattern", N_WA_PATTERN)
    w.add_uint32("clip.vision.image_size", 560)  # (unused by the dynamic-size preprocessing; the converter writes it)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", V_EMBD)
    w.add_uint32("clip.vision.feed_forward_length", V_FF)
    w.add_uint32("clip.vision.projection_dim", n_text_embd)
    w.add_uint32("clip.vision.block_count", V_LAYER)
    w.add_uint32("clip.vision.attention.head_count", V_HEAD)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_array("clip.vision.image_mean", list(MEAN))
    w.add_array("clip.vision.image_std", list(STD))
    mat, vec = _random_tensors(w, rng, qtype)

    def kernel(name: str) -> None:  # [E, 3, p, p], one of the conv3d's two temporal slices
        a = (rng.standard_normal((V_EMBD, 3, PATCH, PATCH)) * 0.05).astype(np.float32)
        w.add_tensor(name, a.astype(np.float16) if qtype == Q.F16 else a)

    kernel("v.patch_embd.weight")
    kernel("v.patch_embd.weight.1")
    for i in range(V_LAYER):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", V_EMBD)
        if not qwen25:
            vec(b + "ln1.bias", V_EMBD, 0.0)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            mat(b + t + ".weight", V_EMBD, V_EMBD, 0.3)
            vec(b + t + ".bias", V_EMBD, 0.0)
        vec(b + "ln2.weight", V_EMBD)
        if not qwen25:
            vec(b + "ln2.bias", V_EMBD, 0.0)
        if qwen25:
            mat(b + "ffn_gate.weight", V_FF, V_EMBD, 0.3)
            vec(b + "ffn_gate.bias", V_FF, 0.0)
        mat(b + "ffn_up.weight", V_FF, V_EMBD, 0.3)
        vec(b + "ffn_up.bias", V_FF, 0.0)
        mat(b + "ffn_down.weight", V_EMBD, V_FF, 0.3)
        vec(b + "ffn_down.bias", V_EMBD, 0.0)
    vec("v.post_ln.weight", V_EMBD)
    if not qwen25:
        vec("v.post_ln.bias", V_EMBD, 0.0)
    mat("mm.0.weight", 4 * V_EMBD, 4 * V_EMBD, 0.2)
    vec("mm.0.bias", 4 * V_EMBD, 0.0)
    mat("mm.2.weight", n_text_embd, 4 * V_EMBD, 0.2)
    vec("mm.2.bias", n_text_embd, 0.0)
    return _finish(w, path)


def write_tiny_qwen2vl_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random ``qwen2vl`` text model whose vocabulary knows Qwen2-VL's vision tokens (control tokens)."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = TEXT_GEOMETRY
    toks, merges, types = byte_vocab()
    toks, types = toks + list(IMAGE_TOKENS), types + [3] * len(IMAGE_TOKENS)
    w = GGUFWriter(str(path), "qwen2vl")
    w.add_name("tiny-qwen2vl")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(100.0)
    w.add_rope_dimension_sections(SECTIONS)
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
        vec(b + "attn_q.bias", n_head * head_dim, 0.0, 0.5)
        vec(b + "attn_k.bias", n_head_kv * head_dim, 0.0, 0.5)
        vec(b + "attn_v.bias", n_head_kv * head_dim, 0.0, 0.5)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
