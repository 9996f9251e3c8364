"""Running the quickstart into one folder, resumable: (1) the organism (or a given pair), (2) RSF and SVD probes
of base → aligned and base → SFT, (3) the within-run RSF trajectories (and RSF vs λ of the graded objective),
(4) the decomposition of the observed update (which part carries the margin shift, at the observed dose),
(5) the causal control experiment with its edit adapter exported, (6) ``OUT/report.md``, the decomposition's
answer and the findings first, and ``OUT/findings.csv``. With ``seeds`` above 1 every stage runs on each of N
organisms into ``OUT/seed_S/`` and the claims are pooled over them (:mod:`.replicate`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from rwedit.apps.organism import Organism, build_organism, check_aligned, planned_model, quiet_libraries
from rwedit.apps.quickstart.recipe import QuickstartRecipe, reduced
from rwedit.apps.quickstart.replicate import pooled_table, write_findings, write_replicated_report
from rwedit.apps.quickstart.report import (CLAIM_CELLS, CLAIM_K, DECOMPOSE_DIR, claim_findings, claim_series,
                                           findings_table, observed_dose_line, write_quickstart_report)
from rwedit.apps.quickstart.specificity import CONTROLS_CSV, rsf_controls
from rwedit.architectures import LAYER_ROLES
from rwedit.errors import ConfigError
from rwedit.runtime import runtime


@dataclass(frozen=True)
class QuickstartResult:
    """What a quickstart run produced: the report's path and the findings table (a row per claim) that the report
    opens with and the command prints last."""

    report: Path
    findings: list[str]
    opening: str | None = None  # the report's opening line: at the observed dose, which part carries the shift


def _say(msg: str) -> None:
    if runtime().progress:
        print(f"[quickstart] {msg}", flush=True)


def run_quickstart(recipe: QuickstartRecipe, out: str | Path = "runs/quickstart", model: str | None = None,
                   post: str | None = None, sft: str | None = None, organism_root: str | Path | None = None,
                   use_reduced: bool = False) -> QuickstartResult:
    """Run every stage into ``out`` (resuming what is finished), every setting checked against the model first;
    ``use_reduced``: the seconds-scale :func:`~rwedit.apps.quickstart.recipe.reduced`; ``recipe.seeds`` above 1:
    every stage on each organism into ``out/seed_S``, the claims pooled over them. Returns the report."""
    t0 = time.perf_counter()
    out = Path(out)
    if model is None and (post is not None or sft is not None):
        raise ConfigError("--post/--sft need --model (the base they were post-trained from); without --model the "
                          "quickstart builds and uses the bundled organism")
    if model is not None and recipe.seeds > 1:
        raise ConfigError(f"--seeds {recipe.seeds} replicates the organism: it needs the organism, not --model/--post "
                          f"(one given pair has one seed); drop --seeds or --model")
    if use_reduced:
        recipe = reduced(recipe)
    if model is not None:  # a mistyped or mismatched pair, or a recipe that does not fit it, fails before any work
        from rwedit.checkpoints import Checkpoint, CheckpointPair

        if post is None:
            raise ConfigError("--model needs --post (the post-trained checkpoint of the same architecture)")
        pair = CheckpointPair(Checkpoint.open(model), post)
        if sft:
            CheckpointPair(pair.base, sft)
        recipe.check_fits(pair.base, post)
    else:  # the organism's settings say what model it will be: the recipe is checked against that before training
        recipe.check_fits(planned_model(recipe.organism))
    with quiet_libraries():  # the stage lines and rwedit's bars, not the libraries' chatter
        if recipe.seeds == 1:
            return _run(recipe, out, model, post, sft, organism_root, t0)
        return _replicate(recipe, out, organism_root)


def _replicate(recipe: QuickstartRecipe, out: Path, organism_root) -> QuickstartResult:
    """Every stage on each seed's organism into ``out/seed_S`` (each resumable), then the pooled findings."""
    seeds = [recipe.organism.seed + i for i in range(recipe.seeds)]
    found, times = {}, {}
    for i, seed in enumerate(seeds):
        folder = out / f"seed_{seed}"
        _say(f"seed {seed} ({i + 1} of {len(seeds)}) into {folder}")
        _run(replace(recipe, organism=replace(recipe.organism, seed=seed), seeds=1), folder, None, None, None,
             organism_root, time.perf_counter())
        found[seed] = claim_findings(folder)
        times[seed] = json.loads((folder / "quickstart.json").read_text())["seconds"]
    frame = write_findings(out, found)
    path = write_replicated_report(out, frame, times)
    _say(f"{len(seeds)} seeds pooled: {path}")
    return QuickstartResult(report=path, findings=pooled_table(frame))


def _run(recipe: QuickstartRecipe, out: Path, model: str | None, post: str | None, sft: str | None, organism_root,
         t0: float) -> QuickstartResult:
    from rwedit.evals.core import run_recipe
    from rwedit.probes.grid import GridSettings
    from rwedit.probes.pipeline import CalibrationSettings, ProbeRequest, SvdSettings, run_probe

    rt = runtime()
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    org: Organism | None = None
    n = 6 if recipe.decompose else 5  # stages skipped for a given pair (1, 3) keep their numbers

    def say(i: int, what: str) -> None:
        _say(f"stage {i}/{n}: {what}")

    if model is None:
        lambdas = None if recipe.graded else (0.0, 1.0)
        say(1, "the model organism (cached by recipe hash; first build takes minutes)")
        t = time.perf_counter()
        org = build_organism(recipe.organism, organism_root, rt.progress, lambdas=lambdas)
        times["organism"] = time.perf_counter() - t
        check_aligned(org.report())  # an organism whose alignment did not take is a failure, not a finding
        model, post, sft = str(org.pretrained), str(org.aligned), str(org.sft)
    pairs = {"aligned": post} | ({"sft": sft} if sft else {})

    p = recipe.probe
    calib = CalibrationSettings(p.data, tokens=p.tokens, seq_len=p.seq_len)
    grid = GridSettings(ks=p.ks, null_seeds=p.null_seeds)
    t = time.perf_counter()
    say(2, f"RSF and SVD probes of base → {', '.join(pairs)}")
    for name, path in pairs.items():
        if not (out / f"probe_{name}" / "meta.json").exists():
            run_probe(ProbeRequest(model, path, calibration=calib, grid=grid, svd=None, out=out / f"probe_{name}"))
        if not (out / f"svd_{name}" / "meta.json").exists():
            run_probe(ProbeRequest(model, path, grid=None, svd=SvdSettings(r=p.svd_r, null_seeds=p.svd_null_seeds), out=out / f"svd_{name}"))
    if not (out / CONTROLS_CSV).exists():  # the RW claims' controls: W_base and the spectrum's random update
        rsf_controls(model, calib, p.ks, CLAIM_CELLS).to_csv(out / CONTROLS_CSV, index=False)
    times["probes"] = time.perf_counter() - t

    t = time.perf_counter()
    if org is not None:
        say(3, "RSF trajectories (pretraining, alignment) and the graded objective")
        training_side(org, out, calib)
    times["training_side"] = time.perf_counter() - t

    dec = recipe.decompose_recipe(model, post)
    rec = recipe.control_recipe(model, post)  # the pair was probed in stage 2
    runs = [("decomposition of the observed update (which part carries the margin shift, at the observed dose)", dec,
             DECOMPOSE_DIR), ("causal control experiment (edit vs matched controls, scored with lm-eval)", rec,
                              "experiment")]
    for i, (what, r, folder) in enumerate([x for x in runs if x[1] is not None], 4):
        say(i, what)
        t = time.perf_counter()
        run_recipe(r, out / folder, resume=(out / folder / "run.json").exists())
        times[folder] = time.perf_counter() - t

    say(n, "report")
    times["total"] = time.perf_counter() - t0
    path = write_quickstart_report(out, org.report() if org else None, {"model": model, **pairs},
                                   {k: round(v, 1) for k, v in times.items()}, rec.export, primary=rec.primary)
    write_findings(out, {recipe.organism.seed if org is not None else 0: claim_findings(out)})
    _say(f"done in {times['total'] / 60:.1f} min: {path}")
    return QuickstartResult(report=path, findings=findings_table(out), opening=observed_dose_line(out))


# --- training-side analyses -----------------------------------------------------------------------


def training_side(org: Organism, out: Path, calib) -> None:
    """Trajectory CSVs/plots for pretraining and alignment, and the graded-objective plot (if built)."""
    import torch

    from rwedit.checkpoints import Checkpoint, CheckpointPair
    from rwedit.probes.grid import (COLUMNS, GridContext, GridSettings, prediction_from_pair, rsf_grid_deltas,
                                    rsf_grid_pair)
    from rwedit.probes.pipeline import activation_stats_for
    from rwedit.runtime import using

    tdir = out / "training"
    tdir.mkdir(exist_ok=True)
    pre = Checkpoint.open(org.pretrained)
    with using(progress=False):
        stats = activation_stats_for(pre, calib, LAYER_ROLES)
    tgrid = GridSettings(roles=LAYER_ROLES, ks=(1, 4, 16), null_seeds=4)
    pred = prediction_from_pair(CheckpointPair(pre, pre))
    # pretraining: W_t − W_0 against the *final* pretrained model's subspaces (they do not exist at W_0)
    traj_csv = tdir / "trajectory_pretrain.csv"
    if not traj_csv.exists():
        snaps = torch.load(org.pretrained / "trajectory_snapshots.pt")
        w0 = snaps[0]
        ctx = GridContext(stats, pred)
        rows = []
        for step in sorted(s for s in snaps if s > 0):
            deltas = {k: snaps[step][k] - w0[k] for k in w0}
            rows += [{"step": step, **r} for r in rsf_grid_deltas(deltas, pre.layout, ctx, tgrid)]
        pd.DataFrame(rows, columns=("step",) + COLUMNS).to_csv(traj_csv, index=False)
    align_csv = org.aligned / "trajectory.csv"
    plot_trajectories({"pretraining (CE)": traj_csv, "alignment (DPO)": align_csv}, tdir / "trajectory.png")
    built = sorted(float(p.name.split("_")[1]) for p in (org.root / "graded").glob("lambda_*")
                   if (p / "stage.json").exists())
    graded_csv = tdir / "graded_rsf.csv"
    if len(built) > 2:
        rows = []
        for lam in built:
            pair = CheckpointPair(pre, Checkpoint.open(org.lam_dir(lam)))
            with using(progress=False):
                rows += [{"lambda": lam, **r} for r in rsf_grid_pair(pair, stats, tgrid)]
        pd.DataFrame(rows, columns=("lambda",) + COLUMNS).to_csv(graded_csv, index=False)
        plot_graded(graded_csv, tdir / "graded_rsf.png")


def _plot_series(ax, series: dict[str, pd.DataFrame]) -> None:
    for label, s in series.items():
        ax.errorbar(s.index, s["mean"], yerr=s["sem"].fillna(0), marker="o", capsize=2, label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")


def plot_trajectories(csvs: dict[str, Path], path: Path) -> Path | None:
    """One panel per training run: read- and write-side claim RSF of W_t − W_0 against the step."""
    from rwedit.probes.report import pyplot, save_figure

    have = {k: v for k, v in csvs.items() if Path(v).exists()}
    if not have:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(have), figsize=(5.5 * len(have), 4), squeeze=False)
    for ax, (name, csv) in zip(axes[0], have.items()):
        _plot_series(ax, claim_series(pd.read_csv(csv)))
        ax.set_xlabel("training step")
        ax.xaxis.get_major_locator().set_params(integer=True)  # steps are whole numbers
        ax.set_ylabel(f"RSF (k = {CLAIM_K}; 1 = isotropic)")
        ax.set_title(f"{name}: RSF of W_t − W_0")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_graded(csv: Path, path: Path) -> Path:
    """Read- and write-side claim RSF of W_λ − W_pretrained against λ."""
    from rwedit.probes.report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    _plot_series(ax, claim_series(pd.read_csv(csv)))
    ax.set_xlabel("λ  (loss = λ·L_pref + (1 − λ)·L_CE)")
    ax.set_ylabel(f"RSF (k = {CLAIM_K}; 1 = isotropic)")
    ax.set_title("graded objective: RSF of W_λ − W_pretrained")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


__all__ = ["QuickstartResult", "plot_graded", "plot_trajectories", "run_quickstart", "training_side"]
