"""Append-only JSONL results store of one experiment, safe against ``kill -9``.

``run.json`` holds the recipe, its hash and the software versions; ``results.jsonl`` one row per
finished condition.  Each row is written with a single ``write`` of a complete line, flushed and
fsync'ed; a line cut short by a crash is detected on the next open and dropped before appending.
A run is resumed only with the very recipe it started with."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path

from rwedit.errors import ExperimentError  # noqa: F401  (re-exported)


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: dict) -> str:
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


def _changed_keys(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [prefix.rstrip(".")] if canonical(old) != canonical(new) else []


def _json_safe(row: dict) -> dict:
    """NaN/Inf become null so that every line is strict JSON (pandas and jq read it)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


class ResultStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.meta_path = self.folder / "run.json"
        self.path = self.folder / "results.jsonl"

    def begin(self, config: dict, resume: bool, extra: dict | None = None) -> dict:
        """Start a new run or check that ``config`` is the one an existing run started with."""
        h = config_hash(config)
        if self.meta_path.exists():
            meta = json.loads(self.meta_path.read_text())
            if meta["config_hash"] != h:
                changed = _changed_keys(meta["config"], json.loads(canonical(config)))
                raise ExperimentError(
                    f"{self.folder} holds a run of a different recipe (hash {meta['config_hash']} there, {h} now; "
                    f"changed: {', '.join(changed[:8]) or 'unknown'}). Rows of two recipes must not mix: "
                    f"use another --out, or delete {self.folder} to start over")
            if not resume:
                raise ExperimentError(
                    f"{self.folder} already holds this run ({len(self.rows())} rows); pass --resume to finish it "
                    f"(nothing stored is recomputed) or choose another --out")
            return meta
        if self.folder.exists() and any(self.folder.iterdir()):
            raise ExperimentError(f"{self.folder} exists and is not an rwedit experiment (no run.json); "
                                  f"choose another --out")
        self.folder.mkdir(parents=True, exist_ok=True)
        import torch
        import transformers
        import peft
        import lm_eval

        from rwedit import __version__

        meta = {"config_hash": h, "config": json.loads(canonical(config)), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "versions": {"rwedit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                             "peft": peft.__version__, "lm_eval": getattr(lm_eval, "__version__", "?"),
                             "python": platform.python_version()}, **(extra or {})}
        tmp = self.meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        os.replace(tmp, self.meta_path)
        return meta

    def rows(self) -> list[dict]:
        """Complete rows; an unterminated last line (a crash mid-write) is ignored."""
        if not self.path.exists():
            return []
        text = self.path.read_text()
        lines = text.split("\n")
        complete = lines[:-1]  # the part after the last newline is either "" or a cut-off line
        out = []
        for i, line in enumerate(complete):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise ExperimentError(f"{self.path}: line {i + 1} is not valid JSON; the store was edited by hand? "
                                      f"fix or remove that line and --resume") from None
        return out

    def done(self) -> set[str]:
        return {r["condition"] for r in self.rows()}

    def append(self, row: dict) -> None:
        """Write one complete row (dropping a cut-off line a crash may have left first)."""
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a cut-off line: drop it (only then is the file read whole)
                    f.seek(0)
                    f.truncate(f.read().rfind(b"\n") + 1)
        line = json.dumps(_json_safe(row), default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
