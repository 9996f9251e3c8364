"""The one registry shape (rwedit.registry): registration order, duplicate refusal, replace, did-you-mean
misses, built-ins first, and plugins loaded once on a miss."""

from __future__ import annotations

import pytest

from rwedit import registry as reg
from rwedit.errors import AlreadyRegisteredError, ConfigError, NotRegisteredError, RweditError
from rwedit.registry import Registry


def test_register_lookup_list_in_order():
    r = Registry("colour")
    assert r.register("red", 1) == 1 and r.register("green", 2) == 2
    assert r["red"] == 1 and list(r) == ["red", "green"] and dict(r) == {"red": 1, "green": 2}
    assert "red" in r and "blue" not in r and r.get("blue") is None and len(r) == 2


def test_a_miss_names_the_closest_and_the_registered():
    r = Registry("colour", hint="Add one with register_colour.")
    r.register("green", 2)
    r.register("red", 1)
    with pytest.raises(NotRegisteredError) as e:
        r["gren"]
    msg = str(e.value)
    assert msg == ("colour 'gren' is not in rwedit's registry (did you mean 'green'?); registered: green, red. "
                   "Add one with register_colour.")
    assert isinstance(e.value, (RweditError, ConfigError, ValueError, KeyError))  # a user error, and a mapping miss
    with pytest.raises(NotRegisteredError, match=r"'zzz' is not in rwedit's registry; registered"):  # none close
        r["zzz"]


def test_duplicates_are_refused_replace_keeps_the_place():
    r = Registry("colour")
    r.register("red", 1)
    r.register("green", 2)
    with pytest.raises(AlreadyRegisteredError, match=r"colour 'red' is already registered .*replace=True"):
        r.register("red", 3)
    assert isinstance(AlreadyRegisteredError("x"), (RweditError, ValueError))
    assert r.register("red", 1) == 1  # the same entry again: a no-op (a module imported twice)
    r.register("red", 3, replace=True)
    assert list(r.items()) == [("red", 3), ("green", 2)]
    r["green"] = 4  # the mapping form of replace
    assert r.unregister("red") == 3 and list(r) == ["green"] and r.pop("green") == 4 and len(r) == 0
    with pytest.raises(NotRegisteredError):
        r.unregister("red")
    with pytest.raises(ConfigError, match="non-empty string name"):
        r.register("", 5)


def test_builtins_come_first_whoever_registers_first():
    calls = []

    def builtins():
        calls.append(1)
        r.register("own", 0)

    r = Registry("kind", builtins=builtins)
    r.register("plugin", 1)
    assert list(r) == ["own", "plugin"] and calls == [1]
    assert r["own"] == 0 and calls == [1]


def test_a_miss_loads_the_plugins_once(monkeypatch):
    r = Registry("colour")
    loaded = []

    class EntryPoint:
        name, value = "mine", "my_plugin:register"

        def load(self):
            loaded.append(1)
            r.register("plugin_colour", 7)

    monkeypatch.setattr(reg, "_plugins_loaded", False)
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [EntryPoint()] if group == reg.PLUGIN_GROUP else [])
    assert r["plugin_colour"] == 7 and loaded == [1]
    with pytest.raises(NotRegisteredError):
        r["other"]
    assert loaded == [1]  # once per process


def test_a_broken_plugin_is_named(monkeypatch):
    class EntryPoint:
        name, value = "broken", "broken_plugin:register"

        def load(self):
            raise ImportError("no module named broken_plugin")

    monkeypatch.setattr(reg, "_plugins_loaded", False)
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [EntryPoint()])
    with pytest.raises(ConfigError, match=r"rwedit plugin 'broken' \(broken_plugin:register\) failed to load: "
                                          r"ImportError: no module named broken_plugin"):
        reg.load_plugins()
