"""Append-only JSONL results store of one experiment, safe against ``kill -9``, with one writer at a time.

``run.json`` holds the recipe, its hash, the software versions and the planned conditions;
``results.jsonl`` one row per finished condition.  Each row is written with a single ``write`` of a
complete line, flushed and fsync'ed; a line cut short by a crash is detected on the next open and
dropped before appending. A run is resumed only with the very recipe it started with. A writer holds
an exclusive lock on ``.lock`` (released by the OS when the process dies, even by ``kill -9``), so a
second ``run --resume`` on the same folder is refused instead of scoring every condition twice; a
condition stored twice is an error that names both lines."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rwedit.errors import ExperimentError, StoreLockedError
from rwedit.outputs import dumps, make_folder, write_json

LOCK_NAME = ".lock"


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


class ResultStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.meta_path = self.folder / "run.json"
        self.path = self.folder / "results.jsonl"

    def check_folder(self) -> None:
        """Refuse a folder that exists, holds files and is not an rwedit run (before the lock is taken)."""
        if (self.folder.exists() and not self.meta_path.exists()
                and any(p.name != LOCK_NAME for p in self.folder.iterdir())):
            raise ExperimentError(f"{self.folder} exists and is not an rwedit experiment (no run.json); "
                                  f"choose another --out")

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
        if self.folder.exists() and any(p.name != LOCK_NAME for p in self.folder.iterdir()):
            raise ExperimentError(f"{self.folder} exists and is not an rwedit experiment (no run.json); "
                                  f"choose another --out")
        make_folder(self.folder)
        import torch
        import transformers
        import peft
        import lm_eval

        from rwedit import __version__

        meta = {"config_hash": h, "config": json.loads(canonical(config)), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "versions": {"rwedit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                             "peft": peft.__version__, "lm_eval": getattr(lm_eval, "__version__", "?"),
                             "python": platform.python_version()}, **(extra or {})}
        write_json(self.meta_path, meta)
        return meta

    def meta(self) -> dict:
        """``run.json`` (an :class:`ExperimentError` when it is missing or damaged)."""
        if not self.meta_path.exists():
            raise ExperimentError(f"{self.folder} holds no rwedit experiment (no run.json); give the folder "
                                  f"`rwedit run` wrote")
        try:
            return json.loads(self.meta_path.read_text())
        except ValueError:
            raise ExperimentError(f"{self.meta_path} is not valid JSON; the run folder is damaged") from None

    def plan(self, conditions: list[str]) -> None:
        """Record the conditions the run will score (so a report of an unfinished run can say what is missing)."""
        meta = self.meta()
        if meta.get("conditions") != list(conditions):
            write_json(self.meta_path, {**meta, "conditions": list(conditions)})

    def missing(self) -> list[str] | None:
        """Planned conditions without a row, in plan order (None for runs that recorded no plan)."""
        planned = self.meta().get("conditions")
        if planned is None:
            return None
        done = self.done()
        return [c for c in planned if c not in done]

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's writer lock; a second writer is refused with who holds it."""
        import fcntl

        make_folder(self.folder)
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise StoreLockedError(
                f"{self.folder} is being written by another rwedit process ({holder}); wait for it to finish "
                f"(its rows are kept) or write to another --out. A lock of a process that has died is released "
                f"by the operating system, so nothing needs deleting.") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
                     .encode())
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def frame(self):
        """The stored rows as a ``pandas.DataFrame`` (one row per condition; per-item lists stay lists)."""
        import pandas as pd

        return pd.DataFrame(self.rows())

    def rows(self) -> list[dict]:
        """Complete rows; an unterminated last line (a crash mid-write) is ignored; a condition stored
        twice is an :class:`ExperimentError` naming both lines."""
        if not self.path.exists():
            return []
        text = self.path.read_text()
        lines = text.split("\n")
        complete = lines[:-1]  # the part after the last newline is either "" or a cut-off line
        out, seen = [], {}
        for i, line in enumerate(complete):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ExperimentError(f"{self.path}: line {i + 1} is not valid JSON (edited by hand?); fix or remove "
                                      f"that line and run the command again") from None
            if not isinstance(row, dict) or "condition" not in row:
                raise ExperimentError(f"{self.path}: line {i + 1} is not a result row (no `condition`); "
                                      f"remove that line")
            name = row["condition"]
            if name in seen:
                raise ExperimentError(
                    f"{self.path}: condition {name!r} is stored twice (lines {seen[name]} and {i + 1}); its "
                    f"verdicts would count it twice. Two writers or a hand edit: remove one of the two lines, "
                    f"then `rwedit report {self.folder}`")
            seen[name] = i + 1
            out.append(row)
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
        line = dumps(row) + "\n"  # strict JSON: a non-finite value is null, named in null_reasons
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
