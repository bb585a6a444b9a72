"""A tiny random ARWKV-7 GGUF (``tinymodel.write_tiny_model(arch="arwkv7")`` writes it through here).

As llama.cpp's converter lays out ARWKV-7 (``ARwkv7Model``): RWKV-7's time mix (tiny_rwkv7.py's tensors: the fused
mus, r/k/v/output, the decay, iclr and value-residual LoRAs, layer 0's dummy value LoRA, ``k_k``, ``k_a``, ``r_k``) in
a Qwen 2.5 trunk: RMSNorm weights without biases (``attn_norm``, ``ffn_norm``, ``output_norm``), no
``token_embd_norm``, a SwiGLU FFN, a separate output head, ``token_shift_count`` 1 and
``attention.layer_norm_rms_epsilon``.  ``gate``: the gate's LoRA and its sixth mu (``wkv_has_gate``) and the group norm
after the recurrence; without: five mus, no gate, no group norm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize
from tiny_rwkv7 import GEOMETRY

Q = GGMLQuantizationType


def write_tiny_arwkv7(path: Path, qtype: int = Q.F32, seed: int = 0, gate: bool = True) -> Path:
    """The model at ``path``, its matrices (r, k, v, output, the LoRAs, the FFN, embeddings, output) as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, head_size, n_ff, n_layer, (r_w, r_a, r_v, r_g) = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "arwkv7")
    w.add_name("tiny-arwkv7")
    w.add_context_length(1048576)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_wkv_head_size(head_size)
    w.add_decay_lora_rank(r_w)
    w.add_iclr_lora_rank(r_a)
    w.add_value_residual_mix_lora_rank(r_v)
    w.add_gate_lora_rank(r_g if gate else 0)
    w.add_feed_forward_length(n_ff)
    w.add_token_shift_count(1)
    w.add_head_count(0)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    def mat(name: str, rows: int, cols: int, scale: float = 0.1) -> None:
        a = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, a)
        elif qtype == Q.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, quantize(a, qtype), raw_dtype=qtype)

    def vec(name: str, n: int, base: float = 1.0, scale: float = 0.1) -> None:
        w.add_tensor(name, (base + rng.standard_normal(n) * scale).astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd, scale=0.5)
    vec("output_norm.weight", n_embd)
    mat("output.weight", n_vocab, n_embd, scale=0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        # the mus (r, w, k, v, a and the gate's) in [0, 1], as ggml's {n_embd, 1, 1, 6 or 5}
        w.add_tensor(b + "time_mix_lerp_fused.weight", rng.uniform(0.0, 1.0, (6 if gate else 5, 1, 1, n_embd)).astype(np.float32))
        vec(b + "time_mix_w0.weight", n_embd, base=0.0, scale=1.0)
        mat(b + "time_mix_w1.weight", r_w, n_embd)
        mat(b + "time_mix_w2.weight", n_embd, r_w)
        vec(b + "time_mix_a0.weight", n_embd, base=0.0, scale=1.0)
        mat(b + "time_mix_a1.weight", r_a, n_embd)
        mat(b + "time_mix_a2.weight", n_embd, r_a)
        r = r_a if i == 0 else r_v  # (layer 0's: the converter's dummy, the iclr LoRA's shape)
        vec(b + "time_mix_v0.weight", n_embd, base=0.0, scale=1.0)
        mat(b + "time_mix_v1.weight", r, n_embd)
        mat(b + "time_mix_v2.weight", n_embd, r)
        if gate:
            mat(b + "time_mix_g1.weight", r_g, n_embd)
            mat(b + "time_mix_g2.weight", n_embd, r_g)
        vec(b + "time_mix_k_k.weight", n_embd, scale=0.3)
        vec(b + "time_mix_k_a.weight", n_embd, scale=0.3)
        vec(b + "time_mix_r_k.weight", n_embd, base=0.0, scale=0.5)
        mat(b + "time_mix_key.weight", n_embd, n_embd)
        mat(b + "time_mix_value.weight", n_embd, n_embd)
        mat(b + "time_mix_receptance.weight", n_embd, n_embd)
        if gate:
            vec(b + "time_mix_ln.weight", n_embd)
            vec(b + "time_mix_ln.bias", n_embd, base=0.0)
        mat(b + "time_mix_output.weight", n_embd, n_embd)
        vec(b + "ffn_norm.weight", n_embd)
        mat(b + "ffn_gate.weight", n_ff, n_embd)
        mat(b + "ffn_up.weight", n_ff, n_embd)
        mat(b + "ffn_down.weight", n_embd, n_ff)
    return _finish(w, path)
