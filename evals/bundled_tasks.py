"""Bundled offline lm-eval tasks: their YAMLs live in ``evals/tasks/`` of the installed package and load
the real data shipped in ``rwedit/bundled`` through lm-eval's ``custom_dataset`` hook, so the same folder
works for rwedit (`task_manager()`) and for plain lm-eval
(``lm_eval --include_path $(rwedit tasks --path) --tasks rwedit_blimp``)."""

from __future__ import annotations

import gzip
import itertools
import json
import re
from pathlib import Path

from rwedit.bundled import BLIMP, HH_HELDOUT, HH_RLHF, WIKITEXT_TEST
from rwedit.data import read_pairs
from rwedit.errors import ConfigError

TEMPLATES = Path(__file__).parent / "tasks"
#: task name -> what it measures (the names are prefixed so that no built-in task shadows them)
BUNDLED_TASKS = {
    "rwedit_hh_preference": "held-out hh-rlhf pairs: chosen vs rejected final turn (acc, acc_norm)",
    "rwedit_blimp": "BLiMP minimal pairs, 8 paradigms interleaved (acc, acc_norm)",
    "rwedit_wikitext": "WikiText-2 test articles, rolling log-likelihood (word/byte perplexity, bits per byte)",
}


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


def blimp_items(folder: Path = BLIMP, limit: int | None = None) -> list[dict]:
    """The bundled BLiMP pairs (the first ``limit``), interleaved round-robin across paradigms (so a limit samples
    each)."""
    per, files = [], sorted(folder.glob("*.jsonl.gz"))
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as h:
            lines = (line for line in h if line.strip())
            per.append([json.loads(line) for line in (lines if limit is None else
                                                      itertools.islice(lines, -(-limit // len(files))))])
    out = []
    for i in range(max(len(p) for p in per)):
        out += [{"sentence_good": p[i]["sentence_good"], "sentence_bad": p[i]["sentence_bad"], "UID": p[i]["UID"]}
                for p in per if i < len(p)]
    return out[:limit]


def hh_preference_items() -> list[dict]:
    """The held-out hh-rlhf pairs (lines 1900-2311 of the bundled file) as task documents."""
    return [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
            for p in read_pairs(HH_RLHF, indices=HH_HELDOUT)]


def request_texts(task: str, limit: int | None) -> tuple[list[tuple[str, str]], bool] | None:
    """The (context, continuation) texts of the requests lm-eval makes of a bundled task's first ``limit``
    documents, and whether they are rolling log-likelihoods (``rwedit plan`` counts their tokens); None for a task
    rwedit does not ship."""
    if task == "rwedit_hh_preference":
        return [(d["prompt"], d[c]) for d in hh_preference_items()[:limit] for c in ("chosen", "rejected")], False
    if task == "rwedit_blimp":
        return [("", d[c]) for d in blimp_items(limit=limit) for c in ("sentence_good", "sentence_bad")], False
    if task == "rwedit_wikitext":
        return [("", t) for t in wikitext_articles()[:limit]], True
    return None


def task_path() -> Path:
    """The folder of the bundled task YAMLs inside the installed package (``rwedit tasks --path``: lm-eval's
    ``--include_path``), usable from any working directory."""
    return TEMPLATES


def task_manager(tasks: list[str] | tuple[str, ...] | None = None):
    """An lm-eval TaskManager that knows the bundled ``rwedit_*`` tasks.  When every name in ``tasks`` is a
    bundled one, lm-eval's own registry (~10 s of YAML indexing per process) is left out; otherwise (or with
    ``tasks=None``) every built-in task is indexed too."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_path()), include_defaults=needs_lm_eval_index(tasks))


def needs_lm_eval_index(tasks: list[str] | tuple[str, ...] | None) -> bool:
    """Whether ``tasks`` (None: any) needs lm-eval's own task index, i.e. names a task that is not bundled."""
    return not tasks or not all(t in BUNDLED_TASKS for t in tasks)


def check_tasks(names: list[str], tm) -> None:
    """Fail before any scoring when a task name is unknown, listing the bundled ones."""
    known = set(tm.all_tasks)
    bad = [n for n in names if n not in known]
    if bad:
        raise ConfigError(f"unknown lm-eval task(s) {bad}; bundled offline tasks: {', '.join(BUNDLED_TASKS)} "
                         f"(any registered lm-eval task works when its data can be downloaded)")
