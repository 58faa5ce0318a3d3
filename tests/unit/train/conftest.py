"""Shared fixtures of the tiny-model tests; see tests/helpers/tiny_fixtures.py."""

from tests.helpers.tiny_fixtures import model, one_torch_thread, tok  # noqa: F401
