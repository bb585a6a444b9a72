"""A GGUF string array is kept as bytes and behaves as the list of strings it stands for."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from kvrun.loaders.strings import StringArray

WORDS = ["<s>", "", "hello", "▁world", "héllo", "hello", "<0x0A>", "a", "hello", "日本"]


def _gguf_bytes(items: list[str]) -> bytes:
    return b"".join(struct.pack("<Q", len(b)) + b for b in (s.encode("utf-8") for s in items))


def test_parsed_array_equals_the_list_it_encodes():
    raw = b"junk" + _gguf_bytes(WORDS) + b"tail"
    arr, end = StringArray.parse_gguf(raw, 4, len(WORDS))
    assert end == len(raw) - 4
    assert arr == WORDS and list(arr) == WORDS and len(arr) == len(WORDS)
    assert arr[4] == "héllo" and arr[-1] == "日本" and arr[2:4] == ["hello", "▁world"]
    assert arr.raw(9) == "日本".encode()


def test_truncated_array_reports_where_it_ends():
    raw = _gguf_bytes(WORDS)
    with pytest.raises(EOFError):
        StringArray.parse_gguf(raw[:-1], 0, len(WORDS))
    with pytest.raises(EOFError):
        StringArray.parse_gguf(raw, 0, len(WORDS) + 1)


def test_lookup_finds_every_exact_match_and_the_last_wins():
    arr = StringArray.from_strings(WORDS)
    assert arr.find("hello").tolist() == [2, 5, 8]
    assert arr.last_index("hello") == 8
    assert arr.last_index("hell") is None and arr.last_index("héllo") == 4
    rng = np.random.default_rng(1)  # (many items of one length and one first byte: the index narrows byte by byte)
    words = ["".join(rng.choice(list("aéb"), rng.integers(0, 4))) for _ in range(400)]
    arr = StringArray.from_strings(words)
    for w in set(words) | {"x", "aaaa", "éé"}:
        assert arr.find(w).tolist() == [i for i, v in enumerate(words) if v == w]


def test_shadowed_items_are_those_repeated_later():
    arr = StringArray.from_strings(WORDS)
    assert arr.shadowed().tolist() == [2, 5]
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abc"), rng.integers(1, 4))) for _ in range(300)]
    last = {w: i for i, w in enumerate(words)}
    assert StringArray.from_strings(words).shadowed().tolist() == [i for i, w in enumerate(words) if last[w] != i]


def test_replaced_swaps_items_and_appends_without_touching_the_original():
    arr = StringArray.from_strings(WORDS)
    new = arr.replaced({1: "[EMPTY_1]", 8: "x"}, extra=["unk"])
    assert list(new) == ["<s>", "[EMPTY_1]"] + WORDS[2:8] + ["x", "日本", "unk"]
    assert arr == WORDS
    assert arr.replaced({}) is arr
