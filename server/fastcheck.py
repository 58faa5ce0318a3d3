"""A fast path for validating tool arguments against the simple schemas most tools have.

Every call is validated against its tool's JSON Schema, and ``jsonschema`` spends ~7 µs on
even a one-field object: a measurable share of a zero-latency call. Most tool schemas are a
flat object of strings, numbers and booleans, for which validity is a few ``isinstance``
checks. :func:`compile_check` builds such a check when the schema uses nothing else; it only
ever answers "valid" when jsonschema would, and otherwise defers to jsonschema (which also
produces the error message), so behaviour never changes, only speed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Keywords that do not constrain the value (safe to ignore).
_ANNOTATIONS = frozenset({"description", "title", "examples", "default", "$comment"})
_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    # Floats defer to jsonschema: 1.0 is an "integer" there, and NaN/inf need care.
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int) and not isinstance(v, bool),
}

FastCheck = Callable[[dict[str, Any]], bool]


def compile_check(schema: dict[str, Any]) -> FastCheck | None:
    """A check that returns True only for arguments ``schema`` accepts, or None if unsupported.

    Supported: ``{"type": "object", "properties": {name: {"type": T, ...annotations}},
    "required": [...], "additionalProperties": bool}`` with T in string, boolean, integer,
    number. A False answer means "not sure": validate with jsonschema.
    """
    if set(schema) - _ANNOTATIONS - {"type", "properties", "required", "additionalProperties"}:
        return None
    if schema.get("type") != "object":
        return None
    props = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(props, dict) or not isinstance(required, list) or not isinstance(extra, bool):
        return None
    checks: dict[str, Callable[[Any], bool]] = {}
    for name, sub in props.items():
        if not isinstance(sub, dict) or set(sub) - _ANNOTATIONS - {"type"}:
            return None
        kind = sub.get("type")
        if not isinstance(kind, str) or kind not in _TYPES:
            return None
        checks[name] = _TYPES[kind]
    needed = frozenset(required)
    if not needed <= set(checks):
        return None

    def check(arguments: dict[str, Any]) -> bool:
        if not needed <= arguments.keys():
            return False
        for key, value in arguments.items():
            test = checks.get(key)
            if test is None:
                if not extra:
                    return False
            elif not test(value):
                return False
        return True

    return check
