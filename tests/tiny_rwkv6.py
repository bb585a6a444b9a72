"""A tiny random RWKV-6 GGUF (``tinymodel.write_tiny_model(arch="rwkv6")`` writes it through here).

As llama.cpp's converter lays out RWKV-6 (``Rwkv6Model``): ``token_embd_norm`` (LN0), per layer two LayerNorms with
biases, the data-dependent token shift (``time_mix_lerp_x``, the LoRA ``time_mix_w1`` [5 * extra, n_embd] and
``time_mix_w2`` [5, n_embd, extra], the five mus fused in ``time_mix_lerp_fused``, w k v r g), the bonus
``time_mix_first`` [n_head, head_size], the decay ``time_mix_decay`` and its LoRA, r/k/v/gate/output matrices, the
group norm, and the channel mix's two mus, key, value and receptance; a separate output head; head_count 0
("required by llama.cpp, unused").  ``rescale_every_n_layers`` 2 (the real models': 6) with the converter's division
of ``time_mix_output`` and ``channel_mix_value`` by ``2 ** (layer // 2)``.  ``lerp_fused=False``: the five mus apart
(``time_mix_lerp_w`` ...), as files from before the converter fused them.  The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

Q = GGMLQuantizationType

#: n_embd, head_size (2 heads of 64, as the real models'), n_ff, n_layer, time_mix_extra_dim, time_decay_extra_dim,
#: rescale_every_n_layers
GEOMETRY = (128, 64, 448, 4, 32, 64, 2)


def write_tiny_rwkv6(path: Path, qtype: int = Q.F32, seed: int = 0, lerp_fused: bool = True) -> Path:
    """The model at ``path``, its matrices (r, k, v, gate, output, the LoRAs, the channel mix, embeddings, output) as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, head_size, n_ff, n_layer, extra, decay_extra, rescale = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "rwkv6")
    w.add_name("tiny-rwkv6")
    w.add_context_length(1048576)  # ("RWKV isn't context limited")
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_layer_norm_eps(1e-5)
    w.add_rescale_every_n_layers(rescale)
    w.add_wkv_head_size(head_size)
    w.add_time_mix_extra_dim(extra)
    w.add_time_decay_extra_dim(decay_extra)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(0)
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
    vec("token_embd_norm.weight", (n_embd,))
    vec("token_embd_norm.bias", (n_embd,), base=0.0)
    vec("output_norm.weight", (n_embd,))
    vec("output_norm.bias", (n_embd,), base=0.0)
    mat("output.weight", (n_vocab, n_embd), scale=0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        down = 0.1 / 2 ** (i // rescale)  # (the converter's division, which the halved residual makes up for)
        vec(b + "attn_norm.weight", (n_embd,))
        vec(b + "attn_norm.bias", (n_embd,), base=0.0)
        vec(b + "attn_norm_2.weight", (n_embd,))
        vec(b + "attn_norm_2.bias", (n_embd,), base=0.0)
        # (the LoRAs float32 whatever the type, as llama.cpp's quantizer leaves them: "RWKV's small yet 2D weights")
        mat(b + "time_mix_w1.weight", (5 * extra, n_embd), f32=True)
        mat(b + "time_mix_w2.weight", (5, n_embd, extra), f32=True)
        mu(b + "time_mix_lerp_x.weight", (1, 1, n_embd))
        if lerp_fused:  # ggml's {n_embd, 1, 1, 5}: w, k, v, r, g
            mu(b + "time_mix_lerp_fused.weight", (5, 1, 1, n_embd))
        else:
            for n in "wkvrg":
                mu(b + f"time_mix_lerp_{n}.weight", (1, 1, n_embd))
        vec(b + "time_mix_first.weight", (n_embd // head_size, head_size), base=0.0, scale=0.5)
        vec(b + "time_mix_decay.weight", (n_embd,), base=-0.5, scale=1.0)
        mat(b + "time_mix_decay_w1.weight", (decay_extra, n_embd), f32=True)
        mat(b + "time_mix_decay_w2.weight", (n_embd, decay_extra), f32=True)
        mat(b + "time_mix_key.weight", (n_embd, n_embd))
        mat(b + "time_mix_value.weight", (n_embd, n_embd))
        mat(b + "time_mix_receptance.weight", (n_embd, n_embd))
        mat(b + "time_mix_gate.weight", (n_embd, n_embd))
        vec(b + "time_mix_ln.weight", (n_embd,))
        vec(b + "time_mix_ln.bias", (n_embd,), base=0.0)
        mat(b + "time_mix_output.weight", (n_embd, n_embd), scale=down)
        mu(b + "channel_mix_lerp_k.weight", (1, 1, n_embd))
        mu(b + "channel_mix_lerp_r.weight", (1, 1, n_embd))
        mat(b + "channel_mix_key.weight", (n_ff, n_embd))
        mat(b + "channel_mix_value.weight", (n_embd, n_ff), scale=down)
        mat(b + "channel_mix_receptance.weight", (n_embd, n_embd))
    return _finish(w, path)
