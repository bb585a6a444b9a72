"""A tiny XLM-RoBERTa-style Unigram ("t5") vocabulary in a tiny ``bert`` encoder, as llama.cpp's
converter writes bge-m3, multilingual-e5 and bge-reranker-v2-m3: tokenizer.ggml.model "t5", scores,
token types, add_space_prefix, remove_extra_whitespaces and a real ``precompiled_charsmap``.

The charsmap is sentencepiece's own ``nmt_nfkc`` rule table (XLM-R's normaliser: NFKC, whitespace
and control characters folded), taken from the model proto of a throwaway model that sentencepiece's
trainer makes from a few words; the pieces and scores are written here, so that the Viterbi has
real choices to make (``▁cat`` + ``s`` beats ``▁cats``; ``▁xy`` ties ``▁x`` + ``y`` exactly).

``VARIANTS`` are the tokenizer settings the fixtures cover: XLM-R's own, llama.cpp's defaults for a
t5 vocabulary (whitespace kept), whitespace removed without the space prefix (llama.cpp then puts one
before every word all the same), and no charsmap at all.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

from gguf import GGUFWriter, TokenType
from tinybert import Q, write_tiny_bert

#: the texts of tests/fixtures/ugm_tokens.json: accents composed and not, CJK, full-width and compatibility
#: forms, whitespace runs, newlines, emoji (one a token, one unknown), a run of unknown characters (one
#: unknown token), a Viterbi tie, an unused token, special-token text
TEXTS = [
    "the cat sat on the mat.", "cats", "Hello, world!", "  leading and trailing  ", "multiple   inner    spaces",
    "tab\there", "new\nline\n\nend", "crlf\r\nline", "café", "cafe\u0301", "naïve über", "nai\u0308ve",
    "中文", "日本語中文", "日本語語🎉中文", "ＡＢＣ full width", "ﬁne ﬁ", "①②③ Ⅻ", "😀 emoji", "🎉 unknown", "xy xyz", "don't",
    "<s>the</s>", "[U]user[U]x", "<mask> the", "</s>", "", " ", "\n", "a\x00b", "zz zzz", "1234567890",
    "x" * 40, "THE CAT", "\u3000ideographic", "non\u00a0breaking", "zero\u200bwidth", "\u2581the \u2581",
]  # fmt: skip

#: the texts tests/fixtures/embed_ugm.npz embeds: not an empty or all-whitespace one (no state to compare),
#: nor control-token text (llama-cpp-python's embed tokenizes without parsing it)
EMBED_TEXTS = [t for t in TEXTS if t.strip() and "\x00" not in t and "<" not in t]

#: name -> the tokenizer keys that set it apart (add_bos/add_eos None: the key is left out)
VARIANTS: dict[str, dict] = {
    "xlmr": dict(charsmap=True, add_space_prefix=True, remove_extra_whitespaces=True, add_bos=True, add_eos=True),
    "t5": dict(charsmap=True, add_space_prefix=True, remove_extra_whitespaces=False, add_bos=None, add_eos=None),
    "nospace": dict(charsmap=True, add_space_prefix=False, remove_extra_whitespaces=True, add_bos=True, add_eos=False),
    "bare": dict(charsmap=False, add_space_prefix=None, remove_extra_whitespaces=None, add_bos=False, add_eos=True),
}

BOS, PAD, EOS, UNK = 0, 1, 2, 3


def _proto_fields(b: bytes):
    """(field number, value) of a serialised protobuf message (varints and length-delimited only)."""
    i = 0

    def varint() -> int:
        nonlocal i
        v = s = 0
        while True:
            c = b[i]
            i += 1
            v |= (c & 0x7F) << s
            s += 7
            if c < 0x80:
                return v

    while i < len(b):
        key = varint()
        if key & 7 == 0:
            yield key >> 3, varint()
        elif key & 7 == 2:
            n = varint()
            yield key >> 3, b[i : i + n]
            i += n
        else:  # fixed32 / fixed64
            n = 4 if key & 7 == 5 else 8
            yield key >> 3, b[i : i + n]
            i += n


CHARSMAP = Path(__file__).parent / "fixtures" / "nmt_nfkc_charsmap.bin.z"  # (sentencepiece 0.2.3's, zlib)


@functools.cache
def nmt_nfkc_charsmap() -> bytes:
    """sentencepiece's compiled ``nmt_nfkc`` normaliser, as sentencepiece 0.2.3 compiles it (committed: another
    sentencepiece compiles other bytes, so the tiny files and the fixtures' hashes of them would differ; the GPU
    machine's image has another).  :func:`sentencepiece_nmt_nfkc` made it."""
    import zlib

    return zlib.decompress(CHARSMAP.read_bytes())


def sentencepiece_nmt_nfkc() -> bytes:
    """The installed sentencepiece's ``nmt_nfkc`` table (ModelProto 3 normalizer_spec, 2 precompiled_charsmap)."""
    import sentencepiece as spm

    f = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["abc cab bca", "abba"] * 20), model_writer=f, vocab_size=8,
                                   model_type="unigram", normalization_rule_name="nmt_nfkc", num_threads=1,
                                   minloglevel=2, hard_vocab_limit=False)  # fmt: skip
    spec = dict(_proto_fields(dict(_proto_fields(f.getvalue()))[3]))
    return bytes(spec[2])


def ugm_vocab() -> tuple[list[str], list[float], list[int]]:
    """XLM-R's layout: <s> <pad> </s> <unk>, then scored pieces, a user-defined, an unused and a byte token, <mask>."""
    T = TokenType
    toks = ["<s>", "<pad>", "</s>", "<unk>"]
    scores = [0.0, 0.0, 0.0, 0.0]
    types = [T.CONTROL, T.CONTROL, T.CONTROL, T.UNKNOWN]
    pieces = {
        "\u2581": -2.0, "\u2581the": -3.0, "\u2581cat": -4.0, "\u2581ca": -5.0, "s": -3.5, "ts": -6.0, "\u2581cats": -9.0,
        "\u2581sat": -5.0, "\u2581on": -4.0, "\u2581mat": -5.5, ".": -2.5, ",": -2.5, "!": -3.0, "?": -3.0, "-": -3.0,
        "'": -3.0, "\u2581don": -6.0, "'t": -5.0, "\u2581hello": -6.0, "\u2581world": -6.0, "\u2581Hello": -6.5,
        "\u2581caf": -6.0, "\u00e9": -7.0, "\u2581caf\u00e9": -8.0, "\u00fc": -7.0, "\u00ef": -7.0, "\u0301": -9.5,
        "\u4e2d": -7.0, "\u6587": -7.0, "\u4e2d\u6587": -9.0, "\u65e5\u672c": -9.0, "\u2581\u4e2d": -8.0,
        "\U0001f600": -10.0, "\u2581fi": -6.0, "fi": -6.5, "ne": -5.0, "\u2581x": -4.0, "y": -4.0, "\u2581xy": -8.0,
        "\u2581\u2581": -5.0, "\u2581\u2581\u2581\u2581": -7.0, "42": -5.0, "123": -6.0, "\u2581A": -5.0, "BC": -6.0,
        "\u2581THE": -7.0, "\u2581CAT": -7.0, "\u2581XII": -8.0, "XI": -7.0, "full": -6.0, "\u2581full": -5.5,
        "\u2581width": -6.0, "\u2581line": -5.0, "\u2581end": -5.0, "\u2581and": -4.5, "\u2581leading": -7.0,
        "ing": -4.0, "\u2581tab": -6.0, "\u2581here": -5.0, "\u2581new": -5.0, "\u2581emoji": -7.0, "\u2581un": -4.0,
        "known": -6.0, "\u2581user": -6.0, "\u2581zero": -6.0, "\u2581non": -5.0, "\u2581na": -5.5, "ve": -5.0,
        "\u2581\u00fcber": -8.0, "\u2581\u00fc": -7.5, "\u2581ideographic": -9.0, "breaking": -7.5, "\u2581break": -6.0,
    }  # fmt: skip
    chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    for t, s in list(pieces.items()) + [(c, -8.0 - 0.01 * k) for k, c in enumerate(chars)]:
        if t not in toks:
            toks.append(t)
            scores.append(s)
            types.append(T.NORMAL)
    for t, s, ty in (("[U]", 0.0, T.USER_DEFINED), ("\u2581zz", -1.0, T.UNUSED), ("<0x41>", 0.0, T.BYTE), ("<mask>", 0.0, T.CONTROL)):
        toks.append(t)
        scores.append(s)
        types.append(ty)
    return toks, scores, [int(t) for t in types]


def write_tiny_ugm(path: Path, variant: str = "xlmr", qtype: int = Q.F32, seed: int = 0) -> Path:
    """tests/tinybert.py's tiny ``bert`` encoder with the Unigram vocabulary of ``VARIANTS[variant]``."""
    v = VARIANTS[variant]

    def vocab(w: GGUFWriter) -> int:
        toks, scores, types = ugm_vocab()
        w.add_tokenizer_model("t5")
        w.add_tokenizer_pre("default")
        w.add_token_list(toks)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_token_type_count(2)
        if v["add_space_prefix"] is not None:
            w.add_add_space_prefix(v["add_space_prefix"])
        if v["remove_extra_whitespaces"] is not None:
            w.add_remove_extra_whitespaces(v["remove_extra_whitespaces"])
        if v["charsmap"]:
            w.add_precompiled_charsmap(nmt_nfkc_charsmap())
        w.add_bos_token_id(BOS)
        w.add_eos_token_id(EOS)
        w.add_unk_token_id(UNK)
        w.add_sep_token_id(EOS)
        w.add_pad_token_id(PAD)
        w.add_mask_token_id(len(toks) - 1)
        if v["add_bos"] is not None:
            w.add_add_bos_token(v["add_bos"])
        if v["add_eos"] is not None:
            w.add_add_eos_token(v["add_eos"])
        return len(toks)

    return write_tiny_bert(path, "bert", qtype, seed, vocab=vocab)
