"""GBNF grammars (llama.cpp's format, ``--grammar`` / ``--grammar-file``): parsed and compiled to the
flat tables the matcher walks (``ops/cpu/grammar.py``).

The dialect is llama.cpp's: one rule a line, ``name ::= alternatives``, the start rule ``root``;
literals ``"..."``, character classes ``[a-z]`` / ``[^"\\\\]``, any character ``.``, groups ``( )``,
alternatives ``|``, repetitions ``*`` ``+`` ``?`` ``{m}`` ``{m,}`` ``{m,n}``, ``#`` comments; a rule
may go on over several lines inside parentheses or after a ``|``.  Escapes: ``\\n \\r \\t \\\\ \\"
\\[ \\] \\- \\/ \\xHH \\uHHHH \\UHHHHHHHH``.  Characters are Unicode code points.

Compilation, as llama.cpp's: every repetition becomes a right-recursive helper rule (``x*`` is
``r ::= x r |``), every literal a sequence of one-character sets, so the matcher knows only two
elements: a character set and a rule reference.  Left recursion (``expr ::= expr "+" term``) would
expand forever and is refused, naming the rule.

:meth:`Grammar.accepts` is a plain-Python matcher over the same tables: the reference the tests hold
the Numba matcher to, and a way to try a grammar on a text without a model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

END, CHARS, REF = 0, 1, 2  #: element kinds in :attr:`Grammar.ekind`
MAX_CP = 0x10FFFF
MAX_REPEAT = 1000  #: the largest bound of x{m,n} (each unit of it is a rule)


class GrammarError(ValueError):
    """A grammar that cannot be parsed or run; the message names the place and the fix."""


# an element while parsing: ("chars", ((lo, hi), ...), negated) or ("ref", rule name)
Elem = tuple


@dataclass
class Grammar:
    """A compiled grammar: rules of alternatives of elements, as flat arrays.

    ``ekind[i]``/``earg[i]``: element i (END closes an alternative; CHARS: set ``earg``; REF: rule
    ``earg``); rule r's alternatives start at ``alts[alt_off[r]:alt_off[r+1]]``; set s is the ranges
    ``rlo/rhi[set_off[s]:set_off[s+1]]``, complemented where ``set_neg[s]``.
    """

    ekind: np.ndarray  # [n_elem] int8
    earg: np.ndarray  # [n_elem] int32
    alt_off: np.ndarray  # [n_rules + 1] int32
    alts: np.ndarray  # [n_alts] int32: element index where each alternative starts
    set_off: np.ndarray  # [n_sets + 1] int32
    set_neg: np.ndarray  # [n_sets] uint8
    rlo: np.ndarray  # [n_ranges] int32
    rhi: np.ndarray  # [n_ranges] int32
    root: int
    rule_names: list[str]

    def tables(self) -> tuple:
        """The arrays the Numba matcher takes, in its order."""
        return (self.ekind, self.earg, self.alt_off, self.alts, self.set_off, self.set_neg, self.rlo, self.rhi)

    # ---------------------------------------------------------------- reference matcher
    def _match(self, s: int, cp: int) -> bool:
        lo, hi = self.set_off[s], self.set_off[s + 1]
        hit = bool(np.any((self.rlo[lo:hi] <= cp) & (cp <= self.rhi[lo:hi])))
        return hit != bool(self.set_neg[s])

    def _expand(self, stack: tuple[int, ...], out: set[tuple[int, ...]]) -> None:
        """Every stack ``stack`` (element positions, top last) stands for, with a character set on top
        (or empty: the text may end here)."""
        if not stack:
            out.add(stack)
            return
        pos, rest = stack[-1], stack[:-1]
        kind = self.ekind[pos]
        if kind == END:
            self._expand(rest, out)
        elif kind == CHARS:
            out.add(stack)
        else:
            r = int(self.earg[pos])
            back = rest if self.ekind[pos + 1] == END else rest + (pos + 1,)  # (a tail call returns nowhere)
            for a in self.alts[self.alt_off[r] : self.alt_off[r + 1]]:
                self._expand(back + (int(a),), out)

    def _start(self) -> set[tuple[int, ...]]:
        out: set[tuple[int, ...]] = set()
        for a in self.alts[self.alt_off[self.root] : self.alt_off[self.root + 1]]:
            self._expand((int(a),), out)
        return out

    def _run(self, text: str) -> set[tuple[int, ...]]:
        stacks = self._start()
        for ch in text:
            nxt: set[tuple[int, ...]] = set()
            for st in stacks:
                if st and self._match(int(self.earg[st[-1]]), ord(ch)):
                    self._expand(st[:-1] + (st[-1] + 1,), nxt)
            stacks = nxt
            if not stacks:
                break
        return stacks

    def accepts(self, text: str) -> bool:
        """Whether the whole of ``text`` is in the grammar's language."""
        return () in self._run(text)

    def accepts_prefix(self, text: str) -> bool:
        """Whether ``text`` can be continued into the language (or is in it)."""
        return bool(self._run(text))


# -------------------------------------------------------------------- parsing
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-", "/": "/"}
_HEX = {"x": 2, "u": 4, "U": 8}


def _is_word(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c == "-")


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.rules: dict[str, list[list[Elem]]] = {}
        self.order: list[str] = []
        self.refs: dict[str, int] = {}  # rule name -> position of a reference (for the error)
        self.origin: dict[str, str] = {}  # helper rule (a group, a repetition) -> the rule it was written in

    # -- errors and positions
    def fail(self, msg: str, at: int | None = None) -> GrammarError:
        at = self.i if at is None else at
        line = self.s.count("\n", 0, at) + 1
        col = at - (self.s.rfind("\n", 0, at) + 1) + 1
        return GrammarError(f"grammar line {line} col {col}: {msg}")

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    def space(self, newline_ok: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t" or (newline_ok and c in "\r\n"):
                self.i += 1
            elif c == "#":
                while self.i < len(self.s) and self.s[self.i] not in "\r\n":
                    self.i += 1
            else:
                break

    def name(self) -> str:
        j = self.i
        while self.i < len(self.s) and _is_word(self.s[self.i]):
            self.i += 1
        if j == self.i:
            raise self.fail(f"expected a rule name, got {self.peek()!r}")
        return self.s[j : self.i]

    # -- grammar := (name ::= alternatives newline)*
    def grammar(self) -> None:
        self.space(True)
        while self.i < len(self.s):
            at = self.i
            name = self.name()
            self.space(False)
            if not self.s.startswith("::=", self.i):
                raise self.fail(f"expected '::=' after rule name {name!r}")
            self.i += 3
            self.space(True)
            if name in self.rules and self.rules[name]:
                raise self.fail(f"rule {name!r} is defined twice", at)
            self.define(name, self.alternatives(name, nested=False))
            self.space(False)
            if self.i < len(self.s) and self.peek() not in "\r\n":
                raise self.fail(f"unexpected {self.peek()!r} (a rule ends at the end of its line)")
            self.space(True)

    def define(self, name: str, alts: list[list[Elem]]) -> None:
        if name not in self.rules:
            self.order.append(name)
        self.rules[name] = alts

    def new_rule(self, base: str, alts: list[list[Elem]]) -> str:
        """A helper rule (a group, a repetition), named ``base~k``: no rule of the text can have that name."""
        k = 1
        while f"{base}~{k}" in self.rules:
            k += 1
        name = f"{base}~{k}"
        self.define(name, alts)
        self.origin[name] = self.origin.get(base, base)
        return name

    def alternatives(self, rule: str, nested: bool) -> list[list[Elem]]:
        alts = [self.sequence(rule, nested)]
        while self.peek() == "|":
            self.i += 1
            self.space(True)
            alts.append(self.sequence(rule, nested))
        return alts

    def sequence(self, rule: str, nested: bool) -> list[Elem]:
        seq: list[Elem] = []
        last_start = 0  # where the last item's elements start (a literal is several)
        while self.i < len(self.s):
            c = self.peek()
            if c == '"':
                self.i += 1
                last_start = len(seq)
                text = self.literal_chars('"')
                if not text:  # "" is the empty string: a group that matches nothing
                    seq.append(("ref", self.new_rule(rule, [[]])))
                seq.extend(("chars", ((ord(ch), ord(ch)),), False) for ch in text)
            elif c == "[":
                self.i += 1
                last_start = len(seq)
                seq.append(self.char_class())
            elif c == ".":
                self.i += 1
                last_start = len(seq)
                seq.append(("chars", ((0, MAX_CP),), False))
            elif c == "(":
                self.i += 1
                self.space(True)
                alts = self.alternatives(rule, nested=True)
                if self.peek() != ")":
                    raise self.fail("expected ')'")
                self.i += 1
                last_start = len(seq)
                seq.append(("ref", self.new_rule(rule, alts)))
            elif _is_word(c):
                at = self.i
                name = self.name()
                self.refs.setdefault(name, at)
                last_start = len(seq)
                seq.append(("ref", name))
            elif c in "*+?{":
                if not seq:
                    raise self.fail(f"{c!r} follows nothing")
                self.repeat(rule, seq, last_start)
            else:
                break
            self.space(nested)
        return seq

    def literal_chars(self, close: str) -> str:
        out = []
        while True:
            if self.i >= len(self.s):
                raise self.fail("unterminated literal")
            c = self.s[self.i]
            if c == close:
                self.i += 1
                return "".join(out)
            if c in "\r\n" and close == '"':
                raise self.fail("a literal cannot span lines (write \\n)")
            out.append(self.one_char())

    def one_char(self) -> str:
        c = self.s[self.i]
        if c != "\\":
            self.i += 1
            return c
        e = self.peek(1)
        if e in _ESCAPES:
            self.i += 2
            return _ESCAPES[e]
        if e in _HEX:
            n = _HEX[e]
            digits = self.s[self.i + 2 : self.i + 2 + n]
            try:
                cp = int(digits, 16)
            except ValueError:
                raise self.fail(f"\\{e} takes {n} hex digits") from None
            if len(digits) != n or cp > MAX_CP:
                raise self.fail(f"\\{e} takes {n} hex digits (a code point up to 10FFFF)")
            self.i += 2 + n
            return chr(cp)
        raise self.fail(f"unknown escape \\{e}")

    def char_class(self) -> Elem:
        neg = self.peek() == "^"
        if neg:
            self.i += 1
        ranges = []
        while self.peek() != "]":
            if self.i >= len(self.s) or self.peek() in "\r\n":
                raise self.fail("unterminated character class")
            lo = ord(self.one_char())
            hi = lo
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.i += 1
                hi = ord(self.one_char())
                if hi < lo:
                    raise self.fail(f"range {chr(lo)!r}-{chr(hi)!r} is backwards")
            ranges.append((lo, hi))
        self.i += 1
        if not ranges and not neg:
            raise self.fail("empty character class [] matches nothing")
        return ("chars", tuple(sorted(ranges)), neg)

    def repeat(self, rule: str, seq: list[Elem], start: int) -> None:
        c = self.peek()
        self.i += 1
        if c == "*":
            lo, hi = 0, None
        elif c == "+":
            lo, hi = 1, None
        elif c == "?":
            lo, hi = 0, 1
        else:
            lo, hi = self.bounds()
        unit = seq[start:]
        if len(unit) > 1:  # a literal of several characters repeats as a whole
            unit = [("ref", self.new_rule(rule, [unit]))]
        del seq[start:]
        seq.extend(unit * lo)
        if hi is None:  # x* : r ::= x r |
            name = self.new_rule(rule, [])
            self.rules[name] = [unit + [("ref", name)], []]
            seq.append(("ref", name))
        elif hi > lo:  # up to hi - lo more: (x (x (x)?)?)?
            tail: list[Elem] = []
            for _ in range(hi - lo):
                tail = [("ref", self.new_rule(rule, [unit + tail, []]))]
            seq.extend(tail)

    def bounds(self) -> tuple[int, int | None]:
        def number() -> int | None:
            j = self.i
            while self.peek().isdigit():
                self.i += 1
            return int(self.s[j : self.i]) if self.i > j else None

        self.space(False)
        lo = number()
        if lo is None:
            raise self.fail("expected a number in {m,n}")
        self.space(False)
        hi: int | None = lo
        if self.peek() == ",":
            self.i += 1
            self.space(False)
            hi = number()
            self.space(False)
        if self.peek() != "}":
            raise self.fail("expected '}' closing {m,n}")
        self.i += 1
        if hi is not None and hi < lo:
            raise self.fail(f"{{{lo},{hi}}}: the upper bound is below the lower")
        if max(lo, hi or 0) > MAX_REPEAT:
            raise self.fail(f"repetition bounds above {MAX_REPEAT} are not supported")
        return lo, hi


def _check(p: _Parser) -> None:
    if "root" not in p.rules:
        raise GrammarError("the grammar has no 'root' rule (the start rule: root ::= ...)")
    for name, at in p.refs.items():
        if name not in p.rules:
            raise p.fail(f"rule {name!r} is used but never defined", at)
    # left recursion: a rule that can reach itself before consuming a character
    nullable: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, alts in p.rules.items():
            if name not in nullable and any(all(e[0] == "ref" and e[1] in nullable for e in alt) for alt in alts):
                nullable.add(name)
                changed = True
    left: dict[str, set[str]] = {}
    for name, alts in p.rules.items():
        edges = left[name] = set()
        for alt in alts:
            for e in alt:
                if e[0] != "ref":
                    break
                edges.add(e[1])
                if e[1] not in nullable:
                    break
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(r: str) -> None:
        state[r] = 1
        for n in left[r]:
            if state.get(n) == 1:
                user = p.origin.get(n, n)
                raise GrammarError(f"rule {user!r} is left-recursive (it can reach itself before reading a character); "
                                   "rewrite it right-recursively, e.g. list ::= item (\",\" item)*")  # fmt: skip
            if n not in state:
                visit(n)
        state[r] = 2

    for r in p.rules:
        if r not in state:
            visit(r)


def parse(text: str) -> Grammar:
    """Parse and compile a GBNF grammar; :class:`GrammarError` (one line) if it cannot run."""
    p = _Parser(text)
    p.grammar()
    _check(p)
    names = ["root"] + [n for n in p.order if n != "root"]
    rid = {n: i for i, n in enumerate(names)}
    sets: dict[tuple, int] = {}
    ekind: list[int] = []
    earg: list[int] = []
    alt_off = [0]
    alts: list[int] = []
    for n in names:
        for alt in p.rules[n]:
            alts.append(len(ekind))
            for e in alt:
                if e[0] == "ref":
                    ekind.append(REF)
                    earg.append(rid[e[1]])
                else:
                    ekind.append(CHARS)
                    earg.append(sets.setdefault((e[1], e[2]), len(sets)))
            ekind.append(END)
            earg.append(0)
        alt_off.append(len(alts))
    set_off = [0]
    rlo: list[int] = []
    rhi: list[int] = []
    for ranges, _neg in sets:
        rlo.extend(r[0] for r in ranges)
        rhi.extend(r[1] for r in ranges)
        set_off.append(len(rlo))
    i32 = np.int32
    return Grammar(
        ekind=np.array(ekind, np.int8), earg=np.array(earg, i32), alt_off=np.array(alt_off, i32),
        alts=np.array(alts, i32), set_off=np.array(set_off, i32),
        set_neg=np.array([neg for _r, neg in sets], np.uint8).reshape(-1),
        rlo=np.array(rlo, i32), rhi=np.array(rhi, i32), root=0, rule_names=names,
    )  # fmt: skip


@functools.lru_cache(maxsize=16)
def compiled(text: str) -> Grammar:
    """:func:`parse`, kept for the texts seen last (a server sends the same schema request after request)."""
    return parse(text)
