"""A tiny random SmolVLM (Idefics3) pair, for tests held to llama.cpp's libmtmd: a projector file (mmproj,
``general.architecture`` "clip", projector type "idefics3") and a llama text model whose width is the projector's
output and whose vocabulary knows SmolVLM's image tokens.

The projector is laid out as llama.cpp's converter writes SmolVLM's (``v.patch_embd``, ``v.position_embd``,
``v.blk.N.*``, ``v.post_ln``, ``mm.model.fc``), at toy sizes: 32-pixel tiles in 8-pixel patches (4x4 patches,
pixel-shuffled 2x2 into 4 rows of 4 x 32 wide, projected to the text model's 64), a 32-wide encoder of 2 layers,
and a longest edge (``clip.vision.preproc_image_size``) of 64, so pictures become a grid of up to 2x2 tiles and the
global view.  The text model is tinymodel's llama geometry with ``<fake_token_around_image>``, ``<global-img>``,
``<row_R_col_C>`` (R, C up to 4) added as control tokens and ``\\n\\n`` as one token (libmtmd looks it up by its
text, as SmolLM2's vocabulary has it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tinymodel import ARCH_GEOMETRY, _finish, _random_tensors, byte_vocab

Q = GGMLQuantizationType

IMAGE_SIZE, PATCH, SCALE, LONGEST_EDGE, V_EMBD, V_FF, V_LAYER, V_HEAD = 32, 8, 2, 64, 32, 48, 2, 2
MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.55, 0.6)  # (SmolVLM's are 0.5 each: distinct ones catch a channel mix-up)
IMAGE_TOKENS = ["<fake_token_around_image>", "<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)]


def write_tiny_idefics3_mmproj(path: Path, qtype: int = Q.F32, seed: int = 0, n_text_embd: int = ARCH_GEOMETRY["llama"][0],
                               longest_edge: int | None = LONGEST_EDGE) -> Path:
    """A random SmolVLM projector; its matrices (patch kernel and projection included) stored as ``qtype``;
    ``longest_edge`` None: a file without ``clip.vision.preproc_image_size`` (no tiles, the global view alone)."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "clip")
    w.add_name("tiny-idefics3-mmproj")
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", False)
    w.add_string("clip.projector_type", "idefics3")
    w.add_bool("clip.use_gelu", True)
    w.add_uint32("clip.vision.image_size", IMAGE_SIZE)
    if longest_edge is not None:
        w.add_uint32("clip.vision.preproc_image_size", longest_edge)
    w.add_uint32("clip.vision.patch_size", PATCH)
    w.add_uint32("clip.vision.embedding_length", V_EMBD)
    w.add_uint32("clip.vision.feed_forward_length", V_FF)
    w.add_uint32("clip.vision.projection_dim", n_text_embd)
    w.add_uint32("clip.vision.block_count", V_LAYER)
    w.add_uint32("clip.vision.attention.head_count", V_HEAD)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("clip.vision.projector.scale_factor", SCALE)
    w.add_array("clip.vision.image_mean", list(MEAN))
    w.add_array("clip.vision.image_std", list(STD))
    mat, vec = _random_tensors(w, rng, qtype)

    def tensor(name: str, shape: tuple[int, ...], scale: float) -> None:  # (a 4-D kernel)
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        w.add_tensor(name, a.astype(np.float16) if qtype == Q.F16 else a)

    n_pos = (IMAGE_SIZE // PATCH) ** 2
    tensor("v.patch_embd.weight", (V_EMBD, 3, PATCH, PATCH), 0.05)
    vec("v.patch_embd.bias", V_EMBD, 0.0)
    w.add_tensor("v.position_embd.weight", (rng.standard_normal((n_pos, V_EMBD)) * 0.5).astype(np.float32))
    for i in range(V_LAYER):
        b = f"v.blk.{i}."
        vec(b + "ln1.weight", V_EMBD)
        vec(b + "ln1.bias", V_EMBD, 0.0)
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            mat(b + t + ".weight", V_EMBD, V_EMBD, 0.3)
            vec(b + t + ".bias", V_EMBD, 0.0)
        vec(b + "ln2.weight", V_EMBD)
        vec(b + "ln2.bias", V_EMBD, 0.0)
        mat(b + "ffn_up.weight", V_FF, V_EMBD, 0.3)
        vec(b + "ffn_up.bias", V_FF, 0.0)
        mat(b + "ffn_down.weight", V_EMBD, V_FF, 0.3)
        vec(b + "ffn_down.bias", V_EMBD, 0.0)
    vec("v.post_ln.weight", V_EMBD)
    vec("v.post_ln.bias", V_EMBD, 0.0)
    mat("mm.model.fc.weight", n_text_embd, V_EMBD * SCALE * SCALE, 0.2)  # [n_text_embd, 4 * 32]: no bias
    return _finish(w, path)


def write_tiny_smolvlm(path: Path, qtype: int = Q.F32, seed: int = 1, chat_template: str | None = None) -> Path:
    """A random llama text model (tinymodel's geometry) whose vocabulary knows SmolVLM's image tokens."""
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = ARCH_GEOMETRY["llama"]
    toks, merges, types = byte_vocab()
    toks, types = toks + ["ĊĊ"] + IMAGE_TOKENS, types + [1] + [3] * len(IMAGE_TOKENS)
    w = GGUFWriter(str(path), "llama")
    w.add_name("tiny-smolvlm")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(100000.0)
    w.add_rope_dimension_count(head_dim)
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
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
