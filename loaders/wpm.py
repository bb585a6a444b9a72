"""WordPiece (BERT) tokenization as llama.cpp's ``llm_tokenizer_wpm`` does it.

GGUF files store a WordPiece vocabulary the SentencePiece way: a token that starts a word carries
the phantom space ``▁`` (``▁the``), a continuation does not (``ing``, HF's ``##ing``).  The text is
normalised as llama.cpp's NFD table does it (each character to the first code point of its
decomposition: ``é`` to ``e``, accents dropped) and lowercased, split at whitespace, controls dropped, and every punctuation mark,
ASCII symbol and CJK ideograph made a word of its own; each word, with ``▁`` before it, is then cut
greedily into the longest vocabulary pieces from the left.  A word that cannot be cut whole is one
unknown token.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

PHANTOM = "\u2581"

# CJK ideograph blocks that BERT splits character by character (as llama.cpp's is_chinese_char,
# including its 0x2B920 start that follows the HF Rust code)
_CJK = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))  # fmt: skip


def _alone(c: str) -> bool:
    """A character that is a word by itself: punctuation, an ASCII symbol, a CJK ideograph."""
    cat = unicodedata.category(c)
    cp = ord(c)
    return cat[0] == "P" or (cp < 0x7F and cat[0] == "S") or any(lo <= cp <= hi for lo, hi in _CJK)


def words(text: str) -> list[str]:
    """The text normalised and split into the words WordPiece cuts."""
    out: list[str] = []
    cur: list[str] = []
    for c in text:
        c = unicodedata.normalize("NFD", c)[0]  # (llama.cpp's NFD keeps a character's first code point: accents go)
        if c.isspace():
            if cur:
                out.append("".join(cur))
                cur = []
            continue
        if c == "\0" or c == "\ufffd" or unicodedata.category(c) in ("Cc", "Cf"):
            continue
        lc = c.lower() if len(c.lower()) == 1 else c  # (one code point for one: as unicode_tolower)
        if _alone(c):
            if cur:
                out.append("".join(cur))
                cur = []
            out.append(lc)
        else:
            cur.append(lc)
    if cur:
        out.append("".join(cur))
    return out


def encode(text: str, vocab: Mapping[str, int], unk_id: int, max_len: int) -> list[int]:
    """Token ids of ``text`` (no [CLS] / [SEP]): each word cut into the longest pieces of ``vocab``."""
    ids: list[int] = []
    for word in words(text):
        w = PHANTOM + word
        start, i = len(ids), 0
        while i < len(w):
            for j in range(min(len(w), i + max_len), i, -1):
                tid = vocab.get(w[i:j])
                if tid is not None:
                    ids.append(tid)
                    i = j
                    break
            else:  # no piece starts here: the whole word is unknown
                del ids[start:]
                break
        if len(ids) == start:
            ids.append(unk_id)
    return ids
