"""The YAML recipes the CLI runs as they are (installed as ``rwedit.recipes`` so that ``rwedit quickstart``
finds its defaults from any directory, and ``rwedit run control-experiment`` finds a shipped recipe by name)."""

from __future__ import annotations

import os
import re
from importlib.resources import files
from pathlib import Path


def shipped() -> dict[str, Path]:
    """``{name: path}`` of every recipe shipped with rwedit (the file name without ``.yaml``)."""
    root = Path(str(files(__name__)))
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


def purpose(path: str | Path) -> str:
    """A recipe's one-line purpose: its first comment line, without the trailing "for `rwedit ...`:" part."""
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("# ").rstrip()
            text = re.sub(r"\s*\(DESIGN[^)]*\)", "", text.split(", for `")[0])
            return text.rstrip(":").strip()
    return ""


def looks_like_path(source: str | Path) -> bool:
    """A recipe argument with a folder separator or a YAML suffix names a file, never a shipped recipe."""
    s = str(source)
    return "/" in s or os.sep in s or s.endswith((".yaml", ".yml"))


def find(source: str | Path) -> str | Path:
    """``source`` itself when it is a file; else, for a bare name (``control-experiment``), the shipped recipe
    of that name. A path that does not exist is "file not found" (naming the shipped recipe it may have meant),
    never silently a shipped recipe; an unknown bare name lists the shipped ones."""
    from rwedit.errors import ConfigError

    if Path(source).is_file():
        return source
    recipes = shipped()
    if looks_like_path(source):
        stem = Path(str(source)).name.removesuffix(".yaml").removesuffix(".yml")
        hint = f"; the shipped recipe of that name is run as `{stem}` (no folder, no .yaml)" if stem in recipes else ""
        what = "is a folder, not a recipe file" if Path(source).is_dir() else "file not found"
        raise ConfigError(f"{source}: {what}{hint}")
    if str(source) not in recipes:
        raise ConfigError(f"{source}: file not found, and no shipped recipe of that name; shipped: "
                          f"{', '.join(recipes)} (`rwedit recipes` lists them)")
    return recipes[str(source)]


__all__ = ["find", "purpose", "shipped"]
