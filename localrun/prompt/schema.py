"""A JSON schema made ready for the converter: checked, and rewritten where it would err.

llama-cpp-python's converter (llama.cpp's, in Python) reads one keyword of a schema and
quietly drops the others: a ``$ref``, ``anyOf``, a list of types, ``const`` or ``enum``
wins over whatever stands beside it, ``required`` names only what ``properties`` lists,
``allOf`` merges objects' properties and nothing else, and a pattern's length bounds are left
out. Its answers then broke their schemas. And it fails in its own words (a KeyError, an
AttributeError) on schemas it cannot read. So :func:`prepare` returns a copy that means the
same and that the converter reads whole, or refuses in one line, naming the keyword and
where it is:

- a list of types, and the keywords beside ``anyOf``/``oneOf``, go into each alternative;
- ``true`` becomes ``{}``; keywords that only describe are dropped; what ``required`` names
  and ``properties`` does not is added, as ``additionalProperties`` has it; beside
  ``properties``, ``additionalProperties`` is dropped (the answer keeps to the properties);
- what cannot be rewritten is refused: keywords beside a ``$ref``, a ``const`` or ``enum``
  value not of the schema's type, ``allOf`` of anything but objects, bounds a grammar cannot
  hold (see :mod:`localrun.prompt.grammar`), contradictory bounds, a pattern or a format
  beside a length, prefixItems of a count its minItems or maxItems rule out, a ``$ref`` that
  leads nowhere, a pattern that is not a regular expression or that the converter misreads.

A pattern is made ready by :mod:`localrun.prompt.pattern`; an integer's bounds by
:mod:`localrun.prompt.ranges`.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from localrun.errors import UsageError
from localrun.prompt import ranges
from localrun.prompt.keywords import CHECKS, HINT, MAX_DEPTH, bound, is_type
from localrun.prompt.keywords import FORMATS as FORMATS
from localrun.prompt.keywords import MAX_ENUM as MAX_ENUM
from localrun.prompt.keywords import MAX_SCHEMA_REPEAT as MAX_SCHEMA_REPEAT
from localrun.prompt.keywords import TYPES as TYPES

# What the converter enforces; the keywords that only describe (title, examples...) pass.
ENFORCED = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "enum", "const", "oneOf", "anyOf", "allOf", "$ref", "$defs",
    "definitions", "pattern", "format", "minLength", "maxLength", *ranges.BOUNDS,
}  # fmt: skip
DESCRIBING = {
    "title", "description", "examples", "default", "$schema", "$id", "$comment", "deprecated",
    "readOnly", "writeOnly", "$anchor", "contentMediaType", "contentEncoding", "strict",
    "discriminator",  # OpenAPI's, in pydantic's tagged unions: validators pass it by
}  # fmt: skip

_BOUNDS = ("minLength", "maxLength", "minItems", "maxItems")
_SCHEMAS = ("properties", "$defs", "definitions")  # objects of schemas
_LISTS = ("prefixItems", "oneOf", "anyOf", "allOf")  # lists of schemas
_WINS = ("$ref", "anyOf", "oneOf", "const", "enum")  # what the converter reads alone


def prepare(schema: Any) -> dict[str, Any]:
    """The schema as the converter should see it, or a UsageError naming what is wrong."""
    if isinstance(schema, bool) or not isinstance(schema, dict):
        raise UsageError(
            "a JSON schema must be an object", 'give one such as {"type": "object", ...}'
        )
    try:
        json.dumps(schema, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            "the schema holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape)",
            "write text as valid Unicode",
        ) from None
    prepared = _Preparer(schema).visit(schema, "$", 0)
    assert isinstance(prepared, dict)
    # The converter follows a $ref at the top without reading the definitions beside it (the
    # $refs inside them then lead nowhere): the top takes the place of what it refers to.
    seen: set[str] = set()
    while isinstance(ref := prepared.get("$ref"), str) and ref not in seen:
        seen.add(ref)
        target: Any = prepared
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        definitions = {k: v for k, v in prepared.items() if k in _SCHEMAS[1:]}
        # An empty target (any value) stays empty: beside definitions the converter no
        # longer knew it ("Unrecognized schema"), and nothing in it can refer to them.
        prepared = {**target, **definitions} if target else {}
    if "$ref" in prepared:
        raise UsageError(
            "the schema's $ref (at $) leads only to $refs: it defines nothing",
            "give one of its definitions a type or properties",
        )
    # Last, when each schema's type is known (a type beside anyOf reaches its alternatives).
    bounded = ranges.integers(prepared, "$")
    assert isinstance(bounded, dict)
    return bounded


class _Preparer:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def visit(self, schema: Any, where: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise UsageError(
                f"the schema nests deeper than {MAX_DEPTH} levels at {where}",
                "flatten the schema (a $ref to a definition can stand for a deep part)",
            )
        if schema is True:
            return {}
        if schema is False:
            raise UsageError(
                f"the schema at {where} is false, which no answer can match",
                "remove it (false is allowed only as additionalProperties)",
            )
        if not isinstance(schema, dict):
            raise UsageError(
                f"the schema at {where} is not a schema (an object)", 'give {"type": ...}'
            )
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key in DESCRIBING:
                continue
            if key not in ENFORCED:
                raise UsageError(
                    f"the schema's '{key}' (at {where}) cannot be enforced by a grammar",
                    f"remove '{key}' from the schema, and check that part of the answer yourself",
                )
            out[key] = self.keyword(key, value, where, depth)
        return self.settle(out, where)

    def settle(self, schema: dict[str, Any], where: str) -> dict[str, Any]:
        """A schema whose keywords are each prepared: checked together, and rewritten."""
        self.check_together(schema, where)
        return self.rewrite(schema, where)

    def keyword(self, key: str, value: Any, where: str, depth: int) -> Any:
        """One keyword's value, checked (and its schemas prepared)."""
        if key in _BOUNDS:
            return bound(key, value, where)
        if key in _SCHEMAS or key in _LISTS or key in ("items", "additionalProperties"):
            return self.subschemas(key, value, where, depth)
        if key == "$ref":
            return self.reference(value, where)
        check = CHECKS.get(key)
        if check is None:
            raise AssertionError(key)  # every key of ENFORCED is handled above
        return check(key, value, where)

    def subschemas(self, key: str, value: Any, where: str, depth: int) -> Any:
        """A keyword's value that holds schemas, each prepared."""
        at = f"{where}.{key}"
        if key in _SCHEMAS:
            if not isinstance(value, dict):
                raise UsageError(f"the schema's '{key}' (at {where}) must be an object", HINT)
            return {n: self.visit(sub, f"{at}.{n}", depth + 1) for n, sub in value.items()}
        if key in _LISTS:
            if not isinstance(value, list) or not value:
                raise UsageError(
                    f"the schema's '{key}' (at {where}) must be a non-empty list of schemas",
                    HINT,
                )
            return [self.visit(sub, f"{at}[{i}]", depth + 1) for i, sub in enumerate(value)]
        if key == "additionalProperties" and isinstance(value, bool):
            return value
        return self.visit(value, at, depth + 1)  # items, additionalProperties

    def reference(self, ref: Any, where: str) -> str:
        """A ``$ref`` must lead to a part of this schema (nothing is fetched)."""
        target: Any = self.root
        if isinstance(ref, str) and ref.startswith("#"):
            for part in ref[1:].split("/")[1:] if ref != "#" else []:
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part) if isinstance(target, dict) else None
            if isinstance(target, dict) and target is not self.root:
                return ref
        raise UsageError(
            f"the schema's $ref {json.dumps(ref)[:60]} (at {where}) leads to no definition "
            "in the schema",
            'refer to one of its own definitions, as "#/$defs/NAME"; nothing is fetched',
        )

    def check_together(self, schema: dict[str, Any], where: str) -> None:
        """Refuse keywords the converter would read one of, where no rewrite keeps both."""
        for low, high in (("minLength", "maxLength"), ("minItems", "maxItems")):
            if schema.get(low, 0) > schema.get(high, MAX_SCHEMA_REPEAT):
                raise UsageError(
                    f"the schema's {low} {schema[low]} is more than its {high} "
                    f"{schema[high]} (at {where}): no answer can match",
                    f"make {low} at most {high}",
                )
        self.check_text(schema, where)
        self.check_tuple(schema, where)
        beside = [k for k in schema if k not in ("$ref", "$defs", "definitions")]
        if "$ref" in schema and beside:
            others = ", ".join(beside)
            raise UsageError(
                f"the schema's $ref (at {where}) cannot go with {others}",
                "put those keywords in the definition it refers to",
            )
        kinds = schema.get("type")
        for key in ("const", "enum"):
            if key not in schema:
                continue
            values = schema["enum"] if key == "enum" else [schema["const"]]
            extra = [k for k in schema if k not in (key, "type")]
            if extra:
                raise UsageError(
                    f"the schema's {key} (at {where}) cannot go with {', '.join(extra)}",
                    f"the values of {key} are the whole answer: drop the other keywords",
                )
            if kinds is not None:
                allowed = kinds if isinstance(kinds, list) else [kinds]
                for v in values:
                    if not any(is_type(v, k) for k in allowed):
                        raise UsageError(
                            f"the schema's {key} value {json.dumps(v)[:40]} (at {where}) is "
                            f"not of its type {json.dumps(kinds)}",
                            "give values of the type, or drop the type",
                        )
        if "allOf" in schema:
            for i, part in enumerate(schema["allOf"]):
                if (
                    not (set(part) <= {"type", "properties", "required", "$ref"})
                    or part.get("type", "object") != "object"
                ):
                    raise UsageError(
                        f"the schema's allOf[{i}] (at {where}) is not an object's properties: "
                        "a grammar can join only those",
                        "write the schema without allOf, or join objects' properties only",
                    )
            if schema.get("type", "object") != "object":
                raise UsageError(
                    f"the schema's allOf (at {where}) joins objects, but its type is "
                    f"{json.dumps(schema['type'])}",
                    "drop the type, or allOf",
                )

    @staticmethod
    def check_text(schema: dict[str, Any], where: str) -> None:
        """The converter reads a pattern, or a format, and drops the lengths beside it."""
        lengths = [k for k in ("minLength", "maxLength", "pattern") if k in schema]
        if "pattern" in schema and len(lengths) > 1:
            raise UsageError(
                f"the schema's pattern and its minLength or maxLength (at {where}) cannot be "
                "enforced together by a grammar",
                "put the length into the pattern, as {m,n}",
            )
        if "format" in schema and lengths:
            raise UsageError(
                f"the schema's format and its {lengths[0]} (at {where}) cannot be enforced "
                "together by a grammar",
                f"drop {lengths[0]} (the format fixes the text), or the format",
            )

    @staticmethod
    def check_tuple(schema: dict[str, Any], where: str) -> None:
        """The converter writes prefixItems' items and no more: that count must be allowed."""
        count = len(schema.get("prefixItems", []))
        if count and not schema.get("minItems", 0) <= count <= schema.get("maxItems", count):
            raise UsageError(
                f"the schema's prefixItems (at {where}) are {count}, outside its minItems or "
                "maxItems: a grammar here writes exactly the prefixItems",
                "give as many prefixItems as the array must hold",
            )

    def rewrite(self, schema: dict[str, Any], where: str) -> dict[str, Any]:
        """What the converter would drop, put where it reads it."""
        required = schema.get("required")
        if required and schema.get("type", "object") == "object":
            properties = schema.setdefault("properties", {})
            extra = schema.get("additionalProperties", True)
            for name in (n for n in required if n not in properties):
                if extra is False:
                    raise UsageError(
                        f"the schema requires '{name}' (at {where}), which is not among its "
                        "properties, and its additionalProperties is false: no answer can match",
                        f"add '{name}' to properties, or take it out of required",
                    )
                properties[name] = {} if extra is True else copy.deepcopy(extra)
        if schema.get("properties") and schema.get("additionalProperties", False) is not False:
            # The converter would write other names as any string, the properties' own too
            # (with a value of the other schema): the answer keeps to the properties named.
            del schema["additionalProperties"]
        if schema.get("items") == {}:  # any items: the converter reads {} as none given
            del schema["items"]
            schema.setdefault("type", "array")
            if "minItems" in schema or "maxItems" in schema:
                # ... and then drops the bounds: any value, spelled out, keeps them.
                anything = ["null", "boolean", "number", "string", "array", "object"]
                schema["items"] = {"type": anything}
        kinds = schema.get("type")
        if isinstance(kinds, list):
            rest = {k: v for k, v in schema.items() if k != "type"}
            if len(kinds) == 1:
                return {**rest, "type": kinds[0]}
            if "const" in rest or "enum" in rest:
                return rest  # their values were checked against the types
            alternatives = [{**rest, "type": kind} for kind in dict.fromkeys(kinds)]
            schema = {"anyOf": [self.settle(a, where) for a in alternatives]}
        for key in ("anyOf", "oneOf"):
            beside = {k: v for k, v in schema.items() if k not in (key, *_SCHEMAS[1:])}
            if key in schema and beside:
                merged = []
                for i, alternative in enumerate(schema[key]):
                    clash = set(beside) & set(alternative)
                    if clash and any(beside[k] != alternative[k] for k in clash):
                        raise UsageError(
                            f"the schema's {key}[{i}] (at {where}) and the keywords beside "
                            f"{key} both set {', '.join(sorted(clash))}",
                            f"move those keywords into each alternative of {key}",
                        )
                    merged.append(self.settle({**beside, **alternative}, where))
                schema = {key: merged, **{k: schema[k] for k in _SCHEMAS[1:] if k in schema}}
        return schema
