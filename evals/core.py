"""One core for every experiment: kinds registered by name, one runner loop, one resumable store.

An experiment kind (the control experiment, the SVD-structure experiment, ``rwedit eval``'s scoring of
adapters, and the applications' quickstart and organism) is registered with :func:`register_experiment`: its
recipe class (a :class:`~rwedit.config.Config`), a ``prepare`` step that loads the model once and lists the
conditions (each an :class:`~rwedit.editor.interventions.Intervention` plus the row fields it carries) and
the scorers, its report, and a ``plan`` hook stating its stages before any weights load. :func:`run_experiment` is the single loop: check the recipe → ``store.begin`` →
the conditions not stored yet → for each, ``with intervention.applied(model)`` score the model as it
is → append the row → the kind's report. The kind is stored in ``run.json`` (the recipe's
``experiment:``), and :func:`write_report` dispatches on it. With a :class:`~rwedit.evals.store.Shard`, the
loop scores that share of the conditions into the shard's own store; the process that completes the last
share writes the merged report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time
from dataclasses import MISSING, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from tqdm.auto import tqdm

from rwedit.config import Config, apply_sets, given, option, read_yaml
from rwedit.models import Placement
from rwedit.outputs import check_not_input, default_run_folder, make_folder, write_json
from rwedit.registry import Registry, load_plugins
from rwedit.runtime import recording, runtime, stage
from rwedit.editor.interventions import Intervention
from rwedit.errors import ConfigError, ExperimentError, SpecError
from rwedit.evals.direct import DirectSettings
from rwedit.evals.lmeval import EvalSettings
from rwedit.evals.store import ResultStore, Shard

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_KIND = "control"


#: recipe settings added after runs existed, as (section, key) — key None: the whole section — hashed only
#: where they differ from their defaults, so a recipe that leaves them alone keeps the hash it had before and
#: its runs still resume
HASH_WHEN_SET = (("placement", None), ("eval", "backend"), ("eval", "model_args"), ("eval", "applied_atol"),
                 ("effect", None), ("edit", "alpha_rel_observed"))


@dataclass(frozen=True)
class ExperimentRecipe(Config):
    """What every experiment recipe has: its kind, the checkpoints, the scoring, where it runs."""

    experiment: str = option(DEFAULT_KIND, help="the experiment kind: `rwedit run` dispatches on it")
    name: str = option("experiment", help="names the default output folder runs/NAME")
    model: str | None = option(None, help="base checkpoint: local folder or Hub id (org/name[@revision])")
    post: str | None = option(None, help="its post-trained version (same architecture and shapes)")
    eval: EvalSettings | None = option(factory=EvalSettings, help="lm-eval tasks on one loaded model (null: none)")
    direct: DirectSettings | None = option(factory=DirectSettings,
                                           help="direct metrics with standard errors (null: none)")
    device: str = option("cpu", help="cpu, cuda, or auto (accelerate device_map)")
    placement: Placement = option(factory=Placement, help="the model placed across devices: device_map, "
                                  "max_memory, offload_folder, dtype (as rwedit's --device-map, --max-memory, "
                                  "--offload-folder, --dtype)")
    out: str | None = option(None, help="output folder (`rwedit run`'s default: runs/NAME; from Python, "
                             "none: nothing kept); not part of the recipe hash")

    def config(self) -> dict:
        """What the results depend on (hashed by the store to keep two recipes' rows apart); the settings of
        :data:`HASH_WHEN_SET` only where they differ from their defaults."""
        d = self.to_dict()
        d.pop("out")
        for section, key in HASH_WHEN_SET:
            value = getattr(self, section, None)
            if value is None:
                continue
            if key is None:
                if value == type(value)():
                    d.pop(section)
            else:
                declared = type(value).__dataclass_fields__[key]
                default = declared.default if declared.default is not MISSING else declared.default_factory()
                if getattr(value, key) == default:
                    d[section].pop(key)
        return d

    def check_kind(self, kind: str, *needed: str) -> None:
        """Refuse a recipe of another kind than ``kind``, or one without each of ``needed`` (``model``, ``post``)."""
        if self.experiment != kind:
            raise SpecError(f"experiment: {self.experiment!r} is not {kind!r}")
        for key in needed:
            if not getattr(self, key):
                raise SpecError(f"the recipe needs `{key}:` (or --{key} on the command line)")

    @cached_property
    def base_checkpoint(self):
        """The base checkpoint (``model``), opened once per recipe object: checked by ``plan``, then loaded."""
        from rwedit.checkpoints import Checkpoint

        return Checkpoint.open(self.model)

    @property
    def post_source(self) -> str | None:
        """The post-trained side of the pair the run compares, if any."""
        return self.post

    def inputs(self) -> list[str]:
        """Everything the run reads (its checkpoints, adapters, data files): never its output folder."""
        return [str(x) for x in (self.model, self.post_source) if x] + self.input_paths()

    def check_sources(self) -> dict | None:
        """Open the recipe's checkpoints (and check them against each other) before anything is written;
        kinds with checkpoints override it and return what the run records of them
        (:func:`rwedit.checkpoints.source_info`: the resolved Hub commit or a content fingerprint)."""
        return None

    def folder(self, out: str | Path | None) -> Path:
        return Path(out or self.out or default_run_folder(self.name))


def check_metric(name: str, recipe: ExperimentRecipe, key: str, direct_names=None) -> None:
    """Before any work: a metric a recipe names (``key``) is one its scorers will produce: a direct metric
    (``direct_names``, default every direct metric) when ``direct:`` is on, or ``TASK/METRIC`` of a task in
    ``eval.tasks``."""
    import difflib

    from rwedit.evals.direct import DIRECT_METRICS

    direct = tuple(direct_names or DIRECT_METRICS) if recipe.direct is not None else ()
    tasks = tuple(recipe.eval.tasks) if recipe.eval is not None else ()
    if name in direct or name.split("/", 1)[0] in tasks and "/" in name:
        return
    known = list(direct) + [f"{t}/acc" for t in tasks]
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    raise ConfigError(f"{key}: {name!r} is not a metric this recipe scores{f' (did you mean {near[0]!r}?)' if near else ''}; "
                      f"direct metrics{'' if direct else ' (direct: is off)'}: {', '.join(direct) or '–'}; lm-eval "
                      f"metrics are TASK/METRIC for a task in eval.tasks ({', '.join(tasks) or 'none'})")


class Scorer(Protocol):
    """Scores the model as it is. A scorer whose engine has its own output format may keep its last output
    as ``raw`` (a JSON-able dict); the runner saves it as ``OUT/raw/<scorer>/<condition>.json``."""

    def score(self) -> dict[str, Any]:
        """Metrics of the model as it is now."""


def scorer_name(scorer) -> str:
    """A scorer's name (its ``name``, else its class's): its raw output's folder and its stage in timings.json."""
    return getattr(scorer, "name", type(scorer).__name__)


def save_raw(out: Path, condition: str, scorers) -> None:
    """Each scorer's own output for ``condition`` (e.g. lm-eval's results JSON with its per-task configs,
    versions and samples), beside the store's flat row."""
    for scorer in scorers:
        raw = getattr(scorer, "raw", None)
        if raw is not None:
            folder = make_folder(out / "raw" / scorer_name(scorer))
            write_json(folder / f"{condition}.json", raw)


@dataclass
class Condition:
    """One row of an experiment: an intervention and the row fields that go with it."""

    name: str
    intervention: Intervention
    info: dict[str, Any] = field(default_factory=dict)  # known before scoring (kind, alpha, probe metrics)
    measure: Callable[[], dict[str, Any]] | None = None  # measured while applied, before scoring
    after: Callable[[dict[str, Any]], None] | None = None  # called with the stored row


@dataclass
class Prepared:
    """A kind's loaded model, its conditions in scoring order and its scorers."""

    model: Any
    conditions: list[Condition]
    scorers: list[Scorer] | Callable[[], list[Scorer]]  # a callable is called only when something is missing


def _frame(path: Path | None = None) -> pd.DataFrame:
    """The table of a CSV file (empty for none, or for a table without rows)."""
    import pandas as pd

    try:
        return pd.read_csv(path) if path is not None else pd.DataFrame()
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


@dataclass(frozen=True, eq=False)
class RunResult:
    """What a run gives back: its rows and its report's tables as DataFrames, where it wrote them (``folder``
    None: no folder was asked for, nothing was kept) and what to tell the user."""

    folder: Path | None
    report: Path | None
    lines: list[str] = field(default_factory=list)
    rows: pd.DataFrame = field(default_factory=_frame)  # one row per scored condition (per-item lists kept)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # the report's tables (its CSVs), by name

    @property
    def verdicts(self) -> pd.DataFrame:
        """The report's verdicts (its ``verdicts.csv``: the control and SVD-structure kinds); empty for a kind
        without them or a run that stopped before its report."""
        return self.tables.get("verdicts", _frame())

    @classmethod
    def read(cls, store: ResultStore, report: Path | None, lines: list[str]) -> "RunResult":
        """The result of a run in ``store``: its rows (every shard's, once the merged report is written) and,
        with a report, the CSV tables it wrote beside it."""
        tables = {p.stem: _frame(p) for p in sorted(store.root.glob("*.csv"))} if report is not None else {}
        return cls(store.root, report, lines, (ResultStore(store.root) if report else store).frame(), tables)


@dataclass(frozen=True)
class ExperimentKind:
    """A registered experiment kind. A kind whose run is a list of conditions scored on one loaded model gives
    ``prepare`` and ``report`` and :func:`run_experiment` runs it (store, resume, shards). An application whose
    run is a chain of other runs (the quickstart: organism, probes, trajectories, then a ``control`` run) gives
    ``run(recipe, out, *, resume, overrides) -> RunResult`` instead, ``overrides`` an instance of its
    ``options`` config (the command line's switches it takes; None: none given). Progress and the statistics
    cache are the run-wide settings (:mod:`rwedit.runtime`). Every kind gives ``plan``, which states its own
    stages for ``rwedit plan``."""

    name: str
    recipe: type[Config]
    help: str = ""
    prepare: Callable[..., Prepared] | None = None  # (recipe, out) -> Prepared
    report: Callable[..., Path] | None = None  # (folder, **options) -> report path
    finish: Callable[[Any, Path], None] | None = None  # after the report (e.g. adapter cards)
    run: Callable[..., RunResult] | None = None
    options: type[Config] | None = None  # what an application's run takes from the command line
    #: (recipe, PlanContext or None for an application) -> KindPlan: the kind's own stages, their memory and
    #: compute, its conditions, before any weights load (:mod:`rwedit.evals.planning`, ``rwedit plan``)
    plan: Callable[..., Any] | None = None

    def run_options(self, overrides: dict[str, Any] | None) -> Any:
        """The command line's ``overrides`` (None values ignored) as this application's ``options``, checked
        as every config is; a key it does not take is refused, naming what it takes."""
        ov = given(overrides)
        known = [f.name for f in dataclasses.fields(self.options)] if self.options is not None else []
        unknown = sorted(set(ov) - set(known))
        if unknown:
            raise ConfigError(f"experiment kind {self.name!r} takes no {', '.join(unknown)} (it takes: "
                              f"{', '.join(known) or 'nothing'} from the command line)")
        return self.options.from_dict(ov) if self.options is not None else None


#: the built-in kinds (first, whoever registers first), each imported when it is looked up: a run of one kind (or
#: its plan) imports that kind's module only
_KINDS: Registry[ExperimentKind] = Registry("experiment kind", lazy={
    "control": "rwedit.evals.experiment:KIND", "svd-structure": "rwedit.evals.svd_experiment:KIND",
    "eval": "rwedit.evals.adapter_eval:KIND", "decompose": "rwedit.evals.decompose:KIND"})


def register_experiment(kind: ExperimentKind, *, replace: bool = False) -> ExperimentKind:
    """Make ``kind`` available to ``rwedit run``/``report`` under ``kind.name``."""
    if (kind.prepare is None) == (kind.run is None):
        raise ValueError(f"experiment kind {kind.name!r}: give exactly one of prepare (store-based) or run")
    return _KINDS.register(kind.name, kind, replace=replace)


def register_lazy_experiment(name: str, ref: str) -> None:
    """Name a kind by ``"module:attr"`` (the module registers it, or holds it there): imported when looked up."""
    _KINDS.register_lazy(name, ref)


def experiment_kinds() -> list[ExperimentKind]:
    """The registered kinds, the plugins' included (the applications register theirs when ``rwedit.apps`` is
    imported)."""
    load_plugins()
    return list(_KINDS.values())


def experiment_kind(name: str) -> ExperimentKind:
    return _KINDS[name]


def load_recipe(source: str | Path | dict | Config, overrides: dict[str, Any] | None = None,
                sets: list[str] | tuple[str, ...] = ()) -> tuple[ExperimentKind, Config]:
    """The kind and the parsed recipe of a YAML path, a mapping or a recipe object (``experiment:`` names the
    kind; without it, ``control``). ``overrides`` (None values ignored) replace top-level keys; ``sets``
    (``edit.layers=[3]``, :func:`rwedit.config.apply_sets`) replace nested ones, and land in the recipe the
    run records."""
    ov = given(overrides)
    if isinstance(source, Config):
        kind = experiment_kind(getattr(source, "experiment", DEFAULT_KIND))
        if ov or sets:
            source = type(source).from_dict(apply_sets({**source.to_dict(), **ov}, sets))
        return kind, source
    if isinstance(source, dict):
        kind = experiment_kind(str(source.get("experiment") or DEFAULT_KIND))
        return kind, kind.recipe.from_dict(apply_sets({**source, **ov}, sets))
    from rwedit.recipes import find

    source = find(source)  # a recipe file, or a shipped recipe by name from any folder (else refused there)
    raw = read_yaml(source)
    kind = experiment_kind(str(raw.get("experiment") or DEFAULT_KIND))
    if kind.run is not None:  # an application: its run takes the overrides itself
        return kind, kind.recipe.from_yaml(source, sets=sets)
    return kind, kind.recipe.from_yaml(source, overrides=ov, sets=sets)


def run_recipe(source: str | Path | dict | Config, out: str | Path | None = None, *, resume: bool = False,
               overrides: dict[str, Any] | None = None, stop_after: int | None = None,
               sets: list[str] | tuple[str, ...] = (), shard: Shard | str | None = None) -> RunResult:
    """Run (or resume) any registered kind's recipe into ``out`` (a store-based kind without ``out`` or the
    recipe's ``out:`` keeps no folder, see :func:`run_experiment`); ``sets`` as in :func:`load_recipe`;
    ``shard`` (a :class:`~rwedit.evals.store.Shard` or ``"I/N"``) scores that share of the conditions only."""
    kind, recipe = load_recipe(source, overrides, sets)
    shard = Shard.parse(shard) if isinstance(shard, str) else shard
    if kind.run is not None:
        if shard is not None:
            raise ConfigError(f"experiment kind {kind.name!r} runs its own stages and cannot be sharded (shard "
                              f"{shard}, from --shard or the launcher's RANK/WORLD_SIZE or SLURM array); run it as "
                              f"one process")
        return kind.run(recipe, out, resume=resume, overrides=kind.run_options(overrides))
    return run_experiment(kind, recipe, out, resume=resume, stop_after=stop_after, shard=shard)


def run_experiment(kind: ExperimentKind, recipe: ExperimentRecipe, out: str | Path | None = None, *,
                   resume: bool = False, stop_after: int | None = None, shard: Shard | None = None,
                   on_row: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
    """The one runner loop, into ``out`` (else the recipe's ``out:``; with neither, a temporary folder, removed
    once its rows and tables are read). ``stop_after`` ends the run after that many newly scored conditions (tests of interrupted runs); a
    stopped run returns without a report and ``--resume`` finishes it. With ``shard``, that share of the
    conditions goes to its own store ``out/shards/I-of-N`` (see :mod:`rwedit.evals.store`). ``on_row`` is
    called with each row once it is stored (``rwedit eval`` prints it)."""
    from rwedit.models import check_device

    if out is None and recipe.out is None:
        if resume or shard is not None:
            raise ConfigError(f"{'--resume' if resume else '--shard'} needs --out (out=): the folder whose stored "
                              f"rows the run {'continues' if resume else 'shares with the other shards'}")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="rwedit-run-", ignore_cleanup_errors=True) as tmp:
            res = run_experiment(kind, recipe, Path(tmp) / "run", stop_after=stop_after, on_row=on_row)
        return RunResult(None, None, [f"scored {len(res.rows)} condition(s); no folder kept (give out= or --out to "
                                      f"keep the store, the report and its plots)"], res.rows, res.tables)
    out = recipe.folder(out)
    check_not_input(out, recipe.inputs())  # a run never writes into (or over) what it reads
    check_device(getattr(recipe, "device", "cpu"))
    sources = recipe.check_sources()  # a missing model or a mismatched pair fails before anything is written
    store = ResultStore(out, shard)
    store.check_folder()
    created = not store.folder.exists()
    with store.locked():  # one writer per store: a second `run --resume` here is refused (and removes nothing)
        try:
            with _timings(store.folder):
                return _run_locked(kind, recipe, store, stop_after, resume, sources, on_row)
        except BaseException:
            if created and not store.path.exists():  # failed before its first row: leave nothing behind
                import shutil

                shutil.rmtree(store.folder, ignore_errors=True)  # a shard's own folder only: others share out
                if shard is not None:
                    try:
                        store.folder.parent.rmdir()  # shards/, when no other shard has begun
                    except OSError:
                        pass
            raise


def _run_locked(kind: ExperimentKind, recipe: ExperimentRecipe, store: ResultStore, stop_after: int | None, resume: bool, sources: dict | None = None, on_row=None) -> RunResult:
    out = store.root
    with store.shared():  # one process at a time begins and prepares what all shards of `out` share
        store.begin(recipe.config(), resume, extra={"sources": sources} if sources else None)
        prep = kind.prepare(recipe, out)
        names = [c.name for c in prep.conditions]
        if len(set(names)) != len(names):
            raise ExperimentError(f"{kind.name}: duplicate condition names "
                                  f"{sorted(n for n in set(names) if names.count(n) > 1)}")
        mine = set(store.plan(names))
    done = store.done()
    missing = [c for c in prep.conditions if c.name in mine and c.name not in done]
    final = [c for c in missing if c.intervention.final]
    missing = [c for c in missing if not c.intervention.final] + final  # what cannot be undone goes last
    with stage("scoring"):
        scorers = (prep.scorers() if callable(prep.scorers) else prep.scorers) if missing else []
        for i, c in enumerate(tqdm(missing, desc="conditions", disable=not runtime().progress)):
            if stop_after is not None and i >= stop_after:
                break
            t = time.perf_counter()
            row: dict[str, Any] = {"condition": c.name, **c.info}
            with c.intervention.applied(prep.model):
                if c.measure is not None:
                    row.update(c.measure())
                for scorer in scorers:
                    with stage(f"scoring: {scorer_name(scorer)}"):
                        row.update(check_scores(scorer.score(), c.name))
            save_raw(out, c.name, scorers)  # before the row: a resumed run rewrites it if killed in between
            row["seconds"] = round(time.perf_counter() - t, 2)
            store.append(row)
            for after in (c.after, on_row):
                if after is not None:
                    after(row)
    if not mine <= store.done():
        again = f" --shard {store.shard}" if store.shard is not None else ""
        return RunResult.read(store, None, [f"stopped after {len(store.done())} of {len(mine)} conditions: rerun "
                                            f"with --resume{again} to finish {store.folder}"])
    if store.shard is None:
        report = _report(kind, recipe, out)
        return RunResult.read(store, report, [f"wrote {report} (results: {store.path})"])
    with store.shared():  # the shard that completes the last share writes the merged report, once
        waiting = [s for s in ResultStore(out).shard_status() if not s.complete]
        if waiting:
            return RunResult.read(store, None, [f"shard {store.shard}: its {len(mine)} conditions are stored in "
                                                f"{store.path}; the report waits for the other shards:"]
                                  + ["  " + s.describe(out) for s in waiting]
                                  + [f"`rwedit report {out}` merges the shards once they have finished"])
        report = _report(kind, recipe, out)
    return RunResult.read(store, report, [f"wrote {report} (merged {store.shard.count} shards: {out / 'shards'})"])


def _report(kind: ExperimentKind, recipe: ExperimentRecipe, out: Path):
    """The kind's report of the finished run, then its finishing step (e.g. the exported adapters' cards)."""
    with stage("report"):
        report = kind.report(out)
        if kind.finish is not None:
            kind.finish(recipe, out)
    return report


@contextlib.contextmanager
def _timings(folder: Path):
    """Within the block, the run's stages are measured (:mod:`rwedit.runtime`: wall and CPU seconds, forward
    tokens, peak resident memory; ``run`` the whole, outer stages include their ``stage: part`` ones); however it
    ends, ``timings.json`` beside its store holds this process's figures."""
    with recording() as stages:
        try:
            with stage("run"):
                yield
        finally:
            if folder.exists():
                write_json(folder / "timings.json", {n: dataclasses.asdict(c) for n, c in stages.items()})


def check_scores(scores: dict[str, Any], condition: str) -> dict[str, Any]:
    """A scorer's metrics, refused when a metric (not a stderr, which is undefined for one item) is NaN or
    Inf: a model whose weights or adapter broke gives such numbers, and they must not become a verdict."""
    import math

    from rwedit.errors import NonFiniteError

    bad = [k for k, v in scores.items() if not k.endswith(("_stderr", "_se")) and (
        (isinstance(v, float) and not math.isfinite(v))
        or (isinstance(v, list) and any(isinstance(x, float) and not math.isfinite(x) for x in v)))]
    if bad:
        raise NonFiniteError(
            f"condition {condition!r}: {', '.join(k + ' is not finite' for k in bad[:4])}; a non-finite score "
            f"means the model (or its adapter) produced NaN/Inf logits. Nothing was stored for it; check the "
            f"model's weights (`rwedit deltas`) and the edit's alpha")
    return scores


def stored_kind(folder: str | Path) -> ExperimentKind:
    """The kind of the run stored in ``folder`` (its ``run.json``; runs from before the key: control)."""
    cfg = ResultStore(folder).meta().get("config", {})
    return experiment_kind(str(cfg.get("experiment") or DEFAULT_KIND))


def share_note(folder: str | Path) -> str | None:
    """The line saying that ``folder`` is one shard's own store and naming the whole run's folder (None for any
    other folder): its report covers its share of the conditions only."""
    store = ResultStore(folder)
    share = store.share()
    if share is None:
        return None
    shard, whole = share
    return (f"{folder} is shard {shard} of the sharded run in {whole}: it holds one share of the conditions "
            f"({len(store.meta().get('conditions') or store.done())}), not the whole run; `rwedit report {whole}` "
            f"reports every shard merged")


def shard_problems(folder: str | Path) -> list[str]:
    """One line for each share of a sharded run in ``folder`` that is missing or incomplete (none for a
    complete or unsharded run); shards of another recipe or split are refused here. ``folder`` one shard's own
    store: the line saying it is a share and naming the whole run's folder."""
    note = share_note(folder)
    if note is not None:
        return [note]
    store = ResultStore(folder)
    return [s.describe(Path(folder)) for s in store.shard_status() if not s.complete] if store.sharded else []


def write_report(folder: str | Path, **options: Any) -> Path:
    """Rebuild the report of a stored run with its own kind's report (options it does not take are ignored);
    of a sharded run, from every shard's rows merged, saying which shard is missing or incomplete."""
    kind = stored_kind(folder)
    if kind.report is None:
        raise ExperimentError(f"{folder}: experiment kind {kind.name!r} has no report to rebuild")
    problems = shard_problems(folder)  # also refuses shards of two recipes or splits before anything is drawn
    accepted = inspect.signature(kind.report).parameters
    try:
        with ResultStore(folder).shared():  # never beside a shard's process writing the same report
            path = kind.report(folder, **{k: v for k, v in options.items() if k in accepted and v is not None})
    except ExperimentError as e:
        if not problems:
            raise
        raise ExperimentError(f"{e}\n" + "\n".join(problems)) from None
    store = ResultStore(folder)
    missing, share = store.missing(), store.share()
    banner = f"> **One share of a sharded run.** {problems[0]}.\n\n" if share is not None else ""
    if missing:
        how = (f"`rwedit run RECIPE --out {share[1]} --shard {share[0]} --resume` finishes it" if share else
               "; ".join(problems) if problems else f"`rwedit run RECIPE --out {folder} --resume` finishes it")
        banner += (f"> **Unfinished run: {len(missing)} condition(s) not scored yet** ({', '.join(missing[:8])}"
                   f"{', …' if len(missing) > 8 else ''}). Every number below is from the rows stored so far; "
                   f"{how}.\n\n")
    if banner and path is not None and Path(path).suffix == ".md":
        from rwedit.outputs import write_text

        write_text(path, banner + Path(path).read_text())
    return path


__all__ = ["Condition", "ExperimentKind", "ExperimentRecipe", "Prepared", "RunResult", "Scorer", "experiment_kind",
           "experiment_kinds", "load_recipe", "register_experiment", "register_lazy_experiment", "run_experiment",
           "run_recipe", "shard_problems", "share_note", "stored_kind", "write_report"]
