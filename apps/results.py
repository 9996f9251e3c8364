"""A run's tables as a Hugging Face dataset: one folder a notebook (or the Hub) loads with
``datasets.load_dataset(FOLDER, NAME)``, with a dataset card saying what was compared, with which settings
and rwedit version, and where the adapters are.

The run's reports (``report.html``/``summary.html``, self-contained, with their Markdown and figures) travel
with it under ``reports/``. Works on any rwedit output folder: an experiment (``rwedit run``: rows, verdicts, headline, units), a probe
(``rwedit probe``: the RSF grid), an SVD probe, or a quickstart folder holding several of them; each table
becomes one dataset configuration named after where it came from (``experiment_rows``,
``probe_aligned_rsf_grid``, …). A run split into shards (``rwedit run --shard I/N``) gives one ``rows``
table, its shards' rows merged."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rwedit import __version__
from rwedit.errors import ExportError
from rwedit.evals.store import SHARDS_DIR, ResultStore
from rwedit.outputs import atomic_folder, check_output_folder, dumps, write_text

#: file name in an output folder -> table name (the dataset configuration's suffix)
TABLES = {"results.jsonl": "rows", "verdicts.csv": "verdicts", "headline.csv": "headline", "units.csv": "units",
          "rsf.csv": "rsf_grid", "svd.csv": "svd", "spectrum.csv": "spectrum", "deltas.csv": "deltas"}
#: files that describe a folder's run (what was compared, settings)
META = ("run.json", "meta.json", "quickstart.json")
#: the report pages rwedit writes (NAME.md and the self-contained NAME.html)
PAGES = ("report", "summary")


@dataclass(frozen=True)
class Table:
    """One table of a run: its configuration name, the file it came from and its rows."""

    name: str
    source: Path
    frame: pd.DataFrame
    lines: str | None = None  # JSON Lines as written (rows tables), lists and nulls kept


def _sharded_runs(root: Path) -> list[Path]:
    """The folders (``root`` and two levels below) holding a run split into shards."""
    return sorted(d for pattern in ("", "*", "*/*") for d in (root.glob(pattern) if pattern else [root])
                  if d.is_dir() and ResultStore(d).sharded)


def collect_tables(run_dir: str | Path) -> list[Table]:
    """Every known table in ``run_dir`` and its sub-folders (two levels: a quickstart holds experiments and
    probes), named ``<sub-folder>_<table>``; JSON Lines rows keep their list-valued columns (per-item values)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ExportError(f"{root}: no such folder (give the --out folder of `rwedit run`, `probe`, `svd`, "
                          f"`eval` or `quickstart`)")
    out = []
    for run in _sharded_runs(root):  # one table of the merged rows (duplicates and foreign shards refused)
        rows = ResultStore(run).rows()
        if rows:
            prefix = "_".join(run.relative_to(root).parts).replace("-", "_")
            out.append(Table(f"{prefix}_rows" if prefix else "rows", run / SHARDS_DIR, pd.DataFrame(rows),
                             "".join(dumps(r) + "\n" for r in rows)))
    for path in sorted(p for pattern in ("*", "*/*", "*/*/*") for p in root.glob(pattern) if p.name in TABLES):
        parts = path.relative_to(root).parts
        if path.stat().st_size == 0 or any(part.startswith(".") for part in parts) or SHARDS_DIR in parts[:-1]:
            continue
        prefix = "_".join(parts[:-1]).replace("-", "_")
        name = f"{prefix}_{TABLES[path.name]}" if prefix else TABLES[path.name]
        try:
            frame = pd.read_json(path, lines=True) if path.suffix == ".jsonl" else pd.read_csv(path)
        except ValueError as e:
            raise ExportError(f"{path}: cannot be read as a table ({e})") from None
        out.append(Table(name, path, frame, path.read_text() if path.suffix == ".jsonl" else None))
    if not out:
        raise ExportError(f"{root} holds no rwedit tables ({', '.join(TABLES)}); give a folder a command wrote")
    return out


def report_files(root: str | Path) -> list[Path]:
    """The run's reports (``report``/``summary`` pages, here and two levels below: the self-contained HTML, its
    Markdown and the figures the Markdown shows), which an export carries beside the tables."""
    import re

    root = Path(root).resolve()
    found = set()
    for page in (p for pattern in ("*", "*/*", "*/*/*") for p in root.glob(pattern)):
        parts = page.relative_to(root).parts
        if page.suffix not in (".html", ".md") or page.stem not in PAGES or SHARDS_DIR in parts or \
                any(x.startswith(".") for x in parts):
            continue
        found.add(page)
        if page.suffix == ".md":
            for src in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", page.read_text()):
                fig = (page.parent / src).resolve()
                if fig.is_file() and fig.is_relative_to(root):
                    found.add(fig)
    return sorted(found)


@dataclass(frozen=True)
class Unfinished:
    """What one experiment folder lacks: planned conditions without a row, and a line per missing or
    incomplete shard (with the command that finishes it)."""

    missing: list[str]
    notes: list[str]


def unfinished(root: str | Path) -> dict[str, Unfinished]:
    """``{run folder (relative): what it lacks}`` for every experiment under ``root`` (two levels) that is not
    finished; empty when every run is complete."""
    from rwedit.evals.core import shard_problems

    root = Path(root)
    runs = set(_sharded_runs(root)) | {p.parent for pattern in ("run.json", "*/run.json", "*/*/run.json")
                                       for p in root.glob(pattern) if SHARDS_DIR not in p.relative_to(root).parts}
    out = {}
    for run in sorted(runs):
        missing, notes = ResultStore(run).missing() or [], shard_problems(run)
        if missing or notes:
            out[str(run.relative_to(root)) or "."] = Unfinished(missing, notes or [f"{len(missing)} condition(s) "
                                                                                   f"not scored: {', '.join(missing)}"])
    return out


def _described(root: Path) -> list[tuple[str, dict]]:
    """(relative folder, its run description) for every run.json / meta.json / quickstart.json found."""
    found = []
    for path in sorted(p for pattern in ("*", "*/*") for p in root.glob(pattern) if p.name in META):
        try:
            found.append((str(path.parent.relative_to(root)) or ".", json.loads(path.read_text())))
        except ValueError:
            continue
    found += [(str(run.relative_to(root)) or ".", ResultStore(run).meta()) for run in _sharded_runs(root)]
    return sorted(found, key=lambda f: f[0])


def _compared(desc: dict) -> str:
    config = desc.get("config") or desc
    base = config.get("model") or config.get("base") or (config.get("edit") or {}).get("model")
    post = config.get("post") or (config.get("edit") or {}).get("post")
    if desc.get("models"):  # quickstart.json
        return ", ".join(f"{k} `{v}`" for k, v in desc["models"].items())
    return f"base `{base}`" + (f", post `{post}`" if post else "") if base else "(see the settings)"


def dataset_card(root: Path, tables: list[Table], repo_id: str | None, partial: dict[str, Unfinished] | None = None,
                 pages: list[str] = ()):
    """The dataset card: metadata (one configuration per table, tags) and what the tables are; a partial
    export says so in its first line and lists what each unfinished run lacks."""
    from huggingface_hub import DatasetCard, DatasetCardData

    configs = [{"config_name": t.name, "data_files": [{"split": "train", "path": f"data/{t.name}.jsonl"}]}
               for t in tables]
    data = DatasetCardData(pretty_name=f"rwedit results: {root.name}", tags=["rwedit", "interpretability"],
                           configs=configs)
    where = repo_id or "FOLDER"
    lines = []
    if partial:
        missing = sorted(c for u in partial.values() for c in u.missing)
        lines += [f"**Partial results: not every planned condition was scored** (exported with --allow-partial; "
                  f"missing: {', '.join(missing) or 'see below'}; rows tables carry a `missing_conditions` column).", ""]
        lines += [f"- `{run}`: " + "; ".join(u.notes) for run, u in partial.items()] + [""]
    lines += [f"# rwedit results: `{root.name}`", "",
             f"Tables written by rwedit {__version__} (weight-space interventions on causal language models). "
             f"Load one with `datasets.load_dataset({where!r}, NAME)`:", "",
             "| NAME | rows | columns | from |", "|---|---|---|---|"]
    lines += [f"| `{t.name}` | {len(t.frame)} | {len(t.frame.columns)} | `{t.source.relative_to(root)}` |" for t in tables]
    if pages:
        lines += ["", "Reports (each `.html` self-contained, figures embedded: open it in a browser): "
                  + ", ".join(f"`{p}`" for p in pages)]
    for folder, desc in _described(root):
        lines += ["", f"## `{folder}`", "", f"- compared: {_compared(desc)}"]
        versions = desc.get("versions") or {"rwedit": desc.get("rwedit_version")}
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
        settings = desc.get("config") or {k: v for k, v in desc.items() if k in ("grid", "calibration", "settings")}
        if settings:
            lines += ["- settings:", "", "```json", json.dumps(settings, indent=1, default=str)[:4000], "```"]
    adapters = sorted(p.parent for p in root.glob("**/adapters/*/adapter_config.json"))
    if adapters:
        lines += ["", "## Adapters", "", "The edit adapters these rows score (PEFT folders with model cards; push "
                  "them with `rwedit export ADAPTER --push-to-hub org/name`):", ""]
        lines += [f"- `{a.relative_to(root)}`" for a in adapters[:50]]
    lines += ["", "Per-item values (lists) stay in the rows' `*_items` columns, in document order, so any two "
              "conditions compare item by item."]
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _marked(table: Table, partial: dict[str, Unfinished]) -> Table:
    """A rows table of a partial export with a ``missing_conditions`` column (the same list on every row)."""
    if not table.name.endswith("rows"):
        return table
    missing = sorted(c for u in partial.values() for c in u.missing)
    lines = None if table.lines is None else "".join(
        dumps({**json.loads(line), "missing_conditions": missing}) + "\n" for line in table.lines.splitlines()
        if line.strip())
    return Table(table.name, table.source, table.frame.assign(missing_conditions=[missing] * len(table.frame)), lines)


def export_results(run_dir: str | Path, out: str | Path, *, overwrite: bool = False, repo_id: str | None = None,
                   private: bool = True, allow_partial: bool = False) -> Path:
    """Write ``run_dir``'s tables as a dataset folder ``out`` (``data/NAME.jsonl`` + ``README.md``), and
    upload it as a Hub dataset when ``repo_id`` is given (the folder is complete either way). An unfinished
    run (conditions or shards missing) is refused unless ``allow_partial``; then the card and a column say so."""
    from rwedit.editor.export import check_repo_id, push_folder

    if repo_id:
        check_repo_id(repo_id)
    out = check_output_folder(out, overwrite, inputs=[run_dir])
    root = Path(run_dir)
    tables = collect_tables(root)
    partial = unfinished(root)
    if partial and not allow_partial:
        raise ExportError(f"{root} is not finished, so its tables would be published as if complete:\n"
                          + "\n".join(f"  {run}: " + "; ".join(u.notes) for run, u in partial.items())
                          + "\nfinish it (`rwedit run RECIPE --out RUN --resume`, each shard likewise), or pass "
                            "--allow-partial to export it marked as partial")
    if partial:
        tables = [_marked(t, partial) for t in tables]
    reports = report_files(root)
    pages = [f"reports/{p.relative_to(root.resolve())}" for p in reports if p.suffix == ".html"]
    with atomic_folder(out, overwrite=overwrite, inputs=[run_dir]) as tmp:
        (tmp / "data").mkdir()
        for t in tables:
            if t.lines is not None:  # the rows as written: strict JSON, lists kept
                write_text(tmp / "data" / f"{t.name}.jsonl", t.lines)
            else:
                write_text(tmp / "data" / f"{t.name}.jsonl", t.frame.to_json(orient="records", lines=True))
        for path in reports:  # the reports travel with the tables, laid out as in the run folder
            dest = tmp / "reports" / path.relative_to(root.resolve())
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
        write_text(tmp / "README.md", str(dataset_card(root, tables, repo_id, partial, pages)))
    if repo_id:
        push_folder(out, repo_id, private=private, repo_type="dataset")
    return out


__all__ = ["PAGES", "TABLES", "Table", "collect_tables", "dataset_card", "export_results", "report_files", "unfinished",
           "Unfinished"]
