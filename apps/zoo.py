"""The zoo: well-known base → post-trained pairs and checkpoint series on the Hub (``recipes/zoo.yaml``), each
with what separates its two sides and where that is stated, and whether its weights are in the local Hub
cache (so that, offline, one can tell at a glance what will run)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from rwedit.config import Config, option, read_yaml
from rwedit.errors import ConfigError


@dataclass(frozen=True)
class ZooEntry(Config):
    """One entry: a pair (``post``) or a series (``members``) against ``base``."""

    base: str = option(help="the base model: Hub id[@revision]")
    post: str | None = option(None, help="the post-trained model of a pair")
    members: tuple[str, ...] = option((), help="the checkpoints of a series, in step order")
    separates: str = option("", help="what the post-training between base and post was")
    source: str = option("", help="the model card and the paper that say so")

    @property
    def kind(self) -> str:
        return "series" if self.members else "pair"

    def refs(self) -> list[str]:
        return [self.base] + ([self.post] if self.post else []) + list(self.members)


def zoo_path() -> Path:
    return Path(str(files("rwedit.recipes"))) / "zoo.yaml"


def load_zoo(path: str | Path | None = None) -> dict[str, ZooEntry]:
    """Every entry of the zoo by name (pairs first, then series)."""
    path = Path(path) if path is not None else zoo_path()
    raw = read_yaml(path)
    out: dict[str, ZooEntry] = {}
    for section in ("pairs", "series"):
        for name, entry in (raw.get(section) or {}).items():
            e = ZooEntry.from_dict(entry, where=f"{path.name}: {section}.{name}")
            if (section == "pairs") != bool(e.post) or (section == "series") != bool(e.members):
                raise ConfigError(f"{path.name}: {section}.{name} needs {'post' if section == 'pairs' else 'members'}")
            out[name] = e
    return out


def entry(name: str, kind: str | None = None) -> ZooEntry:
    """The zoo entry ``name`` (of ``kind`` when given); an unknown name says what the zoo holds."""
    zoo = load_zoo()
    if name not in zoo or (kind is not None and zoo[name].kind != kind):
        names = [n for n, e in zoo.items() if kind is None or e.kind == kind]
        near = difflib.get_close_matches(name, names, n=1, cutoff=0.4)
        raise ConfigError(f"no zoo {kind or 'entry'} named {name!r}{f' (did you mean {near[0]!r}?)' if near else ''}; "
                          f"`rwedit zoo` lists them: {', '.join(names)}")
    return zoo[name]


def cached(ref: str) -> bool:
    """Whether ``org/name[@revision]``'s config is in the local Hub cache (no network)."""
    from huggingface_hub import try_to_load_from_cache

    repo, _, rev = ref.partition("@")
    try:
        return isinstance(try_to_load_from_cache(repo, "config.json", revision=rev or None), str)
    except Exception:  # noqa: BLE001 — a malformed id or revision is simply not cached
        return False


__all__ = ["ZooEntry", "cached", "entry", "load_zoo", "zoo_path"]
