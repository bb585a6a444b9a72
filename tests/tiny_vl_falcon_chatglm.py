"""Tiny random Qwen2-VL (``qwen2vl``), Qwen3-VL (``qwen3vl``, ``qwen3vlmoe``), Falcon (``falcon``) and ChatGLM
(``chatglm``) GGUFs (``tinymodel.write_tiny_model(arch=...)`` writes them through here), laid out as llama.cpp's
converter writes them:

* qwen2vl: Qwen2's tensors (QKV biases drawn large, so dropping them shows), ``rope.dimension_sections`` [2, 3, 3, 0]
  over heads of 16 (8 pairs: the published [16, 24, 24, 0] over 128 scaled down, every pair turned for text);
  ``variant="extra-section"``: [1, 1, 1, 1], the sectors wrapping twice over the 8 pairs (``i % 4``), the extra
  section's leaving pairs 3 and 7 unturned (pair 3 turns fast enough for its loss to show).
* qwen3vl, qwen3vlmoe: Qwen3's and Qwen3-MoE's tensors (heads of 32, per-head QK norms; 4 experts, 2 a token),
  interleaved sections [8, 4, 4, 0] over 16 pairs (the published [24, 20, 20, 0] over 64 pairs scaled: pairs 13 and 14
  claimed by no section, as 61 and 62 are; a rope base of 100, so that those low-frequency pairs turn far enough
  over 40 positions for their loss to show), ``n_deepstack_layers`` 2 (image features only).
* falcon: Falcon-7B's layout: one LayerNorm a layer, multi-query (1 K/V head), fused ``attn_qkv`` without a bias, a
  GELU MLP 4 x n_embd wide, an ``output.weight``; ``variant="40b"``: Falcon-40B's, ``attn_norm_2`` for attention,
  2 K/V groups, the output head tied.
* chatglm: ChatGLM3 / GLM-4-9B-chat: fused ``attn_qkv`` with its bias (drawn large), 2 K/V groups, rope over half of
  each head (``rope.dimension_count`` 8 of 16), the gate and up fused in ``ffn_up``, an ``output.weight``, the
  byte vocabulary under GLM-4-9B-chat's ``chatglm-bpe`` pre-tokenizer name, no BOS stated (``variant="spm"``:
  ChatGLM3's SentencePiece layout, ``chatglm-spm``).

``drop``: tensor names left out (the tests of a missing tensor's error).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

#: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer)
GEOMETRY = {
    "qwen2vl": (64, 4, 2, 16, 96, 2),
    "qwen3vl": (64, 4, 2, 32, 96, 2),
    "qwen3vlmoe": (64, 4, 2, 32, 96, 2),
    "falcon": (64, 4, 1, 16, 256, 2),
    "chatglm": (64, 4, 2, 16, 96, 2),
}
SECTIONS = {"qwen2vl": [2, 3, 3, 0], "qwen3vl": [8, 4, 4, 0], "qwen3vlmoe": [8, 4, 4, 0]}
#: qwen3vlmoe's experts: (count, used a token, their FFN width)
EXPERTS = (4, 2, 64)


#: ChatGLM3's SentencePiece layout in little: <unk> <bos> <eos> (the converter's names), byte fallback, a few pieces,
#: then its special tokens past the SentencePiece model (CONTROL)
CHATGLM_SPM_TOKENS = (["<unk>", "<bos>", "<eos>"] + [f"<0x{b:02X}>" for b in range(256)]
                      + ["▁", "a", "b", "▁a", "ab", "▁ab", "▁Hello", "▁world", "\n"]
                      + ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"])  # fmt: skip


def _add_chatglm_vocab(w: GGUFWriter, spm: bool) -> None:
    """ChatGLM3's vocabulary (``spm``: SentencePiece, pre ``chatglm-spm``) or GLM-4-9B-chat's (the byte-level one, pre
    ``chatglm-bpe``), as the converter writes them: EOS stated, no BOS, no BOS added."""
    if spm:
        toks = CHATGLM_SPM_TOKENS
        n_sp = 3 + 256 + 9
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("chatglm-spm")
        w.add_token_list(toks)
        w.add_token_scores([0.0] * 259 + [-5.0, -1.0, -1.0, -2.0, -3.0, -0.5, -1.0, -1.0, -1.0] + [0.0] * (len(toks) - n_sp))
        w.add_token_types([2, 3, 3] + [6] * 256 + [1] * 9 + [3] * (len(toks) - n_sp))
        w.add_eos_token_id(2)
    else:
        from tinymodel import byte_vocab

        toks, merges, types = byte_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("chatglm-bpe")
        w.add_token_list(toks)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_eos_token_id(len(toks) - 1)
    w.add_add_bos_token(False)


def write_tiny_vl_falcon_chatglm(path: Path, arch: str, qtype: int = Q.F32, seed: int = 0, variant: str = "",
                                 drop: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """The model at ``path``, its matrices as ``qtype``; ``variant``: the layouts above, and for the tests of refusals
    ``"no-sections"`` (a Qwen VL file without ``rope.dimension_sections``) and ``"biased"`` (a Falcon with
    ``attn_qkv.bias``, as Falcon-RW's); chatglm's ``"spm"``: ChatGLM3's SentencePiece vocabulary in little."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer = GEOMETRY[arch]
    if arch == "falcon" and variant == "40b":
        n_head_kv = 2
    n_expert, n_used, n_ff_exp = EXPERTS
    qwen = arch.startswith("qwen")
    n_vocab = len(CHATGLM_SPM_TOKENS) if variant == "spm" else len(byte_vocab()[0])
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(100.0 if arch in ("qwen3vl", "qwen3vlmoe") else 10000.0)  # (the unturned pairs turn fast enough to show)
    if arch == "falcon":
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_layer_norm_rms_eps(1e-6 if qwen else 1e-5)
    if arch in ("qwen3vl", "qwen3vlmoe"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_num_deepstack_layers(2)
    if qwen and variant != "no-sections":
        w.add_rope_dimension_sections([1, 1, 1, 1] if variant == "extra-section" else SECTIONS[arch])
    if arch == "chatglm":
        w.add_rope_dimension_count(head_dim // 2)
    if arch == "qwen3vlmoe":
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_used)
        w.add_expert_feed_forward_length(n_ff_exp)
    w.add_file_type(_file_type(qtype))
    if arch == "chatglm":
        _add_chatglm_vocab(w, variant == "spm")
    else:
        _add_byte_vocab(w)

    mat_, vec_ = _random_tensors(w, rng, qtype)

    def mat(name: str, rows: int, cols: int, scale: float = 0.1) -> None:
        if name in drop:  # (drawn all the same: the other tensors' values do not move)
            rng.standard_normal((rows, cols))
        else:
            mat_(name, rows, cols, scale)

    def vec(name: str, n: int, base: float = 1.0, scale: float = 0.1) -> None:
        if name in drop:
            rng.standard_normal(n)
        else:
            vec_(name, n, base, scale)

    def experts(name: str, rows: int, cols: int) -> None:
        a = (rng.standard_normal((n_expert, rows, cols)) * 0.1).astype(np.float32)
        if name not in drop:
            w.add_tensor(name, a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)

    n_q, n_kv = n_head * head_dim, n_head_kv * head_dim
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if arch == "falcon":
        vec("output_norm.bias", n_embd, 0.0)
    if not (arch == "falcon" and variant == "40b") and arch != "qwen3vl":
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        if arch == "falcon":
            vec(b + "attn_norm.bias", n_embd, 0.0)
            if variant == "biased":  # (Falcon-RW's: refused)
                vec(b + "attn_qkv.bias", n_q + 2 * n_kv, 0.0)
            if variant == "40b":
                vec(b + "attn_norm_2.weight", n_embd, 1.0, 0.3)
                vec(b + "attn_norm_2.bias", n_embd, 0.0, 0.3)
            mat(b + "attn_qkv.weight", n_q + 2 * n_kv, n_embd)
            mat(b + "attn_output.weight", n_embd, n_q)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
            continue
        if arch == "chatglm":
            mat(b + "attn_qkv.weight", n_q + 2 * n_kv, n_embd)
            vec(b + "attn_qkv.bias", n_q + 2 * n_kv, 0.0, 0.5)
            mat(b + "attn_output.weight", n_embd, n_q)
            vec(b + "ffn_norm.weight", n_embd)
            mat(b + "ffn_up.weight", 2 * n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
            continue
        mat(b + "attn_q.weight", n_q, n_embd)
        mat(b + "attn_k.weight", n_kv, n_embd)
        mat(b + "attn_v.weight", n_kv, n_embd)
        mat(b + "attn_output.weight", n_embd, n_q)
        if arch == "qwen2vl":
            vec(b + "attn_q.bias", n_q, 0.0, 0.5)
            vec(b + "attn_k.bias", n_kv, 0.0, 0.5)
            vec(b + "attn_v.bias", n_kv, 0.0, 0.5)
        else:
            vec(b + "attn_q_norm.weight", head_dim, 1.0, 0.3)
            vec(b + "attn_k_norm.weight", head_dim, 1.0, 0.3)
        vec(b + "ffn_norm.weight", n_embd)
        if arch == "qwen3vlmoe":  # the router (float32, as in real files) and the experts' 3-D tensors
            if b + "ffn_gate_inp.weight" not in drop:
                w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, n_embd)) * 0.5).astype(np.float32))
            experts(b + "ffn_gate_exps.weight", n_ff_exp, n_embd)
            experts(b + "ffn_up_exps.weight", n_ff_exp, n_embd)
            experts(b + "ffn_down_exps.weight", n_embd, n_ff_exp)
        else:
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
