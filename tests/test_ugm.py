"""The Unigram ("t5") tokenizer (loaders/ugm.py) gives llama.cpp's ids, and a ``bert`` encoder with one
(XLM-RoBERTa's layout: bge-m3, multilingual-e5, bge-reranker-v2-m3) embeds as llama.cpp does.

Held to llama.cpp on tests/tiny_ugm.py's tiny vocabulary with sentencepiece's real ``nmt_nfkc``
charsmap (fixtures from tools/make_ugm_fixture.py): every text's ids with special tokens added and
parsed and with neither, under XLM-R's settings, under llama.cpp's t5 defaults with whitespace kept,
and with no charsmap; every token's piece; the encoder's state for every token."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from tiny_ugm import BOS, EMBED_TEXTS, EOS, TEXTS, UNK, VARIANTS, write_tiny_ugm

from kvrun.loaders.gguf_file import GGUFFile
from kvrun.loaders.tokenizer import Tokenizer
from kvrun.loaders.ugm import CharsMap

FIX = Path(__file__).parent / "fixtures"
FX = json.loads((FIX / "ugm_tokens.json").read_text())


def _model_file(tmp_path_factory, variant: str) -> Path:
    path = write_tiny_ugm(tmp_path_factory.mktemp(variant) / "m.gguf", variant)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == FX["variants"][variant]["sha256"], "the fixture was made from another model file"
    return path


@pytest.fixture(scope="module", params=list(VARIANTS))
def vocab(request, tmp_path_factory):
    path = _model_file(tmp_path_factory, request.param)
    return Tokenizer.from_metadata(GGUFFile(path).metadata), FX["variants"][request.param] | {"settings": VARIANTS[request.param]}


def test_the_fixture_covers_the_texts():
    assert FX["texts"] == TEXTS


def test_ids_are_llama_cpps(vocab):
    tk, fx = vocab
    assert tk.kind == "ugm"
    for c in fx["cases"]:
        assert tk.encode(c["text"], add_bos=True, parse_special=True) == c["ids_special"], repr(c["text"])
        assert tk.encode(c["text"], add_bos=False, parse_special=False) == c["ids_plain"], repr(c["text"])


def test_pieces_and_detokenized_text_are_llama_cpps(vocab):
    tk, fx = vocab
    assert [tk.token_bytes(i, special=True).decode("latin-1") for i in range(tk.n_vocab)] == fx["pieces_special"]
    assert [tk.token_bytes(i, special=False).decode("latin-1") for i in range(tk.n_vocab)] == fx["pieces_plain"]
    for c in fx["cases"]:
        ids = c["ids_special"]
        assert tk.decode(ids).encode() == "".join(fx["pieces_special"][i] for i in ids).encode("latin-1")
        assert tk.decode(ids, skip_special=True).encode() == "".join(fx["pieces_plain"][i] for i in ids).encode("latin-1")


def test_special_tokens_are_llama_cpps_for_the_files_keys(vocab):
    """XLM-R's files ask for <s> ... </s>; without the keys llama.cpp adds EOS only, as for T5."""
    tk, fx = vocab
    v = fx["settings"]
    assert (tk.bos_id, tk.eos_id, tk.unk_id) == (BOS, EOS, UNK)
    assert tk.add_bos == bool(v["add_bos"]) and tk.add_eos == (v["add_eos"] is not False)
    assert EOS in tk.eot_ids and tk.is_special(BOS) and not tk.is_special(tk.token_id("[U]"))


@pytest.fixture(scope="module")
def xlmr(tmp_path_factory):
    return Tokenizer.from_metadata(GGUFFile(_model_file(tmp_path_factory, "xlmr")).metadata)


def test_the_charsmap_normalises_as_nfkc_and_folds_whitespace(xlmr):
    norm = xlmr._ugm_vocab().normalize
    assert norm("cafe\u0301") == norm("café") == "\u2581café"  # composed
    assert norm("ＡＢＣ ﬁ ①") == "\u2581ABC\u2581fi\u25811"  # compatibility forms
    assert norm("  a\t\tb\n\u3000c  ") == "\u2581a\u2581b\u2581c"  # every whitespace run one U+2581, none at the ends
    assert norm(" ") == ""


def test_viterbi_takes_the_best_cut_and_the_first_of_a_tie(xlmr):
    piece = xlmr.tokens.__getitem__
    assert [piece(i) for i in xlmr.encode("cats", add_bos=False)] == ["\u2581cat", "s"]  # -7.5 beats ▁cats' -9
    assert [piece(i) for i in xlmr.encode("xy", add_bos=False)] == ["\u2581xy"]  # -8 both ways: the piece found first
    assert xlmr.encode("日本語語🎉中文", add_bos=False) == [xlmr.token_id("\u2581"), xlmr.token_id("日本"), UNK, xlmr.token_id("中文")]


def test_a_corrupt_charsmap_is_a_one_line_error(xlmr):
    with pytest.raises(ValueError, match="precompiled charsmap is corrupt"):
        CharsMap(b"\xff\xff\x00\x00abc")
    toks = ["<pad>", "</s>", "<unk>", "a"]
    with pytest.raises(ValueError, match="precompiled charsmap is corrupt"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": toks, "tokenizer.ggml.precompiled_charsmap": b"\x08\0\0\0ab"})


# ------------------------------------------------------------------ the encoder
@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from kvrun.runtime.api import Model
    from kvrun.runtime.engine import Engine

    return Model(Engine(_model_file(tmp_path_factory, "xlmr"))), np.load(FIX / "embed_ugm.npz")


def test_an_xlmr_style_encoder_embeds_as_llama_cpp(encoder):
    """The ids, and every token's state within 5e-4 of the largest (~3.5): ggml's GELU reads a float16
    table, and over 31 texts a few states round the other way (measured: 2e-4 of it at most, 1.5e-5
    absolute for the median text)."""
    m, fx = encoder
    for k, text in enumerate(EMBED_TEXTS):
        ids = m.tokenize(text)
        assert ids == fx[f"ids_{k}"].tolist(), text
        h, want = m.engine.embed(ids), fx[f"embd_{k}"]
        assert np.abs(h - want).max() <= 5e-4 * np.abs(want).max(), text
    h = fx["embd_0"].astype(np.float64)[0]  # the file's pooling: the first (<s>) token's
    np.testing.assert_allclose(m.embed(EMBED_TEXTS[0])[0], h / np.linalg.norm(h), atol=1e-4)


def test_kvrun_info_names_the_tokenizer(tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    r = CliRunner().invoke(main, ["info", str(write_tiny_ugm(tmp_path / "m.gguf"))])
    assert r.exit_code == 0 and "SentencePiece Unigram (ugm)" in r.output, r.output


def test_the_committed_nmt_nfkc_table_is_sentencepieces():
    """The tiny files carry a committed copy of sentencepiece's compiled nmt_nfkc table (another sentencepiece compiles
    other bytes, and the fixtures hold hashes of the files): the copy is what sentencepiece 0.2.3 compiles."""
    import sentencepiece
    from tiny_ugm import nmt_nfkc_charsmap, sentencepiece_nmt_nfkc

    if sentencepiece.__version__ != "0.2.3":
        pytest.skip(f"the table was taken from sentencepiece 0.2.3, this is {sentencepiece.__version__}")
    assert nmt_nfkc_charsmap() == sentencepiece_nmt_nfkc()
