"""A tiny Gemma 4 vocabulary (``tokenizer.ggml.model = "gemma4"``) in a vocabulary-only GGUF.

Laid out as llama.cpp's converter writes Gemma 4's: control tokens first (<pad> <eos> <bos> <unk>, the
turn markers), a user-defined token (``<|"|>``), the 256 ``<0xXX>`` byte tokens, then the normal tokens:
raw UTF-8 characters with spaces as U+2581 ("▁"), and the tokens the ``tokenizer.ggml.merges`` make.

What the texts of ``TEXTS`` exercise: merges and their rank order ("her": "e r" outranks "h e"), ties
taken leftmost ("aaa"), ▁ spaces and runs of them, newline runs (``"\\n\\n"`` and ``"\\n\\n\\n\\n"`` are tokens
that no merge makes: llama.cpp looks a newline run up whole; ``"\\n\\n\\n"`` is not one), ``\\r`` and tabs, byte
fallback (CJK and emoji with no token; "中文" and "😀" have one), control and user-defined tokens in the text,
the text of a byte token and of ▁ typed in.

``VARIANTS``: the file as Gemma 4's converter writes it; one that says ``add_bos_token = False`` (llama.cpp
adds BOS to a Gemma 4 vocabulary all the same); and the same vocabulary as model "gpt2" with pre-tokenizer
"gemma4" (llama.cpp's other spelling of it).

The file's architecture is "llama" with the few keys llama.cpp reads before the vocabulary: the oracle
loads it with ``vocab_only``, and the tokenizer does not depend on the architecture.
"""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFWriter, TokenType

#: the texts of tests/fixtures/gemma4_vocab_tokens.json
TEXTS = [
    "the", "the world", "Hello world", "Hello, world!", "her hers", "aaa", "aaaa", "thinking in the wind",
    "  leading", "trailing  ", "a    b", "    indent", "\t\ttab", "a\tb",
    "\n", "\n\n", "\n\n\n", "\n\n\n\n", "\n\n\n\n\n", "line\nline", "para\n\npara\n\n\nend", "crlf\r\nline", "\r\n\r\n",
    "def f(x):\n    return x == 1", "x = [1, 2, 3]  # 123", "if (a<b) { c++; }",
    "中文", "中文日本", "日本語", "😀", "😀🎉", "mixed 中文 and 😀 emoji 🎉!", "café", "über", "naïve",
    "<|turn>user\nHello<turn|>\n<|turn>model\n", "<bos>the", "the<eos>", '<|"|>quoted<|"|>', "<unk>", "<unused0>",
    "<|tool_response></s>", "<|think|>x", "<0x41>", "▁the", "a\x00b", "", " ", "   ", "The Quick Brown Fox", "12345",
    "<|turn", "turn|>",
]  # fmt: skip

#: name -> (tokenizer.ggml.model, tokenizer.ggml.pre or None, tokenizer.ggml.add_bos_token or None)
VARIANTS: dict[str, tuple[str, str | None, bool | None]] = {
    "gemma4": ("gemma4", None, True),
    "nobos": ("gemma4", None, False),
    "gpt2-pre": ("gpt2", "gemma4", None),
}

PAD, EOS, BOS, UNK = 0, 1, 2, 3
_SPECIAL = [
    ("<pad>", TokenType.CONTROL), ("<eos>", TokenType.CONTROL), ("<bos>", TokenType.CONTROL), ("<unk>", TokenType.UNKNOWN),
    ("<mask>", TokenType.CONTROL), ("<|turn>", TokenType.CONTROL), ("<turn|>", TokenType.CONTROL), ('<|"|>', TokenType.USER_DEFINED),
    ("<|tool_response>", TokenType.CONTROL), ("</s>", TokenType.CONTROL), ("<|think|>", TokenType.CONTROL), ("<unused0>", TokenType.CONTROL),
]  # fmt: skip
_CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_CHARS += ["\u2581", "\n", "\t", "\r", "中", "文", "é", "😀"]
_WHOLE = ["\n\n", "\n\n\n\n"]  # newline runs with no merge that makes them
#: the merges in rank order (llama.cpp's "first second"); every result becomes a token
MERGES = [
    "e r", "h e", "▁ t", "▁t he", "t he", "i n", "in g", "▁ w", "o r", "l d", "▁w or", "▁wor ld", "l l", "ll o",
    "H e", "He llo", "a a", "▁ ▁", "▁▁ ▁▁", "▁ a", "▁ i", "d e", "de f", "▁ =", "▁= ▁", "▁ r", "▁r e", "t u", "r n",
    "▁re tu", "▁retu rn", "中 文", "▁ 中文", "1 2", "12 3", "c a", "f é", "ca fé", "T h", "Th e", "i n", "▁ in",
    "\r \n", "n d", "▁w in", "▁win d", "▁t h", "▁th in", "k ing", "▁thin king",
]  # fmt: skip


def vocab() -> tuple[list[str], list[int], list[str]]:
    """Token texts, token types and merges (duplicate merges kept: llama.cpp keeps the first rank)."""
    toks = [t for t, _ in _SPECIAL]
    types = [int(ty) for _, ty in _SPECIAL]
    toks += [f"<0x{b:02X}>" for b in range(256)]
    types += [int(TokenType.BYTE)] * 256
    normal = _CHARS + _WHOLE
    for m in MERGES:
        a, b = m.split(" ", 1) if not m.startswith(" ") else (m[0], m[2:])
        if a + b not in normal:
            normal.append(a + b)
    toks += normal
    types += [int(TokenType.NORMAL)] * len(normal)
    return toks, types, MERGES


def write_tiny_gemma4_vocab(path: Path, variant: str = "gemma4") -> Path:
    """A vocabulary-only GGUF with ``vocab()``, as ``VARIANTS[variant]`` states it."""
    model, pre, add_bos = VARIANTS[variant]
    toks, types, merges = vocab()
    w = GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_scores([0.0] * len(toks))
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_unk_token_id(UNK)
    w.add_pad_token_id(PAD)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    w.add_add_eos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
