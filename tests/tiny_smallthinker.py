"""Tiny random SmallThinker (``smallthinker``) GGUFs (``tinymodel.write_tiny_model(arch="smallthinker")`` writes them
through here), laid out as llama.cpp's converter writes SmallThinker-21B-A3B and SmallThinker-4B-A0.6B:

* 5 layers (not 4: llama.cpp rotates every layer of a 4-layer model), every FFN 4 ReGLU experts (2 a token) as wide
  as ``feed_forward_length`` (the converter states moe_ffn_hidden_size for both), the router float32 and drawn
  small enough that its probabilities do not saturate (the chosen experts' weights matter).
* without ``sliding_window`` (the 21B's layout): a sigmoid router, every layer rotating, an ``output.weight`` of its own.
* with it (the 4B's): a softmax router, the output head tied; the window llama.cpp makes 4096 whatever the file says,
  of every 4 layers the first global, layers 0 and 4 without rope.  ``swa_pattern``: ``sliding_window_pattern``
  stated (no converter writes it, llama.cpp reads it) and ``rope.freq_base_swa`` 1000 for the window layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

#: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer, n_expert, n_expert_used)
GEOMETRY = (64, 4, 2, 16, 32, 5, 4, 2)


def write_tiny_smallthinker(path: Path, qtype: int = Q.F32, seed: int = 0, sliding_window: int | None = None, swa_pattern: int = 0,
                            drop: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """The model at ``path``, its matrices as ``qtype``; ``sliding_window``, ``swa_pattern``: the variants above;
    ``drop``: tensor names left out (the tests of a missing tensor's error)."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer, n_expert, n_used = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "smallthinker")
    w.add_name("tiny-smallthinker")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff)
    w.add_expert_gating_func(ExpertGatingFuncType.SOFTMAX if sliding_window else ExpertGatingFuncType.SIGMOID)
    if sliding_window:
        w.add_sliding_window(sliding_window)
        if swa_pattern:
            w.add_sliding_window_pattern(swa_pattern)
            w.add_rope_freq_base_swa(1000.0)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat_, vec_ = _random_tensors(w, rng, qtype)

    def mat(name: str, rows: int, cols: int, scale: float = 0.1, f32: bool = False) -> None:
        if name in drop:  # (drawn all the same: the other tensors' values do not move)
            rng.standard_normal((rows, cols))
        else:
            mat_(name, rows, cols, scale, f32)

    def vec(name: str, n: int) -> None:
        if name in drop:
            rng.standard_normal(n)
        else:
            vec_(name, n)

    def experts(name: str, rows: int, cols: int) -> None:
        a = (rng.standard_normal((n_expert, rows, cols)) * 0.1).astype(np.float32)
        if name not in drop:
            w.add_tensor(name, a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if not sliding_window:
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "attn_q.weight", n_head * head_dim, n_embd)
        mat(b + "attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(b + "attn_output.weight", n_embd, n_head * head_dim)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate_inp.weight", n_expert, n_embd, 0.25, f32=True)  # (float32, as the converter keeps routers)
        experts(b + "ffn_gate_exps.weight", n_ff, n_embd)
        experts(b + "ffn_up_exps.weight", n_ff, n_embd)
        experts(b + "ffn_down_exps.weight", n_embd, n_ff)
    return _finish(w, path)
