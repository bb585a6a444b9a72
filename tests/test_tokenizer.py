"""Token ids equal llama.cpp's on the committed fixtures (tools/make_token_fixtures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tinymodel import byte_vocab

from kvrun.loaders.gguf_file import GGUFFile
from kvrun.loaders.tokenizer import StreamDecoder, Tokenizer

FIX = Path(__file__).parent / "fixtures"


def _cases(name):
    return json.loads((FIX / f"tokens_{name}.json").read_text())["cases"]


@pytest.fixture(scope="module")
def tokenizers(smollm2_path, gemma3_path):
    return {
        "smollm2": Tokenizer.from_metadata(GGUFFile(smollm2_path).metadata),
        "gemma3": Tokenizer.from_metadata(GGUFFile(gemma3_path).metadata),
    }


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_ids_equal_llamacpp(tokenizers, name):
    tk = tokenizers[name]
    cases = _cases(name)
    assert len(cases) >= 40
    wrong = []
    for c in cases:
        for add in (True, False):
            for special in (True, False):
                want = c[f"ids_add{int(add)}_special{int(special)}"]
                got = tk.encode(c["text"], add_bos=None if add else False, parse_special=special)
                if got != want:
                    wrong.append((c["text"], add, special, want, got))
    assert not wrong, f"{len(wrong)} mismatches, first: {wrong[0]}"


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_detokenize_equals_llamacpp(tokenizers, name):
    tk = tokenizers[name]
    for c in _cases(name):
        assert tk.decode(c["ids_add0_special1"], skip_special=True) == c["detok"], c["text"]


@pytest.mark.real_model
def test_gemma_bos_and_eot(tokenizers):
    g = tokenizers["gemma3"]
    assert g.kind == "spm" and g.encode("hi")[0] == g.bos_id == 2
    assert g.encode("<end_of_turn>")[-1] in g.eot_ids
    s = tokenizers["smollm2"]
    assert s.kind == "bpe" and s.encode("hi")[0] != s.bos_id
    assert s.encode("<|im_end|>", add_bos=False) == [2] or s.encode("<|im_end|>", add_bos=False)[0] in s.eot_ids


def _tiny_tokenizer() -> Tokenizer:
    toks, merges, types = byte_vocab()
    md = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": toks,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.eos_token_id": len(toks) - 1,
    }
    return Tokenizer.from_metadata(md)


def test_stream_decoder_never_splits_a_character():
    tk = _tiny_tokenizer()
    text = "naïve 😀 中文"
    ids = tk.encode(text, add_bos=False)
    dec = StreamDecoder(tk)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    for p in pieces:
        p.encode("utf-8")  # every piece is whole characters
        assert "\ufffd" not in p
    assert "".join(pieces) == text
    # the 4-byte emoji arrives over four byte tokens and is printed once, whole
    assert sum("😀" in p for p in pieces) == 1


def test_special_text_parsed_only_when_asked():
    tk = _tiny_tokenizer()
    eos = len(byte_vocab()[0]) - 1
    assert tk.encode("a<|endoftext|>", add_bos=False) == [tk.encode("a", add_bos=False)[0], eos]
    assert eos not in tk.encode("a<|endoftext|>", add_bos=False, parse_special=False)
