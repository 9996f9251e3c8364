"""The repository carries everything its tests, benchmarks, recipes and docs read: no tracked file names a
path outside it (a folder beside the clone, a machine's own folders), which a user's clone would not have."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: a path that leaves the repository: up out of it to a sibling folder, or a machine's own folders
_UP = r"\.\./+" r"(?:\.\./+)*shared"
_MACHINE = r"(?<![\w.~$}-])/(?:work|root|home|Users|tmp|mnt|opt|scratch)/"
LEAVES = re.compile(f"{_UP}|{_MACHINE}|parents\\[\\d+\\]\\.parent\\b")


def tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (an sdist): nothing to walk")
    out = []
    for name in names.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and path.suffix not in {".gz", ".png", ".prof", ".safetensors"}:
            out.append(path)
    return out


def offending_lines(text: str) -> list[tuple[int, str]]:
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if LEAVES.search(line)]


def test_no_tracked_file_names_a_path_outside_the_repository():
    found = []
    for path in tracked_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{path.relative_to(ROOT)}:{i}: {line}" for i, line in offending_lines(text)]
    assert not found, "paths that leave the repository (use bundled: names or files the test makes):\n" + \
        "\n".join(found)


#: the planted paths are put together here, so that this file holds none itself and is walked like any other
_S = "/"


@pytest.mark.parametrize("line", [
    'SHARED = Path(__file__).resolve().parents[1]' + '.parent / "shared" / "data"',
    f'WIKITEXT = Path("{_S}work{_S}shared/data/wikitext-2/valid.txt.gz")',
    f"read_texts('..{_S}shared/data/wikitext-2/valid.txt.gz')",
    f'"cache": "{_S}root{_S}.cache/rwedit"',
    f"--out {_S}tmp{_S}qs",
])
def test_the_walk_catches_a_path_outside(line):
    assert offending_lines(line)


@pytest.mark.parametrize("line", [
    'read_texts("bundled:wikitext-2/valid.txt.gz")',
    "see https://github.com/pytorch/examples/tree/main/word_language_model/data",
    "rwedit run control-experiment --out $SCRATCH/runs/llama70b",
    "~/.cache/rwedit/stats",
    "$TMPDIR/rwedit-bench-shards",
])
def test_the_walk_lets_repository_paths_through(line):
    assert not offending_lines(line)
