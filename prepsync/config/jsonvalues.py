"""Checks of the server's JSON: each value its expected type, or a ConfigError naming where
(``context``, e.g. ``server mappings: entityTypeMappings[0]``) and what was found instead."""

from __future__ import annotations

import math

from prepsync.errors import ConfigError


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def json_object(value: object, context: str) -> dict[str, object]:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise ConfigError(f"{context}: expected an object, got {json_type(value)}")
    return value


def json_member(document: dict[str, object], key: str, context: str) -> object:
    if key not in document:
        raise ConfigError(f"{context}: {key!r} is missing")
    return document[key]


def json_name(document: dict[str, object], key: str, context: str) -> str:
    value = json_member(document, key, context)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{context}: {key!r} must be a non-empty string, got {value!r}")
    return value


def json_array(document: dict[str, object], key: str, context: str) -> list[object]:
    value = json_member(document, key, context)
    if not isinstance(value, list):
        raise ConfigError(f"{context}: {key!r} must be an array, got {json_type(value)}")
    return value


def json_names(document: dict[str, object], key: str, context: str) -> tuple[str, ...]:
    names: list[str] = []
    for index, name in enumerate(json_array(document, key, context)):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{context}: {key}[{index}] must be a non-empty string, got {name!r}")
        names.append(name)
    return tuple(names)


def json_count(document: dict[str, object], key: str, context: str) -> int:
    count = json_member(document, key, context)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"{context}: {key} must be a non-negative integer, got {count!r}")
    return count


def json_percent(document: dict[str, object], key: str, context: str) -> float:
    percent = json_member(document, key, context)
    if (
        isinstance(percent, bool)
        or not isinstance(percent, int | float)
        or not math.isfinite(percent)
        or percent < 0
    ):
        raise ConfigError(f"{context}: {key} must be a non-negative number, got {percent!r}")
    return float(percent)
