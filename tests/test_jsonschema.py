"""JSON Schema -> GBNF (runtime/jsonschema.py): the grammar accepts the JSON texts a schema accepts
(written compactly, with json.dumps' default spacing or indented) and refuses the others; what the
converter cannot express it refuses with a SchemaError naming the keyword and where it is."""

from __future__ import annotations

import json
import re

import pytest

from kvrun.runtime.gbnf import parse
from kvrun.runtime.jsonschema import SchemaError, schema_to_gbnf


def grammar(schema):
    return parse(schema_to_gbnf(schema))


def spellings(value) -> list[str]:
    """The ways a model (or json.dumps) writes a value: compact, default spacing, indented."""
    return [json.dumps(value, separators=(",", ":"), ensure_ascii=False), json.dumps(value, ensure_ascii=False),
            json.dumps(value, indent=2, ensure_ascii=False)]  # fmt: skip


# what pydantic emits for: class Address(BaseModel): street: str; city: str; zip: str | None = None
#                          class Person(BaseModel): name: constr(min_length=1, max_length=20); age: NonNegativeInt
#                                                   role: Role = "user"; address: Address; tags: list[str] (<= 3)
PERSON = {
    "$defs": {
        "Address": {"properties": {"street": {"title": "Street", "type": "string"},
                                   "city": {"title": "City", "type": "string"},
                                   "zip": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}},
                    "required": ["street", "city"], "title": "Address", "type": "object"},
        "Role": {"enum": ["admin", "user", "guest"], "title": "Role", "type": "string"},
    },
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 20, "title": "Name"},
                   "age": {"type": "integer", "minimum": 0},
                   "role": {"$ref": "#/$defs/Role", "default": "user"},
                   "address": {"$ref": "#/$defs/Address"},
                   "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
    "required": ["name", "age", "address"], "title": "Person", "type": "object",
}  # fmt: skip
ADDR = {"street": "1 Main St", "city": "Springfield"}

TREE = {  # class Node(BaseModel): value: int; children: list["Node"] = []
    "$defs": {"Node": {"type": "object", "properties": {
        "value": {"type": "integer"},
        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "default": []}}, "required": ["value"]}},
    "$ref": "#/$defs/Node",
}  # fmt: skip


def obj(required, *names, **extra):
    """An object of integer properties ``names``, the ``required`` ones required."""
    props = {n: {"type": "integer"} for n in names}
    return {"type": "object", "properties": props, "required": list(required), **extra}


CASES = [  # (id, schema, valid values, invalid texts)
    ("person", PERSON,
     [{"name": "Ann", "age": 31, "address": ADDR},
      {"name": "Bo", "age": 0, "role": "admin", "address": {**ADDR, "zip": "12345"}, "tags": ["a", "b", "c"]},
      {"name": "Çé \"q\" \\ \n", "age": 7, "role": "guest", "address": {**ADDR, "zip": None}, "tags": []}],
     ['{"name": "Ann", "address": {"street": "x", "city": "y"}}',  # age missing
      '{"name": "Ann", "age": "31", "address": {"street": "x", "city": "y"}}',  # wrong type
      '{"name": "Ann", "age": -1, "address": {"street": "x", "city": "y"}}',  # minimum 0
      '{"name": "", "age": 1, "address": {"street": "x", "city": "y"}}',  # minLength 1
      '{"name": "Ann", "age": 1, "role": "boss", "address": {"street": "x", "city": "y"}}',  # not in the enum
      '{"name": "Ann", "age": 1, "address": {"street": "x"}}',  # nested required missing
      '{"name": "Ann", "age": 1, "address": {"street": "x", "city": "y"}, "tags": ["a", "b", "c", "d"]}',
      # an extra key: with properties given, no additionalProperties means none (what a model should write)
      '{"name": "Ann", "age": 1, "address": {"street": "x", "city": "y"}, "email": "a@b"}',
      '{"name": "Ann", "age": 1, "address": {"street": "x", "city": "y"},}',  # trailing comma
      '{"name": Ann, "age": 1, "address": {"street": "x", "city": "y"}}']),  # unquoted string
    ("all-optional", obj([], "a", "b", "c"),
     [{}, {"a": 1}, {"b": 2}, {"c": 3}, {"a": 1, "c": 3}, {"b": 2, "c": 3}, {"a": 1, "b": 2, "c": 3}],
     ['{,}', '{"a": 1,}', '{, "b": 2}', '{"a": 1 "b": 2}', '{"a": 1, "d": 4}',
      '{"a": 1, "a": 1}', '{"b": 2, "a": 1}']),  # a key twice, keys out of their declared order
    ("optional-first", obj(["c"], "a", "b", "c"),
     [{"c": 3}, {"a": 1, "c": 3}, {"b": 2, "c": 3}, {"a": 1, "b": 2, "c": 3}],
     ['{}', '{"a": 1}', '{"a": 1, "b": 2}', '{, "c": 3}', '{"c": 3,}']),
    ("optional-middle", obj(["a", "c"], "a", "b", "c"),
     [{"a": 1, "c": 3}, {"a": 1, "b": 2, "c": 3}],
     ['{"a": 1}', '{"c": 3}', '{"b": 2, "c": 3}', '{"a": 1,, "c": 3}', '{"a": 1, "b": 2}']),
    ("optional-last", obj(["a"], "a", "b", "c"),
     [{"a": 1}, {"a": 1, "b": 2}, {"a": 1, "c": 3}, {"a": 1, "b": 2, "c": 3}],
     ['{}', '{"b": 2}', '{"a": 1,}', '{"a": 1, "b": 2,}', '{"a": null}']),
    ("extra-true", obj(["id"], "id", additionalProperties=True),
     [{"id": 1}, {"id": 1, "x": "y", "z": [1, {"k": None}]}, {"id": 1, "i": 2, "idx": 3, "": 4}],
     ['{"x": 1}', '{"id": 1, "id": 2}', '{"id": 1, x: 2}', '{"id": 1, "x": 2,}']),
    ("extra-schema", obj([], "id", additionalProperties={"type": "string"}),
     [{}, {"id": 1}, {"x": "a"}, {"id": 1, "x": "a", "y": "b"}],
     ['{"x": 1}', '{"id": "1"}', '{"id": 1, "x": null}']),
    ("dict", {"type": "object", "additionalProperties": {"type": "integer"}},
     [{}, {"a": 1}, {"a": 1, "b": -2, "a b": 3}], ['{"a": "1"}', '{"a": 1.5}', '{a: 1}']),
    ("any-object", {"type": "object"}, [{}, {"a": [1, "x", None, True, {"b": 2.5e-3}]}], ['[]', '{"a"}']),
    ("array-bounds", {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
     [[1], [1, 2], [1, 2, 3]], ['[]', '[1, 2, 3, 4]', '[1,]', '["1"]', '[1 2]']),
    ("tuple", {"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}], "minItems": 2,
               "maxItems": 2},  # fmt: skip
     [["a", 1], ["b", -2.5e10]], ['["a"]', '[1, "a"]', '["a", 1, 2]', '[]']),
    ("prefix-then-items", {"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "boolean"}},
     [[], ["a"], ["a", True], ["a", True, False]], ['[true]', '["a", "b"]', '["a", true,]']),
    ("prefix-only", {"type": "array", "prefixItems": [{"type": "string"}, {"type": "null"}], "items": False},
     [[], ["a"], ["a", None]], ['["a", null, null]', '[null]']),
    ("enum", {"enum": ["red", 2, 3.5, None, True, [1, "x"], {"k": {"v": []}}]},
     ["red", 2, 3.5, None, True, [1, "x"], {"k": {"v": []}}],
     ['"blue"', 'red', '3', 'false', '[1]', '{"k": {}}', '"red" ']),  # (no whitespace around the value)
    ("const", {"const": "v1"}, ["v1"], ['"v2"', '"v1', 'v1']),
    ("nullable", {"anyOf": [{"type": "integer"}, {"type": "null"}]}, [5, None, -3], ['"5"', 'nul', '5.5']),
    ("type-list", {"type": ["string", "number", "integer"], "maxLength": 2}, ["ab", 1, 2.5],
     ['"abc"', 'true', '1.']),
    ("tree", TREE,
     [{"value": 1}, {"value": 1, "children": []},
      {"value": 1, "children": [{"value": 2, "children": [{"value": 3}]}]}],
     ['{"children": []}', '{"value": 1, "children": [{}]}', '{"value": 1, "children": {"value": 2}}']),
    ("string-length", {"type": "string", "minLength": 2, "maxLength": 4},
     ["ab", "abcd", "\\\"", "\u00e9\u00e9\u00e9", "\U0001f600x"], ['"a"', '"abcde"', '""', '"\\u00"']),
    ("any", {}, [None, 1, -0.5e7, "s", [], {}, [{"a": [True, False]}]], ['nul', '01', '[1,]', "'s'", '{"a"}']),
    ("true", True, [0, "x", {"a": None}], ['{', '"']),
    ("number", {"type": "number"}, [0, -1, 1.25, 1e100, -2.5e-07], ['01', '1.', '.5', '+1', '1e', '--1', 'NaN']),
    ("integer-nonneg", {"type": "integer", "minimum": 0}, [0, 7, 120], ['-1', '1.0', '007']),  # 1.0: no fraction
    ("integer-pos", {"type": "integer", "exclusiveMinimum": 0}, [1, 99], ['0', '-5']),
    ("integer-range", {"type": "integer", "minimum": -12, "maximum": 305}, [-12, -1, 0, 9, 10, 99, 100, 299, 305],
     ['-13', '-0', '306', '999', '1000', '007', '3050']),
    ("integer-exclusive", {"type": "integer", "exclusiveMinimum": 17.5, "exclusiveMaximum": 100}, [18, 50, 99], ['17', '100', '-20']),
    ("number-pos", {"type": "number", "exclusiveMinimum": 0}, [1, 0.5, 0.001, 3e-9, 10.0],
     ['0', '0.0', '0.000', '0e5', '-1', '-0.5']),
    ("formats", {"type": "object", "properties": {"d": {"type": "string", "format": "date"},
                                                  "t": {"type": "string", "format": "time"},
                                                  "dt": {"type": "string", "format": "date-time"},
                                                  "u": {"type": "string", "format": "uuid"}}},  # fmt: skip
     [{"d": "2024-02-29", "t": "23:59:59Z", "dt": "2024-01-01T12:00:00.5+05:30",
       "u": "123e4567-e89b-12d3-a456-426614174000"}],
     ['{"d": "2024-13-01"}', '{"d": "24-01-01"}', '{"t": "24:00:00Z"}', '{"t": "12:00:00"}',
      '{"dt": "2024-01-01 12:00:00Z"}', '{"u": "123e4567e89b12d3a456426614174000"}']),
    ("allOf-one", {"properties": {"a": {"allOf": [{"$ref": "#/definitions/A"}], "description": "pydantic v1 style"}},
                   "required": ["a"], "definitions": {"A": {"type": "array", "items": {"type": "boolean"}}}},
     [{"a": []}, {"a": [True, False]}], ['{}', '{"a": [1]}']),
    ("oneOf-tagged", {"oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}],
                      "discriminator": {"propertyName": "kind"},
                      "$defs": {"Cat": obj(["kind", "lives"], "kind", "lives") | {"properties": {
                                    "kind": {"const": "cat"}, "lives": {"type": "integer"}}},
                                "Dog": obj(["kind"], "kind", "good") | {"properties": {
                                    "kind": {"const": "dog"}, "good": {"type": "boolean"}}}}},
     [{"kind": "cat", "lives": 9}, {"kind": "dog"}, {"kind": "dog", "good": True}],
     ['{"kind": "cat"}', '{"kind": "dog", "lives": 9}', '{"kind": "cow"}']),
    ("root-ref", {"type": "object", "properties": {"next": {"$ref": "#"}}},
     [{}, {"next": {}}, {"next": {"next": {"next": {}}}}], ['{"next": null}', '{"next": {"next": 1}}']),
    ("odd-names", {"type": "object", "properties": {"a b": {"type": "integer"}, "a_b": {"type": "string"},
                                                    "a-b": {"type": "boolean"}, "1": {"type": "null"},
                                                    "é]^-": {"type": "integer"}, "string": {"maxLength": 1}},
                   "additionalProperties": {"type": "integer"}},  # fmt: skip
     [{"a b": 1, "a_b": "x", "a-b": True, "1": None, "é]^-": 2, "string": "s", "é]": 3, "é]^": 4, "ab": 5}],
     ['{"a b": "x"}', '{"a_b": 1}', '{"é]^-": "x"}', '{"string": "ss"}', '{"é]^-x": "x"}']),
]  # fmt: skip


@pytest.mark.parametrize("name,schema,valid,invalid", CASES, ids=[c[0] for c in CASES])
def test_valid_instances_are_accepted(name, schema, valid, invalid):
    g = grammar(schema)
    for value in valid:
        for text in spellings(value):
            assert g.accepts(text), text


@pytest.mark.parametrize("name,schema,valid,invalid", CASES, ids=[c[0] for c in CASES])
def test_invalid_instances_are_refused(name, schema, valid, invalid):
    g = grammar(schema)
    for text in invalid:
        assert not g.accepts(text), text


def test_every_prefix_of_a_valid_text_can_be_continued():
    """A model writing a valid instance is never blocked halfway; one going wrong is stopped at once."""
    g = grammar(PERSON)
    text = json.dumps({"name": "Bo", "age": 30, "role": "user", "address": {**ADDR, "zip": None}, "tags": ["x"]})
    assert all(g.accepts_prefix(text[:k]) for k in range(len(text) + 1))
    assert not g.accepts_prefix('{"name": "Bo", "agee')
    assert not g.accepts_prefix('{"name": "Bo",  ')  # two spaces: only one whitespace run between tokens


def test_whitespace_between_tokens_is_bounded():
    g = grammar({"type": "array", "items": {"type": "integer"}})
    assert g.accepts("[\n" + " " * 20 + "1\n]")
    assert not g.accepts_prefix("[\n" + " " * 21)
    assert not g.accepts(" [1]") and not g.accepts("[1] ")


@pytest.mark.parametrize("schema", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_one_rule_a_line_root_first_names_of_letters_digits_and_hyphens(schema):
    names = [line.split(" ::= ")[0] for line in schema_to_gbnf(schema).splitlines()]
    assert names[0] == "root"
    assert all(re.fullmatch(r"[A-Za-z0-9-]+", n) for n in names), names
    assert len(names) == len(set(names))


def test_a_recursive_schema_gives_a_recursive_rule():
    text = schema_to_gbnf(TREE)
    assert re.search(r"^Node ::= .*Node-children", text, re.M)
    assert re.search(r"^Node-children ::= .*Node", text, re.M)
    deep = {"value": 0}
    for i in range(1, 8):
        deep = {"value": i, "children": [deep, {"value": -i}]}
    assert grammar(TREE).accepts(json.dumps(deep))


@pytest.mark.parametrize("lo,hi", [(0, 120), (1, 12), (-5, 5), (-300, -17), (18, None), (None, -3), (None, 42), (7, 7), (95, 1005), (-1000, 0)])
def test_an_integer_range_is_exactly_its_integers(lo, hi):
    schema = {"type": "integer", **({"minimum": lo} if lo is not None else {}), **({"maximum": hi} if hi is not None else {})}
    g = grammar(schema)
    assert all(g.accepts(str(v)) == ((lo is None or v >= lo) and (hi is None or v <= hi)) for v in range(-1100, 1100))
    assert not any(g.accepts(t) for t in ("007", "-0", "00", "1.0"))


@pytest.mark.parametrize("schema,message", [
    (False, "accepts nothing"),
    ({"type": "string", "pattern": "^[0-9]{5}$"}, '"pattern" at # is not supported'),
    ({"type": "object", "properties": {"zip": {"type": "string", "pattern": "x"}}},
     '"pattern" at #/properties/zip is not supported'),
    ({"$defs": {"A": {"type": "number", "maximum": 9}}, "$ref": "#/$defs/A"}, '"maximum": 9 at #/$defs/A'),
    ({"type": "number", "minimum": 5}, '"minimum": 5 at #'),
    ({"type": "integer", "minimum": 5, "exclusiveMaximum": 5}, "no integer lies between the bounds at # (5 > 4)"),
    ({"type": "integer", "maximum": 1e20}, "past the 16 digits"),
    ({"type": "number", "multipleOf": 2}, '"multipleOf"'),
    ({"type": "string", "format": "email"}, "'email'"),
    ({"type": "string", "format": "date", "maxLength": 3}, "format"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, '"uniqueItems"'),
    ({"type": "array", "items": [{"type": "integer"}]}, "prefixItems"),
    ({"type": "array", "minItems": 3, "maxItems": 2}, "minItems"),
    ({"type": "array", "prefixItems": [{}], "items": False, "minItems": 2}, "minItems"),
    ({"type": "string", "maxLength": 100000}, '"maxLength"'),
    ({"type": "object", "minProperties": 1}, '"minProperties"'),
    ({"not": {"type": "null"}}, '"not"'),
    ({"if": {}, "then": {}}, '"if"'),
    ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, '"allOf"'),
    ({"anyOf": []}, '"anyOf"'),
    ({"type": "string", "anyOf": [{"maxLength": 1}]}, '"type" next to "anyOf"'),
    ({"$ref": "https://example.com/s.json"}, '"$ref"'),
    ({"$ref": "#/$defs/Missing"}, "points at nothing"),
    ({"$ref": "#anchor"}, '"$ref"'),
    ({"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}}, "$ref": "#/$defs/A"}, "left-recursive"),
    ({"type": "object", "properties": {}, "required": ["x"]}, "'x'"),
    ({"type": "date"}, "type 'date'"),
    ({"enum": ["a"], "type": "integer"}, "enum"),
    ({"const": float("nan")}, "nan"),
    ({"type": "object", "properties": {'a"b': {}}, "additionalProperties": True}, "quote"),
])  # fmt: skip
def test_unsupported_schemas_are_refused_with_a_one_line_message(schema, message):
    with pytest.raises(SchemaError) as e:
        schema_to_gbnf(schema)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("json schema: ")


def test_annotations_are_ignored():
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "x", "title": "T",
              "description": "d", "examples": [1], "default": 1, "$comment": "c", "readOnly": True,
              "deprecated": False, "type": "integer"}  # fmt: skip
    assert schema_to_gbnf(schema) == schema_to_gbnf({"type": "integer"})


def test_the_grammar_grows_linearly_with_optional_properties():
    """Each optional property can be the first one present; those alternatives share their tails."""
    sizes = [len(schema_to_gbnf(obj([], *[f"p{i}" for i in range(n)]))) for n in (10, 40)]
    assert sizes[1] < 5 * sizes[0]


def test_identical_subschemas_share_one_rule():
    short = {"type": "string", "maxLength": 5}
    text = schema_to_gbnf({"type": "object", "properties": {"a": short, "b": short, "c": short}})
    assert text.count("char{0,5}") == 1
