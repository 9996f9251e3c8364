"""The offline quickstart (``rwedit quickstart``): organism → probes → causal control experiment → one report.

1. build (or reuse) the organism: CE-pretrained Llama, its DPO-aligned and SFT-control versions
   (or take ``--model/--post[/--sft]`` for any pair);
2. RSF and SVD probes of (pretrained → aligned) and (pretrained → SFT);
3. the within-run RSF trajectories (pretraining and alignment) and, with ``graded: true``, RSF vs λ of
   the graded objective;
4. the causal control experiment (``rwedit.evals.experiment``) on (pretrained, aligned), its edit
   adapter exported with a model card;
5. ``OUT/report.md`` whose first screen lists what was found, per claim, with numbers and intervals.
Every stage is resumable: a rerun into the same folder reuses what is finished.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from rwedit.organism import (Organism, OrganismConfig, OrganismError, build_organism, check_aligned, check_keys,
                             reduced)

#: the claims the report checks, with the headline k of the RSF grid they are read at
CLAIM_K = 4
READ_ROLES_CLAIM = ("q", "k")
WRITE_ROLES_CLAIM = ("o", "down")


@dataclass(frozen=True)
class ProbeSettings:
    data: str = "bundled:wikitext-2/valid.txt.gz"
    tokens: int = 32_768
    seq_len: int = 128
    ks: tuple[int, ...] = (1, 4, 16, 64)
    null_seeds: int = 8
    svd_r: int | str = "full"


@dataclass(frozen=True)
class QuickstartRecipe:
    name: str = "quickstart"
    organism: OrganismConfig = field(default_factory=OrganismConfig)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    graded: bool = False  # also train λ ∈ align.lambdas and plot RSF vs λ
    experiment: dict = field(default_factory=dict)  # a control-experiment recipe without edit.model/post
    base_dir: str | None = None  # the recipe's folder: relative paths in `experiment` resolve from it

    @classmethod
    def from_yaml(cls, path: str | Path) -> "QuickstartRecipe":
        path = Path(path)
        if not path.exists():
            raise OrganismError(f"recipe {path} not found")
        raw = yaml.safe_load(path.read_text()) or {}
        check_keys(cls, raw, "quickstart recipe")
        d = dict(raw)
        org = d.get("organism")
        if isinstance(org, str):  # a path to an organism recipe, relative to this file
            org = OrganismConfig.from_yaml(path.parent / org)
        else:
            org = OrganismConfig.from_dict((org or {}).get("organism", org) if isinstance(org, dict) else {})
        d["organism"] = org
        pr = dict(d.get("probe") or {})
        check_keys(ProbeSettings, pr, "probe")
        if "ks" in pr:
            pr["ks"] = tuple(pr["ks"])
        d["probe"] = ProbeSettings(**pr)
        exp = dict(d.get("experiment") or {})
        if "edit" not in exp:
            raise OrganismError(f"{path}: `experiment:` needs an `edit:` section (see recipes/control-experiment.yaml)")
        exp.setdefault("name", d.get("name", "quickstart"))
        d["experiment"] = exp
        d["base_dir"] = str(path.parent)
        return cls(**d)


def is_quickstart_recipe(raw: dict) -> bool:
    return isinstance(raw, dict) and "organism" in raw and "experiment" in raw


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[quickstart] {msg}", flush=True)


def run_quickstart(recipe: QuickstartRecipe, out: str | Path = "runs/quickstart", model: str | None = None,
                   post: str | None = None, sft: str | None = None, progress: bool = True,
                   cache_dir: str | Path | None = None, organism_root: str | Path | None = None,
                   use_reduced: bool = False) -> Path:
    """Run every stage into ``out`` (resuming what is finished) and return the report's path."""
    from rwedit.evals.experiment import Recipe, run_experiment
    from rwedit.probes.pipeline import CalibrationSettings, run_rsf_probe, run_svd_probe
    from rwedit.probes.grid import GridSettings

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    org: Organism | None = None
    if model is None:
        cfg = reduced(recipe.organism) if use_reduced else recipe.organism
        lambdas = None if recipe.graded else (0.0, 1.0)
        _say(progress, "stage 1/5: the model organism (cached by recipe hash; first build takes minutes)")
        t = time.perf_counter()
        org = build_organism(cfg, organism_root, progress, lambdas=lambdas)
        times["organism"] = time.perf_counter() - t
        check_aligned(org.report())  # an organism whose alignment did not take is a failure, not a finding
        model, post, sft = str(org.pretrained), str(org.aligned), str(org.sft)
    elif post is None:
        raise OrganismError("--model needs --post (the post-trained checkpoint of the same architecture)")
    pairs = {"aligned": post} | ({"sft": sft} if sft else {})

    p = recipe.probe
    calib = CalibrationSettings(p.data, tokens=p.tokens, seq_len=p.seq_len)
    grid = GridSettings(ks=p.ks, null_seeds=p.null_seeds)
    t = time.perf_counter()
    for i, (name, path) in enumerate(pairs.items()):
        _say(progress, f"stage 2/5: RSF and SVD probes of base → {name}")
        if not (out / f"probe_{name}" / "meta.json").exists():
            run_rsf_probe(model, path, out / f"probe_{name}", calib, grid, cache_dir=cache_dir, progress=progress)
        if not (out / f"svd_{name}" / "meta.json").exists():
            run_svd_probe(model, path, out / f"svd_{name}", r=p.svd_r, progress=progress)
    times["probes"] = time.perf_counter() - t

    t = time.perf_counter()
    if org is not None:
        _say(progress, "stage 3/5: RSF trajectories (pretraining, alignment) and the graded objective")
        training_side(org, out, calib, grid, cache_dir, progress)
    times["training_side"] = time.perf_counter() - t

    _say(progress, "stage 4/5: causal control experiment (edit vs matched controls, scored with lm-eval)")
    t = time.perf_counter()
    exp = dict(recipe.experiment)
    exp["edit"] = {**exp["edit"], "model": model, "post": post}
    exp["probe"] = {**(exp.get("probe") or {}), "enabled": False}  # the pair was probed in stage 2
    rec = Recipe.from_dict(exp, base_dir=recipe.base_dir)
    exp_dir = out / "experiment"
    run_experiment(rec, exp_dir, resume=(exp_dir / "run.json").exists(), progress=progress, cache_dir=cache_dir)
    times["experiment"] = time.perf_counter() - t

    _say(progress, "stage 5/5: report")
    times["total"] = time.perf_counter() - t0
    path = write_quickstart_report(out, org.report() if org else None, {"model": model, **pairs},
                                   {k: round(v, 1) for k, v in times.items()}, rec.export)
    _say(progress, f"done in {times['total'] / 60:.1f} min: {path}")
    return path


# --- training-side analyses -----------------------------------------------------------------------


def training_side(org: Organism, out: Path, calib, grid, cache_dir, progress: bool) -> None:
    """Trajectory CSVs/plots for pretraining and alignment, and the graded-objective plot (if built)."""
    import torch

    from rwedit.checkpoints import Checkpoint, CheckpointPair
    from rwedit.organism import TRAJECTORY_ROLES
    from rwedit.probes.grid import GridContext, GridSettings, prediction_from_pair, rsf_grid_deltas, rsf_grid_pair
    from rwedit.probes.pipeline import activation_stats_for
    from rwedit.probes.report import write_rows
    from rwedit.probes.grid import COLUMNS

    tdir = out / "training"
    tdir.mkdir(exist_ok=True)
    pre = Checkpoint.open(org.pretrained)
    stats = activation_stats_for(pre, calib, TRAJECTORY_ROLES, cache_dir, progress=False)
    tgrid = GridSettings(roles=TRAJECTORY_ROLES, ks=(1, 4, 16), null_seeds=4)
    pred = prediction_from_pair(CheckpointPair(pre, pre))
    # pretraining: W_t − W_0 against the *final* pretrained model's subspaces (they do not exist at W_0)
    traj_csv = tdir / "trajectory_pretrain.csv"
    if not traj_csv.exists():
        snaps = torch.load(org.pretrained / "trajectory_snapshots.pt")
        w0 = snaps[0]
        ctx = GridContext(hidden=pre.layout.dims.hidden, stats=stats, prediction=pred)
        rows = []
        for step in sorted(s for s in snaps if s > 0):
            deltas = {k: snaps[step][k] - w0[k] for k in w0}
            rows += [{"step": step, **r} for r in rsf_grid_deltas(deltas, ctx, tgrid, progress=False)]
        write_rows(rows, traj_csv, ("step",) + COLUMNS)
    align_csv = org.aligned / "trajectory.csv"
    plot_trajectories({"pretraining (CE)": traj_csv, "alignment (DPO)": align_csv}, tdir / "trajectory.png")
    built = sorted(float(p.name.split("_")[1]) for p in (org.root / "graded").glob("lambda_*")
                   if (p / "stage.json").exists())
    graded_csv = tdir / "graded_rsf.csv"
    if len(built) > 2:
        rows = []
        for lam in built:
            pair = CheckpointPair(pre, Checkpoint.open(org.lam_dir(lam)))
            rows += [{"lambda": lam, **r} for r in rsf_grid_pair(pair, stats, tgrid, progress=False)]
        write_rows(rows, graded_csv, ("lambda",) + COLUMNS)
        plot_graded(graded_csv, tdir / "graded_rsf.png")


def _claim_rows(df: pd.DataFrame, roles, side: str, subspace: str, k: int) -> pd.DataFrame:
    """The rows of an RSF table for one claim: these roles, this side and subspace, this k."""
    return df[df["role"].astype(str).isin(roles) & (df["side"] == side) & (df["subspace"] == subspace) &
              (df["k"] == k)]


def claim_series(df: pd.DataFrame, k: int = CLAIM_K) -> dict[str, pd.DataFrame]:
    """Read-side RSF of q,k vs the activation subspace and write-side RSF of o,down vs the prediction
    subspace, mean over layers and roles, per value of the first column (step or λ)."""
    x = df.columns[0]
    read = _claim_rows(df, READ_ROLES_CLAIM, "read", "activation", k)
    write = _claim_rows(df, WRITE_ROLES_CLAIM, "write", "prediction", k)
    return {f"read: {'/'.join(READ_ROLES_CLAIM)} vs activation A_{k}": read.groupby(x)["rsf"].agg(["mean", "sem"]),
            f"write: {'/'.join(WRITE_ROLES_CLAIM)} vs prediction P_{k}": write.groupby(x)["rsf"].agg(["mean", "sem"])}


def _plot_series(ax, series: dict[str, pd.DataFrame]) -> None:
    for label, s in series.items():
        ax.errorbar(s.index, s["mean"], yerr=s["sem"].fillna(0), marker="o", capsize=2, label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")


def plot_trajectories(csvs: dict[str, Path], path: Path) -> Path | None:
    from rwedit.probes.report import _mpl

    have = {k: v for k, v in csvs.items() if Path(v).exists()}
    if not have:
        return None
    plt = _mpl()
    fig, axes = plt.subplots(1, len(have), figsize=(5.5 * len(have), 4), squeeze=False)
    for ax, (name, csv) in zip(axes[0], have.items()):
        _plot_series(ax, claim_series(pd.read_csv(csv)))
        ax.set_xlabel("training step")
        ax.set_ylabel(f"RSF (k = {CLAIM_K}; 1 = isotropic)")
        ax.set_title(f"{name}: RSF of W_t − W_0")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_graded(csv: Path, path: Path) -> Path:
    from rwedit.probes.report import _mpl

    plt = _mpl()
    fig, ax = plt.subplots(figsize=(6, 4))
    _plot_series(ax, claim_series(pd.read_csv(csv)))
    ax.set_xlabel("λ  (loss = λ·L_pref + (1 − λ)·L_CE)")
    ax.set_ylabel(f"RSF (k = {CLAIM_K}; 1 = isotropic)")
    ax.set_title("graded objective: RSF of W_λ − W_pretrained")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the report -------------------------------------------------------------------------------------


def _rsf_claim(head: pd.DataFrame, roles, side: str, subspace: str, k: int) -> dict | None:
    sel = _claim_rows(head, roles, side, subspace, k)
    if sel.empty:
        return None
    return {"rsf": float(sel["rsf_mean"].mean()), "null_mean": float(sel["null_mean"].mean()),
            "null_sd": float(sel["null_sd"].mean()), "z": float(sel["z_mean"].mean()),
            "min": float(sel["rsf_min"].min()), "max": float(sel["rsf_max"].max())}


def _describe(c: dict | None, expect: str | None = None) -> tuple[str, str]:
    """(verdict word, numbers) of an RSF against its random null: above / isotropic / below, and — when
    ``expect`` names what the claim predicts ("concentrated" or "isotropic") — whether this agrees."""
    if c is None:
        return "not measured", ""
    kind = "concentrated" if c["z"] > 3 else ("below" if c["z"] < -3 else "isotropic")
    word = {"concentrated": "concentrated (above the random null)", "below": "below the random null",
            "isotropic": "consistent with isotropic (within 3 null sd)"}[kind]
    if expect is not None:
        word += " — **as the claim predicts**" if kind == expect else f" — **not what the claim predicts** ({expect})"
    return word, (f"RSF {c['rsf']:.3g} (layers {c['min']:.3g}–{c['max']:.3g}) vs random {c['null_mean']:.3g} ± "
                  f"{c['null_sd']:.2g}, mean z {c['z']:.3g}")


def findings(out: Path, k: int = CLAIM_K) -> list[str]:
    """One line per RW/HC claim, from the probe folders and the experiment's verdicts."""
    lines = []
    head_a = out / "probe_aligned" / "headline.csv"
    head_s = out / "probe_sft" / "headline.csv"
    if head_a.exists():
        h = pd.read_csv(head_a)
        w, n = _describe(_rsf_claim(h, READ_ROLES_CLAIM, "read", "activation", k), "concentrated")
        lines.append(f"- **RW: alignment concentrates on the read side of q, k** (vs activation subspace A_{k}): "
                     f"{w}. {n}.")
        w, n = _describe(_rsf_claim(h, WRITE_ROLES_CLAIM, "write", "prediction", k), "isotropic")
        lines.append(f"- **RW: alignment is isotropic on the write side of o, down** (vs prediction subspace "
                     f"P_{k}): {w}. {n}.")
    if head_s.exists():
        h = pd.read_csv(head_s)
        w, n = _describe(_rsf_claim(h, WRITE_ROLES_CLAIM, "write", "prediction", k), "concentrated")
        lines.append(f"- **RW: cross-entropy training writes into the prediction subspace** (SFT control, write "
                     f"side of o, down vs P_{k}): {w}. {n}.")
        w, n = _describe(_rsf_claim(h, READ_ROLES_CLAIM, "read", "activation", k))
        lines.append(f"- SFT control, read side of q, k vs A_{k}: {w}. {n}.")
    if head_a.exists() and head_s.exists():
        lines += contrast_lines(out, k)
    traj = out / "training" / "trajectory_pretrain.csv"
    if traj.exists():
        s = claim_series(pd.read_csv(traj), k)
        wkey = next(x for x in s if x.startswith("write"))
        last = s[wkey].iloc[-1]
        lines.append(f"- Pretraining trajectory (W_t − W_0 vs the final model's P_{k}): write-side RSF of o, down "
                     f"at the last snapshot {last['mean']:.3g} ± {last['sem']:.2g} (sem over layers/roles); "
                     "see `training/trajectory.png`.")
    graded = out / "training" / "graded_rsf.csv"
    if graded.exists():
        parts = []
        for label, ser in claim_series(pd.read_csv(graded), k).items():
            cells = ", ".join(f"λ={lam:g}: {r['mean']:.3g} ± {r['sem']:.2g}" for lam, r in ser.iterrows())
            parts.append(f"{label.split(':')[0]}-side RSF {cells}")
        lines.append("- **Graded objective λ·L_pref + (1 − λ)·L_CE** (RW: write-side RSF should fall as λ → 1): "
                     + "; ".join(parts) + " (sem over layers/roles); see `training/graded_rsf.png`.")
    ver = out / "experiment" / "verdicts.csv"
    if ver.exists() and ver.stat().st_size > 1:
        v = pd.read_csv(ver)
        for control, g in v.groupby("control", sort=False):
            parts = [f"α={r['alpha']:g}: **{r['answer']}** (effect {r['effect']:.3g}, 95% CI [{r['ci_low']:.3g}, "
                     f"{r['ci_high']:.3g}])" for _, r in g.iterrows()]
            lines.append(f"- **RW causal test: principal read-pathway edit shifts {g['metric'].iloc[0]} more than the "
                         f"{control} control at matched ‖ΔW‖**: " + "; ".join(parts) + ".")
    for name in ("aligned", "sft"):
        sv = out / f"svd_{name}" / "svd.csv"
        if sv.exists():
            d = pd.read_csv(sv)
            lines.append(f"- **HC (base → {name}): near-uniform singular-value scaling, one rotation on both sides**: "
                         f"scale s {d['scale'].mean():.4g} (sd over matrices {d['scale'].std():.2g}, residual "
                         f"{d['scale_residual'].mean():.2g}); consistency ‖Q_U − Q_V‖/‖Q_U‖ "
                         f"{d['consistency'].mean():.3g} (range {d['consistency'].min():.3g}–"
                         f"{d['consistency'].max():.3g}); reparameterisation error {d['reparam_error'].mean():.3g}.")
    return lines


def contrast_lines(out: Path, k: int = CLAIM_K) -> list[str]:
    """RW's contrast between the two regimes, paired over (layer, role): write-side RSF of o, down vs P_k
    under CE (SFT control) minus under the preference loss (aligned), with a t interval."""
    from rwedit.evals.report import t975

    def rows(name):
        d = _claim_rows(pd.read_csv(out / f"probe_{name}" / "rsf.csv"), WRITE_ROLES_CLAIM, "write", "prediction", k)
        return d.set_index(["layer", "role"])["rsf"]

    diff = (rows("sft") - rows("aligned")).dropna()
    if len(diff) < 2:
        return []
    m, se = float(diff.mean()), float(diff.std(ddof=1) / len(diff) ** 0.5)
    h = t975(len(diff) - 1) * se
    word = "yes" if m - h > 0 else ("no: the reverse" if m + h < 0 else "inconclusive")
    return [f"- **RW contrast: CE writes more into the prediction subspace than the preference loss** (write-side "
            f"RSF of o, down vs P_{k}, SFT control − aligned, paired over {len(diff)} layer × role matrices): "
            f"**{word}** ({m:.3g}, 95% CI [{m - h:.3g}, {m + h:.3g}])."]


def spectrum_lines(out: Path, k: int = CLAIM_K) -> list[str]:
    sp = out / "probe_aligned" / "spectrum.csv"
    if not sp.exists():
        return []
    d = pd.read_csv(sp)
    d = d[d["k"] == k]
    if d.empty:
        return []
    g = d.groupby("input")[["topk_share", "participation_ratio", "d"]].mean().reset_index()
    cells = "; ".join(f"{r['input']}: top-{k} share {r['topk_share']:.3g} (isotropic {k / r['d']:.3g}), "
                      f"participation ratio {r['participation_ratio']:.3g} of d = {int(r['d'])}"
                      for _, r in g.iterrows())
    return [f"- Spikedness of the base model's activation spectra (mean over layers): {cells}. "
            "An isotropic spectrum would have top-k share k/d and participation ratio d."]


def write_quickstart_report(out: Path, organism: dict | None, models: dict, times: dict,
                            exported: tuple[str, ...] = ()) -> Path:
    from rwedit.organism import summary_lines

    lines = ["# rwedit quickstart: where alignment writes, and whether editing there matters", "",
             "## What was found", ""]
    lines += findings(out) + spectrum_lines(out)
    lines += ["", "RSF = share of ‖ΔW‖²_F inside a k-dim subspace over k/d (1 = isotropic); z = (RSF − random "
              "null mean) / null sd, averaged over layers. Verdicts: *yes* when the whole 95% interval of "
              "(|shift| principal − |shift| control) is above 0, *no* below, *inconclusive* otherwise.", ""]
    if organism:
        lines += ["## The organism", ""] + summary_lines(organism) + [""]
    lines += ["## Models", ""] + [f"- {k}: `{v}`" for k, v in models.items()] + [""]
    exp = out / "experiment" / "report.md"
    if exp.exists():
        text = exp.read_text()
        head = text.split("## Headline", 1)[1].split("## Every condition", 1)[0] if "## Headline" in text else ""
        lines += ["## Causal control experiment: headline" + head.rstrip(), "",
                  "Full experiment report: `experiment/report.md` (every condition, dose–response plots); rows: "
                  "`experiment/results.jsonl`.", ""]
        lines += [f"Exported adapter (model card with the measured numbers): `experiment/edit/adapters/{n}`"
                  for n in exported] + [""]
    lines += ["## Plots", ""]
    for rel in ("experiment/dose_response_pref_margin_shift.png", "training/trajectory.png",
                "training/graded_rsf.png", "probe_aligned/rsf_heatmap_read.png", "probe_aligned/rsf_heatmap_write.png",
                "svd_aligned/svd_consistency.png"):
        if (out / rel).exists():
            lines.append(f"![{rel}]({rel})")
    pngs = sorted(str(p.relative_to(out)) for p in out.glob("probe_*/*.png"))
    lines += ["", "Other plots: " + ", ".join(f"`{p}`" for p in pngs), ""]
    prev = out / "quickstart.json"
    old = json.loads(prev.read_text()) if prev.exists() else {}
    runs = old.get("runs", [old["seconds"]] if "seconds" in old else []) + [times]
    lines += ["## Wall time (s)", ""] + [
        f"- run {i + 1}{' (resumed: finished stages reused)' if i else ''}: " +
        " · ".join(f"{k} {v}" for k, v in t.items()) for i, t in enumerate(runs)] + ["",
              "## Files", "", "- `probe_<pair>/`: RSF grid (`rsf.csv`, `headline.csv`, `spectrum.csv`, `summary.md`)",
              "- `svd_<pair>/`: SVD structure probe (`svd.csv`, `summary.md`)",
              "- `training/`: RSF trajectories and the graded-objective grid (CSV + PNG)",
              "- `experiment/`: the control experiment (results.jsonl, report.md, adapters)",
              "- `quickstart.json`: models, wall times, organism measurements"]
    (out / "quickstart.json").write_text(json.dumps({"models": models, "seconds": times, "runs": runs,
                                                     "organism": organism},
                                                     indent=2, default=str))
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
