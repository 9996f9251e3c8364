"""MkDocs hook: lets mkdocstrings read the installed ``rwedit`` package as one tree.

rwedit installs subpackages from top-level folders (``rwedit.probes`` from ``probes/``, ...: the
``package-dir`` table of ``pyproject.toml``), which the import system resolves but a static reader of
source folders does not. Before the build, this hook asks the import system where ``rwedit`` and each of its
subpackages live (the installed package: an editable install points into the checkout) and lays out a
temporary folder of symlinks, ``rwedit/`` with ``probes/``, ``editor/``, ... inside it, that mkdocstrings
reads as the package's source. Nothing is imported beyond ``rwedit/__init__.py``; the folder is removed
after the build.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority

_STAGE: Path | None = None


def _subpackages(pyproject: Path) -> list[str]:
    """The ``rwedit.X`` names of ``[tool.setuptools] package-dir`` (every subpackage installed from its own folder)."""
    text = pyproject.read_text(encoding="utf-8") if pyproject.exists() else ""
    names = re.findall(r'"rwedit\.(\w+)"\s*=', text)
    return sorted(set(names)) or ["apps", "cli", "editor", "evals", "probes", "recipes"]


def _location(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} is not installed as a package: pip install -e '.[docs]' first")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


@event_priority(100)  # before mkdocstrings makes its handler, which reads `paths` once
def on_config(config, **kwargs):
    global _STAGE
    on_shutdown()  # `mkdocs serve` calls on_config again at each rebuild: one folder at a time
    root = Path(config.config_file_path).resolve().parent
    spine = _location("rwedit")
    _STAGE = Path(tempfile.mkdtemp(prefix="rwedit-docs-"))
    pkg = _STAGE / "rwedit"
    pkg.mkdir()
    for child in spine.iterdir():
        if child.name != "__pycache__":
            (pkg / child.name).symlink_to(child)
    for sub in _subpackages(root / "pyproject.toml"):
        if not (pkg / sub).exists():
            (pkg / sub).symlink_to(_location(f"rwedit.{sub}"), target_is_directory=True)
    python = config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})
    python["paths"] = [str(_STAGE)]
    return config


def on_shutdown(**kwargs):
    if _STAGE is not None:
        shutil.rmtree(_STAGE, ignore_errors=True)


_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj):(?=<code>)")


def on_page_content(html, **kwargs):
    """The docstrings are written with Sphinx roles (``:func:`name```); on the site the name shows as code alone."""
    return _ROLE.sub("", html)
