"""Write tiny random encoders of the BERT family beyond ``bert``/``nomic-bert`` (tests/tinybert.py) with
gguf.GGUFWriter, as llama.cpp's converter lays them out: ``jina-bert-v2`` (ALiBi, GEGLU), ``jina-bert-v3``
(XLM-R with rope), ``nomic-bert-moe`` (MoE every other layer) and ``neo-bert`` (pre-norm RMSNorm, SwiGLU).

``VARIANTS`` name the files the fixtures cover (tests/fixtures/embed_<name>.npz, tools/make_bert_family_fixtures.py):

* ``jina-bert-v2``: jina-embeddings-v2-small/base-en: WordPiece, the GEGLU FFN's gate and up fused in one
  ``ffn_up`` (2 n_ff rows), as today's converter writes it;
* ``jina-bert-v2-gate``: the same with ``ffn_gate`` split out, as older converters wrote it (GELU(gate) * up);
* ``jina-bert-v2-code``: jina-embeddings-v2-base-code's layout: a byte-level BPE vocabulary (pre-tokenizer
  ``jina-v2-code``), the second LayerNorm after attention (``attn_norm_2``) and, as the converter maps
  ``layer_norm_q``/``layer_norm_k`` where a checkpoint has them, LayerNorms on Q and K;
* ``jina-bert-v3``: jina-embeddings-v3's base (XLM-R's Unigram vocabulary, fused QKV with bias, rope);
* ``nomic-bert-moe``: nomic-embed-text-v2-moe's: XLM-R's vocabulary, layers 1 and 3 of 4 mixtures of GELU experts;
* ``neo-bert``: NeoBERT's: WordPiece, pre-norm RMSNorm, fused QKV without biases, SwiGLU, rope over
  consecutive pairs, a final RMSNorm (``enc.output_norm``).

Six heads in jina-bert-v2: not a power of two, so ALiBi's second slope series (heads 4 and 5) is used, as in
jina-embeddings-v2-base's twelve.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, PoolingType
from gguf.quants import quantize
from tinybert import wpm_vocab
from tinymodel import _finish

Q = GGMLQuantizationType
N_CTX = 128

#: the texts the fixtures embed (WordPiece, byte-level BPE and Unigram all cut them): 8 to 30 tokens, so that
#: ALiBi's distance penalty and rope's angles spread over a range
TEXTS = [
    "the cat sat on the mat. the cat sat on the mat again, and then the cat ran.",
    "Hello, World! running cats",
    "café xyzzy  the\tmat? 42 cats on 42 mats",
    "\u4e2d cat-mats 42",
]

#: name -> (arch, what sets the file apart)
VARIANTS: dict[str, dict] = {
    "jina-bert-v2": dict(arch="jina-bert-v2", vocab="wpm", ffn="geglu"),
    "jina-bert-v2-gate": dict(arch="jina-bert-v2", vocab="wpm", ffn="gate"),
    "jina-bert-v2-code": dict(arch="jina-bert-v2", vocab="bpe", ffn="geglu", qk_norm=True, norm_2=True),
    "jina-bert-v3": dict(arch="jina-bert-v3", vocab="ugm"),
    "nomic-bert-moe": dict(arch="nomic-bert-moe", vocab="ugm"),
    "neo-bert": dict(arch="neo-bert", vocab="wpm"),
}

#: (n_embd, n_head, n_ff, n_layer) by architecture
GEOMETRY = {"jina-bert-v2": (96, 6, 64, 2), "jina-bert-v3": (64, 4, 96, 2), "nomic-bert-moe": (64, 4, 64, 4), "neo-bert": (64, 4, 64, 3)}
N_EXPERT, N_EXPERT_USED, MOE_EVERY = 4, 2, 2
ROPE_BASE = 1000.0  # (small, so that the tiny texts' positions turn the angles well round)


def _wpm(w: GGUFWriter, pre: str) -> int:
    toks, types = wpm_vocab()
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre(pre)  # (llama.cpp reads no pre-tokenizer for WordPiece; the converter names it all the same)
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_sep_token_id(3)
    w.add_unk_token_id(1)
    w.add_pad_token_id(0)
    w.add_mask_token_id(4)
    return len(toks)


def _bpe(w: GGUFWriter) -> int:
    """A byte-level vocabulary with RoBERTa's specials (<s> text </s>), as the converter writes a
    RobertaTokenizer's (jina-embeddings-v2-base-code, -de, -es)."""
    from tinymodel import byte_vocab

    toks, merges, types = byte_vocab()
    toks, types = toks[:-1] + ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], types[:-1] + [3, 3, 3, 2, 3]
    n = len(toks)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("jina-v2-code")
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(n - 5)
    w.add_pad_token_id(n - 4)
    w.add_eos_token_id(n - 3)
    w.add_unk_token_id(n - 2)
    w.add_mask_token_id(n - 1)
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)
    return n


def _ugm(w: GGUFWriter, t5: bool = False) -> int:
    """XLM-R's Unigram vocabulary (tests/tiny_ugm.py), as bge-m3's, jina-embeddings-v3's and nomic-embed-text-v2-moe's;
    ``t5``: T5's, the same pieces without a BOS, separator or mask (``</s>`` appended, not prepended)."""
    from tiny_ugm import BOS, EOS, PAD, UNK, nmt_nfkc_charsmap, ugm_vocab

    toks, scores, types = ugm_vocab()
    w.add_tokenizer_model("t5")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_add_space_prefix(True)
    w.add_remove_extra_whitespaces(True)
    w.add_precompiled_charsmap(nmt_nfkc_charsmap())
    if not t5:
        w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_unk_token_id(UNK)
    if not t5:
        w.add_sep_token_id(EOS)
    w.add_pad_token_id(PAD)
    if not t5:
        w.add_mask_token_id(len(toks) - 1)
    w.add_add_bos_token(not t5)
    w.add_add_eos_token(True)
    return len(toks)


def encoder_writer(path: Path, arch: str, name: str, n_embd: int, n_head: int, n_ff: int, n_layer: int, drop: tuple[str, ...] = ()) -> GGUFWriter:
    """A tiny encoder file's writer (``general.name`` tiny-<name>), its first keys written; the tensors named in ``drop``
    left out."""
    w = GGUFWriter(str(path), arch)
    add_tensor = w.add_tensor
    w.add_tensor = lambda name, *a, **kw: None if name in drop else add_tensor(name, *a, **kw)  # type: ignore[method-assign]
    w.add_name(f"tiny-{name}")
    w.add_context_length(N_CTX)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    return w


def encoder_tensors(w: GGUFWriter, rng: np.random.Generator, qtype: int) -> tuple[Callable[..., None], Callable[..., None]]:
    """The tensor writers, drawing from ``rng`` in call order: ``mat(name, rows, cols, scale=0.2)``, a matrix ~ N(0, scale²)
    stored as ``qtype``, and ``vec(name, n, base=0.0, scale=0.1)``, a float32 vector ~ base + N(0, scale²)."""

    def mat(name: str, rows: int, cols: int, scale: float = 0.2) -> None:
        a = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        w.add_tensor(name, a if qtype == Q.F32 else quantize(a, qtype), raw_dtype=None if qtype == Q.F32 else qtype)

    def vec(name: str, n: int, base: float = 0.0, scale: float = 0.1) -> None:
        w.add_tensor(name, (base + rng.standard_normal(n) * scale).astype(np.float32))

    return mat, vec


def write_tiny_bert_family(path: Path, name: str = "jina-bert-v2", qtype: int = Q.F32, seed: int = 0, drop: tuple[str, ...] = ()) -> Path:
    """The tiny model of ``VARIANTS[name]`` at ``path``, matrices stored as ``qtype``; the tensors named in ``drop`` left out."""
    v = VARIANTS[name]
    arch = v["arch"]
    n_embd, n_head, n_ff, n_layer = GEOMETRY[arch]
    rng = np.random.default_rng(seed)
    w = encoder_writer(path, arch, name, n_embd, n_head, n_ff, n_layer, drop)
    w.add_causal_attention(False)
    if arch == "neo-bert":
        w.add_layer_norm_rms_eps(1e-6)
        w.add_pooling_type(PoolingType.CLS)
    else:
        w.add_layer_norm_eps(1e-12 if arch == "jina-bert-v2" else 1e-5)
        w.add_pooling_type(PoolingType.MEAN)
    if arch != "jina-bert-v2":
        w.add_rope_freq_base(ROPE_BASE)
    if arch == "nomic-bert-moe":
        w.add_moe_every_n_layers(MOE_EVERY)
        w.add_expert_count(N_EXPERT)
        w.add_expert_used_count(N_EXPERT_USED)
    n_vocab = _wpm(w, "jina-v2-en" if arch == "jina-bert-v2" else "default") if v["vocab"] == "wpm" else {"bpe": _bpe, "ugm": _ugm}[v["vocab"]](w)
    if arch != "neo-bert":
        w.add_token_type_count(2 if arch == "jina-bert-v2" else 1)
    mat, vec = encoder_tensors(w, rng, qtype)

    def norm(name: str, n: int, bias: bool = True) -> None:
        vec(name + ".weight", n, 1.0)
        if bias:
            vec(name + ".bias", n)

    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    if arch != "neo-bert":
        w.add_tensor("token_types.weight", (rng.standard_normal((2 if arch == "jina-bert-v2" else 1, n_embd)) * 0.2).astype(np.float32))
        norm("token_embd_norm", n_embd)
    else:
        norm("enc.output_norm", n_embd, bias=False)
    for i in range(n_layer):
        b = f"blk.{i}."
        if arch == "neo-bert":  # pre-norm RMSNorms, no biases anywhere, SwiGLU's gate and up fused
            norm(b + "attn_norm", n_embd, bias=False)
            mat(b + "attn_qkv.weight", 3 * n_embd, n_embd)
            mat(b + "attn_output.weight", n_embd, n_embd)
            norm(b + "ffn_norm", n_embd, bias=False)
            mat(b + "ffn_up.weight", 2 * n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
            continue
        if arch == "jina-bert-v2":
            for x in ("q", "k", "v"):
                mat(b + f"attn_{x}.weight", n_embd, n_embd)
                vec(b + f"attn_{x}.bias", n_embd)
                if v.get("qk_norm") and x != "v":
                    norm(b + f"attn_{x}_norm", n_embd)
        else:  # (XLM-R flash layout: one Wqkv with its bias)
            mat(b + "attn_qkv.weight", 3 * n_embd, n_embd)
            vec(b + "attn_qkv.bias", 3 * n_embd)
        mat(b + "attn_output.weight", n_embd, n_embd)
        vec(b + "attn_output.bias", n_embd)
        norm(b + "attn_output_norm", n_embd)
        if v.get("norm_2"):
            norm(b + "attn_norm_2", n_embd)
        if arch == "nomic-bert-moe" and i % MOE_EVERY == 1:  # llama.cpp's MoE layers: il % moe_every_n_layers == 1
            mat(b + "ffn_gate_inp.weight", N_EXPERT, n_embd, 0.5)
            w.add_tensor(b + "ffn_up_exps.weight", (rng.standard_normal((N_EXPERT, n_ff, n_embd)) * 0.2).astype(np.float32))
            w.add_tensor(b + "ffn_down_exps.weight", (rng.standard_normal((N_EXPERT, n_embd, n_ff)) * 0.2).astype(np.float32))
        elif arch == "jina-bert-v2":
            if v["ffn"] == "gate":
                mat(b + "ffn_gate.weight", n_ff, n_embd)
                mat(b + "ffn_up.weight", n_ff, n_embd)
            else:  # GEGLU: the gate's rows first, then up's
                mat(b + "ffn_up.weight", 2 * n_ff, n_embd)
            mat(b + "ffn_down.weight", n_embd, n_ff)
            vec(b + "ffn_down.bias", n_embd)
        else:
            mat(b + "ffn_up.weight", n_ff, n_embd)
            vec(b + "ffn_up.bias", n_ff)
            mat(b + "ffn_down.weight", n_embd, n_ff)
            vec(b + "ffn_down.bias", n_embd)
        norm(b + "layer_output_norm", n_embd)
    return _finish(w, path)
