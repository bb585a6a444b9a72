"""Tokenizers built from GGUF metadata, matching llama.cpp's token ids.

* ``tokenizer.ggml.model == "llama"`` (SentencePiece vocabularies, e.g. Gemma 3):
  a SentencePiece BPE model is serialised from the GGUF tokens, scores and
  types and loaded with ``sentencepiece``.
* ``"gpt2"`` (byte-level BPE, e.g. SmolLM2, Qwen2, Llama 3): a ``tokenizers``
  BPE model from the vocab and merges, behind the pre-tokenizer regexes that
  ``tokenizer.ggml.pre`` names (as llama.cpp's ``llama-vocab.cpp`` defines them).

Special tokens are split out of the text first, as llama.cpp does: CONTROL
tokens only when ``parse_special``, USER_DEFINED tokens always.
"""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

# GGUF token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# pre-tokenizer regexes by tokenizer.ggml.pre (llama.cpp llm_tokenizer_bpe)
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS: dict[str, list[str]] = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "llama3": [_LLAMA3],
    "llama-bpe": [_LLAMA3],
    "llama-v3": [_LLAMA3],
    "smollm": [r"\p{N}", _GPT2],
    "starcoder": [r"\p{N}", _GPT2],
    "refact": [r"\p{N}", _GPT2],
    "qwen2": [_QWEN2],
    "deepseek-r1-qwen": [_QWEN2],
    "gpt2": [_GPT2],
    "gpt-2": [_GPT2],
    "olmo": [_GPT2],
    "jais": [_GPT2],
}

# tokens that end a generation when present (llama.cpp's end-of-generation set)
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "</s>", "<|return|>", "<|end_of_text|>")


def _bytes_to_unicode() -> dict[int, str]:
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
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


# ----------------------------------------------------------------- SentencePiece model proto
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


def _spm_model_proto(tokens: list[str], scores: np.ndarray, types: np.ndarray, add_dummy_prefix: bool) -> bytes:
    """Serialise a sentencepiece ``ModelProto`` (BPE, byte fallback, identity normaliser).

    Written by hand rather than through protobuf's Python classes: it is 30
    lines and builds a 262k-piece model in a fraction of the time.
    """
    parts = []
    for tok, score, typ in zip(tokens, scores.tolist(), types.tolist()):
        t = int(typ) if int(typ) in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL
        piece = _field_bytes(1, tok.encode("utf-8")) + b"\x15" + struct.pack("<f", score) + _field_varint(3, t)
        parts.append(_field_bytes(1, piece))
    unk = next((i for i, t in enumerate(types.tolist()) if t == UNKNOWN), 0)
    trainer = _field_varint(3, 2) + _field_varint(35, 1) + _field_varint(40, unk)  # model_type=BPE, byte_fallback, unk_id
    trainer += _field_varint(41, 0xFFFFFFFF) + _field_varint(42, 0xFFFFFFFF) + _field_varint(43, 0xFFFFFFFF)  # bos/eos/pad = -1... (as uint32)
    normalizer = _field_bytes(1, b"identity") + _field_varint(3, int(add_dummy_prefix)) + _field_varint(4, 0) + _field_varint(5, 1)
    return b"".join(parts) + _field_bytes(2, trainer) + _field_bytes(3, normalizer)


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary.   Build with :meth:`from_metadata`."""

    def __init__(self, md: Mapping[str, Any]) -> None:
        self.model = str(md.get("tokenizer.ggml.model", ""))
        if self.model not in ("llama", "gpt2"):
            raise ValueError(f"tokenizer model {self.model!r} is not supported (llama/SentencePiece and gpt2/BPE are)")
        self.kind = "spm" if self.model == "llama" else "bpe"
        self.tokens: list[str] = list(md["tokenizer.ggml.tokens"])
        n = len(self.tokens)
        types = md.get("tokenizer.ggml.token_type")
        self.types = np.asarray(types, np.int32) if types is not None else np.full(n, NORMAL, np.int32)
        self.n_vocab = n
        self.bos_id = _opt_int(md.get("tokenizer.ggml.bos_token_id"))
        self.eos_id = _opt_int(md.get("tokenizer.ggml.eos_token_id"))
        self.add_bos = bool(md.get("tokenizer.ggml.add_bos_token", self.kind == "spm"))
        self.add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False))
        self.add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", self.kind == "spm"))
        self.pre = str(md.get("tokenizer.ggml.pre", "default"))
        self._piece_cache: dict[int, bytes] = {}

        ids = {t: i for i, t in enumerate(self.tokens)}
        self._ids = ids
        eog = {i for i in (self.eos_id, _opt_int(md.get("tokenizer.ggml.eot_token_id")), _opt_int(md.get("tokenizer.ggml.eom_token_id"))) if i is not None}
        eog |= {ids[t] for t in _EOG_TEXTS if t in ids and self.types[ids[t]] in (CONTROL, USER_DEFINED)}
        self.eot_ids: frozenset[int] = frozenset(eog)

        # special tokens split out of text before the sub-word model runs
        ctrl = [(t, i) for i, t in enumerate(self.tokens) if self.types[i] == CONTROL and t]
        user = [(t, i) for i, t in enumerate(self.tokens) if self.types[i] == USER_DEFINED and t]
        self._special_re = _alternation([t for t, _ in ctrl + user])
        self._user_re = _alternation([t for t, _ in user])

        if self.kind == "spm":
            import sentencepiece as spm

            scores = np.asarray(md.get("tokenizer.ggml.scores", np.zeros(n, np.float32)), np.float32)
            proto = _spm_model_proto(self.tokens, scores, self.types, self.add_space_prefix)
            self._sp = spm.SentencePieceProcessor(model_proto=proto)
        else:
            self._hf = _build_bpe(self.tokens, list(md.get("tokenizer.ggml.merges", [])), self.pre)

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> Tokenizer:
        return cls(md)

    # ----------------------------------------------------------------- encode
    def _split_special(self, text: str, parse_special: bool) -> list[str | int]:
        rx = self._special_re if parse_special else self._user_re
        if rx is None:
            return [text] if text else []
        out: list[str | int] = []
        last = 0
        for m in rx.finditer(text):
            if m.start() > last:
                out.append(text[last : m.start()])
            out.append(self._ids[m.group(0)])
            last = m.end()
        if last < len(text):
            out.append(text[last:])
        return out

    def _encode_fragment(self, frag: str, first: bool) -> list[int]:
        if self.kind == "spm":
            # llama.cpp adds the dummy-prefix space only to the first raw fragment
            if self.add_space_prefix and first:
                frag = " " + frag
            return list(self._sp.encode(frag.replace(" ", "\u2581"), add_bos=False, add_eos=False)) if frag else []
        return self._hf.encode(frag, add_special_tokens=False).ids if frag else []

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``.

        add_bos : add the special prefix the vocabulary asks for (its
            ``tokenizer.ggml.add_bos_token``); None and True both follow the
            vocabulary, as llama.cpp's ``add_special`` does; False never adds BOS.
        parse_special : split control-token text (``<|im_start|>``) into its token.
        """
        ids: list[int] = []
        if add_bos is not False and self.add_bos and self.bos_id is not None:
            ids.append(self.bos_id)
        first = True
        for part in self._split_special(text, parse_special):
            if isinstance(part, int):
                ids.append(part)
            else:
                ids.extend(self._encode_fragment(part, first))
            first = False
        if add_bos is not False and self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    # ----------------------------------------------------------------- decode
    def token_bytes(self, tid: int, special: bool = True) -> bytes:
        """Bytes a token stands for (control tokens: their text when ``special``, else nothing)."""
        t = self.types[tid] if 0 <= tid < self.n_vocab else UNKNOWN
        if t == CONTROL:
            return self.tokens[tid].encode("utf-8") if special else b""
        key = tid
        b = self._piece_cache.get(key)
        if b is not None:
            return b
        tok = self.tokens[tid]
        if t == USER_DEFINED:
            b = tok.encode("utf-8")
        elif self.kind == "spm":
            m = _BYTE_TOKEN.match(tok) if t == BYTE else None
            b = bytes([int(m.group(1), 16)]) if m else tok.replace("\u2581", " ").encode("utf-8")
        else:
            try:
                b = bytes(_BYTE_DECODER[c] for c in tok)
            except KeyError:
                b = tok.encode("utf-8")
        self._piece_cache[key] = b
        return b

    def token_to_piece(self, tid: int) -> str:
        return self.token_bytes(tid).decode("utf-8", errors="replace")

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        data = b"".join(self.token_bytes(i, special=not skip_special) for i in ids)
        return data.decode("utf-8", errors="replace")

    def is_special(self, tid: int) -> bool:
        return int(self.types[tid]) in (CONTROL, USER_DEFINED)


class StreamDecoder:
    """Token ids -> text, one piece at a time, never splitting a UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer, special: bool = False) -> None:
        self.tok = tokenizer
        self.special = special
        self.buf = b""

    def push(self, tid: int) -> str:
        self.buf += self.tok.token_bytes(tid, special=self.special)
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


def _alternation(texts: list[str]) -> re.Pattern[str] | None:
    if not texts:
        return None
    texts = sorted(set(texts), key=len, reverse=True)  # longest match first
    return re.compile("|".join(re.escape(t) for t in texts))


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _build_bpe(tokens: list[str], merges: list[str], pre: str):
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    if pre not in PRE_TOKENIZERS:
        warnings.warn(f"unknown pre-tokenizer {pre!r}; using the default (token ids may differ from llama.cpp)", stacklevel=3)
    regexes = PRE_TOKENIZERS.get(pre, PRE_TOKENIZERS["default"])
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tk = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, ignore_merges=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes] + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tk.decoder = decoders.ByteLevel()
    return tk
