"""The YAML recipes the CLI runs as they are (installed as ``rwedit.recipes`` so that ``rwedit quickstart``
finds its defaults from any directory, and ``rwedit run control-experiment`` finds a shipped recipe by name)."""

from __future__ import annotations

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


def find(source: str | Path) -> str | Path:
    """``source`` itself when it is a file; else the shipped recipe of that name (``control-experiment`` or
    ``control-experiment.yaml``); else ``source`` unchanged (reading it then says it was not found)."""
    if Path(source).exists():
        return source
    name = Path(str(source)).name
    return shipped().get(name[:-5] if name.endswith(".yaml") else name, source)


__all__ = ["find", "purpose", "shipped"]
