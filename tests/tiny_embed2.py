"""Write tiny random embedding encoders with gguf.GGUFWriter, as llama.cpp's converter lays them out:
``modern-bert`` (ModernBERT, gte-modernbert, nomic-modernbert-embed), ``eurobert`` (EuroBERT),
``llama-embed`` (llama-embed-nemotron: a Llama trunk run both ways) and ``t5encoder`` (T5 / Flan-T5
encoders).

``VARIANTS`` name the files the fixtures cover (tests/fixtures/embed_<name>.npz, tools/make_embed2_fixtures.py):

* ``modern-bert``: byte-level BPE with [CLS] text [SEP] (the converter's add_bos/add_eos), 4 layers of which
  0 and 3 are global (global_attn_every_n_layers 3, the first global) and 1, 2 see a symmetric window of
  ``SLIDING_WINDOW`` tokens, each kind with its own rope base; layer 0 without ``attn_norm`` (the checkpoint's
  Identity); CLS pooling, as gte-modernbert;
* ``modern-bert-silu``: the same with ``hidden_activation`` silu, as IBM's granite-embedding-*-r2: SwiGLU over the
  fused halves in place of GeGLU;
* ``eurobert``: Llama 3's byte-level BPE (no BOS, as the converter sets), grouped-query attention, mean pooling;
* ``llama-embed``: the same trunk as a ``llama`` file (the converter writes LlamaBidirectionalModel so, nothing
  more: no ``attention.causal``, and llama.cpp then masks causally), Llama 3.1's ``rope_freqs`` factors, mean pooling;
* ``llama-embed-bidir``: the same with ``attention.causal`` false, which llama.cpp honours: both ways;
* ``t5encoder``: Flan-T5 / T5 v1.1's: the Unigram vocabulary (tests/tiny_ugm.py) with ``</s>`` appended, gated
  GELU, relative position buckets in layer 0 only (as every checkpoint); heads narrower than n_embd / n_head
  (key_length), as T5's d_kv;
* ``t5encoder-relu``: the original T5's ReLU FFN without a gate.

The texts run past the window (8 to 30 tokens) and past T5's exact buckets (8 of 16 each way here, then log-spaced).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, PoolingType
from tiny_bert_family import _ugm, encoder_tensors, encoder_writer
from tinymodel import _finish

Q = GGMLQuantizationType
SLIDING_WINDOW = 8  # modern-bert's local layers: |i - j| <= 4
ROPE_BASE, ROPE_BASE_SWA = 10_000.0, 100.0  # (small local base, so that the tiny texts' positions turn it well round)
N_REL_BUCKETS = 16  # T5's relative_attention_num_buckets (32 in the checkpoints)

#: the texts the fixtures embed: 8 to 30 tokens
TEXTS = [
    "the cat sat on the mat. the cat sat on the mat again, and then the cat ran.",
    "Hello, World! running cats",
    "the the the a a in in he he the cat on the mat",
    "cats on 42 mats",
]

VARIANTS: dict[str, dict] = {
    "modern-bert": dict(arch="modern-bert"),
    "modern-bert-silu": dict(arch="modern-bert", act="silu"),
    "eurobert": dict(arch="eurobert"),
    "llama-embed": dict(arch="llama-embed"),
    "llama-embed-bidir": dict(arch="llama-embed", causal=False),
    "t5encoder": dict(arch="t5encoder", gated=True),
    "t5encoder-relu": dict(arch="t5encoder", gated=False),
}

#: (n_embd, n_head, n_head_kv, head_dim, n_ff, n_layer) by architecture
GEOMETRY = {
    "modern-bert": (64, 4, 4, 16, 64, 4),
    "eurobert": (64, 4, 2, 16, 96, 2),
    "llama-embed": (64, 4, 2, 16, 96, 2),
    "t5encoder": (64, 4, 4, 8, 96, 2),
}


def _bpe(w: GGUFWriter, pre: str, bos: str, eos: str, add_bos: bool, add_eos: bool) -> int:
    """A byte-level vocabulary (tests/tinymodel.py's) with two specials appended."""
    from tinymodel import byte_vocab

    toks, merges, types = byte_vocab()
    toks, types = toks + [bos, eos], types + [3, 3]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(toks) - 2)
    w.add_eos_token_id(len(toks) - 1)
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(add_eos)
    return len(toks)


def _ugm_t5(w: GGUFWriter) -> int:
    """T5's SentencePiece Unigram vocabulary: no BOS, ``</s>`` appended (tests/tiny_ugm.py's pieces)."""
    return _ugm(w, t5=True)


def write_tiny_embed2(path: Path, name: str = "modern-bert", qtype: int = Q.F32, seed: int = 0, drop: tuple[str, ...] = ()) -> Path:
    """The tiny model of ``VARIANTS[name]`` at ``path``, matrices stored as ``qtype``; the tensors named in ``drop`` left out."""
    v = VARIANTS[name]
    arch = v["arch"]
    n_embd, n_head, n_kv, hd, n_ff, n_layer = GEOMETRY[arch]
    rng = np.random.default_rng(seed)
    w = encoder_writer(path, arch, name, n_embd, n_head, n_ff, n_layer, drop)
    w.add_head_count_kv(n_kv)
    if hd != n_embd // n_head:
        w.add_key_length(hd)
        w.add_value_length(hd)
    if arch == "modern-bert":
        w.add_layer_norm_eps(1e-5)
        w.add_causal_attention(False)
        w.add_pooling_type(PoolingType.CLS)
        w.add_rope_freq_base(ROPE_BASE)
        w.add_rope_freq_base_swa(ROPE_BASE_SWA)
        w.add_sliding_window(SLIDING_WINDOW)
        w.add_sliding_window_pattern(3)
        if v.get("act"):
            w.add_string(f"{arch}.hidden_activation", v["act"])
        n_vocab = _bpe(w, "modern-bert", "[CLS]", "[SEP]", True, True)
    elif arch == "t5encoder":
        w.add_layer_norm_rms_eps(1e-6)
        w.add_relative_attn_buckets_count(N_REL_BUCKETS)
        w.add_causal_attention(False)
        w.add_pooling_type(PoolingType.MEAN)
        n_vocab = _ugm_t5(w)
    else:
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_freq_base(1000.0)
        w.add_rope_dimension_count(hd)
        if arch == "eurobert" or v.get("causal") is False:
            w.add_causal_attention(False)  # (the converter's: EuroBERT is bidirectional)
        w.add_pooling_type(PoolingType.MEAN)
        n_vocab = _bpe(w, "llama-bpe", "<|begin_of_text|>", "<|end_of_text|>", arch != "eurobert", arch == "eurobert")
    mat, vec = encoder_tensors(w, rng, qtype)

    def norm(name: str, n: int) -> None:
        vec(name, n, 1.0)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    q_dim, kv_dim = n_head * hd, n_kv * hd
    if arch == "modern-bert":
        norm("token_embd_norm.weight", n_embd)
        for i in range(n_layer):
            b = f"blk.{i}."
            if i != 0:  # (layer 0's attention norm is the identity: the converter writes none)
                norm(b + "attn_norm.weight", n_embd)
            mat(b + "attn_qkv.weight", q_dim + 2 * kv_dim, n_embd)
            mat(b + "attn_output.weight", n_embd, q_dim)
            norm(b + "ffn_norm.weight", n_embd)
            mat(b + "ffn_up.weight", 2 * n_ff, n_embd)  # GeGLU: the activated half's rows, then the gate's
            mat(b + "ffn_down.weight", n_embd, n_ff)
        norm("output_norm.weight", n_embd)
    elif arch == "t5encoder":
        for i in range(n_layer):
            b = f"enc.blk.{i}."
            norm(b + "attn_norm.weight", n_embd)
            if i == 0:  # (T5's relative position buckets: layer 0's table serves every layer)
                w.add_tensor(b + "attn_rel_b.weight", rng.standard_normal((N_REL_BUCKETS, n_head)).astype(np.float32))  # (float32 always)
            mat(b + "attn_q.weight", q_dim, n_embd, 0.1)  # (T5 does not scale scores by 1/sqrt(d): small Q)
            mat(b + "attn_k.weight", kv_dim, n_embd)
            mat(b + "attn_v.weight", kv_dim, n_embd)
            mat(b + "attn_o.weight", n_embd, q_dim)
            norm(b + "ffn_norm.weight", n_embd)
            if v["gated"]:
                mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
        norm("enc.output_norm.weight", n_embd)
    else:
        if arch == "llama-embed":  # (Llama 3.1's rope scaling: the converter writes the per-frequency factors)
            w.add_tensor("rope_freqs.weight", np.linspace(1.0, 8.0, hd // 2).astype(np.float32))
        for i in range(n_layer):
            b = f"blk.{i}."
            norm(b + "attn_norm.weight", n_embd)
            mat(b + "attn_q.weight", q_dim, n_embd)
            mat(b + "attn_k.weight", kv_dim, n_embd)
            mat(b + "attn_v.weight", kv_dim, n_embd)
            mat(b + "attn_output.weight", n_embd, q_dim)
            norm(b + "ffn_norm.weight", n_embd)
            mat(b + "ffn_gate.weight", n_ff, n_embd)
            mat(b + "ffn_up.weight", n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
        norm("output_norm.weight", n_embd)
    return _finish(w, path)
