"""Tokenizers built from GGUF metadata, giving llama.cpp's token ids.

* ``tokenizer.ggml.model == "llama"`` (SentencePiece vocabularies, e.g. Gemma 3):
  a SentencePiece BPE ``ModelProto`` is serialised from the GGUF tokens, scores
  and types and loaded with ``sentencepiece``.
* ``"gpt2"`` (byte-level BPE, e.g. SmolLM2, Qwen2, Llama 3): a ``tokenizers``
  BPE model from the vocab and merges, behind the pre-tokenizer regexes that
  ``tokenizer.ggml.pre`` names (as llama.cpp's ``src/llama-vocab.cpp`` defines them).
* ``"rwkv"`` (RWKV World): the longest token the bytes start with, greedily (``rwkv_vocab.py``).
* ``"t5"`` (SentencePiece Unigram, e.g. XLM-RoBERTa's in bge-m3): llama.cpp's UGM tokenizer (``ugm.py``).
* ``"gemma4"`` (Gemma 4): BPE over raw UTF-8 with "▁" spaces and ``<0xXX>`` byte fallback, BOS always (``gemma4_vocab.py``).

What follows llama.cpp (``llama_vocab::impl``) on purpose:

* token attributes: the GGUF token types, plus the fix-ups llama.cpp applies at
  load (end-of-generation and FIM tokens found by their text become CONTROL...);
* special tokens are split out of the text before the sub-word model runs,
  longest token first (``tokenizer_st_partition``): CONTROL/UNKNOWN tokens only
  when ``parse_special``, USER_DEFINED tokens always;
* SentencePiece vocabularies add the dummy-prefix space to the first text
  fragment and to every fragment that follows a special token;
* ``add_bos`` True/None means llama.cpp's ``add_special``: the BOS/EOS the
  vocabulary asks for (``tokenizer.ggml.add_bos_token`` / ``add_eos_token``);
* pieces are ``llama_token_to_piece``'s; ``eot_ids`` is ``llama_vocab_is_eog``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from . import gemma4_vocab, rwkv_vocab, ugm, wpm
from .strings import StringArray

# GGUF token types (gguf-py TokenType / llama.cpp llama_token_type)
T_UNDEFINED, T_NORMAL, T_UNKNOWN, T_CONTROL, T_USER_DEFINED, T_UNUSED, T_BYTE = 0, 1, 2, 3, 4, 5, 6

# llama.cpp llama_token_attr bits
A_UNDEFINED = 0
A_UNKNOWN = 1 << 0
A_UNUSED = 1 << 1
A_NORMAL = 1 << 2
A_CONTROL = 1 << 3
A_USER_DEFINED = 1 << 4
A_BYTE = 1 << 5
A_LSTRIP = 1 << 7
A_RSTRIP = 1 << 8

_ATTR_OF_TYPE = np.array([A_UNDEFINED, A_NORMAL, A_UNKNOWN, A_CONTROL, A_USER_DEFINED, A_UNUSED, A_BYTE], np.int32)
_A_SPECIAL = A_UNKNOWN | A_CONTROL  # rendered only with special=True, parsed only with parse_special=True

# ------------------------------------------------------------------ pre-tokenizers
# regexes as llama.cpp's llm_tokenizer_bpe defines them, by tokenizer.ggml.pre
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTR = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CONTR + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTR + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN35 = _CONTR + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# gpt-4o and tekken: llama.cpp's adaptations (lookaheads instead of \p{Lu}/\p{Ll}...), which it
# matches on its own; they differ from the tokenizer.json originals on combining marks
_UPPERISH, _LOWERISH = r"((?=[\p{L}])([^a-z]))", r"((?=[\p{L}])([^A-Z]))"
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?" + _UPPERISH + "*" + _LOWERISH + "+" + _CONTR + "?"
    r"|[^\r\n\p{L}\p{N}]?" + _UPPERISH + "+" + _LOWERISH + "*" + _CONTR + "?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?" + _UPPERISH + "*" + _LOWERISH + "+"
    r"|[^\r\n\p{L}\p{N}]?" + _UPPERISH + "+" + _LOWERISH + "*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PORO = r" ?[^(\s|.,!?…。，、।۔،)]+"

_DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]
_STARCODER = [r"\p{N}", _GPT2]

PRE_TOKENIZERS: dict[str, list[str]] = {"default": _DEFAULT}
for _names, _rx in [
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"), [_LLAMA3]),
    (("chatglm-bpe", "glm4", "glm5"), [_LLAMA3]),
    (("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"), _STARCODER),
    (
        (
            "gpt-2", "gpt2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum", "modern-bert",
            "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4",
        ),
        [_GPT2],
    ),
    (("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2", "megrez", "hunyuan", "solar-open", "grok-2"), [_QWEN2]),
    (("qwen35",), [_QWEN35]),
    (("falcon",), [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"]),
    (("poro-chat", "bloom", "gpt3-finnish"), [_PORO]),
    (("viking",), [_PORO, r"\p{N}"]),
    (("tekken",), [_TEKKEN]),
    (("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), [_GPT4O]),
    (("deepseek-coder",), [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"]),
    (  # DeepSeek LLM and DeepSeek-MoE v1: letters of the cased scripts listed out, as llama.cpp's (escaped:
       # the code points Unicode normalisation would fold into others)
        ("deepseek-llm",),
        [r"[\r\n]", "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+", r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}+"],
    ),
    (
        ("seed-coder",),
        [_CONTR + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"],
    ),
    (
        ("bailingmoe", "bailingmoe2", "llada-moe"),
        [r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"],
    ),
]:
    for _n in _names:
        PRE_TOKENIZERS[_n] = _rx

# pre-tokenizers for which llama.cpp sets ignore_merges / a default add_bos of True
_IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano", "tekken", "glm4", "glm5"}
_ADD_BOS = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano", "tekken", "chameleon"}

# ------------------------------------------------------------------ special tokens found by text (llama_vocab::impl::load)
_EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
    "<｜end▁of▁sentence｜>", "<end_of_utterance>",
)
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_FIM_KEYS = {
    "fim_pre": ("fim_pre_token_id", "prefix_token_id"),
    "fim_suf": ("fim_suf_token_id", "suffix_token_id"),
    "fim_mid": ("fim_mid_token_id", "middle_token_id"),
    "fim_pad": ("fim_pad_token_id",),
    "fim_rep": ("fim_rep_token_id",),
    "fim_sep": ("fim_sep_token_id",),
}
_EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>",
    "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>",
    "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
)
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss: USER_DEFINED

_C_SPACE = " \t\n\v\f\r"  # C isspace()
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{1,2})")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character map (byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


# ------------------------------------------------------------------ SentencePiece model proto
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(num: int, data: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def _field_varint(num: int, v: int) -> bytes:
    return _varint(num << 3) + _varint(v)


# sentencepiece_model.proto field numbers
_SP_NORMAL, _SP_UNKNOWN, _SP_BYTE = 1, 2, 6


def _spm_model_proto(pieces: StringArray, scores: np.ndarray, sp_types: np.ndarray) -> bytes:
    """Serialise a sentencepiece ``ModelProto``: BPE, byte fallback, identity normaliser.

    Written by hand rather than through protobuf's Python classes, and laid out with numpy, every piece at
    once (Gemma 3's 262k pieces: 0.16 s under a test run's load, where a Python loop over them took 0.6).
    ``ModelProto``: 1 pieces, 2 trainer_spec, 3 normalizer_spec; ``SentencePiece``: 1 piece, 2 score
    (float), 3 type; ``TrainerSpec``: 3 model_type (2 = BPE), 35 byte_fallback, 40-43 unk/bos/eos/pad
    ids; ``NormalizerSpec``: 1 name, 3 add_dummy_prefix, 4 remove_extra_whitespaces, 5 escape_whitespaces.
    """
    ty = np.asarray(sp_types, np.int64)
    if ty.size and not (0 <= ty.min() and ty.max() < 128):
        raise ValueError(f"sentencepiece piece types {ty.min()}..{ty.max()}: expected 0..127")
    n_b = pieces.lengths.astype(np.int64)  # each piece: 0x0a varint(n_b) bytes 0x15 score(4) 0x18 type
    inner = 8 + _varint_len(n_b) + n_b
    head = 1 + _varint_len(inner)  # 0x0a varint(inner): the piece as field 1 of the model
    size = head + inner
    start = np.zeros(len(size), np.int64)
    np.cumsum(size[:-1], out=start[1:])
    out = np.empty(int(size.sum()), np.uint8)
    out[start] = 0x0A
    _put_varints(out, start + 1, inner)
    at = start + head
    out[at] = 0x0A
    _put_varints(out, at + 1, n_b)
    at = at + 1 + _varint_len(n_b)  # the piece's bytes, gathered from the vocabulary's buffer
    idx = np.int32 if max(len(out), len(pieces.data)) < 2**31 else np.int64  # (each index array: a byte's worth)
    ramp = np.arange(int(n_b.sum()), dtype=idx) - np.repeat((np.cumsum(n_b) - n_b).astype(idx), n_b)
    out[np.repeat(at.astype(idx), n_b) + ramp] = pieces.data[np.repeat(pieces.starts.astype(idx), n_b) + ramp]
    at = at + n_b
    out[at] = 0x15
    out[at[:, None] + np.arange(1, 5)] = np.ascontiguousarray(scores, "<f4").view(np.uint8).reshape(-1, 4)
    out[at + 5] = 0x18
    out[at + 6] = ty
    unk = int(np.flatnonzero(ty == _SP_UNKNOWN)[0])
    minus1 = 0xFFFFFFFFFFFFFFFF  # int32 -1 as a protobuf varint
    trainer = _field_varint(3, 2) + _field_varint(35, 1) + _field_varint(40, unk)
    trainer += _field_varint(41, minus1) + _field_varint(42, minus1) + _field_varint(43, minus1)
    normalizer = _field_bytes(1, b"identity") + _field_varint(3, 0) + _field_varint(4, 0) + _field_varint(5, 0)
    return out.tobytes() + _field_bytes(2, trainer) + _field_bytes(3, normalizer)


def _varint_len(n: np.ndarray) -> np.ndarray:
    """Bytes of each protobuf varint of ``n`` (non-negative, below 2**28)."""
    return 1 + (n >= 1 << 7) + (n >= 1 << 14) + (n >= 1 << 21)


def _put_varints(out: np.ndarray, at: np.ndarray, n: np.ndarray) -> None:
    """Write the varint of each ``n[i]`` into ``out`` from ``at[i]`` on (seven bits a byte, low first)."""
    more = _varint_len(n)
    for k in range(4):
        w = more > k
        out[at[w] + k] = ((n[w] >> (7 * k)) & 0x7F) | np.where(more[w] > k + 1, 0x80, 0)


# ------------------------------------------------------------------ the tokenizer
class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary.  Build with :meth:`from_metadata`.

    Attributes: ``kind`` ("spm" or "bpe"), ``n_vocab``, ``bos_id``, ``eos_id``,
    ``unk_id`` (None when absent), ``add_bos``/``add_eos`` (what the vocabulary
    asks for), ``eot_ids`` (every id that ends a generation), ``tokens``
    (token texts, a :class:`~.strings.StringArray`), ``attrs`` (llama.cpp token attribute bits, int32 array).
    """

    def __init__(self, md: Mapping[str, Any]) -> None:
        self.model = str(md.get("tokenizer.ggml.model", ""))
        if self.model not in ("llama", "gpt2", "bert", "rwkv", "t5", "gemma4"):
            raise ValueError(f"tokenizer model {self.model!r} is not supported (llama/SentencePiece, gpt2/byte-level BPE, bert/WordPiece, "
                             "t5/Unigram, rwkv/World and gemma4 are)")
        self.kind = {"llama": "spm", "gpt2": "bpe", "bert": "wpm", "rwkv": "rwkv", "t5": "ugm", "gemma4": "gemma4"}[self.model]
        self.pre = str(md.get("tokenizer.ggml.pre", "default") or "default")
        if self.kind == "gemma4" or (self.kind == "bpe" and self.pre in gemma4_vocab.PRE_NAMES):  # (loaders/gemma4_vocab.py)
            self.kind, self.pre = "gemma4", "gemma4" if self.kind == "gemma4" else self.pre

        tokens = md["tokenizer.ggml.tokens"]
        if not isinstance(tokens, StringArray):
            tokens = StringArray.from_strings(tokens)
        empty = np.flatnonzero(tokens.lengths == 0).tolist()
        # as llama.cpp renames empty tokens; no copy of the vocabulary otherwise
        self.tokens: StringArray = tokens.replaced({i: f"[EMPTY_{i}]" for i in empty})
        n = self.n_vocab = len(self.tokens)

        types = md.get("tokenizer.ggml.token_type")
        if types is None:
            self.attrs = np.full(n, A_NORMAL, np.int32)
        else:
            t = np.asarray(types, np.int64)[:n]
            self.attrs = np.where((t >= 0) & (t <= 6), _ATTR_OF_TYPE[np.clip(t, 0, 6)], A_UNDEFINED).astype(np.int32)

        # defaults by vocabulary type, then the GGUF's keys (llama_vocab::impl::load)
        if self.kind == "spm":
            bos, eos, unk = 1, 2, 0
            add_bos, add_eos, self.add_space_prefix = True, False, True
            self.ignore_merges = False
        elif self.kind == "wpm":  # [CLS] text [SEP]: llama.cpp's BOS and separator
            bos, eos, unk = 101, 102, 100
            add_bos, add_eos, self.add_space_prefix = True, True, False
            self.ignore_merges = False
        elif self.kind == "ugm":  # T5's layout: <pad> </s> <unk>; XLM-R's files name theirs and ask for BOS and EOS
            bos, eos, unk = None, 1, 2
            add_bos, add_eos, self.add_space_prefix = False, True, False
            self.ignore_merges = False
            self._ugm_attrs = self.attrs.copy()  # (llama.cpp builds its UGM tokenizer before the fix-ups below)
        elif self.kind in ("rwkv", "gemma4"):  # RWKV World (loaders/rwkv_vocab.py), Gemma 4: no special token unless the file names one
            bos = eos = unk = None
            add_bos, add_eos, self.add_space_prefix = False, False, False
            self.ignore_merges = False
        else:
            bos, eos, unk = 11, 11, None
            known = self.pre in PRE_TOKENIZERS
            add_bos, add_eos, self.add_space_prefix = self.pre in _ADD_BOS, False, False
            self.ignore_merges = self.pre in _IGNORE_MERGES
            if self.pre in ("chatglm-bpe", "glm4"):  # (llama.cpp: no BOS unless the file states one; GLM's converters state none)
                bos = None
            if not known:
                warnings.warn(f"unknown pre-tokenizer {self.pre!r}; using the default regexes (token ids may differ from llama.cpp)", stacklevel=3)
        self.add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", self.add_space_prefix))
        self.bos_id = self._special_id(md, "bos_token_id", self._special_id(md, "cls_token_id", bos))
        self.eos_id = self._special_id(md, "seperator_token_id", eos) if self.kind == "wpm" else self._special_id(md, "eos_token_id", eos)
        self.unk_id = self._special_id(md, "unknown_token_id", unk)
        self.add_bos = bool(md.get("tokenizer.ggml.add_bos_token", add_bos))
        self.add_eos = bool(md.get("tokenizer.ggml.add_eos_token", add_eos))
        if self.kind == "gemma4":  # (llama.cpp adds BOS to a Gemma 4 vocabulary whatever the file says)
            self.add_bos = True
        if self.add_bos and self.bos_id is None:
            self.add_bos = False
        if self.add_eos and self.eos_id is None:
            self.add_eos = False

        self._fix_attrs_and_eog(md)
        self._build_special_matcher(str(md.get("general.name", "")))
        self._piece_cache: dict[int, bytes] = {}
        self._vocab_bytes: tuple[np.ndarray, np.ndarray] | None = None
        self._wpm_vocab: dict[str, int] | None = None

        if self.kind == "spm":
            import sentencepiece as spm

            scores = md.get("tokenizer.ggml.scores")
            scores = np.zeros(n, np.float32) if scores is None else np.asarray(scores, np.float32)[:n]
            pieces, sp_types = self._sp_pieces()
            self._sp = spm.SentencePieceProcessor()
            self._sp.LoadFromSerializedProto(_spm_model_proto(pieces, np.append(scores, np.float32(0)), sp_types))
        elif self.kind == "ugm":
            self._ugm_md = {k: md.get(f"tokenizer.ggml.{k}") for k in ("scores", "remove_extra_whitespaces")}
            cm = md.get("tokenizer.ggml.precompiled_charsmap")
            cm = b"" if cm is None else cm if isinstance(cm, (bytes, bytearray)) else np.asarray(cm).astype(np.uint8).tobytes()
            self._ugm_charsmap = ugm.CharsMap(cm) if cm else None  # (read now: a corrupt one fails the load, in one line)
            self._ugm: ugm.UgmVocab | None = None  # (the pieces, built on first use)
        elif self.kind == "rwkv":
            self._rwkv: rwkv_vocab.RwkvVocab | None = None  # (the trie, built on first use)
            self.add_bos = self.add_eos = False  # (llama.cpp's RWKV tokenize adds neither, whatever the file says)
        elif self.kind == "gemma4":
            if md.get("tokenizer.ggml.merges") is None:
                raise ValueError("a gemma4 vocabulary needs tokenizer.ggml.merges, and this file has none")
            self._g4 = gemma4_vocab.Gemma4Vocab(list(self.tokens), md["tokenizer.ggml.merges"])
        elif self.kind == "bpe":
            self._hf = _build_bpe(list(self.tokens), md.get("tokenizer.ggml.merges") or [], PRE_TOKENIZERS.get(self.pre, _DEFAULT), self.ignore_merges)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build from GGUF metadata (``tokenizer.ggml.*`` keys)."""
        return cls(metadata)

    # ----------------------------------------------------------------- load-time fix-ups
    def _special_id(self, md: Mapping[str, Any], key: str, default: int | None) -> int | None:
        v = md.get(f"tokenizer.ggml.{key}")
        if v is not None and 0 <= int(v) < self.n_vocab:
            return int(v)
        return default if default is not None and 0 <= default < self.n_vocab else None

    def _fix_attrs_and_eog(self, md: Mapping[str, Any]) -> None:
        """End-of-generation set and attribute overrides, as llama.cpp derives them."""
        attrs = self.attrs

        def by_text(texts: Iterable[str]) -> list[int]:
            return [i for i in map(self.token_id, texts) if i is not None]

        def first(key_names: tuple[str, ...], texts: tuple[str, ...]) -> int | None:
            for k in key_names:
                v = md.get(f"tokenizer.ggml.{k}")
                if v is not None and 0 <= int(v) < self.n_vocab:
                    return int(v)
            found = by_text(texts)
            if found:
                attrs[found[0]] |= A_CONTROL
                return found[0]
            return None

        eot = first(("eot_token_id",), _EOT_TEXTS)
        eom = first(("eom_token_id",), _EOM_TEXTS)
        fim = {k: first(_FIM_KEYS[k], _FIM_TEXTS[k]) for k in _FIM_TEXTS}
        self.eot_id, self.eom_id = eot, eom
        self.fim_ids = fim

        # CONTROL tokens whose text says "unused" are marked UNUSED
        for i in np.nonzero(attrs & A_CONTROL)[0].tolist():
            if "unused" in self.tokens[i]:
                attrs[i] |= A_UNUSED

        eog = {i for i in (fim["fim_pad"], fim["fim_rep"], fim["fim_sep"]) if i is not None}
        for i in by_text(_EOG_TEXTS):
            eog.add(i)
            attrs[i] |= A_CONTROL
        for i in by_text(_ALWAYS_RENDERED):
            attrs[i] = A_USER_DEFINED
        eog |= {i for i in (self.eos_id, eot, eom) if i is not None}
        texts = {self.tokens[i]: i for i in eog}
        has_call = "<|call|>" in texts or "<|calls|>" in texts
        if "<|end|>" in texts and has_call and ("<|return|>" in texts or "<|flush|>" in texts):
            eog.discard(texts["<|end|>"])
            attrs[texts["<|end|>"]] = A_USER_DEFINED
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            eog.discard(texts["</s>"])
            attrs[texts["</s>"]] = A_NORMAL
        self.eot_ids: frozenset[int] = frozenset(eog)

    def _build_special_matcher(self, model_name: str) -> None:
        """The special-token cache (CONTROL/USER_DEFINED/UNKNOWN), longest first, and a trie to find them."""
        attrs = self.attrs
        special = np.nonzero(attrs & (A_CONTROL | A_USER_DEFINED | A_UNKNOWN))[0].tolist()
        name = model_name.lower()
        if "phi-3" in name or "phi3" in name:  # llama.cpp's per-model attributes
            for i in special:
                attrs[i] |= A_RSTRIP
            if (i := self.token_id("</s>")) is not None:
                attrs[i] |= A_RSTRIP
            for t in ("<unk>", "<s>", "<|endoftext|>"):
                if (i := self.token_id(t)) is not None:
                    attrs[i] &= ~A_RSTRIP
        elif "jina-v2" in self.pre and (i := self.token_id("<mask>")) is not None:
            attrs[i] |= A_LSTRIP
        special.sort(key=lambda i: -len(self.tokens[i].encode("utf-8")))  # stable: ties keep id order
        self._special_rank = {tid: r for r, tid in enumerate(special)}
        trie: dict = {}
        for tid in special:
            node = trie
            for ch in self.tokens[tid]:
                node = node.setdefault(ch, {})
            node[""] = tid
        self._trie = trie
        self._first_chars = re.compile("[" + "".join(re.escape(c) for c in sorted(trie)) + "]") if trie else None

    def _sp_pieces(self) -> tuple[StringArray, np.ndarray]:
        """Pieces and sentencepiece types mirroring llama.cpp's SPM session.

        llama.cpp merges into (and outputs) any token whose text matches,
        whatever its type, so every token is a NORMAL piece except the byte
        tokens (sentencepiece's byte fallback needs them); an extra piece past
        the vocabulary is the UNKNOWN piece sentencepiece requires.  Duplicate
        texts keep only the last id reachable, as llama.cpp's text->id map does.
        """
        sp_types = np.full(self.n_vocab + 1, _SP_NORMAL, np.int32)
        is_byte = (self.attrs & A_BYTE) != 0
        sp_types[:-1][is_byte] = _SP_BYTE
        renamed = {i: f"\ue000kvrun-duplicate-{i}\ue000" for i in self.tokens.shadowed().tolist()}
        for i in np.nonzero(is_byte)[0].tolist():  # sentencepiece wants byte pieces spelled <0xXX>
            t = renamed.get(i) or self.tokens[i]
            m = _BYTE_TOKEN.match(t)
            if not m or t != f"<0x{int(m.group(1), 16):02X}>":
                sp_types[i] = _SP_NORMAL
        sp_types[-1] = _SP_UNKNOWN
        return self.tokens.replaced(renamed, extra=["\ue000kvrun-unknown\ue000"]), sp_types

    # ----------------------------------------------------------------- encode
    def _partition(self, text: str, parse_special: bool) -> list[tuple[int, int] | int]:
        """``text`` as raw spans ``(start, end)`` and special token ids (llama.cpp ``tokenizer_st_partition``)."""
        if not text:
            return []
        frags: list[tuple[int, int] | int] = [(0, len(text))]
        if self._first_chars is None:
            return frags
        # the special tokens that occur anywhere in the text
        found: set[int] = set()
        trie, n = self._trie, len(text)
        for m in self._first_chars.finditer(text):
            node, i = trie, m.start()
            while i < n:
                node = node.get(text[i])
                if node is None:
                    break
                i += 1
                tid = node.get("")
                if tid is not None:
                    found.add(tid)
        if not parse_special:
            found = {t for t in found if not self.attrs[t] & _A_SPECIAL}
        if not found:
            return frags
        for tid in sorted(found, key=self._special_rank.__getitem__):
            tok, attr = self.tokens[tid], int(self.attrs[tid])
            out: list[tuple[int, int] | int] = []
            for f in frags:
                if isinstance(f, int):
                    out.append(f)
                    continue
                s, e = f
                while True:
                    m = text.find(tok, s, e)
                    if m < 0:
                        break
                    le = m
                    if attr & A_LSTRIP:
                        while le > s and text[le - 1] in _C_SPACE:
                            le -= 1
                    if le > s:
                        out.append((s, le))
                    out.append(tid)
                    s = m + len(tok)
                    if attr & A_RSTRIP:
                        while s < e and text[s] in _C_SPACE:
                            s += 1
                    if s >= e:
                        break
                if s < e:
                    out.append((s, e))
            frags = out
        return frags

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``, equal to llama.cpp's ``llama_tokenize``.

        add_bos : None or True add what the vocabulary asks for (BOS when its
            ``add_bos_token`` is set, EOS when ``add_eos_token`` is), as
            llama.cpp's ``add_special`` does; False adds neither.
        parse_special : turn control-token text (``<|im_start|>``) into its
            token; user-defined tokens are always parsed, as in llama.cpp.
        """
        add_special = add_bos is not False
        frags = self._partition(text, parse_special)
        ids: list[int] = []
        if add_special and self.add_bos:
            ids.append(self.bos_id)
        if self.kind == "wpm":
            for f in frags:
                ids.extend([f] if isinstance(f, int) else self._wpm(text[f[0] : f[1]]))
        elif self.kind == "ugm":
            for f in frags:  # (every fragment normalised on its own, the space prefix included, as llama.cpp)
                ids.extend([f] if isinstance(f, int) else self._ugm_vocab().encode(text[f[0] : f[1]]))
        elif self.kind == "rwkv":
            if self._rwkv is None:
                self._rwkv = rwkv_vocab.RwkvVocab(self.tokens, self.unk_id)
            for f in frags:
                ids.extend([f] if isinstance(f, int) else self._rwkv.encode(text[f[0] : f[1]]))
        elif self.kind == "gemma4":
            for f in frags:
                ids.extend([f] if isinstance(f, int) else self._g4.encode(text[f[0] : f[1]]))
        elif self.kind == "spm":
            texts: list[str] = []
            prev_special = True
            for f in frags:
                if isinstance(f, int):
                    prev_special = True
                    continue
                s = text[f[0] : f[1]]
                texts.append(((" " + s) if self.add_space_prefix and prev_special else s).replace(" ", "\u2581"))
                prev_special = False
            encoded = iter(self._sp.encode(texts) if texts else [])
            unk = self.n_vocab
            for f in frags:
                if isinstance(f, int):
                    ids.append(f)
                else:
                    part = next(encoded)
                    if unk in part:  # a character with neither a token nor byte tokens
                        part = [self.unk_id if t == unk else t for t in part if t != unk or self.unk_id is not None]
                    ids.extend(part)
        else:
            enc = self._hf.encode
            for f in frags:
                if isinstance(f, int):
                    ids.append(f)
                else:
                    ids.extend(enc(text[f[0] : f[1]], add_special_tokens=False).ids)
        if add_special and self.add_eos:
            ids.append(self.eos_id)
        return ids

    # ----------------------------------------------------------------- decode
    def token_bytes(self, tid: int, special: bool = True) -> bytes:
        """The bytes of one token, as ``llama_token_to_piece(..., special)`` gives them.

        Control and unknown tokens give their text only when ``special``;
        byte tokens give their one byte; out-of-range ids give nothing.
        """
        if not 0 <= tid < self.n_vocab:
            return b""
        attr = int(self.attrs[tid])
        if not special and attr & _A_SPECIAL:
            return b""
        b = self._piece_cache.get(tid)
        if b is None:
            b = self._piece_cache[tid] = self._piece(tid, attr)
        return b

    def _wpm(self, text: str) -> list[int]:
        """WordPiece ids of a text fragment (loaders/wpm.py), the piece table built on first use."""
        if self._wpm_vocab is None:
            normal = np.flatnonzero(self.attrs & A_NORMAL)
            self._wpm_vocab = {self.tokens[int(i)]: int(i) for i in normal}
            self._wpm_max = max((len(t) for t in self._wpm_vocab), default=1)
        return wpm.encode(text, self._wpm_vocab, self.unk_id if self.unk_id is not None else 100, self._wpm_max)

    def _ugm_vocab(self) -> ugm.UgmVocab:
        """The Unigram model (loaders/ugm.py), built on first use from the GGUF's scores and charsmap."""
        if self._ugm is None:
            md, a = self._ugm_md, self._ugm_attrs
            scores = np.zeros(self.n_vocab, np.float32) if md["scores"] is None else np.asarray(md["scores"], np.float32)[: self.n_vocab]
            self._ugm = ugm.UgmVocab(self.tokens, scores, (a & A_NORMAL) != 0, (a & A_USER_DEFINED) != 0, (a & A_UNUSED) != 0,
                                     self.unk_id, self._ugm_charsmap, self.add_space_prefix, bool(md["remove_extra_whitespaces"] or False),
                                     user_scored=(self.attrs & A_USER_DEFINED) != 0)
        return self._ugm

    def vocab_bytes(self) -> tuple[np.ndarray, np.ndarray]:
        """Every token's bytes as generated text holds them (control tokens: none), concatenated
        (uint8), and their offsets [n_vocab + 1] int64; built once.  Constrained decoding reads them."""
        if self._vocab_bytes is None:
            pieces = [self.token_bytes(t, special=False) for t in range(self.n_vocab)]
            off = np.zeros(len(pieces) + 1, np.int64)
            np.cumsum([len(p) for p in pieces], out=off[1:])
            self._vocab_bytes = (np.frombuffer(b"".join(pieces), np.uint8), off)
        return self._vocab_bytes

    def _piece(self, tid: int, attr: int) -> bytes:
        tok = self.tokens[tid]
        if self.kind == "rwkv":  # (every token its unescaped bytes, as llama.cpp's RWKV token_to_piece)
            return rwkv_vocab.unescape(tok)
        if attr & (_A_SPECIAL | A_USER_DEFINED):
            return tok.encode("utf-8")
        if attr & A_NORMAL:
            if self.kind in ("spm", "wpm", "ugm", "gemma4"):
                return tok.replace("\u2581", " ").encode("utf-8")
            return _decode_byte_level(tok)
        if attr & A_BYTE:
            m = _BYTE_TOKEN.match(tok)
            return bytes([int(m.group(1), 16)]) if m else b"\x00"
        return b""

    def token_to_piece(self, tid: int, special: bool = True) -> str:
        """The piece as ``llama-tokenize`` prints it (a lone partial UTF-8 byte shows as U+FFFD)."""
        return self.token_bytes(tid, special).decode("utf-8", errors="replace")

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Concatenated pieces of ``ids``; ``skip_special`` drops control tokens' text."""
        data = b"".join(self.token_bytes(int(i), special=not skip_special) for i in ids)
        return data.decode("utf-8", errors="replace")

    def is_special(self, tid: int) -> bool:
        """A control/unknown token: rendered only on request, parsed only with ``parse_special``."""
        return 0 <= tid < self.n_vocab and bool(self.attrs[tid] & _A_SPECIAL)

    def is_eog(self, tid: int) -> bool:
        return tid in self.eot_ids

    def token_id(self, text: str) -> int | None:
        """The id of the token whose text is exactly ``text`` (the last one, as llama.cpp's map), else None.

        A vectorised scan of the vocabulary's lengths and bytes (well under a
        millisecond for 262k tokens): no text -> id map is kept.
        """
        return self.tokens.last_index(text)

    def __len__(self) -> int:
        return self.n_vocab

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, pre={self.pre!r}, n_vocab={self.n_vocab}, bos={self.bos_id}, eos={self.eos_id}, add_bos={self.add_bos})"


class StreamDecoder:
    """Token ids -> text, one token at a time, never splitting a UTF-8 character.

    ``push(id)`` returns the text that is complete so far (possibly ""); byte
    tokens (``<0xE2>``...) are held until their character is whole.
    ``flush()`` returns what is left (an unfinished sequence as U+FFFD).
    ``special`` renders control tokens' text (default False, as llama.cpp's
    generation output does not show them).
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False) -> None:
        self.tok = tokenizer
        self.special = special
        self.buf = b""

    def push(self, tid: int) -> str:
        self.buf += self.tok.token_bytes(tid, special=self.special)
        if not self.buf:
            return ""
        cut = _complete_utf8_prefix(self.buf)
        text = self.buf[:cut].decode("utf-8", errors="replace")
        self.buf = self.buf[cut:]
        return text

    def flush(self) -> str:
        text = self.buf.decode("utf-8", errors="replace")
        self.buf = b""
        return text


def _complete_utf8_prefix(b: bytes) -> int:
    """Length of ``b`` without a trailing, still incomplete UTF-8 sequence."""
    n = len(b)
    for back in range(1, min(4, n) + 1):
        c = b[n - back]
        if c & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
            continue
        need = 1 if c < 0x80 else 2 if c >> 5 == 0b110 else 3 if c >> 4 == 0b1110 else 4 if c >> 3 == 0b11110 else 1
        return n - back if need > back else n
    return n


def _decode_byte_level(tok: str) -> bytes:
    """llama.cpp's ``llama_decode_text``: byte-level characters back to bytes."""
    try:
        return bytes(_BYTE_DECODER[c] for c in tok)
    except KeyError:
        out = bytearray()
        for c in tok:
            if c in _BYTE_DECODER:
                out.append(_BYTE_DECODER[c])
            else:
                out += b"[UNK_BYTE_0x" + c.encode("utf-8").hex().encode() + tok.encode("utf-8") + b"]"
        return bytes(out)


def _build_bpe(tokens: list[str], merges: Iterable[str], regexes: list[str], ignore_merges: bool):
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    vocab = {t: i for i, t in enumerate(tokens)}
    # llama.cpp splits a merge at the first space after the first character
    pairs = [(m[:k], m[k + 1 :]) if k >= 0 else ("", "") for m in merges for k in (m.find(" ", 1),)]
    # tokenizers wants each pair's tokens and their join in the vocabulary (else it errs, or panics), and a pair once.
    # The usual file passes, checked in C loops (map); a pair at a time in Python cost SmolLM2's start ~0.3 s
    firsts, seconds = zip(*pairs) if pairs else ((), ())
    has = vocab.__contains__
    if not (all(map(has, firsts)) and all(map(has, seconds)) and all(map(has, map(str.__add__, firsts, seconds)))
            and len(set(pairs)) == len(pairs)):
        valid, seen = [], set()
        for a, b in pairs:
            if a in vocab and b in vocab and a + b in vocab and (a, b) not in seen:
                valid.append((a, b))
                seen.add((a, b))
        if len(valid) < len(pairs):
            warnings.warn(f"{len(pairs) - len(valid)} BPE merges name tokens outside the vocabulary; ignored", stacklevel=3)
        pairs = valid
    model = models.BPE(vocab=vocab, merges=pairs, ignore_merges=ignore_merges)
    tk = HFTokenizer(model)
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes] + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tk.decoder = decoders.ByteLevel()
    return tk
