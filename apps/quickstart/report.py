"""The quickstart's findings and ``report.md``: one line per read/write (RW) and He & Cao (HC) claim,
read from the probe folders, the training-side CSVs and the control experiment's verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from rwedit.stats import over_members

#: the headline k of the RSF grid the claims are read at, and the roles each side's claim is about
CLAIM_K = 4
READ_ROLES_CLAIM = ("q", "k")
WRITE_ROLES_CLAIM = ("o", "down")


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
                     f"{r['ci_high']:.3g}]" + _power(r) + ")" for _, r in g.iterrows()]
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
    under CE (SFT control) minus under the preference loss (aligned), with a t interval over the matrices."""
    def rows(name):
        d = _claim_rows(pd.read_csv(out / f"probe_{name}" / "rsf.csv"), WRITE_ROLES_CLAIM, "write", "prediction", k)
        return d.set_index(["layer", "role"])["rsf"]

    diff = (rows("sft") - rows("aligned")).dropna()
    if len(diff) < 2:
        return []
    ci = over_members([float(x) for x in diff])
    answer = ci.verdict()
    word = "no: the reverse" if answer == "no" else answer
    return [f"- **RW contrast: CE writes more into the prediction subspace than the preference loss** (write-side "
            f"RSF of o, down vs P_{k}, SFT control − aligned, paired over {len(diff)} layer × role matrices): "
            f"**{word}** ({ci.estimate:.3g}, 95% CI [{ci.low:.3g}, {ci.high:.3g}])."]


def spectrum_lines(out: Path, k: int = CLAIM_K) -> list[str]:
    """The spikedness of the base model's activation spectra (top-k share and participation ratio)."""
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
                            exported: tuple[str, ...] = (), found: list[str] | None = None,
                            primary: str | None = None) -> Path:
    """``OUT/report.md`` (what was found first, then the organism, the models, the experiment's headline,
    plots, wall times and files) and ``OUT/quickstart.json``; ``found`` defaults to :func:`findings`."""
    from rwedit.apps.organism import summary_lines
    from rwedit.evals.report import headline_lines

    found = (findings(out) + spectrum_lines(out)) if found is None else found
    lines = ["# rwedit quickstart: where alignment writes, and whether editing there matters", "",
             "## What was found", ""]
    lines += found
    if (out / "experiment" / "overview.png").exists():
        lines += ["", "![overview](experiment/overview.png)"]
    lines += ["", "RSF = share of ‖ΔW‖²_F inside a k-dim subspace over k/d (1 = isotropic); z = (RSF − random "
              "null mean) / null sd, averaged over layers. Verdicts: *yes* when the whole 95% interval of "
              "the paired effect (principal − control item by item on the same held-out items, signed in the "
              "direction of the edit's objective, pooled over the replicate units) is above 0, *no* below, "
              "*inconclusive* otherwise; each comes with its minimum detectable effect (80% power) and the items "
              "that would detect the observed effect.", ""]
    if organism:
        lines += ["## The organism", ""] + summary_lines(organism) + [""]
    lines += ["## Models", ""] + [f"- {k}: `{v}`" for k, v in models.items()] + [""]
    exp = out / "experiment"
    if (exp / "report.md").exists():
        # the experiment's headline section, one heading level down under ours
        head = ["#" + x if x.startswith("#") else x for x in headline_lines(exp, primary)]
        lines += ["## Causal control experiment", ""] + head + [
            "", "Full experiment report: `experiment/report.md` (every condition, dose–response plots); rows: "
                "`experiment/results.jsonl`.", ""]
        lines += [f"Exported adapter (model card with the measured numbers): `experiment/edit/adapters/{n}`"
                  for n in exported] + [""]
    lines += ["## Plots", ""]
    for rel in ("experiment/forest.png", "experiment/dose_response_pref_margin_shift.png", "training/trajectory.png",
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


__all__ = ["CLAIM_K", "READ_ROLES_CLAIM", "WRITE_ROLES_CLAIM", "claim_series", "contrast_lines", "findings",
           "spectrum_lines", "write_quickstart_report"]


def _power(r) -> str:
    """The power line of a paired verdict row (empty for an unpaired one)."""
    if "n_items" not in r or pd.isna(r.get("n_items")):
        return ""
    test = str(r.get("test", "")).split(":")[0]
    units = int(r["n_units"]) if "n_units" in r and not pd.isna(r.get("n_units")) else 1
    pooled = (f", pooled over {units} replicate units (sd between units {r['unit_sd']:.3g})" if units > 1 else "")
    return (f"; {test} paired test over {int(r['n_items'])} items{pooled}, minimum detectable effect {r['mde']:.3g}, "
            f"{r['items_needed']:.0f} items would detect the observed effect; unpaired: {r['unpaired_answer']}")

