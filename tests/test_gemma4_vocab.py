"""Gemma 4's tokenizer (``tokenizer.ggml.model = "gemma4"``, loaders/gemma4_vocab.py) gives llama.cpp's ids and pieces.

Held to llama.cpp on tests/tiny_gemma4_vocab.py's tiny vocabulary (fixture from
tools/make_gemma4_vocab_fixture.py): every text's ids with BOS added and special tokens parsed, and with
neither; every token's piece with special tokens rendered and not; the detokenized text; the special ids
and end-of-generation set.  Three files: Gemma 4's converter's, one that asks for no BOS (llama.cpp adds
it all the same), and the vocabulary spelled "gpt2" + pre-tokenizer "gemma4"."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from tiny_gemma4_vocab import BOS, EOS, TEXTS, VARIANTS, vocab, write_tiny_gemma4_vocab

from kvrun.loaders.gguf_file import GGUFFile
from kvrun.loaders.tokenizer import StreamDecoder, Tokenizer

FIX = Path(__file__).parent / "fixtures"
FX = json.loads((FIX / "gemma4_vocab_tokens.json").read_text())


def _metadata(tmp_path_factory, variant: str) -> dict:
    path = write_tiny_gemma4_vocab(tmp_path_factory.mktemp(variant) / "v.gguf", variant)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == FX["variants"][variant]["sha256"], "the fixture was made from another file"
    return dict(GGUFFile(path).metadata)


@pytest.fixture(scope="module", params=list(VARIANTS))
def vocab_fx(request, tmp_path_factory):
    return Tokenizer.from_metadata(_metadata(tmp_path_factory, request.param)), FX["variants"][request.param]


@pytest.fixture(scope="module")
def gemma4(tmp_path_factory):
    return Tokenizer.from_metadata(_metadata(tmp_path_factory, "gemma4"))


def test_the_fixture_covers_the_texts():
    assert FX["texts"] == TEXTS


def test_ids_are_llama_cpps(vocab_fx):
    tk, fx = vocab_fx
    assert tk.kind == "gemma4"
    for c in fx["cases"]:
        assert tk.encode(c["text"], add_bos=True, parse_special=True) == c["ids_special"], repr(c["text"])
        assert tk.encode(c["text"], add_bos=False, parse_special=False) == c["ids_plain"], repr(c["text"])


def test_pieces_and_detokenized_text_are_llama_cpps(vocab_fx):
    tk, fx = vocab_fx
    assert [tk.token_bytes(i, special=True).decode("latin-1") for i in range(tk.n_vocab)] == fx["pieces_special"]
    assert [tk.token_bytes(i, special=False).decode("latin-1") for i in range(tk.n_vocab)] == fx["pieces_plain"]
    for c in fx["cases"]:
        for ids, special, want in ((c["ids_special"], True, c["detok_special"]), (c["ids_plain"], False, c["detok_plain"])):
            got = b"".join(tk.token_bytes(i, special=special) for i in ids)
            if ids and ids[0] == BOS and got[:1] == b" ":  # (llama-cpp-python drops a space after BOS: SentencePiece's dummy prefix)
                got = got[1:]
            assert got.decode("latin-1") == want, repr(c["text"])


def test_special_tokens_and_end_of_generation_are_llama_cpps(vocab_fx):
    """BOS always added (llama.cpp overrides a Gemma 4 file's add_bos_token = False); <eos>, <turn|> and
    <|tool_response> end a generation and </s> does not (llama.cpp's Gemma 4 fix-up)."""
    tk, fx = vocab_fx
    assert (tk.bos_id, tk.eos_id) == (fx["bos"], fx["eos"]) == (BOS, EOS)
    assert (tk.add_bos, tk.add_eos) == (fx["add_bos"], fx["add_eos"]) == (True, False)
    assert sorted(tk.eot_ids) == fx["eog"]
    assert tk.token_id("</s>") not in tk.eot_ids


def test_text_round_trips_through_ids(gemma4):
    """No dummy prefix and byte fallback for what has no token: decoding gives the text back, byte for byte."""
    for text in (t for t in TEXTS if "\u2581" not in t):  # (a typed "▁" comes back a space, as in llama.cpp)
        assert gemma4.decode(gemma4.encode(text, add_bos=False, parse_special=False)) == text, repr(text)
    assert gemma4.decode(gemma4.encode("<|turn>user\nhi<turn|>"), skip_special=True) == "user\nhi"


def test_spaces_are_u2581_and_newline_runs_are_looked_up_whole(gemma4):
    tid = gemma4.token_id
    assert gemma4.encode("a    b", add_bos=False) == [tid("a"), tid("\u2581\u2581\u2581\u2581"), tid("b")]
    assert gemma4.encode("\n\n", add_bos=False) == [tid("\n\n")]  # a token that no merge makes
    assert gemma4.encode("\n\n\n", add_bos=False) == [tid("\n")] * 3  # no such token: merged (none apply)
    assert gemma4.encode("her", add_bos=False) == [tid("h"), tid("er")]  # "e r" outranks "h e"
    assert gemma4.encode("日", add_bos=False) == [tid(f"<0x{b:02X}>") for b in "日".encode()]


def test_stream_decoding_holds_byte_tokens_until_the_character_is_whole(gemma4):
    ids = gemma4.encode("🎉x", add_bos=False)
    assert len(ids) == 5
    dec = StreamDecoder(gemma4)
    assert [dec.push(i) for i in ids] == ["", "", "", "🎉", "x"]


def test_a_gemma4_vocabulary_without_merges_is_refused_in_one_line():
    toks, types, _ = vocab()
    md = {"tokenizer.ggml.model": "gemma4", "tokenizer.ggml.tokens": toks, "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": BOS}
    with pytest.raises(ValueError, match="merges"):
        Tokenizer.from_metadata(md)
