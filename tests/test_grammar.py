"""Grammars (runtime/gbnf.py, ops/cpu/grammar.py, runtime/grammar.py): llama.cpp's GBNF parsed as
llama.cpp parses it, the token mask equal to running every token's bytes through the grammar, and
the reply of a constrained generation in the grammar's language, ending only where it may end."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import test_server
from test_server import CHAT, call

from kvrun.ops.cpu import grammar as kern
from kvrun.runtime.gbnf import GrammarError, parse
from kvrun.runtime.grammar import GrammarConstraint, Matcher, VocabIndex

model, server = test_server.model, test_server.server  # the fixtures of test_server.py: a tiny model served

JSONISH = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws   # a comment
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= "-"? ([0-9] | [1-9] [0-9]{0,15}) ("." [0-9]+)? ([eE] [-+]? [0-9]+)? ws
ws ::= | " " | "\n" [ \t]{0,20}
"""


@pytest.mark.parametrize("grammar,yes,no", [
    ('root ::= "ab" | "c"', ["ab", "c"], ["", "a", "abc", "b"]),
    ('root ::= [a-c]+ [^a-z]', ["a1", "cba!", "b\u00e9"], ["a", "1", "ad"]),
    ('root ::= . "\\n" "\\x41\\u00e9\\t"', ["z\nA\u00e9\t", "\u4e2d\nA\u00e9\t"], ["\nA\u00e9\t"]),
    ('root ::= "x"{2,3} "y"{2} "z"{1,}', ["xxyyz", "xxxyyzzz"], ["xyyz", "xxxxyyz", "xxyz", "xxyy"]),
    ('root ::= ("ab" | "c")* "."', [".", "ab.", "cabc."], ["a.", "abab"]),
    ('root ::= "a" ("b" "c"?)? "d"', ["ad", "abd", "abcd"], ["acd", "abcc"]),
    ('root ::= item ("," item){0,2}\nitem ::= [0-9]+', ["1", "1,22", "1,2,3"], ["1,2,3,4", ",1", "1,"]),
    ('root ::= "[" (\n  "x" |\n  "y"\n) "]"  # a rule over lines', ["[x]", "[y]"], ["[]"]),
    ('root ::= [\\]\\-\\\\]', ["]", "-", "\\"], ["a"]),
    ('root ::= ""', [""], ["a"]),
    ('root ::= ("a") root-1\nroot-1 ::= "b"', ["ab"], ["a"]),  # (a rule named as kvrun's helper rules might be)
    ('root ::= "\\"" [a-z]* "\\""', ['"' + "x" * 5000 + '"'], ['"x']),
    (JSONISH, ['{}', '{"a": [1, -2.5e3, {"b": null}], "c": "\\u00e9\u00e9"}'], ['{"a": 1,}', '[1]', '{"a": 01}']),
])  # fmt: skip
def test_a_grammar_holds_exactly_its_language(grammar, yes, no):
    g = parse(grammar)
    for text in yes:
        assert g.accepts(text), text
        assert all(g.accepts_prefix(text[:i]) for i in range(min(len(text), 80))), text
    for text in no:
        assert not g.accepts(text), text


@pytest.mark.parametrize("grammar,says", [
    ("root ::= thing", "line 1 col 10: rule 'thing' is used but never defined"),
    ('start ::= "a"', "no 'root' rule"),
    ('root ::= root "+" "1" | "1"', "rule 'root' is left-recursive"),
    ('root ::= list\nlist ::= list? "x"', "rule 'list' is left-recursive"),
    ('root ::= "a', "unterminated literal"),
    ("root ::= [a-", "unterminated character class"),
    ('root ::= "\\q"', "unknown escape \\q"),
    ("root ::= [z-a]", "backwards"),
    ('root ::= "a"{3,1}', "upper bound is below the lower"),
    ('root ::= "a" )', "unexpected ')'"),
    ('root ::= "a"\nroot ::= "b"', "defined twice"),
    ("root = 'a'", "expected '::='"),
    ('root ::= *"a"', "'*' follows nothing"),
])  # fmt: skip
def test_a_bad_grammar_is_refused_in_one_line_naming_the_place(grammar, says):
    with pytest.raises(GrammarError) as e:
        parse(grammar)
    assert says in str(e.value) and "\n" not in str(e.value)


class _Vocab:
    """A tokenizer's vocab_bytes() only: the pieces as given."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.off = np.zeros(len(pieces) + 1, np.int64)
        np.cumsum([len(p) for p in pieces], out=self.off[1:])
        self.data = np.frombuffer(b"".join(pieces), np.uint8)

    def vocab_bytes(self):
        return self.data, self.off


def _pieces(rng: np.random.Generator) -> list[bytes]:
    """Tokens as vocabularies have them: ASCII pieces sharing prefixes, whole and partial UTF-8, lone bytes."""
    alphabet = list('{}[]",:. -\\01259aeEnrtufls\n') + ["\u00e9", "\u4e2d"]
    out = {c.encode() for c in alphabet} | {bytes([b]) for b in (0x80, 0xC3, 0xE4, 0xFF)}
    out |= {"\u00e9".encode()[:1], "\u4e2d".encode()[:2], "\u4e2d".encode()[1:]}
    while len(out) < 250:
        out.add("".join(rng.choice(alphabet, rng.integers(2, 7))).encode())
    return [b""] + sorted(out)  # id 0: a control token (no bytes)


def test_the_token_mask_is_every_token_run_through_the_grammar():
    """From the states a text passes, a (whole-character) token is allowed exactly when the
    reference matcher says the text and the token can still be completed.  (The reference runs over
    the text once per state and on over each token from there, as ``accepts_prefix(text + token)``
    steps through it, not over the whole text again for each of the 250 tokens.)"""
    g = parse(JSONISH)
    pieces = _pieces(np.random.default_rng(0))
    vocab = VocabIndex(_Vocab(pieces))
    m = Matcher(g, len(pieces))
    text = '{"ab": [1, -2.5e3, {"\u00e9": null}], "c\u4e2d": "x\\n"}'
    state, done = m.start, ""
    for ch in text:
        allowed = m.mask(state, vocab)
        after = copy.copy(g)  # the reference matcher started where ``done`` leaves it
        stacks = g._run(done)
        after._start = lambda: set(stacks)
        assert after.accepts_prefix("") == g.accepts_prefix(done)
        for t, p in enumerate(pieces):
            try:
                want = bool(p) and after.accepts_prefix(p.decode())
            except UnicodeDecodeError:
                continue  # (partial characters: the next test)
            assert bool(allowed[t]) == want, (done, p)
        state = m.advance(state, ch.encode())
        assert state >= 0
        done += ch
    assert m.can_end(state) and not m.only_end(state)  # (whitespace may follow)
    assert m.advance(state, b"x") == kern.DEAD


def test_a_token_ending_inside_a_character_is_allowed_when_a_character_starting_so_may_follow():
    g = parse('root ::= "a" [\\u00e0-\\u00ff] "b"')
    pieces = [b"a", b"a\xc3", b"\xc3", b"\xc2", b"\xe4", b"\xe0", b"\xf0", b"\xa9", b"\xa9b", "\u00e9".encode(), b"\xff", b"b"]
    vocab = VocabIndex(_Vocab(pieces))
    m = Matcher(g, len(pieces))
    allowed = lambda s: [p for p, ok in zip(pieces, m.mask(s, vocab)) if ok]  # noqa: E731
    assert allowed(m.start) == [b"a", b"a\xc3"]
    s = m.advance(m.start, b"a")
    assert allowed(s) == [b"\xc3", "\u00e9".encode()]  # (U+00C0-U+00FF start with C3; C2 starts U+0080-U+00BF)
    s = m.advance(s, b"\xc3")
    assert allowed(s) == [b"\xa9", b"\xa9b"]
    assert m.only_end(m.advance(s, b"\xa9b")) and not m.can_end(s)


def test_the_tables_grow_and_the_automaton_reuses_its_states():
    g = parse('root ::= ("a" | "b" [0-9]* | "c" ("x" | "y")+)+ "."')
    m = Matcher(g, 4)
    rng = np.random.default_rng(1)
    text = "".join(rng.choice(["a", "b1", "b22", "cx", "cyx"], 3000)) + "."
    s = m.advance(m.start, text.encode())
    assert s >= 0 and m.only_end(s)
    assert int(m.t[6][1]) < 50  # states: bounded by the grammar, not the text (tail calls keep stacks flat)


def test_an_ambiguous_grammar_is_refused_while_matching():
    g = parse('root ::= x\nx ::= "a" | "a" x "b" | "a" x "c"')  # after n a's: 2^n pending b/c sequences
    m = Matcher(g, 4)
    with pytest.raises(GrammarError, match="too ambiguous"):
        m.advance(m.start, b"a" * 40)


def test_a_constrained_reply_is_in_the_language_and_ends_only_where_it_may(model):
    grammar = 'root ::= "<" [a-e]{2,5} ("," [a-e]{2,5})* ">"'
    for seed in range(4):
        out = model.chat(CHAT, max_tokens=30, temperature=1.0, seed=seed, grammar=grammar)
        assert re.fullmatch(r"<[a-e]{2,5}(,[a-e]{2,5})*(>)?|<[a-e,]*", out), out
        ended = model.last_stats.stop_reason == "eos"
        assert ended == out.endswith(">"), (out, model.last_stats.stop_reason)
    c = GrammarConstraint(model.tokenizer, model.config.n_vocab, grammar)
    eot = sorted(model.tokenizer.eot_ids)
    assert not c.allowed()[eot].any()  # no end before the text is whole


def test_a_grammar_and_json_mode_and_lookup_do_not_mix(model):
    with pytest.raises(ValueError, match="two constraints"):
        model.complete("x", grammar='root ::= "a"', json_mode=True)
    with pytest.raises(ValueError, match="lookup decoding takes greedy"):
        model.complete("x", grammar='root ::= "a"', temperature=0, lookup=4)
    with pytest.raises(GrammarError, match="never defined"):
        model.complete("x", grammar="root ::= y")


def test_the_server_takes_a_grammar_as_llama_server_does(server):
    status, text = call(server, "POST", "/v1/completions", {"prompt": "the", "max_tokens": 12, "grammar": 'root ::= "yes" | "no"'})
    assert status == 200 and json.loads(text)["choices"][0]["text"] in ("yes", "no"), text
    status, text = call(server, "POST", "/v1/completions", {"prompt": "the", "grammar": "root ::= ["})
    assert status == 400 and "unterminated character class" in json.loads(text)["error"]["message"], text


def test_kvrun_run_takes_grammar_flags_and_refuses_bad_ones_in_one_line(tiny_llama_path, tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    (tmp_path / "g.gbnf").write_text('root ::= "A" [b-d]{3}\n')
    r = CliRunner().invoke(main, ["run", str(tiny_llama_path), "-p", "the", "-n", "8", "--seed", "1", "--grammar-file", str(tmp_path / "g.gbnf"), "--no-stats"])
    assert r.exit_code == 0 and re.fullmatch(r"theA[b-d]{3}", r.output.strip().splitlines()[-1]), r.output
    for args, says in (
        (["--grammar", "root ::= x"], "--grammar: grammar line 1 col 10: rule 'x' is used but never defined"),
        (["--grammar-file", str(tmp_path / "none.gbnf")], "--grammar-file: cannot read"),
        (["--grammar", 'root ::= "a"', "--format", "json"], "two constraints"),
        (["--grammar", 'root ::= "a"', "-j", "{}"], "--grammar, --json-schema: give one constraint"),
    ):
        r = CliRunner().invoke(main, ["run", str(tiny_llama_path), "-p", "the", *args])
        assert r.exit_code != 0 and says in r.output and r.output.count("\n") == 1, (args, r.output)


PET = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "legs": {"type": "integer"},
                                        "kind": {"enum": ["cat", "dog"]}}, "required": ["name", "legs", "kind"]}  # fmt: skip


def _is_pet(text: str) -> bool:
    try:
        v = json.loads(text)
    except json.JSONDecodeError:
        return False
    return list(v) == ["name", "legs", "kind"] and len(v["name"]) <= 8 and type(v["legs"]) is int and v["kind"] in ("cat", "dog")


def test_a_json_schema_reply_is_what_the_schema_allows(model):
    for seed in range(3):
        out = model.chat(CHAT, max_tokens=200, temperature=0.7, seed=seed, json_schema=PET)
        if model.last_stats.stop_reason == "eos":
            assert _is_pet(out), out
        else:  # cut by max_tokens: a prefix of one
            assert parse(_pet_grammar()).accepts_prefix(out), out


def _pet_grammar() -> str:
    from kvrun.runtime.jsonschema import schema_to_gbnf

    return schema_to_gbnf(PET)


def test_the_server_takes_a_json_schema_as_openai_ollama_and_llama_server_do(server):
    g = parse(_pet_grammar())
    for path, body, reply in (
        ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 60,
                                  "response_format": {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET}}},
         lambda r: r["choices"][0]["message"]["content"]),
        ("/api/chat", {"messages": CHAT, "format": PET, "stream": False, "options": {"num_predict": 60}}, lambda r: r["message"]["content"]),
        ("/v1/completions", {"prompt": "the", "max_tokens": 60, "json_schema": PET}, lambda r: r["choices"][0]["text"]),
    ):  # fmt: skip
        status, text = call(server, "POST", path, body)
        assert status == 200 and g.accepts_prefix(reply(json.loads(text))), (path, text)
    status, text = call(server, "POST", "/v1/chat/completions", {"messages": CHAT, "response_format": {
        "type": "json_schema", "json_schema": {"schema": {"type": "string", "pattern": "^a"}}}})  # fmt: skip
    assert status == 400 and '"pattern" at # is not supported' in json.loads(text)["error"]["message"], text


def test_kvrun_run_takes_a_json_schema(tiny_llama_path, tmp_path):
    from click.testing import CliRunner

    from kvrun.cli import main

    (tmp_path / "pet.json").write_text(json.dumps(PET))
    r = CliRunner().invoke(main, ["run", str(tiny_llama_path), "-p", "the", "-n", "30", "--seed", "2", "--json-schema-file", str(tmp_path / "pet.json"), "--no-stats"])
    assert r.exit_code == 0 and parse(_pet_grammar()).accepts_prefix(r.output.splitlines()[-1][len("the"):]), r.output
    for args, says in (
        (["-j", "{nope"], "--json-schema: the JSON schema is not JSON (Expecting property name"),
        (["-j", '{"type": "string", "format": "email"}'], "--json-schema: json schema:"),
    ):
        r = CliRunner().invoke(main, ["run", str(tiny_llama_path), "-p", "the", *args])
        assert r.exit_code != 0 and says in r.output and r.output.count("\n") == 1, (args, r.output)


@pytest.mark.real_model
def test_smollm2_answers_with_the_schema_s_json(smollm2_path):
    import kvrun

    m = kvrun.load(str(smollm2_path), n_ctx=512)
    out = m.chat([{"role": "user", "content": "Describe a pet as JSON: its name, number of legs and kind."}], max_tokens=80, temperature=0, json_schema=PET)
    assert m.last_stats.stop_reason == "eos" and _is_pet(out), out
