"""Structured output: JSON schemas and tool calls turned into llama.cpp grammars (GBNF).

A generation with a :class:`Constraint` can only write what its grammar allows: the
grammar filters the candidates of every token before anything is sampled (see
:mod:`data_plane.engine.grammar`). This module builds those grammars:

- ``json_object``: any JSON object;
- ``json_schema``: a value valid against the schema, for the subset of JSON Schema that
  a grammar can enforce exactly. :func:`check_schema` walks the schema first and refuses
  (:class:`UnsupportedSchema`, naming the keyword) anything else, rather than letting a
  converter drop it silently: a constraint that is not enforced is not one;
- tool calls: one or more ``<tool_call>`` blocks (:data:`TOOL_CALL_OPEN` ...
  :data:`TOOL_CALL_CLOSE`), each holding ``{"name": ..., "arguments": {...}}`` whose
  arguments match the named function's parameters.

The JSON-Schema-to-GBNF translation is llama-cpp-python's ``SchemaConverter`` (a port
of llama.cpp's own), with two rules tightened so the output is always valid JSON: a
string character excludes raw control characters, and a pattern's ``.`` excludes
``"`` and ``\\``. Conversions are cached (bounded LRU, keyed by the canonical JSON of
the schema); nothing here logs, and error messages name keywords, never values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

from data_plane.engine.base import Constraint, UnsupportedSchema

TOOL_CALL_OPEN = "<tool_call>\n"
TOOL_CALL_CLOSE = "\n</tool_call>"

# Bounds on the work a schema may ask for (its grammar grows with these).
MAX_REPEAT = 1000  # minLength/maxLength/minItems/maxItems and {n,m} in patterns
MAX_DEPTH = 32
MAX_NODES = 2000
MAX_GRAMMAR_CHARS = 200_000
CACHE_SIZE = 256

_TYPES = {"string", "number", "integer", "boolean", "null", "object", "array"}
_FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
# Keywords that only describe (no effect on what is valid): ignored, as JSON Schema says.
_ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "contentMediaType",
    "contentEncoding",
    "discriminator",
    "strict",
}
_SUPPORTED = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "$defs",
    "definitions",
    "pattern",
    "format",
    "minLength",
    "maxLength",
}
# Validation keywords of JSON Schema that the grammar would not enforce: refused by name.
# (Other unknown keywords are annotations, and ignored.)
_REFUSED = {
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "patternProperties",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "additionalItems",
    "contains",
    "minContains",
    "maxContains",
    "uniqueItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minProperties",
    "maxProperties",
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "$recursiveAnchor",
    "$anchor",
}

# A JSON string character: no quote, no backslash, no raw control character; or an escape.
_JSON_CHAR = (
    r'[^"\\\x00-\x1F\x7F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] '
    r"[0-9a-fA-F])"
)
_PATTERN_DOT = r'[^"\\\x00-\x1F\x7F]'
_PATTERN_REPEAT = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


def check_schema(schema: Any) -> None:
    """Refuse what the grammar can't enforce, or what would make it too large."""
    nodes = 0

    def visit(node: Any, depth: int) -> None:
        nonlocal nodes
        nodes += 1
        if nodes > MAX_NODES:
            raise UnsupportedSchema("properties", f"nests more than {MAX_NODES} schemas")
        if depth > MAX_DEPTH:
            raise UnsupportedSchema("properties", f"nests deeper than {MAX_DEPTH}")
        if isinstance(node, bool):
            if node is False:
                raise UnsupportedSchema("false", "(a schema nothing matches) is not supported")
            return
        if not isinstance(node, dict):
            raise UnsupportedSchema("type", "must be given by an object schema")
        for key in node:
            if key in _REFUSED:
                raise UnsupportedSchema(key)
        kind = node.get("type")
        kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
        if not kinds and "type" in node:
            raise UnsupportedSchema("type", "must name a JSON type")
        for k in kinds:
            if k not in _TYPES:
                raise UnsupportedSchema("type", "must name a JSON type")
        ref = node.get("$ref")
        if ref is not None and (not isinstance(ref, str) or not ref.startswith("#")):
            raise UnsupportedSchema("$ref", "may only point inside the schema (#/...)")
        fmt = node.get("format")
        if fmt is not None and fmt not in _FORMATS:
            raise UnsupportedSchema("format", f"is supported only as one of {sorted(_FORMATS)}")
        for key in ("minLength", "maxLength", "minItems", "maxItems"):
            value = node.get(key)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise UnsupportedSchema(key, "must be a non-negative integer")
            if value is not None and value > MAX_REPEAT:
                raise UnsupportedSchema(key, f"is supported up to {MAX_REPEAT}")
        pattern = node.get("pattern")
        if pattern is not None:
            _check_pattern(pattern)
        if "allOf" in node:
            _check_all_of(node["allOf"])
        for key in ("properties", "$defs", "definitions"):
            sub = node.get(key)
            if sub is not None:
                if not isinstance(sub, dict):
                    raise UnsupportedSchema(key, "must be an object")
                for value in sub.values():
                    visit(value, depth + 1)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            visit(extra, depth + 1)
        items = node.get("items")
        if items is not None:
            for value in items if isinstance(items, list) else [items]:
                visit(value, depth + 1)
        for key in ("prefixItems", "anyOf", "oneOf", "allOf"):
            sub = node.get(key)
            if sub is not None:
                if not isinstance(sub, list) or not sub:
                    raise UnsupportedSchema(key, "must be a non-empty list")
                for value in sub:
                    visit(value, depth + 1)
        required = node.get("required")
        if required is not None and not (
            isinstance(required, list) and all(isinstance(r, str) for r in required)
        ):
            raise UnsupportedSchema("required", "must be a list of names")
        if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
            raise UnsupportedSchema("enum", "must be a non-empty list")

    visit(schema, 0)


def _check_pattern(pattern: Any) -> None:
    if not isinstance(pattern, str):
        raise UnsupportedSchema("pattern", "must be a string")
    if not (pattern.startswith("^") and pattern.endswith("$")):
        raise UnsupportedSchema("pattern", "is supported only when anchored with ^ and $")
    if "(?" in pattern:
        raise UnsupportedSchema("pattern", "is supported without lookaround or (?...) groups")
    if "[^" in pattern or "\\" in pattern:
        # A negated class or an escape class (\d, \w) may admit a quote or backslash
        # unescaped inside the JSON string: refused rather than risk invalid JSON.
        raise UnsupportedSchema(
            "pattern", "is supported without negated classes ([^...]) or escapes (\\...)"
        )
    for low, high in _PATTERN_REPEAT.findall(pattern):
        if any(n and int(n) > MAX_REPEAT for n in (low, high)):
            raise UnsupportedSchema("pattern", f"repeats are supported up to {MAX_REPEAT}")


def _check_all_of(parts: Any) -> None:
    # The converter merges allOf only as objects' properties (and references to them).
    if not isinstance(parts, list):
        raise UnsupportedSchema("allOf", "must be a list")
    for part in parts:
        if not (isinstance(part, dict) and ("properties" in part or "$ref" in part)):
            raise UnsupportedSchema("allOf", "is supported only to combine object properties")


def _normalise(node: Any) -> Any:
    """The schema with a list of types (``["object", "null"]``) spelt as anyOf of one
    type each: the converter would otherwise keep only the bare types and drop the
    rest of the schema (its properties, its lengths)."""
    if isinstance(node, list):
        return [_normalise(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _normalise(v) for k, v in node.items()}
    kind = out.get("type")
    if isinstance(kind, list):
        rest = {k: v for k, v in out.items() if k != "type"}
        if len(kind) == 1:
            return {**rest, "type": kind[0]}
        return {"anyOf": [{**rest, "type": t} for t in kind]}
    return out


class _Converter(SchemaConverter):
    """llama-cpp-python's converter with JSON-safe string characters."""

    def __init__(self) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)

    def grammar(self) -> str:
        if "char" in self._rules:
            self._rules["char"] = _JSON_CHAR
        if "dot" in self._rules:
            self._rules["dot"] = _PATTERN_DOT
        text: str = self.format_grammar()
        if len(text) > MAX_GRAMMAR_CHARS:
            raise UnsupportedSchema("properties", "make a grammar too large")
        return text


def _convert(fill: Any) -> str:
    converter = _Converter()
    try:
        fill(converter)
        return converter.grammar()
    except UnsupportedSchema:
        raise
    except RecursionError:
        raise UnsupportedSchema("$ref", "recurses too deeply") from None
    except Exception:
        # The converter's own messages quote the schema (its values): never passed on.
        raise UnsupportedSchema(
            "$ref", "or another part of the schema can't be converted"
        ) from None


@lru_cache(maxsize=CACHE_SIZE)
def _schema_grammar(canonical: str) -> str:
    schema = _normalise(json.loads(canonical))

    def fill(c: _Converter) -> None:
        c.visit(c.resolve_refs(schema, ""), "")

    return _convert(fill)


def canonical(schema: Any) -> str:
    # Key order kept: the grammar writes properties in the order the schema gives them.
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def json_schema_constraint(schema: Any) -> Constraint:
    """A grammar for JSON values valid against ``schema`` (UnsupportedSchema if it can't
    be enforced)."""
    if schema is True:  # any JSON value (the converter reads {} as any object)
        schema = {"type": ["object", "array", "string", "number", "boolean", "null"]}
    check_schema(schema)
    return Constraint(_schema_grammar(canonical(schema)))


def json_object_constraint() -> Constraint:
    """A grammar for any JSON object (``response_format: json_object``)."""
    return Constraint(_schema_grammar(canonical({"type": "object"})))


def tool_call_constraint(
    functions: Sequence[tuple[str, Any]], *, parallel: bool = True
) -> Constraint:
    """A grammar for one (or, ``parallel``, one or more) tool call blocks, each calling
    one of ``functions`` (name, parameters schema) with arguments that match."""
    for _, params in functions:
        check_schema(params)
    key = canonical([[name, params] for name, params in functions])
    return Constraint(_tool_grammar(key, parallel))


@lru_cache(maxsize=CACHE_SIZE)
def _tool_grammar(key: str, parallel: bool) -> str:
    functions = json.loads(key)

    def fill(c: _Converter) -> None:
        calls = []
        for i, (name, params) in enumerate(functions):
            # Each function's references resolve inside its own parameters.
            resolved = c.resolve_refs(_normalise(params), f"fn{i}")
            calls.append(
                {
                    "type": "object",
                    "properties": {"name": {"const": name}, "arguments": resolved},
                    "required": ["name", "arguments"],
                }
            )
        call = c.visit(calls[0] if len(calls) == 1 else {"anyOf": calls}, "call")
        block = c._add_rule(
            "tool-call", f"{_literal(TOOL_CALL_OPEN)} {call} {_literal(TOOL_CALL_CLOSE)}"
        )
        c._add_rule("root", f'{block} ("\\n" {block})*' if parallel else block)

    return _convert(fill)


def _literal(text: str) -> str:
    return json.dumps(text)  # a GBNF literal escapes as JSON does (\n, \", \\)
