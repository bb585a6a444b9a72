"""A tiny random dots.note text model (rednote's, llama.cpp's ``dots3note``), laid out as llama.cpp's converter writes
it (conversion/dots3.py ``Dots3NoteModel``), for tests held to llama.cpp's logits (``tinymodel.write_tiny_model(path,
"dots3note")`` writes it through here).

Latent attention (MLA) on every layer, with a query LoRA and the split ``attn_k_b``/``attn_v_b``; the sliding-window
layers (``attention.sliding_window_pattern``, a bool a layer) have their own geometry: fewer heads (``head_count`` a
per-layer array), their own latent (``kv_lora_rank_swa``), head widths (``key_length_mla_swa``/``value_length_mla_swa``)
and rope base (``rope.freq_base_swa``).  Every layer RMS-norms the shared rope key (``attn_k_norm``) and gates each
head's output by a sigmoid of ``attn_gate``; the full layers carry the DSA lightning indexer (``indexer.*``, a top_k
past any context the tests reach, so every key is chosen).  A leading dense layer, then 4 sigmoid-routed experts (2 a
token) with ``exp_probs_b``, renormalised and times 2.5, and 2 shared ones; an MTP layer at the end (the window's
geometry) that llama.cpp loads and never runs.  The window (6) is shorter than the tests' prompts, so it matters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

N_EMBD, Q_RANK, N_ROT, N_FF, N_LAYER = 64, 24, 8, 96, 4
#: (n_head, qk_nope, v_head_dim, kv_lora_rank) of the full layers and of the sliding-window ones
FULL, SWA = (4, 16, 12, 32), (2, 12, 8, 16)
#: which trunk layers slide (the MTP layer past them does too, as the converter has it)
SWA_PATTERN = (True, False, True, False)
WINDOW, ROPE_BASE, ROPE_BASE_SWA = 6, 10000.0, 500.0
#: the lightning indexer: (heads, key length, top_k)
INDEXER = (2, 64, 2048)
#: (count, used a token, their FFN width, shared experts)
EXPERTS = (4, 2, 32, 2)


def write_tiny_dots3note(path: Path, qtype: int = Q.F32, seed: int = 0, drop: tuple[str, ...] = (),
                         top_k: int = INDEXER[2]) -> Path:  # fmt: skip
    """The model at ``path``, its matrices as ``qtype``; ``drop``: tensor names left out (drawn all the same, so the
    others do not move: the tests of a missing tensor's error); ``top_k``: the indexer's."""
    from tinymodel import (_add_byte_vocab, _add_v3_expert_keys, _file_type, _finish, _random_tensors_dropping, _write_experts,
                           _write_indexer, _write_nextn, _write_swiglu, byte_vocab)  # fmt: skip

    rng = np.random.default_rng(seed)
    n_expert, n_used, n_ff_exp, n_shared = EXPERTS
    n_blocks = N_LAYER + 1  # (the MTP layer)
    swa = list(SWA_PATTERN) + [True]
    w = GGUFWriter(str(path), "dots3note")
    w.add_name("tiny-dots3note")
    w.add_context_length(1024)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(n_blocks)
    w.add_feed_forward_length(N_FF)
    w.add_head_count([SWA[0] if s else FULL[0] for s in swa])
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_rope_freq_base_swa(ROPE_BASE_SWA)
    w.add_rope_dimension_count(N_ROT)
    _add_v3_expert_keys(w, n_expert, n_used, n_ff_exp, n_shared)
    _, nope, dv, rank = FULL
    _, nope_s, dv_s, rank_s = SWA
    w.add_q_lora_rank(Q_RANK)
    w.add_kv_lora_rank(rank)
    w.add_key_length(rank + N_ROT)
    w.add_value_length(rank)
    w.add_key_length_mla(nope + N_ROT)
    w.add_value_length_mla(dv)
    w.add_sliding_window(WINDOW)
    w.add_sliding_window_pattern(list(SWA_PATTERN))
    a = "dots3note.attention."  # (keys this gguf-py has no writer for)
    w.add_uint32(a + "kv_lora_rank_swa", rank_s)
    w.add_key_length_swa(rank_s + N_ROT)
    w.add_value_length_swa(rank_s)
    w.add_uint32(a + "key_length_mla_swa", nope_s + N_ROT)
    w.add_uint32(a + "value_length_mla_swa", dv_s)
    w.add_nextn_predict_layers(1)
    w.add_indexer_head_count(INDEXER[0])
    w.add_indexer_key_length(INDEXER[1])
    w.add_indexer_top_k(top_k)
    w.add_array(a + "indexer.types", [not s for s in SWA_PATTERN])
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec, tensor3 = _random_tensors_dropping(w, rng, qtype, drop)

    n_vocab = len(byte_vocab()[0])
    mat("token_embd.weight", n_vocab, N_EMBD, 0.5)
    vec("output_norm.weight", N_EMBD)
    mat("output.weight", n_vocab, N_EMBD, 0.5)
    for i in range(n_blocks):
        b = f"blk.{i}."
        H, nope_l, dv_l, rank_l = SWA if swa[i] else FULL
        vec(b + "attn_norm.weight", N_EMBD)
        mat(b + "attn_q_a.weight", Q_RANK, N_EMBD, 0.15)
        vec(b + "attn_q_a_norm.weight", Q_RANK)
        mat(b + "attn_q_b.weight", H * (nope_l + N_ROT), Q_RANK, 0.15)
        mat(b + "attn_kv_a_mqa.weight", rank_l + N_ROT, N_EMBD, 0.15)
        vec(b + "attn_kv_a_norm.weight", rank_l)
        vec(b + "attn_k_norm.weight", N_ROT, 1.0, 0.5)
        tensor3(b + "attn_k_b.weight", (H, rank_l, nope_l), 0.15)
        tensor3(b + "attn_v_b.weight", (H, dv_l, rank_l), 0.15)
        mat(b + "attn_output.weight", N_EMBD, H * dv_l)
        mat(b + "attn_gate.weight", H, N_EMBD, 0.5)
        vec(b + "ffn_norm.weight", N_EMBD)
        if i < N_LAYER and not swa[i]:
            _write_indexer(mat, vec, b, N_EMBD, Q_RANK, INDEXER[0], INDEXER[1])
        if i == 0 or i >= N_LAYER:  # the leading dense layer, and the MTP layer's FFN
            _write_swiglu(mat, b, N_EMBD, N_FF)
        else:
            if b + "ffn_gate_inp.weight" not in drop:
                w.add_tensor(b + "ffn_gate_inp.weight", (rng.standard_normal((n_expert, N_EMBD)) * 0.5).astype(np.float32))
            vec(b + "exp_probs_b.bias", n_expert, 0.0, 0.3)
            _write_experts(tensor3, b, N_EMBD, n_expert, n_ff_exp)
            _write_swiglu(mat, b, N_EMBD, n_shared * n_ff_exp, "_shexp")
        if i >= N_LAYER:  # the MTP layer: loaded by llama.cpp, never run
            _write_nextn(mat, vec, b, N_EMBD)
    return _finish(w, path)
