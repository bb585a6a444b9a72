"""Regenerate tests/fixtures/tokens_<model>.json with llama.cpp as the oracle (developer tool).

    /tmp/oracle/bin/python tools/make_token_fixtures.py SMOLLM2.gguf GEMMA3.gguf

Each case records llama.cpp's ids for add_special True/False x parse_special
True/False, and its detokenized text.  Does not import kvrun.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llama_cpp import Llama

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

TEXTS = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n", " \n \n", "a", "Hello world", " Hello world", "Hello  world", "hello, World!",
    "The quick brown fox jumps over the lazy dog.",
    "don't you're we'll I've they'd it's",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); }",
    "\t\tindented\twith\ttabs",
    "multiple     spaces      here",
    "1234567890", "3.14159265358979", "1,000,000 and 2024-11-22", "x = 42 + 7*3",
    "emoji: 😀🎉👍🏽 and ❤️", "🦙 llama", "中文字符测试", "日本語のテキストです。", "한국어 문장입니다",
    "Ça va? déjà vu, naïve façade, Zürich, São Paulo", "Привет, мир!", "مرحبا بالعالم", "שלום עולם", "Γειά σου Κόσμε",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<s>[INST] hello [/INST]", "<bos><eos><pad>", "<|endoftext|>", "text with <unk> token",
    "https://example.com/path?query=1&b=2#frag", "user@example.com", "C:\\Users\\test\\file.txt",
    "UPPER lower MiXeD", "a" * 60, "ab " * 20, "...!!!???---___", "$100 €50 £20 ¥1000",
    "line1\r\nline2\r\n", "trailing space ", " leading and trailing ",
]


def name_of(path: str) -> str:
    p = path.lower()
    return "gemma3" if "gemma" in p else "smollm2" if "smollm" in p else Path(path).stem


def main(paths: list[str]) -> None:
    for path in paths:
        llm = Llama(model_path=path, vocab_only=True, verbose=False)
        cases = []
        for text in TEXTS:
            case = {"text": text}
            for add in (True, False):
                for special in (True, False):
                    case[f"ids_add{int(add)}_special{int(special)}"] = llm.tokenize(text.encode(), add_bos=add, special=special)
            ids = case["ids_add0_special1"]
            case["detok"] = llm.detokenize(ids).decode("utf-8", "replace")
            cases.append(case)
        out = {"regenerate": "python tools/make_token_fixtures.py SMOLLM2.gguf GEMMA3.gguf (llama-cpp-python)", "model_file": Path(path).name, "cases": cases}
        (FIX / f"tokens_{name_of(path)}.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))
        print(name_of(path), len(cases), "cases")


if __name__ == "__main__":
    main(sys.argv[1:])
