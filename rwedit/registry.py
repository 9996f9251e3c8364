"""One registry shape for everything rwedit looks up by name (architectures, fused layouts, interventions,
experiment kinds, lm-eval backends, subcommands): a taken name is refused unless ``replace=True``; a miss imports
the installed plugins once (:data:`PLUGIN_GROUP` entry points, loaded by every command first) and then fails
naming the closest and the registered names. An entry may be named lazily (``"module:attr"``, imported on first
use), so that listing names or looking one up imports only what it needs.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Iterator, MutableMapping
from typing import Generic, TypeVar

from rwedit.errors import AlreadyRegisteredError, ConfigError, NotRegisteredError

T = TypeVar("T")

#: entry-point group of installed packages that register architectures, kinds, backends or commands on import
PLUGIN_GROUP = "rwedit.plugins"
_plugins_loaded = False


def load_plugins() -> None:
    """Import every installed plugin (entry points in :data:`PLUGIN_GROUP`), once per process."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True  # first: a plugin's own lookups must not load the plugins again
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken plugin must say which one it is
            raise ConfigError(f"rwedit plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}") from e


def did_you_mean(name: str, known) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to ``name``, or ``""`` when none is close."""
    near = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.7)
    return f" (did you mean {near[0]!r}?)" if near else ""


class _Lazy:
    """An entry named by ``"module:attr"``: imported on first use (the module may register it itself)."""

    def __init__(self, ref: str):
        self.ref = ref


class Registry(MutableMapping, Generic[T]):
    """Named entries of one sort (``what``), in registration order; ``builtins`` registers the package's own first
    (before any registration or lookup), ``lazy`` names more of them as ``{name: "module:attr"}``, imported when
    looked up; a miss raises ``error`` with ``hint``; ``r[name] = x`` replaces."""

    def __init__(self, what: str, *, error: type[NotRegisteredError] = NotRegisteredError, hint: str = "",
                 builtins: Callable[[], None] | None = None, lazy: dict[str, str] | None = None):
        self.what, self.error, self.hint = what, error, hint
        self._builtins = builtins
        self._entries: dict[str, T] = {name: _Lazy(ref) for name, ref in (lazy or {}).items()}

    def _ready(self) -> dict[str, T]:
        if self._builtins is not None:
            load, self._builtins = self._builtins, None
            load()
        return self._entries

    def _resolve(self, name: str) -> T:
        """The entry ``name``, importing it first when it is named lazily."""
        entry = self._entries[name]
        if isinstance(entry, _Lazy):
            module, _, attr = entry.ref.partition(":")
            obj = getattr(importlib.import_module(module), attr)
            if isinstance(self._entries.get(name), _Lazy):  # the module did not register it itself
                self._entries[name] = obj
        return self._entries[name]

    def register_lazy(self, name: str, ref: str) -> None:
        """Name an entry by ``"module:attr"`` without importing it: the module is imported when ``name`` is
        looked up (or its value listed); a name already registered is left as it is."""
        self._ready().setdefault(name, _Lazy(ref))

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Add ``entry`` under ``name``; a taken name is refused unless ``replace=True`` (which keeps its
        place in the order). The same entry registered again under its name is a no-op."""
        entries = self._ready()
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.what} needs a non-empty string name, got {name!r}")
        old = entries.get(name)
        if isinstance(old, _Lazy):  # its own module registering it (in place), or another: the named one first
            old = None if old.ref.partition(":")[0] in sys.modules else self._resolve(name)
        if old is not None and old is not entry and not replace:
            raise AlreadyRegisteredError(f"{self.what} {name!r} is already registered ({_describe(old)}); pass "
                                         f"replace=True to replace it")
        entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove the entry ``name`` and return it (to undo a registration)."""
        entry = self[name]
        del self._entries[name]
        return entry

    def __getitem__(self, name: str) -> T:
        entries = self._ready()
        if name not in entries:
            load_plugins()
        if name not in entries:
            hint = f" {self.hint}" if self.hint else ""
            raise self.error(f"{self.what} {name!r} is not in rwedit's registry{did_you_mean(name, entries)}; "
                             f"registered: {', '.join(sorted(entries))}.{hint}")
        return self._resolve(name)

    def __setitem__(self, name: str, entry: T) -> None:
        self.register(name, entry, replace=True)

    def __delitem__(self, name: str) -> None:
        self.unregister(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._ready()))

    def __len__(self) -> int:
        return len(self._ready())

    def __repr__(self) -> str:
        return f"Registry({self.what}: {', '.join(self._ready())})"


def _describe(entry) -> str:
    return getattr(entry, "__qualname__", None) or type(entry).__name__


__all__ = ["PLUGIN_GROUP", "Registry", "did_you_mean", "load_plugins"]
