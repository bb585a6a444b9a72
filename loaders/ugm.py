"""Unigram (UGM, ``tokenizer.ggml.model == "t5"``) tokenization as llama.cpp's ``llm_tokenizer_ugm`` does it.

llama.cpp's converter writes XLM-RoBERTa vocabularies (bge-m3, bge-reranker-v2-m3, multilingual-e5,
paraphrase-multilingual) and T5's this way: SentencePiece Unigram pieces with log-probability scores,
and the SentencePiece normaliser compiled into ``tokenizer.ggml.precompiled_charsmap``.  A fragment of
text (what is left between special tokens) goes through:

1. the normaliser, prefix by prefix: a user-defined token's text is kept as it is; else the longest
   prefix the charsmap knows (a double array over UTF-8 bytes, sentencepiece's XCDA) becomes its
   replacement string (NFKC, whitespace and control folding); else one character is kept;
2. whitespace: every ASCII space becomes U+2581; with ``add_space_prefix`` one is put before the first
   word (after, with ``treat_whitespace_as_suffix``), and with ``remove_extra_whitespaces`` spaces are
   dropped and *every* word gets one before it (llama.cpp's rule, which prefixes the first word even
   without ``add_space_prefix``, unlike sentencepiece);
3. the Viterbi: the best-scoring cut into normal, user-defined (score 0) and unused tokens, in double
   precision; a character no token starts with is the unknown token at the lowest normal score - 10,
   and a run of unknowns is one unknown.

Written here rather than through the ``sentencepiece`` library because its Unigram model differs from
llama.cpp's where the ids could: sentencepiece sums scores in float32, scores user-defined pieces as
``length * max_score - 0.1``, skips unused pieces and strips leading whitespace instead of prefixing
the first word; each of those would change ids on some input.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

ESCAPED_SPACE = "\u2581"
UNKNOWN_PENALTY = 10.0  # llama.cpp's unknown_token_score_penalty (sentencepiece's kUnkPenalty)


class CharsMap:
    """sentencepiece's precompiled normaliser: a uint32 length, that many bytes of XOR-compressed
    double array (Kanda 2018) over UTF-8 bytes, then NUL-terminated replacement strings."""

    def __init__(self, blob: bytes) -> None:
        size = struct.unpack_from("<I", blob, 0)[0] if len(blob) >= 4 else len(blob)
        if size + 4 >= len(blob):
            raise ValueError("the precompiled charsmap is corrupt (its double array runs past its end)")
        self.xcda: list[int] = np.frombuffer(blob, "<u4", size // 4, 4).tolist()
        self.replacements = blob[4 + size :]

    def longest(self, data: bytes, start: int) -> tuple[int, bytes]:
        """(bytes matched, replacement) of the longest prefix of ``data[start:]`` the map knows; (0, b"") if none."""
        xcda = self.xcda
        best_len, best_off = 0, 0
        try:
            node = self._base(xcda[0])
            for p in range(start, len(data)):
                c = data[p]
                if c == 0:
                    break
                node ^= c
                packed = xcda[node]  # (past the end: IndexError)
                if packed & 0x800000FF != c:  # LCHECK: not a child of the previous node
                    break
                node ^= self._base(packed)
                if packed >> 8 & 1:  # LEAF: the node BASE points to holds the replacement's offset
                    best_len = p - start + 1
                    best_off = xcda[node] & 0x7FFFFFFF
        except IndexError:
            raise ValueError("the precompiled charsmap is corrupt (an index past its double array)") from None
        if not best_len:
            return 0, b""
        if best_off >= len(self.replacements):
            raise ValueError("the precompiled charsmap is corrupt (a replacement past its end)")
        end = self.replacements.find(b"\0", best_off)
        return best_len, self.replacements[best_off : end if end >= 0 else len(self.replacements)]

    @staticmethod
    def _base(packed: int) -> int:
        return (packed >> 10) << ((packed & (1 << 9)) >> 6)


class UgmVocab:
    """llama.cpp's UGM tokenizer over one vocabulary.

    tokens, scores : every token's text and score.  normal, user_defined, unused : boolean masks of
    the token attributes as the file gives them (the tokens the Viterbi may use).  user_scored : those
    it scores 0 (default user_defined; llama.cpp asks after its load-time fix-ups).  unk_id : the
    unknown token (None: unknown characters are dropped).  charsmap : the ``precompiled_charsmap``,
    bytes or read (None or empty: no normalisation but the whitespace rules).  ``escape_whitespaces``
    and ``treat_whitespace_as_suffix`` have no GGUF key: llama.cpp fixes them at True and False.
    """

    def __init__(self, tokens: Sequence[str], scores: np.ndarray, normal: np.ndarray, user_defined: np.ndarray,
                 unused: np.ndarray, unk_id: int | None, charsmap: bytes | CharsMap | None, add_space_prefix: bool,
                 remove_extra_whitespaces: bool, escape_whitespaces: bool = True,
                 treat_whitespace_as_suffix: bool = False, user_scored: np.ndarray | None = None) -> None:  # fmt: skip
        self.charsmap = charsmap if isinstance(charsmap, CharsMap) or not charsmap else CharsMap(charsmap)
        self.unk_id = unk_id
        self.space = ESCAPED_SPACE if escape_whitespaces else " "
        self.prepend = add_space_prefix and not treat_whitespace_as_suffix
        self.append = add_space_prefix and treat_whitespace_as_suffix
        self.merge = remove_extra_whitespaces
        scores = np.asarray(scores, np.float32)
        norm = np.asarray(normal, bool)
        # (a float in llama.cpp: the lowest normal score - 10, rounded to float32)
        lowest = scores[norm].min() if norm.any() else np.finfo(np.float32).max
        self.unknown_score = float(np.float32(lowest) - np.float32(UNKNOWN_PENALTY))
        # token text -> (id, score); a later id with the same text wins, as llama.cpp's trie insert;
        # by_head: the first two characters -> the lengths of the longer tokens that start so (the trie's pruning)
        self.pieces: dict[str, tuple[int, float]] = {}
        heads: dict[str, set[int]] = {}
        user = np.asarray(user_defined, bool)
        zero = user if user_scored is None else np.asarray(user_scored, bool)
        usable = np.flatnonzero(norm | user | np.asarray(unused, bool)).tolist()
        for i in usable:
            t = tokens[i]
            self.pieces[t] = (i, 0.0 if zero[i] else float(scores[i]))
            if len(t) >= 2:
                heads.setdefault(t[:2], set()).add(len(t))
        self.by_head = {h: tuple(sorted(ls)) for h, ls in heads.items()}
        self.user_defined = {tokens[i].encode("utf-8") for i in np.flatnonzero(user).tolist()}
        self.user_max = max((len(b) for b in self.user_defined), default=0)

    # ------------------------------------------------------------- normalisation
    def normalize(self, text: str) -> str:
        """``llm_tokenizer_ugm_session::normalize``: the charsmap, then llama.cpp's whitespace rules."""
        data = text.encode("utf-8")
        if self.charsmap is not None or self.user_defined:
            out, i, n = bytearray(), 0, len(data)
            while i < n:
                used, repl = self._normalize_prefix(data, i)
                out += repl
                i += used
            data = bytes(out)
        s = data.decode("utf-8", errors="replace")
        # (the whitespace rules read the normalised bytes one by one; only ASCII space is a space)
        sp = self.space
        if self.merge:
            s = "".join(sp + w for w in s.split(" ") if w)
        else:
            k = len(s) - len(s.lstrip(" "))
            s = s.replace(" ", sp)
            if self.prepend and k < len(s):
                s = s[:k] + sp + s[k:]
        return s + sp if self.append else s

    def _normalize_prefix(self, data: bytes, i: int) -> tuple[int, bytes]:
        for n in range(min(self.user_max, len(data) - i), 0, -1):  # a user-defined token is kept whole
            if data[i : i + n] in self.user_defined:
                return n, data[i : i + n]
        if self.charsmap is not None:
            n, repl = self.charsmap.longest(data, i)
            if n:
                return n, repl
        n = _utf8_len(data[i])
        return n, data[i : i + n]

    # ------------------------------------------------------------- the Viterbi
    def encode(self, text: str) -> list[int]:
        """Token ids of one text fragment (no special tokens), as ``llm_tokenizer_ugm_session::tokenize``."""
        s = self.normalize(text)
        n = len(s)
        if not n:
            return []
        pieces, by_head, unk_score = self.pieces, self.by_head, self.unknown_score
        NONE = -1
        best = [-np.inf] * (n + 1)
        best[0] = 0.0
        tok = [NONE] * (n + 1)  # NONE: the unknown token
        start = [0] * (n + 1)
        for i in range(n):
            cur = best[i]
            single = False
            hit = pieces.get(s[i])
            if hit is not None:
                single = True
                sc = cur + hit[1]
                if sc > best[i + 1]:
                    best[i + 1], tok[i + 1], start[i + 1] = sc, hit[0], i
            for L in by_head.get(s[i : i + 2], ()):
                if i + L > n:
                    break
                hit = pieces.get(s[i : i + L])
                if hit is not None:
                    sc = cur + hit[1]
                    if sc > best[i + L]:
                        best[i + L], tok[i + L], start[i + L] = sc, hit[0], i
            if not single:
                sc = cur + unk_score
                if sc > best[i + 1]:
                    best[i + 1], tok[i + 1], start[i + 1] = sc, NONE, i
        out: list[int] = []
        prev_unknown = False
        j = n
        while True:
            t = tok[j]
            unknown = t == NONE or t == self.unk_id
            if not (prev_unknown and unknown):
                out.append(t)
            if start[j] == 0:
                break
            prev_unknown = unknown
            j = start[j]
        out.reverse()
        if NONE in out:
            out = [self.unk_id if t == NONE else t for t in out if t != NONE or self.unk_id is not None]
        return out


def _utf8_len(lead: int) -> int:
    """llama.cpp's ``unicode_len_utf8``: the length a UTF-8 lead byte announces (1 for a stray byte)."""
    return 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
