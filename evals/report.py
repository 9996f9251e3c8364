"""The experiment report, computed from the results store alone (``rwedit report DIR`` re-runs it).

Every behaviour metric becomes a *shift* against the base row (direct metrics carry their paired
stderr; lm-eval metrics combine the two stderrs), divided by ‖ΔW‖_F for the per-unit-norm view.
Conditions of one kind and α with several members (random seeds, low-variance indices) are summarised
over members with a t interval; single conditions use their own stderr.  Verdicts compare the
*magnitude* of the shift of the principal read-pathway edit with each control at matched norm."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from rwedit.evals.store import ResultStore

#: direct metrics already expressed as a paired shift against the base (stderr from the pairs)
DIRECT_SHIFTS = {"pref_margin_shift": "preference margin shift (nats)", "pref_acc_shift": "preference accuracy shift",
                 "kl_base_edited": "KL(base ‖ edited), nats/token", "ce_shift": "held-out CE shift (nats/token)",
                 "ppl_change": "held-out perplexity change"}
KIND_ORDER = ["principal", "given", "random", "lowvar", "write"]
Z = 1.959963984540054

#: two-sided 95% Student-t quantiles for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """Two-sided 95% Student-t quantile: the table to 30 degrees of freedom, beyond it the Cornish–Fisher
    expansion around the normal quantile (error < 1e-4 from 31 on)."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def lmeval_metrics(rows: list[dict]) -> list[str]:
    """The lm-eval ``task/metric`` columns that have a value in the base row."""
    base = next(r for r in rows if r["condition"] == "base")
    return sorted(k for k, v in base.items() if "/" in k and not k.endswith("_stderr") and v is not None)


def long_shifts(rows: list[dict]) -> pd.DataFrame:
    """One row per (condition, metric): shift against the base, its stderr, and both per unit ‖ΔW‖."""
    base = next((r for r in rows if r["condition"] == "base"), None)
    if base is None:
        raise ValueError("the store has no base row: the run did not get far enough (resume it)")
    out = []
    metrics = [m for m in DIRECT_SHIFTS if m in base] + lmeval_metrics(rows)
    for r in rows:
        if r["condition"] == "base":
            continue
        for m in metrics:
            if m in DIRECT_SHIFTS:
                shift, se = r.get(m), r.get(f"{m}_stderr")
            else:
                v, b = r.get(m), base.get(m)
                shift = None if v is None or b is None else v - b
                sv, sb = r.get(f"{m}_stderr"), base.get(f"{m}_stderr")
                se = None if sv is None or sb is None else math.sqrt(sv ** 2 + sb ** 2)
            if shift is None:
                continue
            n = r["delta_norm"]
            out.append({"condition": r["condition"], "kind": r["kind"], "alpha": r["alpha"], "seed": r.get("seed"),
                        "delta_norm": n, "metric": m, "shift": shift, "stderr": se,
                        "per_norm": shift / n, "per_norm_stderr": None if se is None else se / n})
    return pd.DataFrame(out)


def summarise(group: pd.DataFrame) -> dict:
    """Mean shift of a (kind, α) group with a 95% interval: over members if several, else ±1.96·stderr."""
    n = len(group)
    mean, mean_pn = float(group["shift"].mean()), float(group["per_norm"].mean())
    if n > 1:
        half = t975(n - 1) * float(group["shift"].std(ddof=1)) / math.sqrt(n)
        how = f"t over {n} members"
    else:
        se = group["stderr"].iloc[0]
        half = Z * se if se is not None and not pd.isna(se) else math.nan
        how = "±1.96 stderr"
    norm = float(group["delta_norm"].mean())
    return {"n": n, "shift": mean, "ci_low": mean - half, "ci_high": mean + half, "per_norm": mean_pn,
            "per_norm_ci_low": (mean - half) / norm, "per_norm_ci_high": (mean + half) / norm, "interval": how}


def headline(df: pd.DataFrame) -> pd.DataFrame:
    """Per metric, kind and α: the mean shift and per-unit-norm shift with their 95% intervals."""
    rows = []
    for (metric, kind, alpha), g in df.groupby(["metric", "kind", "alpha"], sort=False):
        rows.append({"metric": metric, "kind": kind, "alpha": alpha, "delta_norm": float(g["delta_norm"].mean()),
                     **summarise(g)})
    h = pd.DataFrame(rows)
    if h.empty:
        return h
    h["kind_order"] = h["kind"].map(lambda k: KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER))
    return h.sort_values(["metric", "alpha", "kind_order"]).drop(columns="kind_order").reset_index(drop=True)


def compare(df: pd.DataFrame, metric: str, alpha: float, control: str) -> dict | None:
    """|shift| of the principal edit minus the mean |shift| of a control at the same α, with a 95% CI."""
    sel = df[(df["metric"] == metric) & (df["alpha"] == alpha)]
    p, c = sel[sel["kind"] == "principal"], sel[sel["kind"] == control]
    if p.empty or c.empty:
        return None
    ep = float(p["shift"].abs().mean())
    sp = p["stderr"].iloc[0] if len(p) == 1 else float(p["shift"].abs().std(ddof=1)) / math.sqrt(len(p))
    ec = float(c["shift"].abs().mean())
    if len(c) > 1:
        sc, dof = float(c["shift"].abs().std(ddof=1)) / math.sqrt(len(c)), len(c) - 1
    else:
        sc, dof = c["stderr"].iloc[0], None
    if sp is None or sc is None or pd.isna(sp) or pd.isna(sc):
        return None
    se = math.sqrt(sp ** 2 + sc ** 2)
    q = t975(dof) if dof else Z
    effect = ep - ec
    lo, hi = effect - q * se, effect + q * se
    answer = "yes" if lo > 0 else ("no" if hi < 0 else "inconclusive")
    return {"metric": metric, "alpha": alpha, "control": control, "n_control": len(c), "principal_abs": ep,
            "control_abs": ec, "effect": effect, "ci_low": lo, "ci_high": hi,
            "ratio": ep / ec if ec > 0 else math.inf, "answer": answer}


CLAIMS = {
    "random": "principal read-pathway edits shift {m} more than random directions at matched norm",
    "lowvar": "principal read-pathway edits shift {m} more than low-variance directions at matched norm",
    "write": "principal read-pathway edits shift {m} more than the write-pathway edit at matched norm",
}


def verdicts(df: pd.DataFrame, metric: str) -> list[dict]:
    out = []
    for control in CLAIMS:
        for alpha in sorted(df["alpha"].unique(), key=abs):
            v = compare(df, metric, alpha, control)
            if v is not None:
                out.append(v)
    return out


def _fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}g}"


def plot_dose_response(df: pd.DataFrame, metric: str, path: Path) -> Path:
    """Shift vs α per direction kind; groups with several members as mean and 95% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = headline(df[df["metric"] == metric])
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in [k for k in KIND_ORDER if k in set(sel["kind"])] + sorted(set(sel["kind"]) - set(KIND_ORDER)):
        g = sel[sel["kind"] == kind].sort_values("alpha")
        ax.plot(g["alpha"], g["shift"], marker="o", label=f"{kind} (n={int(g['n'].max())})")
        ax.fill_between(g["alpha"], g["ci_low"], g["ci_high"], alpha=0.2)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("α (= signed ‖ΔW‖_F)")
    ax.set_ylabel(DIRECT_SHIFTS.get(metric, f"{metric} shift"))
    ax.set_title(f"dose–response: {metric}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(folder: str | Path, primary: str | None = None) -> Path:
    """``report.md``, ``headline.csv``, ``verdicts.csv`` and dose–response plots from the store alone."""
    folder = Path(folder)
    store = ResultStore(folder)
    rows = store.rows()
    if not rows:
        raise ValueError(f"{folder}: no results yet (results.jsonl is empty or missing)")
    meta = json.loads(store.meta_path.read_text())
    primary = primary or meta["config"].get("primary", "pref_margin_shift")
    df = long_shifts(rows)
    head = headline(df)
    head.to_csv(folder / "headline.csv", index=False)
    ver = verdicts(df, primary) if primary in set(df["metric"]) else []
    pd.DataFrame(ver).to_csv(folder / "verdicts.csv", index=False)
    plots = [plot_dose_response(df, m, folder / f"dose_response_{m.replace('/', '_')}.png")
             for m in dict.fromkeys([primary] + [m for m in ("pref_acc_shift", "kl_base_edited")
                                                  if m in set(df["metric"])] + lmeval_metrics(rows))
             if m in set(df["metric"])]

    lines = [f"# rwedit experiment: {meta['config'].get('name', folder.name)}", ""]
    n_cond = len([r for r in rows if r["condition"] != "base"])
    lines += [f"{n_cond} conditions + base, recipe hash `{meta['config_hash']}`, started {meta['started']}. "
              f"Primary behaviour metric: **{primary}** ({DIRECT_SHIFTS.get(primary, 'lm-eval metric')}).", ""]
    lines += ["## Verdicts", ""]
    if not ver:
        lines += [f"No verdict: the store has no principal edit and control rows for {primary}.", ""]
    for v in ver:
        claim = CLAIMS[v["control"]].format(m=primary)
        lines.append(f"- **{v['answer']}** (α = {_fmt(v['alpha'])}): {claim}. |shift| principal "
                     f"{_fmt(v['principal_abs'])} vs {v['control']} {_fmt(v['control_abs'])} (n = {v['n_control']}); "
                     f"effect {_fmt(v['effect'])}, 95% CI [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}], "
                     f"ratio {_fmt(v['ratio'])}.")
    lines += ["", "A verdict is *yes* when the whole 95% interval of (|shift| of the principal edit − mean |shift| "
              "of the control) is above 0, *no* when it is below 0, *inconclusive* otherwise.", ""]
    lines += [f"## Headline: {primary} by direction kind", "",
              "| kind | α | n | ‖ΔW‖ | shift | 95% CI | shift per unit ‖ΔW‖ | interval |", "|---|---|---|---|---|---|---|---|"]
    for _, h in head[head["metric"] == primary].iterrows():
        lines.append(f"| {h['kind']} | {_fmt(h['alpha'])} | {h['n']} | {_fmt(h['delta_norm'])} | {_fmt(h['shift'])} | "
                     f"[{_fmt(h['ci_low'])}, {_fmt(h['ci_high'])}] | {_fmt(h['per_norm'])} | {h['interval']} |")
    lines += ["", "## Every condition", ""]
    probe_cols = ["delta_norm", "rsf_read_activation_k1", "rsf_read_activation_k16", "rsf_residual_prediction_k1"]
    beh_cols = [c for c in ("pref_margin_shift", "pref_acc_shift", "kl_base_edited", "ppl_change") if c in rows[0]]
    beh_cols += lmeval_metrics(rows)
    lines += ["| condition | " + " | ".join(probe_cols + beh_cols) + " |", "|---" * (1 + len(probe_cols + beh_cols)) + "|"]
    for r in rows:
        cells = [_fmt(r.get(c)) for c in probe_cols]
        cells += [_fmt(r.get(c)) + (f" ± {_fmt(r.get(c + '_stderr'), 2)}" if r.get(c + "_stderr") is not None else "")
                  for c in beh_cols]
        lines.append(f"| {r['condition']} | " + " | ".join(cells) + " |")
    lines += ["", "RSF columns: read-side RSF of v against the activation subspace of the edited input (k = 1, 16), "
              "and RSF of the residual-stream side of the edit against the prediction subspace (k = 1); 1 = isotropic.",
              "", "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    probe_pngs = sorted((folder / "probe").glob("*.png")) if (folder / "probe").exists() else []
    if probe_pngs:
        lines += ["", "### RSF of the observed pair (post − base)", "",
                  "Full tables: `probe/rsf.csv`, `probe/headline.csv`, `probe/summary.md`.", ""]
        lines += [f"![{p.stem}](probe/{p.name})" for p in probe_pngs]
    lines += ["", "## Files", "", "- `results.jsonl`: one row per condition (load with `pandas.read_json(path, lines=True)`)",
              "- `headline.csv`, `verdicts.csv`: the tables above for every metric", "- `edit/adapters/<condition>`: "
              "PEFT adapters (`PeftModel.from_pretrained`) with model cards", "- `run.json`: the recipe, its hash, versions"]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return folder / "report.md"
