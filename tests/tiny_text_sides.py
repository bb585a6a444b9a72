"""Tiny random GGUFs of the language sides of five vision-language / OCR architectures (``tinymodel.write_tiny_model``
writes them through here), laid out as llama.cpp's converters write them; their image sides are separate mmproj files.

* cogvlm (CogVLM, CogAgent): the Llama block with Q, K and V fused in ``attn_qkv`` (multi-head, neox rope over whole
  heads), and per layer the visual expert's own ``vis_attn_qkv``/``vis_attn_output``/``vis_gate``/``vis_up``/
  ``vis_down``, which text tokens never use (drawn all the same: llama.cpp requires them).
* deepseek2-ocr (DeepSeek-OCR): DeepSeek-V2's trunk without the latent attention: plain multi-head Q, K and V
  ``[n_embd, n_embd]``, a leading dense layer, then 4 experts (2 a token) by softmax with 2 shared ones.
* glm-dsa (GLM-5): DeepSeek-V3's latent attention (query LoRA, split ``attn_k_b``/``attn_v_b``), GLM's sigmoid router
  left unstated, ``exp_probs_b``, weights renormalised and times 2.5, a NextN layer; the DeepSeek sparse attention's
  lightning indexer (``indexer.*``) with a top_k (2048) past any context the tests reach, so every key is chosen.
* hunyuan_vl (HunyuanOCR, Hunyuan-VL): Hunyuan dense's block (QK-norm after the rope, NTK alpha) with
  ``rope.dimension_sections`` [1, 1, 1, 1] (llama.cpp's M-RoPE: every fourth pair, the fourth section's, does not turn for text);
  ``variant`` "plain": no sections (plain neox).
* paddleocr (PaddleOCR-VL): ERNIE 4.5's block with M-RoPE sections [2, 3, 3, 0] (neox halves for text, where ERNIE
  turns consecutive pairs), the output head tied.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer)
GEOMETRY = {
    "cogvlm": (64, 4, 4, 16, 96, 2),
    "deepseek2-ocr": (64, 4, 4, 16, 96, 3),
    "hunyuan_vl": (64, 4, 2, 16, 96, 2),
    "paddleocr": (64, 4, 2, 16, 96, 2),
}
#: glm-dsa: (n_embd, n_head, qk_nope, n_rot, v_head_dim, kv_lora_rank, q_lora_rank, n_ff, n_layer)
GLM_DSA_GEOMETRY = (64, 4, 16, 8, 12, 32, 24, 96, 3)
#: glm-dsa's lightning indexer: (heads, key length, top_k)
GLM_DSA_INDEXER = (2, 64, 2048)
#: the mixtures of experts: (count, used a token, their FFN width, shared experts)
EXPERTS = (4, 2, 32, 2)
HUNYUAN_VL_ALPHA = 2.0  # (Hunyuan's 1000 would leave the low pairs all but still over the fixtures' 40 positions)
SECTIONS = {"hunyuan_vl": [1, 1, 1, 1], "paddleocr": [2, 3, 3, 0]}


def write_tiny_text_side(path: Path, arch: str, qtype: int = Q.F32, seed: int = 0, variant: str = "",
                         drop: tuple[str, ...] = (), extra: tuple[str, ...] = (), name: str = "",
                         chat_template: str | None = None) -> Path:  # fmt: skip
    """The model at ``path``, its matrices as ``qtype``; ``variant``: hunyuan_vl's "plain"; ``drop``: tensor names
    left out (drawn all the same, so the others do not move: the tests of a missing tensor's error).  The pairs'
    text models (tiny_vision_hunyuanvl.py): ``extra`` control tokens after the byte vocabulary (a picture's
    markers), ``name`` for ``general.name``, and a ``chat_template``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors_dropping, byte_vocab

    rng = np.random.default_rng(seed)
    n_vocab = len(byte_vocab()[0]) + len(extra)
    n_expert, n_used, n_ff_exp, n_shared = EXPERTS
    dsa = arch == "glm-dsa"
    if dsa:
        n_embd, n_head, nope, n_rot, dv, rank, q_rank, n_ff, n_layer = GLM_DSA_GEOMETRY
        n_head_kv, head_dim = 1, nope + n_rot
    else:
        n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = GEOMETRY[arch]
        n_rot = head_dim
    n_blocks = n_layer + int(dsa)  # (glm-dsa: a NextN layer past the trunk)
    w = GGUFWriter(str(path), arch)
    w.add_name(name or f"tiny-{arch}{'-' + variant if variant else ''}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_blocks)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6 if arch in ("deepseek2-ocr", "glm-dsa") else 1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(n_rot)
    if arch in SECTIONS and variant != "plain":
        w.add_rope_dimension_sections(SECTIONS[arch])
    if arch == "hunyuan_vl":
        w.add_rope_scaling_alpha(HUNYUAN_VL_ALPHA)
    if arch in ("deepseek2-ocr", "glm-dsa"):
        w.add_leading_dense_block_count(1)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_used)
        w.add_expert_feed_forward_length(n_ff_exp)
        w.add_expert_shared_count(n_shared)
    if arch == "deepseek2-ocr":
        w.add_expert_weights_scale(1.0)
        w.add_expert_weights_norm(False)
        w.add_expert_gating_func(ExpertGatingFuncType.SOFTMAX)
    if dsa:
        w.add_key_length(rank + n_rot)
        w.add_value_length(rank)
        w.add_key_length_mla(nope + n_rot)
        w.add_value_length_mla(dv)
        w.add_q_lora_rank(q_rank)
        w.add_kv_lora_rank(rank)
        w.add_expert_weights_scale(2.5)
        w.add_expert_weights_norm(True)  # (the gating left unstated: llama.cpp's default for glm-dsa is the sigmoid)
        w.add_nextn_predict_layers(1)
        w.add_indexer_head_count(GLM_DSA_INDEXER[0])
        w.add_indexer_key_length(GLM_DSA_INDEXER[1])
        w.add_indexer_top_k(GLM_DSA_INDEXER[2])
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w, extra)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    mat, vec, tensor3 = _random_tensors_dropping(w, rng, qtype, drop)

    def moe(b: str) -> None:
        if b + "ffn_gate_inp.weight" not in drop:
            w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, n_embd)) * 0.5).astype(np.float32))
        if dsa:
            vec(b + "exp_probs_b.bias", n_expert, 0.0, 0.3)
        tensor3(b + "ffn_gate_exps.weight", (n_expert, n_ff_exp, n_embd))
        tensor3(b + "ffn_up_exps.weight", (n_expert, n_ff_exp, n_embd))
        tensor3(b + "ffn_down_exps.weight", (n_expert, n_embd, n_ff_exp))
        mat(b + "ffn_gate_shexp.weight", n_shared * n_ff_exp, n_embd)
        mat(b + "ffn_up_shexp.weight", n_shared * n_ff_exp, n_embd)
        mat(b + "ffn_down_shexp.weight", n_embd, n_shared * n_ff_exp)

    def ffn(b: str, prefix: str = "ffn_") -> None:
        mat(b + prefix + "gate.weight", n_ff, n_embd)
        mat(b + prefix + "up.weight", n_ff, n_embd)
        mat(b + prefix + "down.weight", n_embd, n_ff)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if arch != "paddleocr":
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_blocks):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if dsa:
            mat(b + "attn_q_a.weight", q_rank, n_embd, 0.15)
            vec(b + "attn_q_a_norm.weight", q_rank)
            mat(b + "attn_q_b.weight", n_head * head_dim, q_rank, 0.15)
            mat(b + "attn_kv_a_mqa.weight", rank + n_rot, n_embd, 0.15)
            vec(b + "attn_kv_a_norm.weight", rank)
            tensor3(b + "attn_k_b.weight", (n_head, rank, nope), 0.15)
            tensor3(b + "attn_v_b.weight", (n_head, dv, rank), 0.15)
            mat(b + "attn_output.weight", n_embd, n_head * dv)
            n_ih, ih_dim, _ = GLM_DSA_INDEXER
            vec(b + "indexer.k_norm.weight", ih_dim)
            vec(b + "indexer.k_norm.bias", ih_dim, 0.0)
            mat(b + "indexer.proj.weight", n_ih, n_embd)
            mat(b + "indexer.attn_k.weight", ih_dim, n_embd)
            mat(b + "indexer.attn_q_b.weight", n_ih * ih_dim, q_rank)
        elif arch == "cogvlm":
            mat(b + "attn_qkv.weight", 3 * n_embd, n_embd)
            mat(b + "attn_output.weight", n_embd, n_embd)
            mat(b + "vis_attn_qkv.weight", 3 * n_embd, n_embd)
            mat(b + "vis_attn_output.weight", n_embd, n_embd)
        else:
            mat(b + "attn_q.weight", n_head * head_dim, n_embd)
            mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
            mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
            mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        if arch == "hunyuan_vl":
            vec(b + "attn_q_norm.weight", head_dim, 1.0, 0.5)
            vec(b + "attn_k_norm.weight", head_dim, 1.0, 0.5)
        vec(b + "ffn_norm.weight", n_embd)
        if arch in ("deepseek2-ocr", "glm-dsa") and i > 0:
            moe(b)
        else:
            ffn(b)
        if arch == "cogvlm":
            ffn(b, "vis_")
        if i >= n_layer:  # glm-dsa's NextN layer: loaded by llama.cpp, never run
            mat(b + "nextn.eh_proj.weight", n_embd, 2 * n_embd)
            vec(b + "nextn.enorm.weight", n_embd)
            vec(b + "nextn.hnorm.weight", n_embd)
            vec(b + "nextn.shared_head_norm.weight", n_embd)
    return _finish(w, path)
