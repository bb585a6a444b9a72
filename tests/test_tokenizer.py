"""The tokenizer gives llama.cpp's token ids, pieces and end-of-generation set.

Real-model tests compare with tests/fixtures/tokens_<model>.json, written by
llama.cpp itself (tools/make_token_fixtures.py, run with llama-cpp-python);
the synthetic tests pin the llama.cpp rules those fixtures exercise.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from tinymodel import byte_vocab

from kvrun.loaders.gguf_file import GGUFFile
from kvrun.loaders.tokenizer import StreamDecoder, Tokenizer

FIX = Path(__file__).parent / "fixtures"
MODELS = ["smollm2", "gemma3"]


def _fixture(name: str) -> dict:
    return json.loads((FIX / f"tokens_{name}.json").read_text(encoding="utf-8"))


def _vocab_digest(pieces) -> str:
    """SHA-256 of length-prefixed pieces (as tools/make_token_fixtures.py computes it)."""
    h = hashlib.sha256()
    for p in pieces:
        h.update(len(p).to_bytes(4, "little"))
        h.update(p)
    return h.hexdigest()


@pytest.fixture(scope="module")
def real(request):
    """name -> (Tokenizer, seconds to build it)."""
    out = {}
    for name, fx in (("smollm2", "smollm2_path"), ("gemma3", "gemma3_path")):
        md = GGUFFile(request.getfixturevalue(fx)).metadata
        t0 = time.perf_counter()
        tk = Tokenizer.from_metadata(md)
        out[name] = (tk, time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------- real models vs llama.cpp
def test_fixtures_cover_enough_text():
    for name in MODELS:
        fx = _fixture(name)
        texts = [c["text"] for c in fx["cases"]]
        assert len(texts) >= 45 and "" in texts
        assert any("\t" in t for t in texts) and any("😀" in t for t in texts) and any("中" in t for t in texts)
        assert "regenerate" in fx and fx["oracle"].startswith("llama-cpp-python")


@pytest.mark.real_model
@pytest.mark.parametrize("name", MODELS)
def test_ids_equal_llamacpp(real, name):
    """Every fixture text, with add_special and parse_special each on and off."""
    tk = real[name][0]
    wrong, total = [], 0
    for c in _fixture(name)["cases"]:
        for add in (True, False):
            for special in (True, False):
                want = c[f"ids_add{int(add)}_special{int(special)}"]
                got = tk.encode(c["text"], add_bos=None if add else False, parse_special=special)
                total += 1
                if got != want:
                    wrong.append((c["text"], add, special, want, got))
    assert not wrong, f"{len(wrong)}/{total} differ from llama.cpp, first: {wrong[0]}"


@pytest.mark.real_model
@pytest.mark.parametrize("name", MODELS)
def test_pieces_and_detokenized_text_equal_llamacpp(real, name):
    tk = real[name][0]
    for c in _fixture(name)["cases"]:
        ids = c["ids_add0_special1"]
        assert [tk.token_bytes(i) for i in c["ids_add1_special1"]] == [p.encode("latin-1") for p in c["pieces_latin1"]], c["text"]
        assert tk.decode(ids, skip_special=True).encode() == c["detok"].encode("latin-1"), c["text"]
        assert tk.decode(ids).encode() == c["detok_special"].encode("latin-1"), c["text"]


@pytest.mark.real_model
@pytest.mark.parametrize("name", MODELS)
def test_every_token_piece_and_attribute_equals_llamacpp(real, name):
    """The whole vocabulary: llama_token_to_piece (special on/off) and llama_vocab_get_attr."""
    tk, fx = real[name][0], _fixture(name)
    assert tk.n_vocab == fx["n_vocab"]
    assert hashlib.sha256(tk.attrs.astype("<i4").tobytes()).hexdigest() == fx["attrs_sha256"]
    assert _vocab_digest(tk.token_bytes(i, special=True) for i in range(tk.n_vocab)) == fx["pieces_special_sha256"]
    assert _vocab_digest(tk.token_bytes(i, special=False) for i in range(tk.n_vocab)) == fx["pieces_plain_sha256"]


@pytest.mark.real_model
@pytest.mark.parametrize("name", MODELS)
def test_bos_eos_and_end_of_generation_ids_equal_llamacpp(real, name):
    tk, fx = real[name][0], _fixture(name)
    assert (tk.bos_id, tk.eos_id, tk.add_bos, tk.add_eos) == (fx["bos_id"], fx["eos_id"], fx["add_bos"], fx["add_eos"])
    assert sorted(tk.eot_ids) == fx["eog_ids"]


@pytest.mark.real_model
def test_model_specifics(real):
    g = real["gemma3"][0]
    assert g.kind == "spm" and g.encode("hi")[0] == g.bos_id == 2
    assert g.token_id("<end_of_turn>") in g.eot_ids and g.token_id("<eos>") in g.eot_ids
    # user-defined tokens ("\n", runs of spaces) are split out even without parse_special
    assert g.token_id("\n") in g.encode("a\nb", add_bos=False, parse_special=False)
    assert g.encode("<start_of_turn>", add_bos=False) == [g.token_id("<start_of_turn>")]
    assert len(g.encode("<start_of_turn>", add_bos=False, parse_special=False)) > 1
    s = real["smollm2"][0]
    assert s.kind == "bpe" and s.add_bos is False and s.encode("hi") == s.encode("hi", add_bos=False)
    assert s.encode("<|im_end|>") == [2] and 2 in s.eot_ids and s.token_id("<|endoftext|>") in s.eot_ids
    assert s.is_special(2) and not s.is_special(s.encode("hi")[0])
    assert s.decode(s.encode("<|im_start|>user\nHi<|im_end|>"), skip_special=True) == "user\nHi"


@pytest.mark.real_model
@pytest.mark.parametrize("name", MODELS)
def test_stream_decoder_on_real_text(real, name):
    tk = real[name][0]
    for c in _fixture(name)["cases"]:
        dec = StreamDecoder(tk)
        pieces = [dec.push(i) for i in c["ids_add0_special1"]] + [dec.flush()]
        assert "".join(pieces) == tk.decode(c["ids_add0_special1"], skip_special=True)
        assert not any("\ufffd" in p for p in pieces), c["text"]


@pytest.mark.real_model
def test_build_is_fast(real):
    """Target ~1 s for Gemma's 262k vocabulary; the bound leaves room for a busy machine."""
    assert real["smollm2"][1] < 3.0
    assert real["gemma3"][1] < 6.0


# ---------------------------------------------------------------- synthetic vocabularies: the rules
def _tiny_bpe() -> Tokenizer:
    toks, merges, types = byte_vocab()
    md = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": toks,
        "tokenizer.ggml.token_type": np.asarray(types, np.int32),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.eos_token_id": len(toks) - 1,
    }
    return Tokenizer.from_metadata(md)


def test_bpe_merges_naming_tokens_outside_the_vocabulary_or_repeated_are_dropped_with_a_warning():
    """A merge whose tokens (or their join) are not in the vocabulary, one without a space, and a repeat are dropped,
    said once; the other merges apply as in a clean file (tokenizers would refuse, or panic, on such a list)."""
    toks, merges, types = byte_vocab()
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": toks,
          "tokenizer.ggml.token_type": np.asarray(types, np.int32), "tokenizer.ggml.eos_token_id": len(toks) - 1}
    clean = Tokenizer.from_metadata(dict(md, **{"tokenizer.ggml.merges": merges}))
    bad = merges[:2] + ["h x", "nospace", "h e", "Ġ zz"] + merges[2:]
    with pytest.warns(UserWarning, match="4 BPE merges"):
        dirty = Tokenizer.from_metadata(dict(md, **{"tokenizer.ggml.merges": bad}))
    text = " the hint in a thin hen"
    assert dirty.encode(text) == clean.encode(text)


def _tiny_spm(add_space_prefix: bool = True, extra: list[tuple[str, int]] = ()) -> Tokenizer:
    """<unk> <s> </s>, 256 byte tokens, a few pieces, then ``extra`` (text, type)."""
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    for t in ["▁", "a", "b", "▁a", "ab", "▁ab"]:
        toks.append(t)
        types.append(1)
    for t, ty in extra:
        toks.append(t)
        types.append(ty)
    scores = np.array([0.0] * 259 + [-5.0, -1.0, -1.0, -2.0, -3.0, -0.5] + [0.0] * len(extra), np.float32)
    md = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": toks,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": np.asarray(types, np.int32),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_space_prefix": add_space_prefix,
    }
    return Tokenizer.from_metadata(md)


def test_spm_merges_by_score_and_adds_the_dummy_prefix_after_every_special_token():
    tk = _tiny_spm(extra=[("<ctl>", 3)])
    a, ab, ctl = tk.token_id("▁ab"), tk.token_id("ab"), tk.token_id("<ctl>")
    assert tk.kind == "spm" and tk.add_bos
    assert tk.encode("ab") == [1, a]  # BOS by default for SentencePiece; "▁ab" outscores "▁a"+"b"
    assert tk.encode("ab<ctl>ab", add_bos=False) == [a, ctl, a]
    assert tk.encode("ab<ctl>ab", add_bos=False, parse_special=False)[0] == a
    assert _tiny_spm(add_space_prefix=False).encode("ab", add_bos=False) == [ab]


def test_spm_byte_fallback_and_stream_assembly():
    tk = _tiny_spm(add_space_prefix=False)
    ids = tk.encode("é€", add_bos=False)  # no piece for either character: UTF-8 bytes
    assert ids == [tk.token_id(f"<0x{b:02X}>") for b in "é€".encode()]
    assert tk.token_bytes(ids[0]) == b"\xc3"
    dec = StreamDecoder(tk)
    assert [dec.push(i) for i in ids] == ["", "é", "", "", "€"] and dec.flush() == ""
    assert tk.decode(ids) == "é€"


def test_special_tokens_split_longest_first_across_the_text():
    """llama.cpp splits by the longest special token first, wherever it occurs, then shorter ones."""
    tk = _tiny_spm(add_space_prefix=False, extra=[("xy", 4), ("yxy", 4)])
    # "yxy" is taken first, so the leading "x" stays plain text (a byte) although "xy" starts there
    assert tk.encode("xyxy", add_bos=False) == [tk.token_id("<0x78>"), tk.token_id("yxy")]
    assert tk.encode("xyzxy", add_bos=False) == [tk.token_id("xy"), tk.token_id("<0x7A>"), tk.token_id("xy")]


def test_user_defined_always_parsed_control_only_when_asked():
    tk = _tiny_spm(add_space_prefix=False, extra=[("<u>", 4), ("<c>", 3)])
    u, c = tk.token_id("<u>"), tk.token_id("<c>")
    assert u in tk.encode("a<u>b", add_bos=False, parse_special=False)
    assert c in tk.encode("a<c>b", add_bos=False)
    assert c not in tk.encode("a<c>b", add_bos=False, parse_special=False)
    assert tk.decode([c]) == "<c>" and tk.decode([c], skip_special=True) == "" and tk.decode([u], skip_special=True) == "<u>"


def test_end_of_generation_tokens_found_by_text():
    tk = _tiny_spm(extra=[("<|im_end|>", 1), ("<end_of_turn>", 3), ("<|endoftext|>", 3)])
    assert tk.eot_ids == {2, tk.token_id("<|im_end|>"), tk.token_id("<end_of_turn>"), tk.token_id("<|endoftext|>")}
    assert tk.is_special(tk.token_id("<|im_end|>"))  # llama.cpp makes them control tokens


def test_stream_decoder_never_splits_a_character():
    tk = _tiny_bpe()
    text = "naïve 😀 中文"
    ids = tk.encode(text, add_bos=False)
    dec = StreamDecoder(tk)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
    # the 4-byte emoji arrives over four byte-level tokens and is printed once, whole
    assert sum("😀" in p for p in pieces) == 1


def test_bpe_special_text_parsed_only_when_asked():
    tk = _tiny_bpe()
    eos = len(byte_vocab()[0]) - 1
    assert tk.kind == "bpe" and tk.add_bos is False
    assert tk.encode("a<|endoftext|>") == [tk.encode("a")[0], eos]
    assert eos not in tk.encode("a<|endoftext|>", parse_special=False)
    assert tk.decode(tk.encode("the cat")) == "the cat"


def test_unknown_pre_tokenizer_warns_and_uses_the_default():
    toks, merges, types = byte_vocab()
    md = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "no-such-pre", "tokenizer.ggml.tokens": toks, "tokenizer.ggml.merges": merges}
    with pytest.warns(UserWarning, match="no-such-pre"):
        tk = Tokenizer.from_metadata(md)
    assert tk.decode(tk.encode("hello there")) == "hello there"


def test_unsupported_tokenizer_model_is_a_clear_error():
    with pytest.raises(ValueError, match="'plamo2' is not supported"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "plamo2", "tokenizer.ggml.tokens": ["a"]})


def test_the_sentencepiece_model_proto_is_each_piece_serialised_in_turn():
    """loaders/tokenizer._spm_model_proto lays every piece out at once with numpy; its bytes are the protobuf the
    per-piece serialisation writes (field 1 per piece: piece bytes, float score, type), varints of every width."""
    import numpy as np

    from kvrun.loaders.strings import StringArray
    from kvrun.loaders.tokenizer import _field_bytes, _field_varint, _spm_model_proto, _varint

    items = ["a", "é" * 100, "x" * 20_000, "", "<0x0A>", "▁the"] + [f"t{i}" for i in range(300)]
    pieces = StringArray.from_strings(items)
    scores = np.linspace(-5, 5, len(items)).astype(np.float32)
    types = np.array([2, 1, 1, 6, 6] + [1] * (len(items) - 5))
    want = b""
    for text, score, t in zip(items, scores, types.tolist()):
        b = text.encode()
        want += _field_bytes(1, _field_bytes(1, b) + b"\x15" + np.float32(score).tobytes() + _field_varint(3, t))
    got = _spm_model_proto(pieces, scores, types)
    assert got[: len(want)] == want
    rest = got[len(want):]  # (then the trainer spec, field 2: BPE, byte fallback, unk at the first UNKNOWN piece)
    spec = _field_varint(3, 2) + _field_varint(35, 1) + _field_varint(40, 0)
    assert rest[0] == 0x12 and rest[2 : 2 + len(spec)] == spec
    assert _varint(300) == b"\xac\x02"
