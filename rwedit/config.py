"""One configuration base for every YAML recipe, spec and command-line setting: a frozen dataclass deriving
from :class:`Config`, whose ``from_dict`` type-checks every value from the type hints (nested sections, lists as
tuples), refuses unknown keys with a did-you-mean and resolves ``path=True`` fields against the YAML's folder;
field help (:func:`option`) is shared by the CLI and the docs; errors are ``ConfigError``s naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from rwedit.errors import ConfigError

C = TypeVar("C", bound="Config")
_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, *, factory: Any = _MISSING, help: str = "", path: bool = False,
           output: bool = False, aliases: tuple[str, ...] = ()) -> Any:
    """A config field with its help text (shown by the CLI and the docs); ``path=True`` resolves the value
    relative to the YAML file (``output=True``: a path written, not read); ``aliases`` are other accepted
    spellings of the key (e.g. ``layer``)."""
    meta = {"help": help, "path": path, "output": output, "aliases": tuple(aliases)}
    if factory is not _MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def resolve_path(value: str, base_dir: str | Path | None) -> str:
    """A path as written in a YAML file: relative to that file when it exists there; ``bundled:`` names,
    absolute paths, Hub ids and paths that do not exist next to the file are left as written."""
    value = str(value)
    if base_dir is None or value.startswith("bundled:") or Path(value).is_absolute():
        return value
    cand = Path(base_dir) / value
    return str(cand) if cand.exists() else value


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false",
                "dict": "a mapping"}.get(tp.__name__, tp.__name__)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list (each {_type_name(typing.get_args(tp)[0])})"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return str(tp)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Config:
    """Base of every rwedit configuration dataclass (subclasses are ``@dataclass(frozen=True)``)."""

    #: what the section is called in messages when it is the top level of a file
    _section: ClassVar[str] = ""

    # --- parsing -------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None, *, base_dir: str | Path | None = None,
                  where: str = "") -> C:
        """Build the config from a mapping (a parsed YAML section), checking every key and type."""
        data = {} if data is None else data
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"{where or cls._section or cls.__name__}: expected a mapping of settings, "
                              f"got {_show(data)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        alias = {a: f.name for f in fields.values() for a in f.metadata.get("aliases", ())}
        unknown = [k for k in data if k not in fields and k not in alias]
        if unknown:
            k = unknown[0]
            near = difflib.get_close_matches(str(k), list(fields) + list(alias), n=1, cutoff=0.5)
            hint = f" (did you mean `{near[0]}`?)" if near else ""
            raise ConfigError(f"{_join(where, k)}: unknown key{hint}; known keys: {', '.join(fields)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = alias.get(key, key)
            if name in kwargs:
                raise ConfigError(f"{_join(where, key)}: given twice (as `{name}` and an alias)")
            f = fields[name]
            value = _coerce(value, hints[name], _join(where, name), base_dir)
            if f.metadata.get("path") and value is not None:
                value = (tuple(resolve_path(v, base_dir) for v in value) if isinstance(value, tuple)
                         else resolve_path(value, base_dir))
            kwargs[name] = value
        missing = [n for n, f in fields.items() if n not in kwargs and f.default is _MISSING
                   and f.default_factory is _MISSING]
        if missing:
            raise ConfigError(f"{where or cls._section or cls.__name__}: needs `{missing[0]}:` "
                              f"({cls.help(missing[0]) or 'no default'})")
        try:
            return cls(**kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where + ': ' if where else ''}{e}") from None

    @classmethod
    def from_yaml(cls: type[C], path: str | Path, *, section: str | None = None,
                  overrides: dict[str, Any] | None = None, sets: list[str] | tuple[str, ...] = ()) -> C:
        """Parse a YAML file (or one top-level ``section`` of it when present); ``overrides`` (e.g. from the
        command line; None values ignored) replace top-level keys, then ``sets`` (``edit.layers=[3]``, see
        :func:`apply_sets`) replace nested ones, before checking."""
        raw = read_yaml(path)
        if section is not None and section in raw:
            raw = raw[section]
            if not isinstance(raw, dict):
                raise ConfigError(f"{path}: `{section}:` must be a mapping of settings")
        raw = apply_sets({**raw, **given(overrides)}, sets)
        try:
            return cls.from_dict(raw, base_dir=Path(path).parent, where="")
        except ConfigError as e:
            raise type(e)(f"{path}: {e}") from None  # the subclass (SpecError, OrganismError) is kept

    # --- documentation and output ------------------------------------------------------------

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of field ``name`` (shared by the CLI and the recipe docs)."""
        for f in dataclasses.fields(cls):
            if f.name == name:
                return f.metadata.get("help", "")
        raise KeyError(f"{cls.__name__} has no field {name!r}")

    def input_paths(self) -> list[str]:
        """Every file or folder this config reads through a ``path=True`` field, nested configs included
        (``bundled:`` names resolved): what an output folder must never be (:func:`rwedit.outputs.input_clash`)."""
        from rwedit.bundled import resolve

        out: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, (tuple, list)) else (value,)
            for v in values:
                if isinstance(v, Config):
                    out += v.input_paths()
                elif f.metadata.get("path") and not f.metadata.get("output") and isinstance(v, (str, Path)):
                    out.append(str(resolve(v)) if str(v).startswith("bundled:") else str(v))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts/lists (what YAML and JSON hold)."""
        return dataclasses.asdict(self)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing file, a syntax error (with its line) or another top
    level is a :class:`ConfigError`."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at}: {problem} (indent with spaces, not tabs)") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping (key: value lines) at the top level")
    return raw


def read_json(path: str | Path) -> Any:
    """A JSON file given on the command line; missing or invalid is a :class:`ConfigError` naming it."""
    import json

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def given(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The overrides that were given: command-line options left out arrive as None and change nothing."""
    return {k: v for k, v in (overrides or {}).items() if v is not None}


def apply_sets(raw: dict[str, Any], sets: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """``raw`` with each ``dotted.key=value`` of ``sets`` applied (the value read as YAML: ``[3]`` is a list,
    ``50`` a number, ``null`` None); missing sections are created, and the result is checked like any recipe
    (an unknown key is refused with its dotted path). ``raw`` itself is not changed."""
    import copy

    import yaml

    out = copy.deepcopy(raw)
    for item in sets or ():
        key, eq, text = str(item).partition("=")
        parts = [k.strip() for k in key.split(".")]
        if not eq or not all(parts):
            raise ConfigError(f"--set {item!r}: write KEY=VALUE with a dotted key, e.g. --set edit.layers=[3] "
                              f"or --set eval.limit=50")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML (quote strings with spaces or colons)") \
                from None
        node = out
        for i, k in enumerate(parts[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: `{'.'.join(parts[:i + 1])}` is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def canonical(obj: Any) -> str:
    """Sorted, compact JSON of ``obj`` (a tuple as a list, anything else as its str): how settings are compared
    and hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys at which two nested settings differ (what a refused rerun names)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if canonical(old) != canonical(new) else []


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


#: scalar types of config fields: (accepts the YAML value, what the error says was expected, conversion);
#: a bool is not an int here, an int is a float, NaN and ±inf are no setting
_SCALARS: dict[type, tuple[Any, str, Any]] = {
    bool: (lambda v: isinstance(v, bool), "true or false", bool),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", int),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), "a finite number",
            float),
    str: (lambda v: isinstance(v, str), "a string", str),
}


def _coerce(value: Any, tp: Any, where: str, base_dir: str | Path | None) -> Any:
    """``value`` checked against (and converted to) type hint ``tp``; ``where`` names it in errors."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: must be {_type_name(tp)}, not null")
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:  # Optional[X]: X's own message names the nested key that is wrong
            return _coerce(value, candidates[0], where, base_dir)
        for arg in candidates:
            try:
                return _coerce(value, arg, where, base_dir)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_show(value)}")
    if isinstance(tp, type) and issubclass(tp, Config):
        return tp.from_dict(value, base_dir=base_dir, where=where)
    if origin is tuple:
        args = typing.get_args(tp)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]", base_dir) for i, v in enumerate(items))
        if len(items) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {_show(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]", base_dir) for i, (v, a) in enumerate(zip(items, args)))
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_show(value)}")
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
        return dict(value)
    if tp in _SCALARS:
        accepts, what, convert = _SCALARS[tp]
        if not accepts(value):
            raise ConfigError(f"{where}: expected {what}, got {_show(value)}")
        return convert(value)
    if value is None:
        raise ConfigError(f"{where}: must be {_type_name(tp)}, not null")
    return value


__all__ = ["Config", "apply_sets", "canonical", "changed_keys", "given", "option", "read_json", "read_yaml", "resolve_path"]
