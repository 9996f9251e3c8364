"""The applications' experiment kinds ``quickstart`` and ``organism``, registered when :mod:`rwedit.apps` is
imported: chains of stages each cached or resumed on its own (not one loaded model with conditions), so they give
``run`` with a typed ``options`` Config of their switches instead of ``prepare``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from rwedit.apps.organism.config import KIND as ORGANISM_KIND, OrganismConfig, reduced
from rwedit.apps.quickstart.recipe import KIND as QUICKSTART_KIND, QuickstartRecipe
from rwedit.config import Config, option
from rwedit.errors import ExperimentError, OrganismError
from rwedit.outputs import default_run_folder
from rwedit.runtime import runtime
from rwedit.evals.core import ExperimentKind, RunResult, register_experiment


@dataclass(frozen=True)
class OrganismOptions(Config):
    """The organism's switches on the command line."""

    reduced: bool = option(False, help="the seconds-scale organism (tiny dims, few steps)")
    graded: bool = option(False, help="every lambda of align.lambdas, not just 0 and 1")
    organism_root: str | Path | None = option(None, help="where organisms are cached (default "
                                              "$RWEDIT_CACHE/organism)")
    seeds: int | None = option(None, help="independently seeded organisms (seed, seed + 1, …); unset: the recipe's (1)")


@dataclass(frozen=True)
class QuickstartOptions(OrganismOptions):
    """The quickstart's switches: the organism's, or a pair of your own instead of the organism."""

    model: str | Path | None = option(None, help="your base model instead of the organism's pretrained one")
    post: str | Path | None = option(None, help="your post-trained model instead of the aligned organism")
    sft: str | Path | None = option(None, help="your SFT control instead of the organism's")


def run_quickstart_kind(recipe: QuickstartRecipe, out: str | Path | None = None, *, resume: bool = True,
                        overrides: QuickstartOptions | None = None) -> RunResult:
    """The quickstart into ``out`` (default ``runs/NAME``), reusing every stage already finished there; a
    folder that holds files is refused unless ``resume`` (``rwedit quickstart`` always resumes)."""
    from rwedit.apps.quickstart.run import run_quickstart

    ov = overrides or QuickstartOptions()
    if ov.graded:
        recipe = replace(recipe, graded=True)
    if ov.seeds is not None:
        recipe = replace(recipe, seeds=ov.seeds)
    folder = Path(out or default_run_folder(recipe.name))
    if not resume and folder.is_dir() and any(folder.iterdir()):
        raise ExperimentError(f"{folder} already holds a run; pass --resume to finish it (every stage already "
                              f"finished there is reused) or choose another --out")
    res = run_quickstart(recipe, folder, model=ov.model, post=ov.post, sft=ov.sft, organism_root=ov.organism_root,
                         use_reduced=ov.reduced)
    return RunResult(folder, res.report, list(res.findings) + ([""] + [res.opening] if res.opening else []) +
                     ["", f"report: {res.report}"])


def run_organism_kind(cfg: OrganismConfig, out: str | Path | None = None, *, resume: bool = True,
                      overrides: OrganismOptions | None = None) -> RunResult:
    """Build (or reuse) the organism under ``out`` (default: the organism cache, ``$RWEDIT_CACHE/organism``)
    and check that its alignment took; the lines are the measured table and the model folders. The folder is
    a cache keyed by the recipe's hash, so a finished organism is reused whatever ``resume`` says."""
    from rwedit.apps.organism.measure import check_aligned, summary_lines
    from rwedit.apps.organism.training import build_organism

    ov = overrides or OrganismOptions()
    if ov.reduced:
        cfg = reduced(cfg)
    n = 1 if ov.seeds is None else ov.seeds
    if n < 1:
        raise OrganismError(f"--seeds {n}: give at least 1 organism")
    lines: list[str] = []
    for seed in range(cfg.seed, cfg.seed + n):  # each seed its own cached organism (the seed is in every key)
        org = build_organism(replace(cfg, seed=seed), out or ov.organism_root, progress=runtime().progress,
                             lambdas=None if ov.graded else (0.0, 1.0))
        report = org.report()
        these = ([f"## seed {seed}", ""] if n > 1 else []) + summary_lines(report) + [
            "", f"pretrained: {org.pretrained}", f"aligned:    {org.aligned}", f"SFT:        {org.sft}"]
        try:
            check_aligned(report)
        except OrganismError as e:  # the measurements are what the user needs to see next to the failure
            raise OrganismError("\n".join(lines + these + ["", str(e)])) from None
        lines += these + ([""] if n > 1 else [])
    return RunResult(org.root if n == 1 else org.root.parent, None, lines)


def plan_quickstart(recipe: QuickstartRecipe, ctx=None):
    """Its folder; each of its stages opens and checks its own checkpoints as it runs (the organism's are
    built by the first)."""
    from rwedit.evals.planning import KindPlan

    return KindPlan(folder=default_run_folder(recipe.name))


def plan_organism(cfg: OrganismConfig, ctx=None):
    """The organism cache it builds into (or reuses)."""
    from rwedit.apps.organism.training import default_root
    from rwedit.evals.planning import KindPlan

    return KindPlan(folder=default_root())


QUICKSTART = register_experiment(ExperimentKind(
    name=QUICKSTART_KIND, recipe=QuickstartRecipe, run=run_quickstart_kind, options=QuickstartOptions,
    plan=plan_quickstart,
    help="organism → RSF/SVD probes → trajectories → causal control experiment → one report"), replace=True)
ORGANISM = register_experiment(ExperimentKind(
    name=ORGANISM_KIND, recipe=OrganismConfig, run=run_organism_kind, options=OrganismOptions,
    plan=plan_organism,
    help="CE-pretrained Llama → DPO-aligned and SFT control (TRL), cached by recipe hash"), replace=True)

__all__ = ["ORGANISM", "QUICKSTART", "OrganismOptions", "QuickstartOptions", "run_organism_kind", "run_quickstart_kind"]
