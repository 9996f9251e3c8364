"""The README's short path (the ``bash`` block between ``<!-- readme:path -->`` markers) runs as written.

Every command line runs, in order, from an empty folder outside the repository (as a user who installed
rwedit and reads the README in another window), offline, with a fresh rwedit cache, on the organism of
``--reduced``. Rules, as the README states them:

- ``$BASE`` and ``$POST`` are the folders ``rwedit organism --reduced`` prints (``pretrained:`` and
  ``aligned:``): the README tells the reader to set them so. The test takes them from that line's output.
- A line that needs the Hub (``--push-to-hub``, ``--pair`` of a zoo entry, ``hf download``) is shown in the
  README but not run here: the tests never reach the network. The README says "needs the Hub" beside it.
- Every line states beside it how long it takes on 2 CPU cores (checked in the default suite, below).

The run itself is slow (minutes: it builds the organism, then edits, scores and runs an experiment); it
prints each line's wall time, which is what the README's figures come from.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: lines that need the Hub: shown in the README, skipped here
NEEDS_HUB = re.compile(r"--push-to-hub\b|--pair\b|\bhf\s+download\b|huggingface-cli")
#: a duration as the README states it: "10 s", "~2 min", "1 min 30 s"
DURATION = re.compile(r"~?\d+(?:\.\d+)?\s*(?:s|min|minutes?|h)\b")


def path_lines() -> list[tuple[str, str]]:
    """(command, comment) of every line of the README's path, continuation lines (``\\``) joined."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- readme:path -->\s*```bash\n(.*?)```\s*<!-- /readme:path -->", text, re.S)
    assert m, "README has no readme:path block"
    joined = re.sub(r"\\\n\s*", " ", m.group(1))
    out = []
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^(.*?)\s+#\s+(.*)$", line)  # a comment starts at " # " (no command here quotes one)
        command, comment = (m.group(1), m.group(2)) if m else (line, "")
        out.append((command.strip(), comment.strip()))
    return out


def test_the_path_is_there_and_every_line_states_its_time():
    lines = path_lines()
    assert len(lines) >= 8, lines
    assert all(cmd.startswith(("rwedit ", "lm_eval ", "python ")) for cmd, _ in lines), lines
    for cmd, comment in lines:
        if NEEDS_HUB.search(cmd):
            assert "needs the Hub" in comment, f"say 'needs the Hub' beside: {cmd}"
        else:
            assert DURATION.search(comment), f"state how long it takes on 2 CPU cores beside: {cmd}"


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RWEDIT_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    for name in ("BASE", "POST", "PYTHONPATH"):
        env.pop(name, None)
    return env


def _organism_folders(output: str) -> dict[str, str]:
    found = dict(re.findall(r"^(pretrained|aligned):\s+(\S.*?)\s*$", output, re.M))
    return {"BASE": found["pretrained"], "POST": found["aligned"]} if len(found) == 2 else {}


@pytest.mark.slow
def test_every_line_of_the_readme_path_runs_from_outside_the_repository(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    assert ROOT not in work.resolve().parents
    env = _env(tmp_path / "cache")
    results = []
    for cmd, comment in path_lines():
        if NEEDS_HUB.search(cmd):
            results.append((cmd, "skipped (needs the Hub)", 0.0, ""))
            continue
        start = time.perf_counter()
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=work, env=env, capture_output=True,
                             text=True, timeout=1800)
        seconds = time.perf_counter() - start
        output = res.stdout + res.stderr
        if cmd.startswith("rwedit organism") and res.returncode == 0:
            env.update(_organism_folders(res.stdout))
        status = "ok" if res.returncode == 0 else f"exit {res.returncode}"
        results.append((cmd, status, seconds, output.strip()[-600:]))
    print("\nREADME path, line by line (wall time here; the README states 2-core figures):")
    for cmd, status, seconds, _ in results:
        print(f"  {status:>24}  {seconds:7.1f} s  {cmd}")
    failed = [(cmd, status, tail) for cmd, status, _, tail in results
              if not (status == "ok" or status.startswith("skipped"))]
    assert not failed, "README path lines that failed:\n" + "\n\n".join(
        f"$ {cmd}\n[{status}]\n{tail}" for cmd, status, tail in failed)
