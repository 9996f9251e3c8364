"""Imports point one way: spine ← probes ← editor ← evals ← applications ← CLI. Every import in the package
(module level and inside functions) is read from the source and checked against the layer order."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: source folder of each package, one top-level folder a layer
PACKAGES = {"rwedit": ROOT / "rwedit", "rwedit.probes": ROOT / "probes", "rwedit.editor": ROOT / "editor",
            "rwedit.evals": ROOT / "evals", "rwedit.apps": ROOT / "apps", "rwedit.cli": ROOT / "cli"}
LAYERS = ["rwedit", "rwedit.probes", "rwedit.editor", "rwedit.evals", "rwedit.apps", "rwedit.cli"]


def layer_of(module: str) -> int:
    """The layer of a dotted ``rwedit`` module name (the longest matching package wins)."""
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS.index(best)


def modules() -> list[tuple[str, Path]]:
    out = []
    for pkg, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            name = ".".join((pkg, *rel.parts)).removesuffix(".__init__")
            assert layer_of(name) == LAYERS.index(pkg), f"{path} is in {pkg}'s folder but not its layer"
            out.append((name, path))
    return out


def imported(path: Path, name: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every ``rwedit`` import in one file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = name.split(".")[: -node.level] if not path.name == "__init__.py" else \
                    name.split(".")[: len(name.split(".")) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            out += [(node.lineno, f"{mod}.{a.name}" if mod in PACKAGES else mod) for a in node.names]
    return [(line, m) for line, m in out if m == "rwedit" or m.startswith("rwedit.")]


def test_every_package_folder_is_seen():
    names = [n for n, _ in modules()]
    for pkg in PACKAGES:
        assert any(n == pkg or n.startswith(pkg + ".") for n in names), pkg
    assert "rwedit.architectures" in names and "rwedit.evals.core" in names


@pytest.mark.parametrize("name,path", modules(), ids=[n for n, _ in modules()])
def test_imports_point_down_the_layers(name, path):
    own = layer_of(name)
    upward = [(line, m) for line, m in imported(path, name) if m != "rwedit" and layer_of(m) > own]
    assert not upward, (f"{path.relative_to(ROOT)} ({LAYERS[own]}) imports a higher layer: "
                        + ", ".join(f"line {line}: {m} ({LAYERS[layer_of(m)]})" for line, m in upward))


def test_the_checker_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from rwedit.evals.report import fmt\n")
    assert layer_of(imported(bad, "rwedit.probes.bad")[0][1]) > layer_of("rwedit.probes.bad")


#: the import circles that are not circles of meaning: a registry's lazy loader of its built-in entries (which
#: import the registry to register)
LAZY_LOADERS = {("rwedit.evals.core", "rwedit.evals.experiment"), ("rwedit.evals.core", "rwedit.evals.svd_experiment"),
                ("rwedit.evals.adapter_eval", "rwedit.evals.core"), ("rwedit.evals.core", "rwedit.evals.decompose")}


def mutual_imports(found: list[tuple[str, Path]]) -> set[tuple[str, str]]:
    """The pairs of modules that import each other (at module level or inside functions)."""
    names = {n for n, _ in found}
    deps = {}
    for name, path in found:
        deps[name] = set()
        for _, m in imported(path, name):
            while m and m not in names:  # ``pkg.mod.attr`` → the module ``pkg.mod``
                m = m.rpartition(".")[0]
            deps[name] |= {m} - {"", name}
    return {tuple(sorted((a, b))) for a in deps for b in deps[a] if a in deps.get(b, ())}


def test_no_import_circles():
    assert mutual_imports(modules()) <= LAZY_LOADERS


def test_the_circle_checker_catches_a_circle(tmp_path):
    (tmp_path / "a.py").write_text("from rwedit.x.b import f\n")
    (tmp_path / "b.py").write_text("def f():\n    import rwedit.x.a\n")
    assert mutual_imports([("rwedit.x.a", tmp_path / "a.py"), ("rwedit.x.b", tmp_path / "b.py")]) == \
        {("rwedit.x.a", "rwedit.x.b")}
