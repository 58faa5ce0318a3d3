"""Pytest fixtures shared by the tiny-model tests (policies and train).

A test folder's ``conftest.py`` imports them, which registers them for that folder. None is
autouse: a module that wants torch on one thread asks for it with
``pytestmark = pytest.mark.usefixtures("one_torch_thread")``, so tests that time a real clock
(or load a bigger model) keep torch's own thread count.
"""

from __future__ import annotations

import pytest

from tests.helpers.scripted_model import scripted_model, tool_then_answer
from tests.helpers.tiny_model import tiny_model, tiny_tokenizer


@pytest.fixture
def one_torch_thread():
    """Tiny models run ~10x faster on one thread than on two busy shared cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    """The tiny llama scripted into a two-tool-call calculator episode."""
    return scripted_model(tiny_model(len(tok)), tok, tool_then_answer("6*7", "42+1"))
