"""JSON Schema -> GBNF: the grammar of the JSON texts a schema accepts, for constrained generation
(OpenAI's ``response_format: {"type": "json_schema", ...}``, Ollama's ``format: {...}``,
llama.cpp's ``--json-schema``).  :func:`schema_to_gbnf` returns grammar text for ``gbnf.parse``.

Supported (anything else raises :class:`SchemaError`, naming the keyword and where it is):

- ``true`` / ``{}`` / no type: any JSON value; ``false``: refused (nothing could be generated).
- ``type``: object, array, string, number, integer, boolean, null, or a list of them.  Without
  ``type``, the type is inferred from the keywords present (``properties`` -> object, ...).
- object: ``properties`` (generated in declared order), ``required``, ``additionalProperties``
  (false, true or a schema; extra keys come after the declared ones and are never a declared name).
  Absent ``additionalProperties`` means *no* other keys when ``properties`` is given (what a model
  should do), and any keys for an object without ``properties`` (``{"type": "object"}``, a dict).
- array: ``items``, ``prefixItems``, ``minItems``, ``maxItems``, ``uniqueItems: false``.
- string: ``minLength``, ``maxLength`` (characters, an escape counting one), ``format`` date,
  time, date-time (RFC 3339, with an offset) and uuid.  ``pattern`` and other formats: refused.
- number / integer: JSON's number syntax (integer: no fraction, no exponent), at most 16 digits a
  part.  Bounds are enforced, not ignored: an integer takes any ``minimum`` / ``maximum`` /
  ``exclusiveMinimum`` / ``exclusiveMaximum`` (a digit-by-digit grammar of the range); a number
  only ``minimum: 0`` (no minus sign) and ``exclusiveMinimum: 0`` (positive).  Other bounds and
  ``multipleOf``: refused.
- ``enum`` / ``const`` of any JSON values (only ``type`` is applied to them, other sibling keywords
  are not), ``anyOf`` / ``oneOf`` (as alternatives: a value matching two ``oneOf`` branches is not
  refused), ``allOf`` of one schema, ``$ref`` to a local JSON pointer (``#``, ``#/$defs/Name``,
  ``#/definitions/Name``); recursion through ``$ref`` gives recursive rules.
- annotations (title, description, default, examples, ...) are ignored.

Refused besides: ``pattern``, ``not``, ``if``/``then``/``else``, ``patternProperties``,
``minProperties``/``maxProperties``, ``uniqueItems: true``, ``contains``, remote ``$ref``, a keyword
next to ``$ref``/``anyOf``/``oneOf``/``allOf``, ``required`` keys missing from ``properties``, and
length/item bounds above 1000 (:data:`MAX_BOUND`, as far as ``gbnf.parse`` unrolls a repetition).

The grammar is stricter than JSON Schema in ways a model does not notice: object keys in declared
order, keys and string enums spelled as ``json.dumps(..., ensure_ascii=False)`` spells them (no
``\\u`` escapes for characters that need none), whitespace only after ``{ [ , :`` and before ``} ]``
(none, one space, or a newline and up to 20 spaces or tabs), nothing around the top-level value.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import unquote


class SchemaError(ValueError):
    """A schema (or a part of one) that cannot be turned into a grammar; one line, with what to do."""


_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "readOnly", "writeOnly",
                "deprecated", "strict", "name", "discriminator", "$defs", "definitions"}  # fmt: skip
_TYPED = {  # the keywords each type reads; a keyword of another type does not apply (JSON Schema's rule)
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "prefixItems", "minItems", "maxItems", "uniqueItems"},
    "string": {"minLength", "maxLength", "format"},
    "number": {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"},
    "integer": {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"},
    "boolean": set(),
    "null": set(),
}
_KNOWN = _ANNOTATIONS | {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"} | set().union(*_TYPED.values())
_HINTS = {
    "pattern": "use enum, format or length bounds instead, or remove it",
    "maximum": "a number (not integer) takes only minimum 0 or exclusiveMinimum 0; use type integer for a range, or remove it",
    "exclusiveMaximum": "a number (not integer) takes only minimum 0 or exclusiveMinimum 0; use type integer for a range, or remove it",
    "multipleOf": "remove it",
    "minProperties": "list the keys in properties and required instead",
    "maxProperties": "remove it, or list the allowed keys in properties",
}
# numbers: at most 16 digits a part (as llama.cpp's json grammar): a model looping on a digit stops
INT_DIGITS = 16
MAX_BOUND = 1000  #: the largest repetition bound gbnf.parse accepts (minLength, maxItems, ...)

_CHAR = r'[^"\\\x7F\x00-\x1F]'  # a string character that needs no escape
_BUILTINS: dict[str, tuple[str, tuple[str, ...]]] = {  # name: (body, rules it uses)
    "space": (r'| " " | "\n" [ \t]{0,20}', ()),  # bounded: a model cannot pad forever
    "escape": (r'"\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )', ()),
    "char": (f"{_CHAR} | escape", ("escape",)),  # either counts as one character
    "string-tail": (r'char* "\""', ("char",)),
    "string": (r'"\"" char* "\""', ("char",)),
    "number": (r'"-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [+-]? [0-9]{1,3} )?', ()),
    "number-nonneg": (r'( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [+-]? [0-9]{1,3} )?', ()),
    # > 0: a nonzero integer part, or 0. and a nonzero digit somewhere in the fraction (the first one
    # is where "0"{0,15} stops, so there is one parse); an exponent never changes the sign
    "number-pos": (r'( [1-9] [0-9]{0,15} ( "." [0-9]{1,16} )? | "0." "0"{0,15} [1-9] [0-9]{0,15} ) ( [eE] [+-]? [0-9]{1,3} )?', ()),
    "integer": (r'"-"? ( "0" | [1-9] [0-9]{0,15} )', ()),
    "integer-nonneg": (r'"0" | [1-9] [0-9]{0,15}', ()),
    "integer-pos": (r"[1-9] [0-9]{0,15}", ()),
    "boolean": (r'"true" | "false"', ()),
    "null": (r'"null"', ()),
    "value": ("object | array | string | number | boolean | null",
              ("object", "array", "string", "number", "boolean", "null")),  # fmt: skip
    "object": (r'"{" space ( string ":" space value ( "," space string ":" space value )* space )? "}"',
               ("space", "string", "value")),  # fmt: skip
    "array": (r'"[" space ( value ( "," space value )* space )? "]"', ("space", "value")),
    "date-body": ('[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [12] [0-9] | "3" [01] )', ()),
    "time-body": ('( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" ( [0-5] [0-9] | "60" ) ( "." [0-9]+ )? '
                  '( [Zz] | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )', ()),  # fmt: skip
    "date": (r'"\"" date-body "\""', ("date-body",)),
    "time": (r'"\"" time-body "\""', ("time-body",)),
    "date-time": (r'"\"" date-body [Tt] time-body "\""', ("date-body", "time-body")),
    "uuid": (r'"\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\""',
             ()),  # fmt: skip
}


def _lit(text: str) -> str:
    """``text`` as a GBNF literal."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _class_char(c: str) -> str:
    """``c`` inside a character class; ``-`` and ``^`` as \\x escapes, which every GBNF reader takes."""
    if c in "[]\\":
        return "\\" + c
    if c in "-^" or ord(c) < 0x20 or ord(c) == 0x7F:
        return f"\\x{ord(c):02X}"
    return c


def _rep(lo: int, hi: int | None) -> str | None:
    """The postfix for lo..hi repeats ('' for exactly one), None for exactly zero."""
    if hi is None:
        return {0: "*", 1: "+"}.get(lo, f"{{{lo},}}")
    if hi == 0:
        return None
    if lo == hi:
        return "" if lo == 1 else f"{{{lo}}}"
    return "?" if (lo, hi) == (0, 1) else f"{{{lo},{hi}}}"


def _json(value: Any, path: str) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        raise SchemaError(f"json schema: {value} at {path} is not a JSON value; remove it")
    return json.dumps(value, ensure_ascii=False)


def _type_of(v: Any) -> set[str]:
    """The JSON Schema types the value ``v`` has (an integer is also a number)."""
    if v is None:
        return {"null"}
    if isinstance(v, bool):
        return {"boolean"}
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer()):
        return {"integer", "number"}
    if isinstance(v, float):
        return {"number"}
    return {"string" if isinstance(v, str) else "array" if isinstance(v, list) else "object"}


def _pointer(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _int_bounds(schema: dict, path: str) -> tuple[int | None, int | None]:
    """An integer schema's inclusive bounds (None: unbounded) from minimum / maximum / exclusive*."""
    lo = hi = None
    for kw in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        if kw not in schema:
            continue
        v = schema[kw]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SchemaError(f'json schema: "{kw}" at {path} must be a number, got {v!r:.40}')
        if abs(v) >= 10**INT_DIGITS:
            raise SchemaError(f'json schema: "{kw}": {v!r} at {path} is past the {INT_DIGITS} digits an integer may have here')
        if kw.endswith("inimum"):
            b = math.floor(v) + 1 if kw == "exclusiveMinimum" else math.ceil(v)
            lo = b if lo is None else max(lo, b)
        else:
            b = math.ceil(v) - 1 if kw == "exclusiveMaximum" else math.floor(v)
            hi = b if hi is None else min(hi, b)
    if lo is not None and hi is not None and lo > hi:
        raise SchemaError(f"json schema: no integer lies between the bounds at {path} ({lo} > {hi})")
    return lo, hi


def _same_length(x: str, y: str) -> str:
    """The digit strings of x's length from x to y (x <= y, no sign), as a GBNF expression."""
    n = len(x) - 1
    if n == 0:
        return f"[{x}-{y}]" if x != y else f'"{x}"'
    if x[0] == y[0]:
        return f'"{x[0]}" ({_same_length(x[1:], y[1:])})'
    if x[1:] == "0" * n and y[1:] == "9" * n:
        return f"[{x[0]}-{y[0]}] [0-9]{{{n}}}"
    alts = [f'"{x[0]}" ({_same_length(x[1:], "9" * n)})']
    if int(x[0]) + 1 <= int(y[0]) - 1:
        alts.append(f"[{int(x[0]) + 1}-{int(y[0]) - 1}] [0-9]{{{n}}}")
    alts.append(f'"{y[0]}" ({_same_length("0" * n, y[1:])})')
    return " | ".join(alts)


def _nonneg_range(a: int, b: int | None) -> list[str]:
    """Alternatives for the integers a..b (b None: no upper bound), 0 <= a, written without leading zeros."""
    alts = []
    top = len(str(b)) if b is not None else INT_DIGITS
    for length in range(len(str(a)), top + 1):
        lo = max(a, 10 ** (length - 1) if length > 1 else 0)
        hi = min(b, 10**length - 1) if b is not None else 10**length - 1
        if lo > hi:
            continue
        if b is None and lo == 10 ** (length - 1) and length > 1:  # every longer number: one alternative
            alts.append(f"[1-9] [0-9]{{{length - 1},{INT_DIGITS - 1}}}")
            break
        alts.append(_same_length(str(lo), str(hi)))
    return alts


def _int_range(lo: int | None, hi: int | None) -> str:
    """A GBNF expression for the JSON integers in [lo, hi] (None: unbounded), one parse each."""
    alts = []
    if lo is None or lo < 0:  # the negatives: a minus, then their magnitudes -min(hi, -1) .. -lo
        top = None if lo is None else -lo
        least = 1 if hi is None or hi >= 0 else -hi
        alts += [f'"-" ({a})' for a in _nonneg_range(least, top)]
    if hi is None or hi >= 0:
        alts += _nonneg_range(max(lo or 0, 0) if lo is not None else 0, hi)
    return " | ".join(f"({a})" for a in alts)


class _Converter:
    def __init__(self, root: dict | bool, start: str = "root") -> None:
        self.root = root
        self.start = start  # the start rule's name
        self.rules: dict[str, str] = {}  # generated rules, in creation order
        self.builtins: dict[str, str] = {}  # the fixed ones used so far
        self.by_body: dict[str, str] = {}  # a body already written -> its rule (identical schemas share one)
        self.names = set(_BUILTINS) | {"root", start}
        self.refs = {"#": start}  # $ref -> its rule
        self.head = {"#"}  # $refs being defined with no character read since: reaching one again is left recursion

    def grammar(self) -> str:
        self._define(self.start, self.root, "#")
        rules = [(self.start, self.rules.pop(self.start)), *self.rules.items(), *self.builtins.items()]
        return "".join(f"{name} ::= {body}\n" for name, body in rules)

    # ---------------------------------------------------------------- rules and names
    def _builtin(self, name: str) -> str:
        if name not in self.builtins:
            body, deps = _BUILTINS[name]
            self.builtins[name] = body
            for d in deps:
                self._builtin(d)
        return name

    def _unique(self, hint: str) -> str:
        # gbnf.parse names its helper rules rule-1, rule-2, ...: keep ours out of that pattern
        base = re.sub(r"[^A-Za-z0-9-]+", "-", hint).strip("-")[:60] or "x"
        if re.search(r"-[0-9]+$", base):
            base += "x"
        name, k = base, 2
        while name in self.names:
            name, k = f"{base}{k}", k + 1
        self.names.add(name)
        return name

    def _rule(self, hint: str, body: str, exact: bool) -> str:
        """A rule for ``body``: named ``hint`` itself where ``exact`` (reserved already), else a fresh
        name from it, or the rule an identical body got before."""
        if exact:
            self.rules[hint] = body
        elif body in self.by_body:
            return self.by_body[body]
        else:
            hint = self._unique(hint)
            self.rules[hint] = body
        self.by_body.setdefault(body, hint)
        return hint

    def _define(self, name: str, schema: Any, path: str) -> None:
        expr = self._visit(schema, path, name, exact=True)
        if name not in self.rules:  # the schema was a builtin or another $ref: name it
            self.rules[name] = expr

    def _child(self, hint: str, part: str) -> str:
        return part if hint == self.start else f"{hint}-{part}"

    # ---------------------------------------------------------------- schemas
    def _visit(self, schema: Any, path: str, hint: str, exact: bool = False) -> str:
        """A term (a rule name or a literal) for the values ``schema`` accepts."""
        if schema is True:
            return self._builtin("value")
        if schema is False:
            raise SchemaError(f"json schema: false at {path} accepts nothing, so nothing could be generated; remove it")
        if not isinstance(schema, dict):
            raise SchemaError(f"json schema: expected a schema (an object or a boolean) at {path}, got {schema!r}")
        for key in schema:
            if key not in _KNOWN:
                raise SchemaError(f'json schema: "{key}" at {path} is not supported; {_HINTS.get(key, "remove it")}')
        active = [k for k in schema if k not in _ANNOTATIONS]
        for kw in ("$ref", "anyOf", "oneOf", "allOf"):
            if kw not in schema:
                continue
            others = [k for k in active if k != kw]
            if others:
                raise SchemaError(f'json schema: "{others[0]}" next to "{kw}" at {path} is not supported; '
                                  f"move it into the {kw} schemas")  # fmt: skip
            if kw == "$ref":
                return self._ref(schema[kw], path)
            subs = schema[kw]
            if not isinstance(subs, list) or not subs or (kw == "allOf" and len(subs) != 1):
                what = "a list of exactly one schema" if kw == "allOf" else "a non-empty list of schemas"
                raise SchemaError(f'json schema: "{kw}" at {path} must be {what}; merge the schemas into one')
            if kw == "allOf":
                return self._visit(subs[0], f"{path}/allOf/0", hint, exact)
            alts = [self._visit(s, f"{path}/{kw}/{i}", self._child(hint, f"alt{i}")) for i, s in enumerate(subs)]
            return self._alternatives(alts, hint, exact)

        types = schema.get("type")
        if isinstance(types, str):
            types = [types]
        if types is not None and (not isinstance(types, list) or not types or any(t not in _TYPED for t in types)):
            raise SchemaError(f"json schema: type {schema['type']!r} at {path} is not a JSON Schema type "
                              f"(or a list of them); use one of {', '.join(_TYPED)}")  # fmt: skip
        if "enum" in schema or "const" in schema:
            return self._enum(schema, types, path, hint, exact)
        if types is None:  # as a model would read it: the type whose keywords are there
            types = [t for t in ("object", "array", "string", "number") if _TYPED[t] & schema.keys()]
            if not types:
                return self._builtin("value")
        if "number" in types:  # an integer is a number: both would be two parses of "1"
            types = [t for t in types if t != "integer"]
        alts = [self._typed(t, schema, path, hint if len(types) == 1 else self._child(hint, t),
                            exact and len(types) == 1) for t in dict.fromkeys(types)]  # fmt: skip
        return self._alternatives(alts, hint, exact)

    def _alternatives(self, alts: list[str], hint: str, exact: bool) -> str:
        alts = list(dict.fromkeys(alts))  # the same alternative twice: two parses of every value
        if len(alts) == 1:
            return alts[0]
        return self._rule(hint, " | ".join(alts), exact)

    def _ref(self, ref: Any, path: str) -> str:
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise SchemaError(f'json schema: "$ref" {ref!r} at {path} is not supported; '
                              "only local references (#/$defs/Name) are, so inline that schema")  # fmt: skip
        if ref in self.head:
            raise SchemaError(f'json schema: "$ref" {ref} at {path} reaches itself before any JSON is read '
                              "(a left-recursive schema); put it inside an object or array")  # fmt: skip
        if ref not in self.refs:
            target: Any = self.root
            for part in [unquote(p).replace("~1", "/").replace("~0", "~") for p in ref[1:].split("/")[1:]]:
                if isinstance(target, dict) and part in target:
                    target = target[part]
                elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                    target = target[int(part)]
                else:
                    raise SchemaError(f'json schema: "$ref" {ref} at {path} points at nothing; fix the reference')
            self.refs[ref] = name = self._unique(ref.rsplit("/", 1)[-1])  # named first: recursion finds it
            self.head.add(ref)
            self._define(name, target, ref)
            self.head.discard(ref)
        return self.refs[ref]

    def _enum(self, schema: dict, types: list[str] | None, path: str, hint: str, exact: bool) -> str:
        values = schema.get("enum", [])
        if "enum" in schema and (not isinstance(values, list) or not values):
            raise SchemaError(f'json schema: "enum" at {path} must be a non-empty list of values')
        if "const" in schema:  # both: the const, if the enum has it
            same = [v for v in values if _json(v, path) == _json(schema["const"], path)]
            values = [schema["const"]] if "enum" not in schema or same else []
        if types is not None:
            values = [v for v in values if _type_of(v) & set(types)]
        if not values:
            raise SchemaError(f"json schema: no value of enum/const at {path} fits its type; fix the schema")
        return self._alternatives([self._value(v, path) for v in values], hint, exact)

    def _value(self, v: Any, path: str) -> str:
        """A term for exactly the JSON value ``v`` (with the usual freedom of whitespace)."""
        if not isinstance(v, (dict, list)):
            return _lit(_json(v, path))
        space = self._builtin("space")
        if isinstance(v, dict):
            items = [f'{_lit(_json(k, path) + ":")} {space} {self._value(x, path)}' for k, x in v.items()]
        else:
            items = [self._value(x, path) for x in v]
        opening, closing = ('"{"', '"}"') if isinstance(v, dict) else ('"["', '"]"')
        inner = [f' "," {space} '.join(items), space] if items else []
        return " ".join(["(", opening, space, *inner, closing, ")"])

    def _count(self, schema: dict, kw: str, path: str) -> int | None:
        n = schema.get(kw)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise SchemaError(f'json schema: "{kw}" at {path} must be a non-negative integer, got {n!r}')
        if n is not None and n > MAX_BOUND:
            raise SchemaError(f'json schema: "{kw}": {n} at {path} is over {MAX_BOUND}, too large a bound for '
                              "the grammar; lower it or remove it")  # fmt: skip
        return n

    def _typed(self, t: str, schema: dict, path: str, hint: str, exact: bool) -> str:
        if t in ("number", "integer"):
            return self._number(t, schema, path)
        if t == "string":
            return self._string(schema, path, hint, exact)
        if t == "object":
            return self._object(schema, path, hint, exact)
        if t == "array":
            return self._array(schema, path, hint, exact)
        return self._builtin(t)

    def _number(self, t: str, schema: dict, path: str) -> str:
        if t == "integer":
            lo, hi = _int_bounds(schema, path)
            builtin = {(None, None): "integer", (0, None): "integer-nonneg", (1, None): "integer-pos"}.get((lo, hi))
            return self._builtin(builtin) if builtin else self._rule("int-range", _int_range(lo, hi), exact=False)
        bounds = {k: schema[k] for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum") if k in schema}
        key = tuple((k, v) for k, v in bounds.items() if not isinstance(v, bool))
        known = {(): t, (("minimum", 0),): f"{t}-nonneg", (("exclusiveMinimum", 0),): f"{t}-pos"}
        if key not in known or len(key) != len(bounds):
            kw = next(iter(bounds))
            raise SchemaError(f'json schema: "{kw}": {bounds[kw]!r} at {path} is not supported; {_HINTS["maximum"]}')
        return self._builtin(known[key])

    def _string(self, schema: dict, path: str, hint: str, exact: bool) -> str:
        lo, hi = self._count(schema, "minLength", path) or 0, self._count(schema, "maxLength", path)
        if "format" in schema:
            fmt = schema["format"]
            if fmt not in ("date", "time", "date-time", "uuid"):
                raise SchemaError(f'json schema: "format": {fmt!r} at {path} is not supported; '
                                  "date, time, date-time and uuid are, or remove it")  # fmt: skip
            if lo or hi is not None:
                raise SchemaError(f'json schema: "format" with minLength/maxLength at {path} is not supported; '
                                  "remove the lengths")  # fmt: skip
            return self._builtin(fmt)
        if hi is not None and hi < lo:
            raise SchemaError(f"json schema: maxLength < minLength at {path}: no string fits; fix the bounds")
        if lo == 0 and hi is None:
            return self._builtin("string")
        chars = "" if hi == 0 else f" {self._builtin('char')}{_rep(lo, hi)}"
        return self._rule(hint, f'"\\""{chars} "\\""', exact)

    def _object(self, schema: dict, path: str, hint: str, exact: bool) -> str:
        props, required = schema.get("properties", {}), schema.get("required", [])
        if not isinstance(props, dict) or not isinstance(required, list):
            raise SchemaError(f'json schema: "properties" (an object) or "required" (a list) at {path} is malformed')
        for name in required:
            if name not in props:
                raise SchemaError(f'json schema: required property {name!r} at {path} is not in "properties"; '
                                  "add it there")  # fmt: skip
        extra_schema = schema.get("additionalProperties", not props)
        space = self._builtin("space")
        saved, self.head = self.head, set()  # "{" is read before anything inside: recursion is fine
        try:
            members: list[tuple[str, str, bool]] = []  # (name, key ":" space value, required)
            for name, sub in props.items():
                if sub is False:  # a key that may not appear
                    if name in required:
                        raise SchemaError(f"json schema: property {name!r} at {path} is required but false")
                    continue
                val = self._visit(sub, f"{path}/properties/{_pointer(name)}", self._child(hint, name))
                members.append((name, f"{_lit(_json(name, path) + ':')} {space} {val}", name in required))
            extra = None
            if extra_schema is not False:
                val = self._visit(extra_schema, f"{path}/additionalProperties", self._child(hint, "value"))
                key = self._other_key(list(props), path, hint) if props else self._builtin("string")
                extra = self._rule(self._child(hint, "extra"), f'{key} ":" {space} {val}', False)
        finally:
            self.head = saved

        # The members in order, commas between: tail(j) is members j.. each after a comma (an optional
        # one in ( )?), extra keys last.  The first member present opens the list without a comma: one
        # alternative per member that can be first (those up to and including the first required one).
        # Those alternatives share their tails, so a tail used twice is a rule (else n leading optional
        # members would write n^2/2 segments).
        first_req = next((i for i, (_n, _kv, req) in enumerate(members) if req), len(members))
        tails: dict[int, str] = {}

        def tail(j: int) -> str:
            if j not in tails:
                if j == len(members):
                    tails[j] = f'( "," {space} {extra} )*' if extra else ""
                else:
                    name, kv, req = members[j]
                    seg = f'"," {space} {kv}' if req else f'( "," {space} {kv} )?'
                    text = f"{seg} {tail(j + 1)}".strip()
                    shared = 2 <= j <= first_req  # used by alternative j-1 and by tail(j-1)
                    tails[j] = self._rule(self._child(hint, f"from-{name}"), text, False) if shared else text
            return tails[j]

        alts = [f"{kv} {tail(i + 1)}".strip() for i, (_n, kv, _req) in enumerate(members[: first_req + 1])]
        if first_req == len(members) and extra:
            alts.append(f'{extra} ( "," {space} {extra} )*')
        if not alts:
            body = f'"{{" {space} "}}"'
        else:
            seq = alts[0] if len(alts) == 1 else "( " + " | ".join(alts) + " )"
            may_be_empty = first_req == len(members)
            body = f'"{{" {space} ( {seq} {space} )? "}}"' if may_be_empty else f'"{{" {space} {seq} {space} "}}"'
        return self._rule(hint, body, exact)

    def _other_key(self, names: list[str], path: str, hint: str) -> str:
        """A rule for a quoted key that is none of ``names``: a trie of them, leaving it at the first
        character that differs (so no declared key can be taken for an extra one, nor parse twice)."""
        for n in names:
            if any(c in '"\\' or ord(c) < 0x20 or ord(c) == 0x7F for c in n):
                raise SchemaError(f"json schema: property {n!r} at {path} (with a quote, backslash or control "
                                  "character) next to additionalProperties is not supported; rename it")  # fmt: skip
        tail, escape = self._builtin("string-tail"), self._builtin("escape")

        def node(prefix: str) -> str:
            nxt = sorted({n[len(prefix)] for n in names if len(n) > len(prefix) and n.startswith(prefix)})
            alts = [] if prefix in names else [r'"\""']  # ending here is a declared key
            alts += [f"{_lit(c)} {node(prefix + c)}" for c in nxt]
            other = "[^" + _CHAR[2:-1] + "".join(_class_char(c) for c in nxt) + "]"
            alts.append(f"( {other} | {escape} ) {tail}")
            return "( " + " | ".join(alts) + " )"

        return self._rule(self._child(hint, "key"), r'"\"" ' + node(""), False)

    def _array(self, schema: dict, path: str, hint: str, exact: bool) -> str:
        items, prefix = schema.get("items", True), schema.get("prefixItems", [])
        if isinstance(items, list):
            raise SchemaError(f'json schema: "items" as a list at {path} is not supported; use "prefixItems"')
        if not isinstance(prefix, list):
            raise SchemaError(f'json schema: "prefixItems" at {path} must be a list of schemas')
        if schema.get("uniqueItems"):
            raise SchemaError(f'json schema: "uniqueItems" at {path} is not supported; remove it')
        lo, hi = self._count(schema, "minItems", path) or 0, self._count(schema, "maxItems", path)
        space = self._builtin("space")
        saved, self.head = self.head, set()  # "[" is read first
        try:
            pre = [self._visit(s, f"{path}/prefixItems/{i}", self._child(hint, f"item{i}"))
                   for i, s in enumerate(prefix)]
            if items is False:  # nothing after the prefix
                hi = len(pre) if hi is None else min(hi, len(pre))
            # no rule for items that maxItems leaves no room for
            more = items is not False and (hi is None or hi > len(pre))
            item = self._visit(items, f"{path}/items", self._child(hint, "item")) if more else None
        finally:
            self.head = saved
        if hi is not None and lo > hi:
            raise SchemaError(f"json schema: minItems {lo} at {path} is more than the array can hold ({hi}); fix it")

        def rest(j: int) -> str:
            """Elements j.. (j >= 1), each after a comma; the prefix ones nested, so the k-th present means
            the ones before it are."""
            if j < len(pre) and (hi is None or j < hi):
                seg = f'"," {space} {pre[j]} {rest(j + 1)}'.strip()
                return seg if j < lo else f"( {seg} )?"
            rep = None if item is None else _rep(max(lo - j, 0), None if hi is None else hi - j)
            return "" if rep is None else f'( "," {space} {item} ){rep}'

        if hi == 0:
            body = f'"[" {space} "]"'
        else:
            seq = f"{pre[0] if pre else item} {rest(1)}".strip()
            body = f'"[" {space} {seq} {space} "]"' if lo else f'"[" {space} ( {seq} {space} )? "]"'
        return self._rule(hint, body, exact)


def schema_to_gbnf(schema: dict | bool, start: str = "root") -> str:
    """The GBNF grammar (start rule ``start``, first) of the JSON texts ``schema`` accepts; :class:`SchemaError`
    for what the module docstring lists as unsupported.  Another ``start`` than ``root`` gives rules to
    put in a larger grammar (no rule of it is named ``root``)."""
    if not isinstance(schema, (dict, bool)):
        raise SchemaError(f"json schema: expected an object or a boolean, got {type(schema).__name__}")
    return _Converter(schema, start).grammar()
