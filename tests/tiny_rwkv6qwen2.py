"""A tiny random RWKV6-Qwen2 GGUF (``tinymodel.write_tiny_model(arch="rwkv6qwen2")`` writes it through here).

As llama.cpp's converter lays out RWKV6-Qwen2 (``RWKV6Qwen2Model``): RWKV-6's time mix without its bonus and group
norm (tiny_rwkv6.py's ddlerp ``time_mix_lerp_x``/``w1``/``w2``/``lerp_fused``, the decay and its LoRA, r/k/v/gate/output)
in a Qwen 2 trunk: RMSNorm weights without biases (``attn_norm``, ``ffn_norm``, ``output_norm``), no
``token_embd_norm``, a SwiGLU FFN, a separate output head, ``token_shift_count`` 1, ``attention.layer_norm_rms_epsilon``,
head_count 0 and head_count_kv the K/V heads.  ``gqa``: 2 K/V heads for the 4 heads, their key and value matrices
narrower (the QRWKV6 models': Qwen 2.5's GQA); without: 4.  ``bias``: r/k/v biases (Qwen 2's attention biases, which
QRWKV6 keeps); ``output_norm_bias``: the output norm's optional bias.  The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

#: n_embd, head_size (4 heads of 32), n_ff, n_layer, time_mix_extra_dim, time_decay_extra_dim
GEOMETRY = (128, 32, 256, 3, 32, 64)


def write_tiny_rwkv6qwen2(path: Path, qtype: int = Q.F32, seed: int = 0, gqa: bool = True, bias: bool = True,
                          output_norm_bias: bool = False) -> Path:  # fmt: skip
    """The model at ``path``, its matrices (r, k, v, gate, output, the FFN, embeddings, output) as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, head_size, n_ff, n_layer, extra, decay_extra = GEOMETRY
    n_head = n_embd // head_size
    n_kv = n_head // 2 if gqa else n_head
    kv = n_kv * head_size
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "rwkv6qwen2")
    w.add_name("tiny-rwkv6qwen2")
    w.add_context_length(1048576)  # ("RWKV isn't context limited")
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_wkv_head_size(head_size)
    w.add_time_mix_extra_dim(extra)
    w.add_time_decay_extra_dim(decay_extra)
    w.add_feed_forward_length(n_ff)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_token_shift_count(1)
    w.add_head_count_kv(n_kv)
    w.add_head_count(0)  # ("required by llama.cpp, unused")
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    def mat(name: str, shape: tuple[int, ...], scale: float = 0.1, f32: bool = False) -> None:
        a = (rng.standard_normal(shape) * scale).astype(np.float32)
        if qtype == Q.F32 or f32:
            w.add_tensor(name, a)
        elif qtype == Q.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, quantize(a, qtype), raw_dtype=qtype)

    def vec(name: str, shape: tuple[int, ...], base: float = 1.0, scale: float = 0.1) -> None:
        w.add_tensor(name, (base + rng.standard_normal(shape) * scale).astype(np.float32))

    def mu(name: str, shape: tuple[int, ...]) -> None:  # (a token shift's mix, in [0, 1])
        w.add_tensor(name, rng.uniform(0.0, 1.0, shape).astype(np.float32))

    mat("token_embd.weight", (n_vocab, n_embd), scale=0.5)
    vec("output_norm.weight", (n_embd,))
    if output_norm_bias:
        vec("output_norm.bias", (n_embd,), base=0.0)
    mat("output.weight", (n_vocab, n_embd), scale=0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", (n_embd,))
        # (the LoRAs float32 whatever the type, as llama.cpp's quantizer leaves them)
        mat(b + "time_mix_w1.weight", (5 * extra, n_embd), f32=True)
        mat(b + "time_mix_w2.weight", (5, n_embd, extra), f32=True)
        mu(b + "time_mix_lerp_x.weight", (1, 1, n_embd))
        mu(b + "time_mix_lerp_fused.weight", (5, 1, 1, n_embd))  # ggml's {n_embd, 1, 1, 5}: w, k, v, r, g
        vec(b + "time_mix_decay.weight", (n_embd,), base=-0.5, scale=1.0)
        mat(b + "time_mix_decay_w1.weight", (decay_extra, n_embd), f32=True)
        mat(b + "time_mix_decay_w2.weight", (n_embd, decay_extra), f32=True)
        mat(b + "time_mix_key.weight", (kv, n_embd), scale=0.3)
        mat(b + "time_mix_value.weight", (kv, n_embd), scale=0.3)
        mat(b + "time_mix_receptance.weight", (n_embd, n_embd), scale=0.3)
        if bias:
            vec(b + "time_mix_receptance.bias", (n_embd,), base=0.0, scale=0.3)
            vec(b + "time_mix_key.bias", (kv,), base=0.0, scale=0.3)
            vec(b + "time_mix_value.bias", (kv,), base=0.0, scale=0.3)
        mat(b + "time_mix_gate.weight", (n_embd, n_embd))
        mat(b + "time_mix_output.weight", (n_embd, n_embd), scale=0.3)
        vec(b + "ffn_norm.weight", (n_embd,))
        mat(b + "ffn_gate.weight", (n_ff, n_embd))
        mat(b + "ffn_up.weight", (n_ff, n_embd))
        mat(b + "ffn_down.weight", (n_embd, n_ff))
    return _finish(w, path)
