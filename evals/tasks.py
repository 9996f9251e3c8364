"""Bundled offline lm-eval tasks: their YAMLs live in ``evals/tasks/``, their data come from the
real data shipped in ``rwedit/bundled``.  `task_dir()` materialises both into one folder with absolute
paths (resolved from the installed package at load time, never from the working directory) and
`task_manager()` hands it to lm-eval as an ``include_path``."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from rwedit.bundled import BLIMP, HH_HELDOUT, HH_RLHF, WIKITEXT_TEST
from rwedit.data import read_pairs
from rwedit.errors import ConfigError

TEMPLATES = Path(__file__).parent / "tasks"
#: task name -> what it measures (the names are prefixed so that no built-in task shadows them)
BUNDLED_TASKS = {
    "rwedit_hh_preference": "held-out hh-rlhf pairs: chosen vs rejected final turn (acc)",
    "rwedit_blimp": "BLiMP minimal pairs, 8 paradigms interleaved (acc)",
    "rwedit_wikitext": "WikiText-2 test articles, rolling log-likelihood (word/byte perplexity, bits per byte)",
}
DATA_VERSION = 1


def _heading(line: str) -> bool:
    return re.fullmatch(r" = [^=].* = ", line.rstrip("\n")) is not None


def wikitext_articles(path: Path = WIKITEXT_TEST) -> list[str]:
    """The articles of a raw WikiText file, split at its top-level ``= Title =`` headings."""
    docs: list[list[str]] = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if _heading(line) or not docs:
                docs.append([])
            docs[-1].append(line)
    return [t for t in ("".join(d).strip() for d in docs) if t]


def blimp_items(folder: Path = BLIMP) -> list[dict]:
    """All bundled BLiMP pairs, interleaved round-robin across paradigms (so a limit samples each)."""
    per = []
    for f in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as h:
            per.append([json.loads(line) for line in h if line.strip()])
    out = []
    for i in range(max(len(p) for p in per)):
        out += [{"sentence_good": p[i]["sentence_good"], "sentence_bad": p[i]["sentence_bad"], "UID": p[i]["UID"]}
                for p in per if i < len(p)]
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _fingerprint() -> str:
    h = hashlib.sha256(f"v{DATA_VERSION}".encode())
    for f in sorted(TEMPLATES.iterdir()):
        if f.suffix in (".yaml", ".py"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def default_cache_root() -> Path:
    return Path(os.environ.get("RWEDIT_CACHE", Path.home() / ".cache" / "rwedit")) / "tasks"


def task_dir(cache_root: str | Path | None = None) -> Path:
    """The folder of ready-to-load task YAMLs and their data files (built once per template version)."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    folder = root / _fingerprint()
    if (folder / "done").exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tasks.tmp"))
    data = tmp / "data"
    data.mkdir()
    pairs = read_pairs(HH_RLHF, indices=HH_HELDOUT)
    _write_jsonl(data / "hh_preference_heldout.jsonl",
                 [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs])
    _write_jsonl(data / "blimp_8_paradigms.jsonl", blimp_items())
    _write_jsonl(data / "wikitext2_test_articles.jsonl", [{"page": t} for t in wikitext_articles()])
    final_data = folder / "data"
    for f in TEMPLATES.iterdir():
        if f.suffix == ".yaml":
            (tmp / f.name).write_text(f.read_text().replace("__DATA_DIR__", str(final_data)))
        elif f.suffix == ".py":
            shutil.copy(f, tmp / f.name)
    (tmp / "done").write_text("ok\n")
    try:
        os.replace(tmp, folder)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def task_manager(cache_root: str | Path | None = None, tasks: list[str] | tuple[str, ...] | None = None):
    """An lm-eval TaskManager that knows the bundled ``rwedit_*`` tasks.  When every name in ``tasks`` is a
    bundled one, lm-eval's own registry (~10 s of YAML indexing per process) is left out; otherwise (or with
    ``tasks=None``) every built-in task is indexed too."""
    from lm_eval.tasks import TaskManager

    only_bundled = tasks is not None and len(tasks) > 0 and all(t in BUNDLED_TASKS for t in tasks)
    return TaskManager(include_path=str(task_dir(cache_root)), include_defaults=not only_bundled)


def check_tasks(names: list[str], tm) -> None:
    """Fail before any scoring when a task name is unknown, listing the bundled ones."""
    known = set(tm.all_tasks)
    bad = [n for n in names if n not in known]
    if bad:
        raise ConfigError(f"unknown lm-eval task(s) {bad}; bundled offline tasks: {', '.join(BUNDLED_TASKS)} "
                         f"(any registered lm-eval task works when its data can be downloaded)")
