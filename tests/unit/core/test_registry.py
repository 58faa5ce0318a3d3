"""The generic registry: decorators, lazy ``module:attr`` entries, entry points."""

from __future__ import annotations

import types

import pytest

from timely.errors import RegistryError
from timely.registry import Registry, load_object


class Thing:
    """A thing with a docstring."""


class Other:
    pass


def test_load_object_imports_module_and_attribute():
    assert load_object("timely.registry:Registry") is Registry
    assert load_object(f"{__name__}:Thing.__doc__") == Thing.__doc__
    with pytest.raises(RegistryError, match="package.module:attr"):
        load_object("timely.registry")


def test_a_lazy_entry_is_imported_on_first_get():
    reg: Registry[type] = Registry("thing")
    reg.add("thing", f"{__name__}:Thing")
    assert "thing" in reg and reg.names() == ["thing"]
    assert reg.get("thing") is Thing
    assert reg.help("thing") == "A thing with a docstring."


def test_a_lazy_entry_has_no_help_of_its_own():
    # The string's own docstring (str's) must never pass for the entry's help.
    reg: Registry[type] = Registry("thing")
    reg.add("other", f"{__name__}:Other")
    assert reg.help("other") == ""


@pytest.fixture
def plugin_module():
    """A module that registers its class by decorator when imported (like a task family)."""
    reg: Registry[type] = Registry("task")
    module = types.ModuleType("fake_family")

    def load():
        @reg.register("fake/thing-v1", help="The fake family.")
        @reg.register("fake/thing", help="Alias of fake/thing-v1.")
        class FakeTask:
            __module__ = "fake_family"  # as if defined at the top of that module
            __qualname__ = "FakeTask"

        module.FakeTask = FakeTask

    return reg, module, load


def test_a_decorator_fulfils_the_lazy_entries_naming_its_class(plugin_module):
    reg, module, load = plugin_module
    reg.add("fake/thing-v1", "fake_family:FakeTask")
    reg.add("fake/thing", "fake_family:FakeTask")
    load()  # what importing the module does: its decorators run
    assert reg.get("fake/thing") is reg.get("fake/thing-v1") is module.FakeTask
    assert reg.help("fake/thing-v1") == "The fake family."
    assert reg.described() == {
        "fake/thing": "Alias of fake/thing-v1.",
        "fake/thing-v1": "The fake family.",
    }


def test_a_decorator_cannot_take_a_name_lazily_given_to_something_else(plugin_module):
    reg, _, load = plugin_module
    reg.add("fake/thing-v1", "somewhere_else:FakeTask")
    with pytest.raises(RegistryError, match="already registered"):
        load()


def test_registering_a_name_twice_fails():
    reg: Registry[type] = Registry("thing")
    reg.add("a", Thing)
    reg.add("a", Thing)  # the same object again is harmless
    with pytest.raises(RegistryError, match="already registered"):
        reg.add("a", Other)


def test_unknown_names_suggest_close_ones():
    reg: Registry[type] = Registry("task")
    reg.add("math/arithmetic-v1", Thing)
    with pytest.raises(RegistryError, match="Did you mean: math/arithmetic-v1"):
        reg.get("math/arithmetc-v1")


def test_an_empty_registry_says_where_entries_come_from():
    reg: Registry[type] = Registry("task", entry_point_group="timely.no-such-group")
    with pytest.raises(RegistryError, match="entry points of the installed package"):
        reg.get("math/arithmetic")
