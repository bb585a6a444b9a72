"""RWKV's World tokenizer (``tokenizer.ggml.model == "rwkv"``) as llama.cpp's ``llm_tokenizer_rwkv`` runs it.

The World vocabulary's tokens are byte strings, any bytes, not text: the converter stores each as Python's
``repr`` of its bytes without the quotes (``\\n``, ``\\t``, ``\\r``, ``\\xff``, ``\\\\``, ``\\'``), and llama.cpp
unescapes them (``llama_unescape_rwkv_token``: ``\\t``, ``\\n``, ``\\r``, ``\\xHH``, any other escaped character
itself).  Tokenizing is greedy: from the text's first byte on, the longest token that the bytes there start with
(a walk down a trie of every token), then on from its end; a byte no token starts with is the unknown token
(World vocabularies have all 256 bytes: it does not happen).  Where two tokens have the same bytes the later id
wins, as llama.cpp's trie keeps the last one inserted.  No BOS or EOS is added.
"""

from __future__ import annotations

from collections.abc import Iterable


def unescape(token: str) -> bytes:
    """The bytes of a token as the GGUF stores it (llama.cpp's ``llama_unescape_rwkv_token``)."""
    if "\\" not in token:
        return token.encode("utf-8")
    out = bytearray()
    src = token.encode("utf-8")
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        i += 1
        if c != 0x5C or i >= n:  # (a lone backslash at the end: llama.cpp drops it)
            if c != 0x5C:
                out.append(c)
            continue
        e = src[i]
        i += 1
        if e == ord("t"):
            out.append(0x09)
        elif e == ord("n"):
            out.append(0x0A)
        elif e == ord("r"):
            out.append(0x0D)
        elif e == ord("x"):  # two hex digits (repr writes them lowercase; llama.cpp reads them so)
            h = src[i : i + 2]
            i += 2
            if len(h) == 2:
                out.append((((h[0] - 87 if h[0] >= 97 else h[0] - 48) << 4) + (h[1] - 87 if h[1] >= 97 else h[1] - 48)) & 0xFF)
        else:
            out.append(e)
    return bytes(out)


class RwkvVocab:
    """The greedy longest-match tokenizer over a vocabulary's unescaped tokens."""

    def __init__(self, tokens: Iterable[str], unk_id: int | None = None) -> None:
        self.ids: dict[bytes, int] = {}
        self.prefixes: set[bytes] = set()  # every proper prefix of a token: where the trie walk goes on
        for i, t in enumerate(tokens):
            b = unescape(t)
            if not b:
                continue
            self.ids[b] = i  # (the later id wins)
            for n in range(1, len(b)):
                self.prefixes.add(b[:n])
        self.unk_id = unk_id

    def encode(self, text: str | bytes) -> list[int]:
        """Token ids of ``text`` (its UTF-8 bytes)."""
        data = text.encode("utf-8") if isinstance(text, str) else text
        ids, prefixes, out = self.ids, self.prefixes, []
        p, n = 0, len(data)
        while p < n:
            best, end, q = None, p + 1, p + 1
            while q <= n:
                piece = data[p:q]
                tid = ids.get(piece)
                if tid is not None:
                    best, end = tid, q
                if piece not in prefixes:  # (no longer token starts so: the walk ends)
                    break
                q += 1
            if best is None:  # (no token starts with this byte: the unknown token, where the vocabulary has one)
                if self.unk_id is not None:
                    out.append(self.unk_id)
                p += 1
                continue
            out.append(best)
            p = end
        return out
