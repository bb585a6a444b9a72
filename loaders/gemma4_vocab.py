"""Gemma 4's tokenizer (``tokenizer.ggml.model = "gemma4"``): BPE over raw UTF-8 characters, as llama.cpp runs it.

llama.cpp (``src/llama-vocab.cpp``, ``LLAMA_VOCAB_PRE_TYPE_GEMMA4``) treats the vocabulary as a BPE one
with SentencePiece's spelling, and so does this module:

* every space becomes "▁" (U+2581) before anything else (``escape_whitespaces``); no dummy prefix;
* the text is cut into runs of newlines and runs of everything else (``[^\\n]+|[\\n]+``), nothing finer:
  the merges run over a whole line;
* a newline run that is a token as a whole is that token (llama.cpp's Gemma 4 fix: no merge makes the
  long runs); any other run is merged, character by character, by the ranks of ``tokenizer.ggml.merges``
  (the lowest rank first, the leftmost of equal ranks first); scores play no part;
* a piece left over that is no token falls back to its bytes, ``<0xXX>`` tokens (one with no such token
  is dropped, as llama.cpp drops it).

The merges run in the ``tokenizers`` library's BPE model (``byte_fallback``), which is llama.cpp's
algorithm for a vocabulary its converter writes: every merge's parts and result are tokens.  Special
tokens, BOS and the pieces of decoding are loaders/tokenizer.py's (Gemma 4's pieces are SentencePiece's:
"▁" shown as a space, a byte token its byte).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence

_RUNS = re.compile(r"[^\n]+|\n+")
#: the ``tokenizer.ggml.pre`` names by which a "gpt2" vocabulary is llama.cpp's Gemma 4 one all the same
PRE_NAMES = ("gemma4", "granite-embed-multi-311m")
_SPACE = "\u2581"


class Gemma4Vocab:
    """Text fragments (no special tokens in them) -> token ids, for one Gemma 4 vocabulary."""

    def __init__(self, tokens: Sequence[str], merges: Iterable[str]) -> None:
        from tokenizers import Tokenizer, models

        self._ids = {t: i for i, t in enumerate(tokens)}  # (a duplicate text: its last id, as kvrun's token_id)
        pairs, seen, dropped = [], set(), 0
        for m in merges:
            k = m.find(" ", 1)  # llama.cpp splits at the first space after the first character
            a, b = (m[:k], m[k + 1 :]) if k >= 0 else ("", "")
            if (a, b) in seen:  # (llama.cpp keeps the first rank of a pair)
                continue
            if a in self._ids and b in self._ids and a + b in self._ids:
                pairs.append((a, b))
                seen.add((a, b))
            else:
                dropped += 1
        if dropped:
            warnings.warn(f"{dropped} Gemma 4 merges name tokens outside the vocabulary; ignored", stacklevel=3)
        self._bpe = Tokenizer(models.BPE(vocab=self._ids, merges=pairs, byte_fallback=True, ignore_merges=False))

    def encode(self, text: str) -> list[int]:
        """The ids of one text fragment (llama.cpp's ``llm_tokenizer_bpe_session::tokenize`` after whitespace escaping)."""
        text = text.replace(" ", _SPACE)
        if "\n" not in text:
            return self._bpe.encode(text, add_special_tokens=False).ids if text else []
        ids: list[int] = []
        for m in _RUNS.finditer(text):
            run = m.group()
            if run[0] == "\n" and (tid := self._ids.get(run)) is not None:
                ids.append(tid)
            else:
                ids.extend(self._bpe.encode(run, add_special_tokens=False).ids)
        return ids
