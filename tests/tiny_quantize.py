"""Tiny random models for ``kvrun quantize`` and the cases it is held to llama.cpp on (tests/test_quantize.py,
tools/make_quantize_fixtures.py, tests/fixtures/quantize_cases.json).

The K-quants need rows of 256 weights, wider than tinymodel.py's 64, so these are Llamas of their own width:

* ``untied``: float32, 8 layers (so the "_M" mixes' every-third-layer rules bite), 4 heads over 2 KV heads, a
  separate output head, and an FFN 320 wide: ``ffn_down``'s rows of 320 are no multiple of 256 and fall back.
* ``tied``: float16, 2 layers, grouped-query 4:1 (Q2_K's attn_v rule), the token embeddings doubling as the output
  head (so they get the output's type).
* ``requant``: ``tied``'s weights stored as Q4_1, for ``--allow-requantize``.
* ``phi3``: tinymodel.py's Phi-3 (rows of 64: every K-quant falls back; the fused ``attn_qkv`` rule).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab, write_tiny_model

Q = GGMLQuantizationType

#: name -> (matrix type, n_embd, n_head, n_head_kv, n_ff, n_layer, separate output head)
GEOMETRY = {
    "untied": (Q.F32, 256, 4, 2, 320, 8, True),
    "tied": (Q.F16, 256, 4, 1, 512, 2, False),
    "requant": (Q.Q4_1, 256, 4, 1, 512, 2, False),
}

#: (model, TYPE, options of quantize_model): what llama.cpp's output is recorded for
CASES: list[tuple[str, str, dict]] = (
    [("untied", t, {}) for t in ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1",
                                 "Q4_0", "Q3_K_M", "Q2_K", "F16", "BF16")]
    + [("tied", t, {}) for t in ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q2_K", "BF16")]
    + [("phi3", t, {}) for t in ("Q4_K_M", "Q5_K_M", "Q3_K_M", "Q2_K", "Q4_0")]
    + [
        ("untied", "Q4_K_M", {"pure": True}),
        ("untied", "Q4_0", {"output_tensor_type": "q8_0", "token_embedding_type": "q4_K"}),
        ("tied", "Q5_K_S", {"output_tensor_type": "q5_K"}),
        ("tied", "F16", {"token_embedding_type": "q8_0"}),
        ("requant", "Q4_K_M", {"allow_requantize": True}),
        ("requant", "Q8_0", {"allow_requantize": True}),
    ]
)  # fmt: skip


def case_key(model: str, type_name: str, opts: dict) -> str:
    """A case's name in the fixture: ``"untied Q4_K_M --pure"``."""
    flags = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in sorted(opts.items()))
    return f"{model} {type_name} {flags}".strip()


def write_quantize_model(path: Path, name: str, seed: int = 0) -> Path:
    """Write the tiny model ``name`` (a key of GEOMETRY, or ``phi3``) to ``path``; the same bytes every time."""
    if name == "phi3":
        return write_tiny_model(path, "phi3", Q.F32, seed)
    qtype, n_embd, n_head, n_head_kv, n_ff, n_layer, output = GEOMETRY[name]
    head_dim = n_embd // n_head
    rng = np.random.default_rng(seed)
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "llama")
    w.add_name(f"tiny-quantize-{name}")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)
    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if output:
        mat("output.weight", n_vocab, n_embd, 0.5)
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
