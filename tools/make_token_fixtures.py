"""Regenerate tests/fixtures/tokens_<model>.json with llama.cpp as the oracle (developer tool).

Needs llama-cpp-python (a developer-only venv, never a kvrun dependency); does
not import kvrun::

    /work/oracle/bin/python tools/make_token_fixtures.py SMOLLM2.gguf GEMMA3.gguf

For every text in TEXTS a case records llama.cpp's ids for
``tokenize(text, add_special, parse_special)`` with both flags True/False, the
piece of every id (``llama_token_to_piece(..., special=True)``, as
``llama-tokenize`` prints it; bytes stored latin-1 decoded so any byte survives
JSON) and the detokenized text (pieces concatenated with special False / True).
The header records the vocabulary facts kvrun must reproduce: BOS/EOS, add_bos,
the end-of-generation ids, and SHA-256 digests of every token's attributes and
pieces (so the whole vocabulary is checked without storing 262k pieces).

``--fuzz N OUT.json`` additionally writes N random strings (seeded) with their
ids, for a developer's wider comparison; that file is not committed.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import random
import sys
from pathlib import Path

import llama_cpp
from llama_cpp import Llama

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
REGENERATE = "/path/to/llama-cpp-python-venv/bin/python tools/make_token_fixtures.py SMOLLM2.gguf GEMMA3.gguf"

TEXTS = [
    # empty, whitespace runs
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n", " \n \n", "\r", "line1\r\nline2\r\n", "\t\tindented\twith\ttabs",
    "multiple     spaces      here", " " * 40, "\n" * 40, "\t" * 35, " \t \n\t\n  x", "\u00a0non-breaking\u00a0space", "trailing space ",
    " leading and trailing ", "  two leading spaces",
    # English
    "a", "Hello world", " Hello world", "Hello  world", "hello, World!", "The quick brown fox jumps over the lazy dog.",
    "don't you're we'll I've they'd it's", "DON'T YOU'RE WE'LL I'VE", "UPPER lower MiXeD", "antidisestablishmentarianism",
    "a" * 60, "ab " * 20, "...!!!???---___", "<<<>>> [[[]]] {{{}}}",
    # code
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); }",
    "class A:\n\tdef f(self):\n\t\treturn {'k': [1, 2, 3]}  # comment\n",
    '{"name": "kvrun", "values": [1.5, -2e10, null], "ok": true}',
    "https://example.com/path?query=1&b=2#frag", "user@example.com", "C:\\Users\\test\\file.txt",
    # digits
    "1234567890", "12345678901234567890123", "3.14159265358979", "1,000,000 and 2024-11-22", "x = 42 + 7*3", "$100 €50 £20 ¥1000",
    # other scripts, emoji, rare characters
    "emoji: 😀🎉👍🏽 and ❤️", "🦙 llama", "family 👨\u200d👩\u200d👧 flag 🇫🇷", "中文字符测试", "日本語のテキストです。", "한국어 문장입니다",
    "Ça va? déjà vu, naïve façade, Zürich, São Paulo", "e\u0301 combining accent", "Привет, мир!", "مرحبا بالعالم", "שלום עולם",
    "Γειά σου Κόσμε", "नमस्ते दुनिया", "สวัสดีชาวโลก", "∑∫√∞ ≤ ≥ ≠", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕋𝕖𝕩𝕥", "zero\u200bwidth", "\x01\x02 control \x7f chars",
    # special-token text
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", "<|im_start|><|im_end|><|im_start|>", "<|im_end|",
    "< |im_end| >", "<|endoftext|>", "x<|endoftext|>y", "<reponame>kvrun<file_sep>", "<filename>a.py\n<gh_stars>10",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", "<start_of_turn>user\n  indented<end_of_turn>",
    "<bos><eos><pad>", "<s>[INST] hello [/INST]", "a</s>b", "text with <unk> token", "<unused0><unused99>", "<mask>",
    "[multimodal]<start_of_image><end_of_image>", "<table><tr><td>x</td></tr></table>", "<b>bold</b> <code>x</code>",
]


def _piece(vocab, tid: int, special: bool) -> bytes:
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, tid, buf, len(buf), 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, tid, buf, len(buf), 0, special)
    return bytes(buf.raw[:n])


def _tokenize(llm: Llama, text: str, add: bool, special: bool) -> list[int]:
    return llm.tokenize(text.encode("utf-8"), add_bos=add, special=special)


def vocab_digest(pieces: list[bytes]) -> str:
    """SHA-256 of length-prefixed pieces (the same function lives in tests/test_tokenizer.py)."""
    h = hashlib.sha256()
    for p in pieces:
        h.update(len(p).to_bytes(4, "little"))
        h.update(p)
    return h.hexdigest()


def name_of(path: str) -> str:
    p = path.lower()
    return "gemma3" if "gemma" in p else "smollm2" if "smollm" in p else Path(path).stem


def header(llm: Llama, path: str) -> dict:
    vocab = llm._model.vocab
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    attrs = [int(llama_cpp.llama_vocab_get_attr(vocab, i)) for i in range(n)]
    return {
        "regenerate": REGENERATE,
        "oracle": f"llama-cpp-python {llama_cpp.__version__}",
        "model_file": Path(path).name,
        "n_vocab": n,
        "bos_id": llama_cpp.llama_vocab_bos(vocab),
        "eos_id": llama_cpp.llama_vocab_eos(vocab),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog_ids": [i for i in range(n) if llama_cpp.llama_vocab_is_eog(vocab, i)],
        "attrs_sha256": hashlib.sha256(b"".join(a.to_bytes(4, "little") for a in attrs)).hexdigest(),
        "pieces_special_sha256": vocab_digest([_piece(vocab, i, True) for i in range(n)]),
        "pieces_plain_sha256": vocab_digest([_piece(vocab, i, False) for i in range(n)]),
    }


def case_of(llm: Llama, text: str) -> dict:
    vocab = llm._model.vocab
    case: dict = {"text": text}
    for add in (True, False):
        for special in (True, False):
            case[f"ids_add{int(add)}_special{int(special)}"] = _tokenize(llm, text, add, special)
    ids = case["ids_add1_special1"]
    case["pieces_latin1"] = [_piece(vocab, i, True).decode("latin-1") for i in ids]
    ids = case["ids_add0_special1"]
    case["detok"] = b"".join(_piece(vocab, i, False) for i in ids).decode("latin-1")
    case["detok_special"] = b"".join(_piece(vocab, i, True) for i in ids).decode("latin-1")
    return case


def fuzz_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    atoms = [
        " ", "  ", "\n", "\n\n", "\t", "\r\n", "a", "b", "Z", "the", " the", "Hello", "'s", "'S", "'ll", "1", "23", "456", "7890",
        ".", ",", "!", "?", "-", "_", "(", ")", "{", "}", "<", ">", "|", "/", "\\", "\"", "'", "#", "$", "%", "&", "*", "+", "=", "~", "^",
        "é", "ß", "ñ", "ü", "中", "文", "日本", "한", "Я", "ж", "ع", "ש", "α", "न", "ส", "😀", "👍🏽", "🇫🇷", "\u200b", "\u00a0", "\u3000",
        "\u0301", "𝔘", "∑", "€", "\x01", "\x7f", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<start_of_turn>", "<end_of_turn>",
        "<bos>", "<eos>", "</s>", "<s>", "<unk>", "<table>", "<b>", "</b>", "[multimodal]", "<unused7>", "<reponame>", "<|im_", "end|>",
    ]
    blocks = [  # code point ranges for random characters: scripts, spaces, marks, symbols, emoji, private use
        (0x20, 0x7E), (0x80, 0xFF), (0x100, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x530, 0x58F), (0x590, 0x5FF),
        (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x2070, 0x209F),
        (0x20A0, 0x20CF), (0x2100, 0x218F), (0x2190, 0x23FF), (0x2460, 0x24FF), (0x2500, 0x27BF), (0x3000, 0x303F), (0x3040, 0x30FF),
        (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xE0FF), (0xFB00, 0xFDFF), (0xFE00, 0xFE6F), (0xFF00, 0xFFEF), (0xFFF0, 0xFFFD),
        (0x10000, 0x1007F), (0x1D400, 0x1D7FF), (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF), (0xE0000, 0xE007F), (0x0, 0x1F),
    ]
    out = []
    for j in range(n):
        k = rng.randint(1, 24)
        if j % 2:
            out.append("".join(rng.choice(atoms) for _ in range(k)))
        else:
            out.append("".join(chr(rng.randint(*rng.choice(blocks))) if rng.random() < 0.7 else rng.choice(atoms) for _ in range(k)))
    return out


def dump(out: dict) -> str:
    """The header indented, then one case per line (diffs stay readable)."""
    out = dict(out)
    cases = out.pop("cases")
    head = json.dumps(out, indent=1, ensure_ascii=False)
    body = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
    return head[:-2] + ',\n "cases": [\n' + body + "\n ]\n}\n"


def main(argv: list[str]) -> None:
    fuzz_n, fuzz_out = 0, None
    if "--fuzz" in argv:
        i = argv.index("--fuzz")
        fuzz_n, fuzz_out = int(argv[i + 1]), Path(argv[i + 2])
        argv = argv[:i] + argv[i + 3 :]
    fuzz_all = {}
    for path in argv:
        llm = Llama(model_path=path, vocab_only=True, verbose=False)
        name = name_of(path)
        if fuzz_n:
            fuzz_all[name] = [
                {"text": t, "ids_add1_special1": _tokenize(llm, t, True, True), "ids_add0_special0": _tokenize(llm, t, False, False)}
                for t in fuzz_texts(fuzz_n)
            ]
            continue
        out = header(llm, path)
        out["cases"] = [case_of(llm, t) for t in TEXTS]
        (FIX / f"tokens_{name}.json").write_text(dump(out))
        print(name, len(out["cases"]), "cases")
    if fuzz_out:
        fuzz_out.write_text(json.dumps(fuzz_all, ensure_ascii=False))
        print("fuzz", {k: len(v) for k, v in fuzz_all.items()}, "->", fuzz_out)


if __name__ == "__main__":
    main(sys.argv[1:])
