"""A tiny random Mamba 1 GGUF (``tinymodel.write_tiny_model(arch="mamba")`` writes it through here).

As llama.cpp's converter lays out Mamba 1 (``MambaModel``): head_count and feed_forward_length 0, the ``ssm.*`` sizes
(d_inner twice n_embd: llama.cpp takes no other expansion), per layer ``attn_norm``, ``ssm_in`` [2 d_inner, n_embd],
``ssm_conv1d`` [d_inner, d_conv] and its bias, ``ssm_x`` [dt_rank + 2 d_state, d_inner], ``ssm_dt`` [d_inner, dt_rank]
and its bias, ``ssm_a`` = -exp(A_log) [d_inner, d_state], ``ssm_d`` [d_inner], ``ssm_out``; the output head tied
(mamba-130m ... 2.8b).  ``falcon=True``: Falcon-Mamba's ``ssm.dt_b_c_rms`` and an output head of its own.
The byte vocabulary tinymodel writes (gpt2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

Q = GGMLQuantizationType

#: n_embd, n_layer, d_conv, d_inner, d_state, dt_rank (the real models': ceil(n_embd / 16))
GEOMETRY = (64, 3, 4, 128, 16, 4)


def write_tiny_mamba(path: Path, qtype: int = Q.F32, seed: int = 0, falcon: bool = False) -> Path:
    """The model at ``path``, its matrices (in, x, dt, out projections, embeddings, output) as ``qtype``."""
    from tinymodel import _add_byte_vocab, _file_type, _finish, _random_tensors, byte_vocab

    rng = np.random.default_rng(seed)
    n_embd, n_layer, d_conv, d_inner, d_state, dt_rank = GEOMETRY
    n_vocab = len(byte_vocab()[0])
    w = GGUFWriter(str(path), "mamba")
    w.add_name("tiny-falcon-mamba" if falcon else "tiny-mamba")
    w.add_context_length(2**20)  # (the converter's: "arbitrary, as Mamba is an RNN")
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_block_count(n_layer)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(d_inner)
    w.add_ssm_state_size(d_state)
    w.add_ssm_time_step_rank(dt_rank)
    w.add_ssm_dt_b_c_rms(falcon)
    w.add_file_type(_file_type(qtype))
    _add_byte_vocab(w)

    mat, vec = _random_tensors(w, rng, qtype)
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    vec("output_norm.weight", n_embd)
    if falcon:
        mat("output.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        vec(b + "attn_norm.weight", n_embd)
        mat(b + "ssm_in.weight", 2 * d_inner, n_embd, 0.2)
        w.add_tensor(b + "ssm_conv1d.weight", (rng.standard_normal((d_inner, d_conv)) * 0.5).astype(np.float32))
        vec(b + "ssm_conv1d.bias", d_inner, 0.0)
        mat(b + "ssm_x.weight", dt_rank + 2 * d_state, d_inner, 0.2)
        mat(b + "ssm_dt.weight", d_inner, dt_rank, 0.5)
        # time steps from ~0.02 to ~0.7 before the data's part: some channels remember the prompt, some a few tokens
        w.add_tensor(b + "ssm_dt.bias", rng.uniform(-4.0, 0.0, d_inner).astype(np.float32))
        w.add_tensor(b + "ssm_a", -np.exp(rng.uniform(-2.0, 1.0, (d_inner, d_state))).astype(np.float32))
        vec(b + "ssm_d", d_inner, 1.0, 0.3)
        mat(b + "ssm_out.weight", n_embd, d_inner)
    return _finish(w, path)
