"""The fast argument check never accepts what jsonschema rejects.

Derandomized (the same examples on every run) unless ``TIMELY_RANDOM_SEARCH=1`` opts into a
fresh random search, as in tests/integration/test_schemathesis_api.py.
"""

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from timely_server.fastcheck import compile_check

RANDOM_SEARCH = os.environ.get("TIMELY_RANDOM_SEARCH") == "1"
REPRODUCIBLE = {} if RANDOM_SEARCH else {"derandomize": True, "database": None}

SCHEMAS = [
    {
        "type": "object",
        "properties": {"text": {"type": "string", "description": "x"}},
        "required": ["text"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "x": {"type": "number"},
            "flag": {"type": "boolean"},
            "s": {"type": "string"},
        },
        "required": ["n"],
    },
    {"type": "object"},
]

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
arguments = st.dictionaries(
    st.sampled_from(["text", "n", "x", "flag", "s", "other"]), values, max_size=5
)


@settings(max_examples=400, deadline=None, **REPRODUCIBLE)
@given(arguments)
def test_fast_check_agrees_with_jsonschema(args):
    for schema in SCHEMAS:
        fast = compile_check(schema)
        assert fast is not None
        if fast(args):
            assert Draft202012Validator(schema).is_valid(args), (schema, args)


def test_valid_common_arguments_take_the_fast_path():
    fast = compile_check(SCHEMAS[0])
    assert fast({"text": "hello"}) and not fast({"text": 1}) and not fast({})
    assert not fast({"text": "a", "more": 1})
    loose = compile_check(SCHEMAS[1])
    assert loose({"n": 3, "other": [1]}) and not loose({"n": True}) and not loose({"n": 1.0})


def test_unsupported_schemas_have_no_fast_path():
    for schema in [
        {"type": "object", "properties": {"a": {"type": "string", "minLength": 2}}},
        {"type": "object", "properties": {"a": {"type": ["string", "null"]}}},
        {"type": "object", "properties": {"a": {"type": "array"}}},
        {"type": "object", "required": ["missing"]},
        {"type": "object", "oneOf": [{}]},
        {"type": "object", "additionalProperties": {"type": "string"}},
    ]:
        assert compile_check(schema) is None, schema
