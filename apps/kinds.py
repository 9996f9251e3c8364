"""The applications' experiment kinds, registered with :mod:`rwedit.evals.core` when :mod:`rwedit.apps` is
imported: ``quickstart`` (``recipes/quickstart.yaml``) and ``organism`` (``recipes/organism.yaml``).

Both run their own stages (``run``), not the store-based runner loop, and have no report to rebuild.
``overrides`` are the command line's: ``model``/``post``/``sft`` (the quickstart on any pair instead of
the organism), ``reduced`` (the seconds-scale organism), ``graded`` (every λ of ``align.lambdas``),
``organism_root`` (where organisms are cached); None values are ignored.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rwedit.apps.organism.config import KIND as ORGANISM_KIND, OrganismConfig, reduced
from rwedit.apps.quickstart.recipe import KIND as QUICKSTART_KIND, QuickstartRecipe
from rwedit.config import given
from rwedit.errors import OrganismError
from rwedit.evals.core import ExperimentKind, RunResult, register_experiment


def run_quickstart_kind(recipe: QuickstartRecipe, out: str | Path | None = None, *, resume: bool = True,
                        progress: bool = True, cache_dir: str | Path | None = None,
                        overrides: dict[str, Any] | None = None) -> RunResult:
    """The quickstart into ``out`` (default ``runs/NAME``); it always reuses finished stages, so ``resume``
    changes nothing."""
    from rwedit.apps.quickstart.run import run_quickstart

    ov = given(overrides)
    if ov.get("graded"):
        recipe = replace(recipe, graded=True)
    folder = Path(out or Path("runs") / recipe.name)
    res = run_quickstart(recipe, folder, model=ov.get("model"), post=ov.get("post"), sft=ov.get("sft"),
                         progress=progress, cache_dir=cache_dir, organism_root=ov.get("organism_root"),
                         use_reduced=bool(ov.get("reduced")))
    return RunResult(folder, res.report, list(res.findings) + ["", f"report: {res.report}"])


def run_organism_kind(cfg: OrganismConfig, out: str | Path | None = None, *, resume: bool = True,
                      progress: bool = True, cache_dir: str | Path | None = None,
                      overrides: dict[str, Any] | None = None) -> RunResult:
    """Build (or reuse) the organism under ``out`` (default: the organism cache, ``$RWEDIT_CACHE/organism``)
    and check that its alignment took; the lines are the measured table and the model folders."""
    from rwedit.apps.organism.measure import check_aligned, summary_lines
    from rwedit.apps.organism.training import build_organism

    ov = given(overrides)
    if ov.get("reduced"):
        cfg = reduced(cfg)
    org = build_organism(cfg, out or ov.get("organism_root"), progress=progress,
                         lambdas=None if ov.get("graded") else (0.0, 1.0))
    report = org.report()
    lines = summary_lines(report) + ["", f"pretrained: {org.pretrained}", f"aligned:    {org.aligned}",
                                     f"SFT:        {org.sft}"]
    try:
        check_aligned(report)
    except OrganismError as e:  # the measurements are what the user needs to see next to the failure
        raise OrganismError("\n".join(lines + ["", str(e)])) from None
    return RunResult(org.root, None, lines)


QUICKSTART = register_experiment(ExperimentKind(
    name=QUICKSTART_KIND, recipe=QuickstartRecipe, run=run_quickstart_kind, report=None,
    help="organism → RSF/SVD probes → trajectories → causal control experiment → one report"), replace=True)
ORGANISM = register_experiment(ExperimentKind(
    name=ORGANISM_KIND, recipe=OrganismConfig, run=run_organism_kind, report=None,
    help="CE-pretrained Llama → DPO-aligned and SFT control (TRL), cached by recipe hash"), replace=True)

__all__ = ["ORGANISM", "QUICKSTART", "run_organism_kind", "run_quickstart_kind"]
