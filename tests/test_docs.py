"""The README and the pages under docs/ point at things that exist.

- Every relative link (``[text](target)``, images too) in README.md and docs/**/*.md resolves to a tracked
  file or folder of the repository; a link from a docs page stays inside docs/ (the site holds only those).
  An anchor (``page.md#heading``, ``#heading``) must name a heading of its target under both slug rules the
  pages are read with: GitHub's (README and pages on the repository) and MkDocs' (the site).
- Every code reference resolves: a path in backticks or a code block that starts at a top-level entry of
  the repository (``probes/rsf.py``, ``recipes/``) is a tracked file or folder; a ``bundled:NAME`` is a file
  of ``rwedit/bundled``; a dotted name in backticks rooted at ``rwedit``, at an installed library the pages
  cite (``pandas.read_csv``) or at a class or function defined in rwedit (``CheckpointPair.iter_roles``)
  imports and has that attribute; every import in a ``python`` block does.
- mkdocs.yml's nav lists every page under docs/, and nothing else.
- (slow) ``mkdocs build --strict`` passes: warnings are errors. Skipped where the ``[docs]`` extra is not
  installed (``pip install -e ".[docs]"``).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import re
import subprocess
import sys
import unicodedata
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

#: libraries whose names the pages cite in backticks (``pandas.read_csv``); checked where installed
LIBRARIES = ("accelerate", "datasets", "huggingface_hub", "lm_eval", "numpy", "pandas", "peft", "safetensors",
             "scipy", "torch", "transformers", "trl", "vllm")
#: a dotted name ending in one of these is a file name (``meta.json``), not a Python name
FILE_SUFFIXES = {"json", "jsonl", "md", "csv", "png", "yaml", "yml", "txt", "gz", "py", "safetensors", "bin",
                 "lock", "toml", "sh", "html"}
#: code that looks like a reference but stands for something else, each with the reason (page, kind, text)
NOT_REFERENCES = {
    ("docs/errors.md", "bundled", "wikitext-2/vaild.txt.gz"): "the misspelt name of an error message's example",
    ("docs/extending.md", "dotted", "rwedit.plugins"): "an entry-point group name, not a module",
}


# -- the files ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def tracked() -> frozenset[str]:
    """Tracked paths (POSIX, relative to the root) and every folder above one; the files on disk in an sdist."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        files = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        files = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    names = set(files)
    for f in files:
        names.update(str(parent) for parent in PurePosixPath(f).parents if str(parent) != ".")
    return frozenset(names)


def pages() -> list[Path]:
    docs = sorted(p for p in (ROOT / "docs").rglob("*.md") if p.relative_to(ROOT).as_posix() in tracked())
    return [ROOT / "README.md", *docs]


def page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


_FENCE = re.compile(r"^(```|~~~)([^\n]*)\n(.*?)^\1[ \t]*$", re.M | re.S)


def split_fences(text: str) -> tuple[str, list[tuple[str, str]]]:
    """The prose with fenced blocks blanked (line numbers kept), and the blocks as (info string, body)."""
    blocks = [(m.group(2).strip(), m.group(3)) for m in _FENCE.finditer(text)]
    prose = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return prose, blocks


def code_spans(prose: str) -> list[str]:
    """Inline code spans (any run of backticks, possibly over a soft line break; not over a blank line)."""
    return [m.group(2).strip() for m in re.finditer(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", prose, re.S)
            if "\n\n" not in m.group(2)]


# -- headings and anchors ----------------------------------------------------------------------------------

def heading_texts(text: str) -> list[str]:
    prose, _ = split_fences(text)
    out = []
    for line in prose.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link shows its text
            out.append(re.sub(r"[`*]", "", title))
    return out


def github_slug(title: str) -> str:
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def mkdocs_slug(title: str) -> str:
    """Python-Markdown's ``toc.slugify`` (the default of MkDocs' toc extension)."""
    value = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def anchors(path: Path, slug, dup: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for title in heading_texts(path.read_text(encoding="utf-8")):
        s = slug(title)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}{dup}{n}")
    return out


def test_slug_rules_match_the_renderers():
    assert github_slug("He & Cao's SVD structure experiment") == "he--caos-svd-structure-experiment"
    assert mkdocs_slug("He & Cao's SVD structure experiment") == "he-caos-svd-structure-experiment"
    assert github_slug("Activation subspace A_k") == mkdocs_slug("Activation subspace A_k") == "activation-subspace-a_k"
    assert heading_texts("# A `code` title\n```\n# not a heading\n```\n## Two\n") == ["A code title", "Two"]


# -- links -------------------------------------------------------------------------------------------------

_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(path: Path) -> list[str]:
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    prose = re.sub(r"(`+)(?!`).+?(?<!`)\1(?!`)", "", prose, flags=re.S)  # a link inside code is code
    return [m.group(1) for m in _LINK.finditer(prose)]


def link_problem(page: Path, target: str) -> str | None:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
        return None
    where, _, anchor = target.partition("#")
    if where.startswith("/"):
        return "an absolute link: make it relative to the page"
    dest = (page.parent / where).resolve() if where else page
    try:
        rel = dest.relative_to(ROOT).as_posix()
    except ValueError:
        return "leaves the repository"
    if where and rel not in tracked():
        return f"{rel} is not a tracked file or folder"
    if page.parent.name == "docs" or "docs" in page.relative_to(ROOT).parts[:1]:
        if not rel.startswith("docs/"):
            return f"a docs page links to {rel}, outside docs/ (the site has only docs/): name it in backticks"
    if anchor:
        if dest.suffix != ".md":
            return f"an anchor into {rel}, which is not a page"
        gh, mk = anchors(dest, github_slug, "-"), anchors(dest, mkdocs_slug, "_")
        if anchor not in gh or anchor not in mk:
            return (f"#{anchor} is not a heading of {rel} under both GitHub's and MkDocs' rules "
                    f"(GitHub: {sorted(gh)}; MkDocs: {sorted(mk)})")
    return None


def test_every_relative_link_resolves():
    bad = []
    n = 0
    for page in pages():
        for target in links(page):
            n += 1
            problem = link_problem(page, target)
            if problem:
                bad.append(f"{page_id(page)}: ({target}): {problem}")
    assert n > 20, f"only {n} links found: is the link pattern broken?"
    assert not bad, "links that do not resolve:\n" + "\n".join(bad)


def test_the_link_check_catches_what_it_should(tmp_path):
    page = ROOT / "docs" / "probes.md"
    assert link_problem(page, "edits.md") is None
    assert link_problem(page, "edits.md#replicate-units") is None
    assert link_problem(page, "no-such-page.md")
    assert link_problem(page, "edits.md#no-such-heading")
    assert link_problem(page, "../recipes/edit-example.yaml")  # tracked, but not on the site
    assert link_problem(ROOT / "README.md", "docs/no-such.md")
    assert link_problem(ROOT / "README.md", "recipes/edit-example.yaml") is None


# -- code references ---------------------------------------------------------------------------------------

def top_level() -> set[str]:
    return {name for name in tracked() if "/" not in name}


def path_tokens(code: str) -> list[str]:
    """Tokens of a code span or block that are repository paths: they start at a top-level tracked folder."""
    tops = {t for t in top_level() if (ROOT / t).is_dir()}
    out = []
    for tok in re.split(r"[\s()\[\],;\"'=|]+", code):
        tok = tok.rstrip(".:")
        first = tok.split("/", 1)[0]
        if "/" in tok and first in tops and not re.search(r"[A-Z]{3,}|<|\$|\{", tok.split("/", 1)[1]):
            out.append(tok)
    return out


def path_problem(tok: str) -> str | None:
    name = tok.rstrip("/")
    if "*" in name:
        pattern = re.compile("^" + re.escape(name).replace(r"\*", "[^/]*") + "$")
        return None if any(pattern.match(t) for t in tracked()) else "matches no tracked file"
    return None if name in tracked() else "is not a tracked file or folder"


@functools.lru_cache(maxsize=None)
def rwedit_definitions() -> dict[str, set[str]]:
    """Top-level classes and functions of every rwedit module (by static reading) -> the modules defining them."""
    import rwedit

    found: dict[str, set[str]] = {}
    for sub, folder in [("rwedit", ROOT / "rwedit"), ("rwedit.probes", ROOT / "probes"),
                        ("rwedit.editor", ROOT / "editor"), ("rwedit.evals", ROOT / "evals"),
                        ("rwedit.apps", ROOT / "apps")]:
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("").parts
            module = ".".join((sub, *[p for p in rel if p != "__init__"]))
            tree = ast.parse(f.read_text(encoding="utf-8"))
            for node in tree.body:
                if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_"):
                    found.setdefault(node.name, set()).add(module)
    assert rwedit
    return found


@functools.lru_cache(maxsize=None)
def resolve(dotted: str) -> str | None:
    """None when ``dotted`` names a module or an attribute reachable from one; else what is missing."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and not name.startswith(e.name):  # the module exists but imports something absent
                return f"importing {name} fails: {e}"
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return f"{name} has no attribute {'.'.join(parts[i:])}"
            obj = getattr(obj, attr)
        return None
    return f"no module {parts[0]}"


_DOTTED = re.compile(r"(?<![\w./:@$-])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?![\w/-])")


def dotted_problem(name: str) -> str | None | bool:
    """What is wrong with a dotted name, None if it resolves, False if it is not a name this test checks."""
    parts = name.split(".")
    if parts[-1] in FILE_SUFFIXES:
        return False
    root = parts[0]
    if root == "rwedit":
        return resolve(name)
    if root in LIBRARIES:
        return resolve(name) if importlib.util.find_spec(root) else False
    modules = rwedit_definitions().get(root)
    if modules:
        problems = [resolve(f"{m}.{name}") for m in sorted(modules)]
        return None if None in problems else problems[0]
    return False


def python_imports(body: str) -> list[str]:
    """``from rwedit.x import a, b`` -> rwedit.x.a, rwedit.x.b; ``import rwedit.x`` -> rwedit.x."""
    out = []
    for node in ast.walk(ast.parse(body)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def code_references(page: Path) -> list[tuple[str, str]]:
    """(kind, text) of every code reference of a page: path, bundled, dotted, import."""
    prose, blocks = split_fences(page.read_text(encoding="utf-8"))
    refs: list[tuple[str, str]] = []
    for code in code_spans(prose) + [body for _, body in blocks]:
        refs += [("path", t) for t in path_tokens(code)]
        refs += [("bundled", m) for m in re.findall(r"bundled:([\w./-]+\w)", code)]
    for span in code_spans(prose):
        refs += [("dotted", m) for m in _DOTTED.findall(span)]
    for info, body in blocks:
        if info.split()[:1] == ["python"]:
            refs += [("import", name) for name in python_imports(body) if name.split(".")[0] in ("rwedit", *LIBRARIES)]
    return refs


def reference_problem(kind: str, text: str) -> str | None | bool:
    if kind == "path":
        return path_problem(text)
    if kind == "bundled":
        return None if (ROOT / "rwedit" / "bundled" / text).is_file() else "is not a file of rwedit/bundled"
    return dotted_problem(text)


def test_every_code_reference_resolves():
    bad, checked = [], 0
    for page in pages():
        for kind, text in code_references(page):
            if (page_id(page), kind, text) in NOT_REFERENCES:
                continue
            problem = reference_problem(kind, text)
            if problem is False:
                continue
            checked += 1
            if problem:
                bad.append(f"{page_id(page)}: {kind} `{text}`: {problem}")
    assert checked > 100, f"only {checked} code references checked: is the extraction broken?"
    assert not bad, "code references that do not resolve:\n" + "\n".join(bad)


def test_the_reference_check_catches_what_it_should():
    assert reference_problem("path", "probes/rsf.py") is None
    assert reference_problem("path", "evals/tasks/") is None
    assert reference_problem("path", "probes/no_such.py")
    assert path_tokens("rwedit run recipes/control-experiment.yaml --out runs/ctl OUT/adapters/NAME") == \
        ["recipes/control-experiment.yaml"]
    assert reference_problem("bundled", "wikitext-2/valid.txt.gz") is None
    assert reference_problem("bundled", "wikitext-2/vaild.txt.gz")
    assert reference_problem("dotted", "rwedit.stats.pooled_bootstrap") is None
    assert reference_problem("dotted", "rwedit.stats.no_such_thing")
    assert reference_problem("dotted", "rwedit.no_such_module")
    assert reference_problem("dotted", "CheckpointPair.iter_roles") is None
    assert reference_problem("dotted", "CheckpointPair.no_such_method")
    assert reference_problem("dotted", "pandas.read_csv") is None
    assert reference_problem("dotted", "pandas.read_csvv")
    assert reference_problem("dotted", "meta.json") is False and reference_problem("dotted", "eval.limit") is False
    assert _DOTTED.findall("rwedit.evals.core.run_recipe(path_or_dict, out)") == ["rwedit.evals.core.run_recipe"]
    assert python_imports("from rwedit.architectures import get_weight, add_delta\nimport contextlib\n") == \
        ["rwedit.architectures.get_weight", "rwedit.architectures.add_delta", "contextlib"]


# -- the site ----------------------------------------------------------------------------------------------

def nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            for value in item.values():
                out += nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_the_nav_lists_every_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = nav_pages(config["nav"])
    on_disk = sorted(p.relative_to(ROOT / "docs").as_posix() for p in pages()[1:])
    assert sorted(listed) == on_disk and len(set(listed)) == len(listed)


def test_the_readme_is_short_and_keeps_the_ci_block():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 180
    block = re.search(r"<!-- ci:commands -->\n```bash\n(.*?)```\n<!-- /ci:commands -->", text, re.S)
    assert block and len(block.group(1).strip().splitlines()) == 2  # .ci/run reads exactly two lines there


@pytest.mark.slow
def test_the_docs_site_builds_strict(tmp_path):
    for module in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        if found is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[docs]'")
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                          str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-8000:]
    for page in ("index.html", "reference/probes/index.html", "extending/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    api = (tmp_path / "site" / "reference" / "evals" / "index.html").read_text(encoding="utf-8")
    assert "run_recipe" in api  # the reference is built from the installed package's docstrings
