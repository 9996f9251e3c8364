"""Append-only JSONL results store of one experiment, safe against ``kill -9``, with one writer at a time.

``run.json`` holds the recipe, its hash, the versions and the planned conditions; ``results.jsonl`` one row per
finished condition, each one fsync'ed ``write`` of a complete line (a line cut short by a crash is dropped before
the next append). A run resumes only with the recipe it started with; a writer holds an OS lock on ``.lock`` (so
a second writer is refused); a condition stored twice is an error naming both lines.

A grid may be split into N deterministic shares (:class:`Shard`: condition k goes to share k mod N), each its own
store ``OUT/shards/I-of-N/``; what all shares use is written under ``OUT/.shared.lock``; ``ResultStore(OUT)``
reads the shards merged and :meth:`ResultStore.shard_status` names a missing or incomplete one."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from rwedit.config import canonical, changed_keys
from rwedit.errors import ConfigError, ExperimentError, StoreLockedError
from rwedit.outputs import MARKER, dumps, make_folder, write_json

LOCK_NAME = ".lock"
#: held (waiting for it) while a process begins a run, prepares what all shards share, or writes the report
SHARED_LOCK = ".shared.lock"
SHARDS_DIR = "shards"
_LOCKS = (LOCK_NAME, SHARED_LOCK, MARKER)  # files of an rwedit folder that hold no results
_SHARD_NAME = re.compile(r"(\d+)-of-(\d+)")


def config_hash(config: dict) -> str:
    return hashlib.sha256(canonical(config).encode()).hexdigest()[:16]


def _different_recipe(where: Path, meta: dict, config: dict, h: str, what: str) -> ExperimentError:
    changed = changed_keys(meta["config"], json.loads(canonical(config)))
    return ExperimentError(
        f"{where} holds a run of a different recipe (hash {meta['config_hash']} there, {h} {what}; changed: "
        f"{', '.join(changed[:8]) or 'unknown'}). Rows of two recipes must not mix: use another --out, or delete "
        f"{where} to start over")


@dataclass(frozen=True)
class Shard:
    """Share ``index`` (from 0, like ``RANK``) of ``count`` disjoint, deterministic shares of a grid:
    condition k of the run's plan belongs to share k mod ``count``."""

    index: int
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count}: the index runs from 0 to N-1 (as RANK does) and "
                              f"N is at least 1; e.g. --shard 0/2 and --shard 1/2")

    @property
    def name(self) -> str:
        """The shard's folder name under ``OUT/shards``."""
        return f"{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def take(self, names: Sequence[str]) -> list[str]:
        """This share of ``names`` (in their order)."""
        return [n for k, n in enumerate(names) if k % self.count == self.index]

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"I/N"`` (I from 0 to N-1)."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise ConfigError(f"--shard {text!r}: give I/N, the I-th (from 0) of N shares, e.g. --shard 0/2")
        return cls(int(m[1]), int(m[2]))

    @classmethod
    def from_name(cls, name: str) -> "Shard | None":
        """The shard of a folder name ``I-of-N`` (None for any other name)."""
        m = _SHARD_NAME.fullmatch(name)
        return cls(int(m[1]), int(m[2])) if m and int(m[1]) < int(m[2]) else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Shard | None":
        """The share a launcher assigned: ``RANK``/``WORLD_SIZE`` (``torchrun``, ``accelerate launch``), a SLURM
        job array (``SLURM_ARRAY_TASK_ID`` − ``SLURM_ARRAY_TASK_MIN``, over ``SLURM_ARRAY_TASK_STEP``, of
        ``SLURM_ARRAY_TASK_COUNT``), or both (array task t runs shares t·W … t·W + W − 1); None for one process."""
        env = os.environ if env is None else env

        def number(key: str, default: int | None = None) -> int:
            value = env.get(key)
            if value is None or value == "":
                if default is None:
                    raise ConfigError(f"{key} is not set although the launcher set its companions; set it or "
                                      f"give --shard I/N")
                return default
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"{key}={value!r} is not an integer; fix the launcher's environment or give "
                                  f"--shard I/N") from None

        task, tasks, step = 0, 1, 1
        if env.get("SLURM_ARRAY_TASK_COUNT"):
            tasks, step = number("SLURM_ARRAY_TASK_COUNT"), number("SLURM_ARRAY_TASK_STEP", 1)
            task = (number("SLURM_ARRAY_TASK_ID") - number("SLURM_ARRAY_TASK_MIN", 0)) // max(step, 1)
        rank, world = 0, 1
        if env.get("WORLD_SIZE"):
            world, rank = number("WORLD_SIZE"), number("RANK")
        bad = [f"{k}={v}" for k, v in (("SLURM_ARRAY_TASK_COUNT", tasks), ("SLURM_ARRAY_TASK_STEP", step),
                                        ("WORLD_SIZE", world)) if v < 1]
        if bad:
            raise ConfigError(f"the launcher's environment gives {', '.join(bad)}: counts and steps are at least 1; "
                              f"fix the launcher's environment or give --shard I/N")
        if not (0 <= task < tasks and 0 <= rank < world):
            raise ConfigError(f"the launcher's environment gives share {task * world + rank} of {tasks * world} "
                              f"(SLURM array task {task} of {tasks}, rank {rank} of {world}), outside 0..N-1; "
                              f"give --shard I/N")
        return None if tasks * world == 1 else cls(task * world + rank, tasks * world)


@dataclass(frozen=True)
class ShardStatus:
    """One share of a sharded run: whether its store exists, what it is to score and what it still lacks
    (``planned``/``missing`` None when no shard has recorded the plan yet)."""

    shard: Shard
    present: bool
    planned: list[str] | None
    missing: list[str] | None

    @property
    def complete(self) -> bool:
        return self.present and self.missing == []

    def describe(self, out: Path) -> str:
        """What is wrong with the share, and the command that fixes it."""
        def names(xs):
            return ", ".join(xs[:6]) + (", …" if len(xs) > 6 else "")

        cmd = f"`rwedit run RECIPE --out {out} --shard {self.shard}"
        if not self.present:
            what = f"its {len(self.planned)} condition(s) ({names(self.planned)})" if self.planned else "its conditions"
            return f"shard {self.shard} is missing (no {SHARDS_DIR}/{self.shard.name}): {what} not scored; run {cmd}`"
        if self.missing is None:
            return f"shard {self.shard} is incomplete: it stopped before planning its conditions; finish it with {cmd} --resume`"
        return (f"shard {self.shard} is incomplete: {len(self.missing)} of {len(self.planned)} condition(s) not scored "
                f"({names(self.missing)}); finish it with {cmd} --resume`")


class ResultStore:
    """The results store of ``folder``; with ``shard``, that share's own store ``folder/shards/I-of-N``.
    ``ResultStore(folder)`` of a sharded run reads (never writes) every shard's rows merged."""

    def __init__(self, folder: str | Path, shard: Shard | None = None):
        self.root = Path(folder)
        self.shard = shard
        self.folder = self.root / SHARDS_DIR / shard.name if shard else self.root
        self.meta_path = self.folder / "run.json"
        self.path = self.folder / "results.jsonl"

    # --- the shards of a folder ---------------------------------------------------------------

    def shards(self) -> list["ResultStore"]:
        """The stores of the shards under ``root/shards`` that have begun (written their ``run.json``)."""
        found = []
        if (self.root / SHARDS_DIR).is_dir():
            for d in (self.root / SHARDS_DIR).iterdir():
                shard = Shard.from_name(d.name)
                if shard is not None and (d / "run.json").exists():
                    found.append(ResultStore(self.root, shard))
        return sorted(found, key=lambda st: (st.shard.count, st.shard.index))

    @property
    def sharded(self) -> bool:
        """This is the merged view of a folder whose rows live in shards."""
        return self.shard is None and not self.meta_path.exists() and bool(self.shards())

    def _shard_metas(self) -> list[tuple["ResultStore", dict]]:
        """Every shard's store and ``run.json``, checked to be shares of one recipe split one way."""
        metas = [(st, st.meta()) for st in self.shards()]
        first, m0 = metas[0]
        for st, m in metas[1:]:
            if m["config_hash"] != m0["config_hash"]:
                raise _different_recipe(st.folder, m, m0["config"], m0["config_hash"], f"in {first.folder}")
            if st.shard.count != first.shard.count:
                raise ExperimentError(
                    f"{self.root} holds shards of two splits ({first.folder.name} and {st.folder.name}); a grid is "
                    f"split one way: remove the shard folders of the split you abandoned")
        return metas

    def share(self) -> tuple[Shard, Path] | None:
        """(its shard, the whole run's folder) when this folder, read on its own, is one shard's store
        (``OUT/shards/I-of-N``: its run.json records the shard); None for any other folder."""
        if self.shard is not None or not self.meta_path.exists():
            return None
        try:
            s = json.loads(self.meta_path.read_text()).get("shard")
            shard = Shard(int(s["index"]), int(s["count"]))
        except (ValueError, TypeError, KeyError, AttributeError, ConfigError):
            return None
        return shard, (self.root.parent.parent if self.root.parent.name == SHARDS_DIR else self.root.parent)

    def shard_status(self) -> list[ShardStatus]:
        """Each of the N shares of a sharded run, present or not, with its planned and missing conditions."""
        metas = self._shard_metas()
        count = metas[0][0].shard.count
        plan = next((m["all_conditions"] for _, m in metas if m.get("all_conditions") is not None), None)
        by_index = {st.shard.index: st for st, _ in metas}
        out = []
        for i in range(count):
            shard = Shard(i, count)
            planned = shard.take(plan) if plan is not None else None
            st = by_index.get(i)
            out.append(ShardStatus(shard, True, planned, st.missing()) if st is not None
                       else ShardStatus(shard, False, planned, planned))
        return out

    # --- one store ----------------------------------------------------------------------------

    def check_folder(self) -> None:
        """Refuse a folder that exists, holds files and is not an rwedit run (before the lock is taken), and
        one of the other layout (a single store vs shards) than the one asked for."""
        root_meta = self.root / "run.json"
        if self.shard is None and not root_meta.exists() and self.shards():
            raise ExperimentError(
                f"{self.root} holds a sharded run ({', '.join(st.folder.name for st in self.shards())}): resume a "
                f"shard with --shard I/N --resume, or merge the shards with `rwedit report {self.root}`")
        if self.shard is not None and root_meta.exists():
            raise ExperimentError(f"{self.root} holds an unsharded run (run.json): resume it without --shard, or "
                                  f"write the shards to another --out")
        if (self.root.exists() and not root_meta.exists() and not (self.root / SHARDS_DIR).is_dir()
                and any(p.name not in _LOCKS for p in self.root.iterdir())):
            raise ExperimentError(f"{self.root} exists and is not an rwedit experiment (no run.json); "
                                  f"choose another --out")

    def begin(self, config: dict, resume: bool, extra: dict | None = None) -> dict:
        """Start a new run or check that ``config`` is the one an existing run started with (for a shard, also
        the one every other shard of the folder began with, split the same N ways)."""
        h = config_hash(config)
        self.check_folder()
        if self.shard is not None:
            for st in ResultStore(self.root).shards():
                if st.shard == self.shard:
                    continue
                other = st.meta()
                if other["config_hash"] != h:
                    raise _different_recipe(st.folder, other, config, h, "for this shard")
                if st.shard.count != self.shard.count:
                    raise ExperimentError(
                        f"{self.root} is split {st.shard.count} ways ({st.folder.name}), not {self.shard.count}: "
                        f"give --shard I/{st.shard.count}, or another --out")
        if self.meta_path.exists():
            meta = json.loads(self.meta_path.read_text())
            if meta["config_hash"] != h:
                raise _different_recipe(self.folder, meta, config, h, "now")
            if not resume:
                raise ExperimentError(
                    f"{self.folder} already holds this run ({len(self.rows())} rows); pass --resume to finish it "
                    f"(nothing stored is recomputed) or choose another --out")
            return meta
        if self.folder.exists() and any(p.name not in _LOCKS for p in self.folder.iterdir()):
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
        if self.shard is not None:
            meta["shard"] = {"index": self.shard.index, "count": self.shard.count}
        write_json(self.meta_path, meta)
        (self.root / MARKER).touch()  # an rwedit run folder: `--overwrite` may replace it, nothing else may
        return meta

    def meta(self) -> dict:
        """``run.json`` (an :class:`ExperimentError` when it is missing or damaged); of a sharded run, the first
        shard's, with the whole plan as ``conditions`` and ``shards`` (N and the shards present)."""
        if self.sharded:
            metas = self._shard_metas()
            meta = {k: v for k, v in metas[0][1].items() if k not in ("shard", "all_conditions", "conditions")}
            plan = next((m["all_conditions"] for _, m in metas if m.get("all_conditions") is not None), None)
            if plan is not None:
                meta["conditions"] = plan
            meta["started"] = min(m["started"] for _, m in metas)
            meta["shards"] = {"count": metas[0][0].shard.count, "present": [st.shard.index for st, _ in metas]}
            return meta
        if not self.meta_path.exists():
            raise ExperimentError(f"{self.folder} holds no rwedit experiment (no run.json); give the folder "
                                  f"`rwedit run` wrote")
        try:
            return json.loads(self.meta_path.read_text())
        except ValueError:
            raise ExperimentError(f"{self.meta_path} is not valid JSON; the run folder is damaged") from None

    def plan(self, conditions: list[str]) -> list[str]:
        """Record the conditions the run will score (so a report of an unfinished run can say what is missing)
        and return them; a shard records the whole plan as well and returns its share."""
        meta = self.meta()
        mine = self.shard.take(conditions) if self.shard is not None else list(conditions)
        want = {"conditions": mine}
        if self.shard is not None:
            if meta.get("all_conditions") not in (None, list(conditions)):
                raise ExperimentError(f"{self.folder} was planned with other conditions than the recipe gives now "
                                      f"(same recipe hash: did the checkpoints change?); delete {self.folder} to "
                                      f"start this shard over")
            want["all_conditions"] = list(conditions)
        if any(meta.get(k) != v for k, v in want.items()):
            write_json(self.meta_path, {**meta, **want})
        return mine

    def missing(self) -> list[str] | None:
        """Planned conditions without a row, in plan order (None for runs that recorded no plan)."""
        planned = self.meta().get("conditions")
        if planned is None:
            return None
        done = self.done()
        return [c for c in planned if c not in done]

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the folder's shared lock, waiting for it: what every shard uses (the run's preparation, the
        report) is written by one process at a time."""
        import fcntl

        fd = os.open(make_folder(self.root) / SHARED_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases its lock

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's writer lock; a second writer is refused with who holds it."""
        import fcntl

        if self.sharded:
            raise ExperimentError(f"{self.root} is a sharded run: each shard's store is written by its own "
                                  f"process (--shard I/N)")
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
            os.close(fd)  # closing the descriptor releases its lock

    def frame(self):
        """The stored rows as a ``pandas.DataFrame`` (one row per condition; per-item lists stay lists)."""
        import pandas as pd

        return pd.DataFrame(self.rows())

    def rows(self) -> list[dict]:
        """Complete rows; an unterminated last line (a crash mid-write) is ignored; a condition stored
        twice is an :class:`ExperimentError` naming both lines. Of a sharded run: every shard's rows in the
        order of the plan, a condition stored by two shards an error naming both."""
        if self.sharded:
            return self._merged_rows()
        return [row for row, _ in self._numbered_rows()]

    def _merged_rows(self) -> list[dict]:
        out, where = [], {}
        for st, _ in self._shard_metas():
            for row, line in st._numbered_rows():
                name = row["condition"]
                if name in where:
                    raise ExperimentError(
                        f"condition {name!r} is stored by two shards ({where[name]} and {st.path} line {line}); its "
                        f"verdicts would count it twice. Shards of one split never share a condition, so a file was "
                        f"copied or edited by hand: remove one of the two lines, then `rwedit report {self.root}`")
                where[name] = f"{st.path} line {line}"
                out.append(row)
        order = {n: k for k, n in enumerate(self.meta().get("conditions") or [])}
        return sorted(out, key=lambda r: order.get(r["condition"], len(order)))

    def _numbered_rows(self) -> list[tuple[dict, int]]:
        if not self.path.exists():
            return []
        out, seen = [], {}
        # the part after the last newline is either "" or a cut-off line
        for i, line in enumerate(self.path.read_text().split("\n")[:-1]):
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
                    f"then `rwedit report {self.root}`")
            seen[name] = i + 1
            out.append((row, i + 1))
        return out

    def done(self) -> set[str]:
        return {r["condition"] for r in self.rows()}

    def append(self, row: dict) -> None:
        """Write one complete row (dropping a cut-off line a crash may have left first)."""
        if self.sharded:
            raise ExperimentError(f"{self.root} is a sharded run: rows are appended to a shard's store")
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
