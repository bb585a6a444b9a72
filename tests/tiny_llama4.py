"""A tiny random Llama 4 (``llama4``) GGUF (``tinymodel.write_tiny_model(arch="llama4")`` writes it through here), laid
out as llama.cpp's converter writes Llama-4-Scout and Llama-4-Maverick:

* every ``interleave_moe_layer_step``-th layer (2 here, Maverick's) a mixture of experts, one chosen a token, behind a
  sigmoid router, with a shared expert as wide as one expert (``ffn_*_shexp``); the others a dense SwiGLU FFN;
* 4 layers: llama.cpp's 3 chunked rope layers and 1 NoPE layer over the whole context (fixed in its code);
* Llama 3's per-frequency rope factors (``rope_freqs.weight``, as Scout's rope scaling), pairs rotated;
* 16 experts (Scout's count: llama.cpp L2-normalises Q and K on the rope layers) or, ``n_expert=128``,
  Maverick's (no QK norm);
* ``sliding_window=0`` (MobileLLM-R1's layout as the converter marks it): no chunks, rope on every layer.

The context (16384) is past llama.cpp's fixed chunk of 8192, for the long fixture (tools/make_llama4_long_fixture.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

#: n_embd, n_head, n_head_kv, head_dim, n_ff (dense), n_ff_exp (an expert's and the shared expert's), n_layer
GEOMETRY = (64, 4, 2, 16, 96, 32, 4)
#: interleave_moe_layer_step: layers 1 and 3 experts, 0 and 2 dense
MOE_STEP = 2
N_CTX_TRAIN = 16384


def write_tiny_llama4(path: Path, qtype: int = Q.F32, seed: int = 0, n_expert: int | None = None,
                      sliding_window: int | None = None, drop: tuple[str, ...] = (), extra_tokens: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """The model at ``path``, its matrices as ``qtype``; ``n_expert`` 16 unless given; ``sliding_window`` stated only
    where given (llama.cpp: 0 turns chunks and NoPE off); ``drop``: tensor names left out (the missing-tensor tests)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_ff_exp, n_layer = GEOMETRY
    n_expert = 16 if n_expert is None else n_expert
    n_vocab = len(byte_vocab()[0]) + len(extra_tokens)  # (extra_tokens: control tokens after the bytes, tiny_vision_llama4.py's)
    # Q and K drawn wide where the rope layers L2-normalise them: the NoPE layer's temperature must move its softmax
    # visibly; Maverick's unnormed ones as the rest (wide, their scores would meet llama.cpp's fp16 rounding of Q)
    qk_scale = 0.3 if n_expert != 128 else 0.1
    w = GGUFWriter(str(path), "llama4")
    w.add_name("tiny-llama4")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(500000.0)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(1)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_interleave_moe_layer_step(MOE_STEP)
    if sliding_window is not None:
        w.add_sliding_window(sliding_window)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w, extra_tokens)

    mat, vec = _random_tensors(w, rng, qtype)

    def tensor(name: str, a: np.ndarray) -> None:
        if name in drop:
            return
        a = a.astype(np.float32)
        w.add_tensor(name, a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)

    def m(name: str, rows: int, cols: int, scale: float = 0.1) -> None:
        if name in drop:
            rng.standard_normal((rows, cols))  # (the same draws: the rest of the file unchanged)
            return
        mat(name, rows, cols, scale)

    m("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    m("output.weight", n_vocab, n_embd, 0.5)
    # Llama 3's rope factors: 1 for the fast pairs, rising to 8 for the slow ones
    w.add_tensor("rope_freqs.weight", np.linspace(1.0, 8.0, head_dim // 2).astype(np.float32))
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        m(b + "attn_q.weight", n_head * head_dim, n_embd, qk_scale)
        m(b + "attn_k.weight", n_head_kv * head_dim, n_embd, qk_scale)
        m(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        m(b + "attn_output.weight", n_embd, n_head * head_dim)
        vec(b + "ffn_norm.weight", n_embd)
        if (i + 1) % MOE_STEP == 0:
            # (a router drawn wide, so that the chosen expert's sigmoid weight ranges over (0, 1); Maverick's narrow, or
            # the best of its 128 logits would saturate the sigmoid at 1, where a weight on the input or the output agree)
            tensor(b + "ffn_gate_inp.weight", rng.standard_normal((n_expert, n_embd)) * (0.5 if n_expert != 128 else 0.05))
            for name, rows, cols in (("ffn_gate_exps", n_ff_exp, n_embd), ("ffn_up_exps", n_ff_exp, n_embd), ("ffn_down_exps", n_embd, n_ff_exp)):
                tensor(b + name + ".weight", rng.standard_normal((n_expert, rows, cols)) * 0.1)
            m(b + "ffn_gate_shexp.weight", n_ff_exp, n_embd)
            m(b + "ffn_up_shexp.weight", n_ff_exp, n_embd)
            m(b + "ffn_down_shexp.weight", n_embd, n_ff_exp)
        else:
            m(b + "ffn_gate.weight", n_ff, n_embd)
            m(b + "ffn_up.weight", n_ff, n_embd)
            m(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
