"""The SDK's models stay in step with the hub's live OpenAPI document.

For each model in ``payhub_client.models``: every field exists in its component schema with a
compatible type, and every field the schema requires is in the model. A new field on the hub does
not break old SDKs (unknown fields are ignored); a field the hub makes required, renames or retypes
fails here until the model follows.
"""

from __future__ import annotations

import inspect
import types
import typing
from datetime import date, datetime
from typing import Any

import msgspec
from payhub_client import AsyncPayhub, models

from tests.sdk.sdk_stack import HubStack

Schema = dict[str, Any]


def _split_null(schema: Schema) -> tuple[list[Schema], bool]:
    parts = schema.get("anyOf", [schema])
    nullable = any(p.get("type") == "null" for p in parts)
    return [p for p in parts if p.get("type") != "null"], nullable


def _json_types(schema: Schema, components: dict[str, Schema]) -> set[str]:
    if "$ref" in schema:
        return {"object"}
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _json_types(schema["allOf"][0], components)
    if "enum" in schema:
        names = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
        return {names[type(v)] for v in schema["enum"]}
    kind = schema.get("type")
    return set(kind) if isinstance(kind, list) else ({kind} if kind else {"any"})


SCALARS: dict[Any, set[str]] = {
    str: {"string"},
    datetime: {"string"},
    date: {"string"},
    int: {"integer"},
    float: {"number", "integer"},
    bool: {"boolean"},
}


def mismatch(annotation: Any, schema: Schema, components: dict[str, Schema], where: str) -> list[str]:
    """Why a value of ``annotation`` cannot hold what ``schema`` allows (empty when compatible)."""
    if annotation is Any:
        return []
    parts, nullable = _split_null(schema)
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            return [f"{where}: unions other than X | None are not checked ({annotation})"]
        return [p for part in parts for p in mismatch(inner[0], part, components, where)]
    if nullable:
        return [f"{where}: the schema allows null, the model's {annotation} does not"]
    problems: list[str] = []
    for part in parts:
        problems += _single(annotation, part, components, where)
    return problems


def _single(annotation: Any, schema: Schema, components: dict[str, Schema], where: str) -> list[str]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    kinds = _json_types(schema, components)
    if "any" in kinds:
        return []
    if inspect.isclass(annotation) and issubclass(annotation, msgspec.Struct):
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            expected = models.OPENAPI_COMPONENTS.get(annotation)
            if expected != name:
                return [
                    f"{where}: schema refers to {name}, the model holds {annotation.__name__} ({expected})"
                ]
            return []
        return [] if kinds == {"object"} else [f"{where}: {annotation.__name__} for {sorted(kinds)}"]
    if origin is dict or annotation is dict:
        if kinds != {"object"}:
            return [f"{where}: dict for {sorted(kinds)}"]
        values = schema.get("additionalProperties")
        if isinstance(values, dict) and args:
            return mismatch(args[1], values, components, f"{where}.*")
        return []
    if origin is list:
        if kinds != {"array"}:
            return [f"{where}: list for {sorted(kinds)}"]
        items = schema.get("items")
        return mismatch(args[0], items, components, f"{where}[]") if isinstance(items, dict) and args else []
    allowed = SCALARS.get(annotation)
    if allowed is None:
        return [f"{where}: the test does not know {annotation}"]
    if not kinds <= allowed:
        return [f"{where}: {annotation.__name__} for {sorted(kinds)}"]
    return []


def check_model(model: type[msgspec.Struct], components: dict[str, Schema]) -> list[str]:
    name = models.OPENAPI_COMPONENTS[model]  # type: ignore[index]
    schema = components.get(name)
    if schema is None:
        return [f"{model.__name__}: no component {name} in the document"]
    hints = typing.get_type_hints(model)
    properties: dict[str, Schema] = schema.get("properties", {})
    problems = []
    for field in model.__struct_fields__:
        where = f"{model.__name__}.{field}"
        if field not in properties:
            problems.append(f"{where}: not in {name}")
            continue
        problems += mismatch(hints[field], properties[field], components, where)
    problems += [
        f"{model.__name__}: {name} requires {field!r}"
        for field in schema.get("required", [])
        if field not in model.__struct_fields__
    ]
    return problems


def test_every_model_has_a_component() -> None:
    declared = {
        obj
        for obj in vars(models).values()
        if inspect.isclass(obj) and issubclass(obj, models.Model) and obj is not models.Model
    }
    assert declared == set(models.OPENAPI_COMPONENTS)


async def test_models_match_the_live_openapi_document(hub_stack: HubStack) -> None:
    async with AsyncPayhub(url=hub_stack.url, **hub_stack.tls()) as hub:
        document = await hub.openapi()
    components: dict[str, Schema] = document["components"]["schemas"]
    problems = [p for model in models.OPENAPI_COMPONENTS for p in check_model(model, components)]
    assert problems == []
    # The lists the SDK pages through are {"object": "list", "data", "has_more"}.
    assert {"data", "has_more"} <= set(components["PaymentList"]["required"])


def test_the_checker_notices_drift() -> None:
    components: dict[str, Schema] = {
        "Balance": {
            "type": "object",
            "properties": {"available": {"type": "string"}, "held": {"type": "integer"}},
            "required": ["available", "held"],
        }
    }
    problems = check_model(models.Balance, components)
    assert "Balance.available: int for ['string']" in problems
    assert "Balance.pending: not in Balance" in problems
    assert "Balance: Balance requires 'held'" in problems
    nullable = {
        "Balance": {
            "type": "object",
            "properties": {
                "available": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                "pending": {"type": "integer"},
            },
        }
    }
    assert check_model(models.Balance, nullable) == [
        "Balance.available: the schema allows null, the model's <class 'int'> does not"
    ]
