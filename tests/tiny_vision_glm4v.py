"""A tiny random GLM-4V pair (GLM-4.1V / GLM-4.5V / GLM-4.6V), for tests held to llama.cpp's libmtmd: a projector file
(mmproj, ``general.architecture`` "clip", projector type "glm4v") and a ``glm4`` text model with multimodal rope
sections whose width is the projector's output and whose vocabulary knows ``<|begin_of_image|>`` and
``<|end_of_image|>``.

The projector is laid out as llama.cpp's converter writes GLM-4.1V's (``Glm4VVisionModel``, Qwen3-VL's converter
with the merger's own names): the conv3d's two temporal kernels ``v.patch_embd.weight`` and ``v.patch_embd.weight.1``
with a bias ``v.patch_embd.bias``, the post-conv RMSNorm ``v.norm_embd``, learned positions ``v.position_embd.weight``
for a square grid (interpolated to a picture's own), ``v.blk.N.*`` with RMSNorms, a fused ``attn_qkv`` and a SwiGLU
MLP (no biases: the checkpoints' attention_bias false), the post RMSNorm ``v.post_ln``, the 2x2 downsampling conv
``mm.patch_merger`` (with its bias, as Hugging Face's Conv2d has one) and the merger: ``mm.model.fc``, LayerNorm
``mm.post_norm``, ``mm.gate``, ``mm.up``, ``mm.down``.  Sizes are toys but the patch is the real 14 pixels (2x2
blocks of 28): a 32-wide encoder of 2 layers, 2 heads of 16, positions learned for 6 x 6 patches, merged into rows of
the text model's 64 through a merger 96 wide.

The text model is ``glm4`` (sandwich norms, fused gate and up, Q/K/V biases) of 2 layers, heads of 16 with rope over
half of each (8 dims: 4 pairs) in M-RoPE sections [2, 1, 1, 0], and a rope base of 100 so that a wrong (t, h, w)
shows in the logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tiny_vision import mmproj_writer
from tinymodel import _finish, _random_tensors, byte_vocab

Q = GGMLQuantizationType

PATCH, V_EMBD, V_FF, V_LAYER, V_HEAD, POS_SIDE = 14, 32, 48, 2, 2, 6
MERGER_FF = 96  # the merger's SwiGLU width (the checkpoints' vision intermediate_size)
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)  # (GLM-4.1V's are OpenAI CLIP's)
IMAGE_TOKENS = ("<|begin_of_image|>", "<|end_of_image|>", "<|image|>")
#: the text model: (n_embd, n_head, n_head_kv, head_dim, rope_dim, n_ff, n_layer) and its M-RoPE sections
TEXT_GEOMETRY, SECTIONS = (64, 4, 2, 16, 8, 96, 2), [2, 1, 1, 0]


def write_tiny_glm4v_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = TEXT_GEOMETRY[0]) -> Path:
    """A random GLM-4V projector; its matrices (patch kernels included) stored as ``qtype``."""
    rng = np.random.default_rng(seed)
    E, p = V_EMBD, PATCH
    flags = {"clip.use_silu": True}
    w = mmproj_writer(path, "tiny-glm4v-mmproj", "glm4v", flags, POS_SIDE * p, p, (E, V_FF, V_LAYER, V_HEAD), n_text_embd,
                      MEAN, STD)  # fmt: skip
    mat, vec = _random_tensors(w, rng, qtype)

    def kernel(name: str, shape: tuple[int, ...], scale: float) -> None:
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        w.add_tensor(name, a.astype(np.float16) if qtype == Q.F16 else a)

    kernel("v.patch_embd.weight", (E, 3, p, p), 0.05)
    kernel("v.patch_embd.weight.1", (E, 3, p, p), 0.05)
    vec("v.patch_embd.bias", E, 0.0)
    vec("v.norm_embd.weight", E, 1.0, 0.3)
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((POS_SIDE * POS_SIDE, E)) * 0.5).astype(np.float32))
    for i in range(V_LAYER):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", E, 1.0, 0.3)
        mat(b + "attn_qkv.weight", 3 * E, E, 0.3)
        mat(b + "attn_out.weight", E, E, 0.3)
        vec(b + "ln2.weight", E, 1.0, 0.3)
        mat(b + "ffn_gate.weight", V_FF, E, 0.3)
        mat(b + "ffn_up.weight", V_FF, E, 0.3)
        mat(b + "ffn_down.weight", E, V_FF, 0.3)
    vec("v.post_ln.weight", E, 1.0, 0.3)
    kernel("mm.patch_merger.weight", (n_text_embd, E, 2, 2), 0.2)
    vec("mm.patch_merger.bias", n_text_embd, 0.0, 0.5)
    mat("mm.model.fc.weight", n_text_embd, n_text_embd, 0.2)
    vec("mm.post_norm.weight", n_text_embd, 1.0, 0.3)
    vec("mm.post_norm.bias", n_text_embd, 0.0, 0.3)
    mat("mm.gate.weight", MERGER_FF, n_text_embd, 0.2)
    mat("mm.up.weight", MERGER_FF, n_text_embd, 0.2)
    mat("mm.down.weight", n_text_embd, MERGER_FF, 0.2)
    return _finish(w, path)


def write_tiny_glm4v_text(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random ``glm4`` text model with M-RoPE sections, its vocabulary knowing GLM-4V's image tokens (control
    tokens)."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, rope_dim, n_ff, n_layer = TEXT_GEOMETRY
    toks, merges, types = byte_vocab()
    toks, types = toks + list(IMAGE_TOKENS), types + [3] * len(IMAGE_TOKENS)
    w = GGUFWriter(str(path), "glm4")
    w.add_name("tiny-glm4v")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(100.0)
    w.add_rope_dimension_count(rope_dim)
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
        vec(b + "post_attention_norm.weight", n_embd, 1.5, 0.5)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_up.weight", 2 * n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
        vec(b + "post_ffw_norm.weight", n_embd, 1.5, 0.5)
    return _finish(w, path)
