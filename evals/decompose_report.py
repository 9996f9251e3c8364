"""The decomposition experiment's report, from its results store alone (``rwedit report DIR``).

Every part's **retained fraction** of its unit's behavioural shift, R = (cond − base)/(full − base) of the primary
metric, is the ratio of two paired means over the same items (:func:`rwedit.stats.paired_ratio`). Per item,
``x_i = (cond_i − base_i) / mean(full − base)``, so that a mean of x is a retained fraction and differences of
parts are paired item by item. The verdicts, each against the margin m (``verdicts.margin``) of the full
shift, pooled over the replicate units (each unit against its own controls):

- *principal > random (k)*: R(principal) − R(random) over items and random members (hierarchical bootstrap,
  :func:`rwedit.stats.pooled_bootstrap`, as the control experiment): yes above m, no below m; the same
  against the norm-matched random parts;
- *principal keeps more than its norm share (k)*: R(principal) − share of ‖ΔW‖², a paired mean over items
  (``x_principal − share·x_full``);
- *principal + complement ≠ full (k)*: R(principal) + R(complement) − 1, paired; yes when the interval lies
  outside ±m (the parts interact), no when inside;
- *top-r keeps the behaviour*: the smallest r whose R has its 95% lower bound at or above ``verdicts.keep``:
  that adapter is exported (its model card gets the numbers).
A unit whose full shift is not distinguishable from 0 (its 95% interval contains 0) has no retained fractions
and is left out of every verdict, which says so.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from rwedit.errors import ExperimentError
from rwedit.evals.direct import ITEMS
from rwedit.evals.report import DIRECT_SHIFTS, fmt, fmt_ci, load_run, md_table, row_table
from rwedit.pages import write_pages
from rwedit.probes.report import pyplot, save_figure
from rwedit.stats import (hierarchical_bootstrap, interval, mde, items_to_detect, mean_se, over_members, paired_ratio,
                          pooled_bootstrap)



def _items(row: dict, metric: str, base: dict) -> np.ndarray:
    """Per-item shift of ``metric`` against the base (direct metrics store shifts; lm-eval ones values)."""
    vals = row.get(metric + ITEMS)
    if vals is None:
        raise ExperimentError(f"condition {row['condition']!r} stores no per-item values of {metric!r}: the retained "
                              f"fractions need them (primary: a paired direct metric or an lm-eval TASK/METRIC)")
    out = np.asarray(vals, dtype=np.float64)
    return out if metric in DIRECT_SHIFTS else out - np.asarray(base[metric + ITEMS], dtype=np.float64)


class Analysis:
    """The rows of one run as per-item retained fractions per unit."""

    def __init__(self, folder: str | Path, primary: str | None = None):
        rows, self.meta = load_run(folder)
        self.rows = rows
        cfg = self.meta["config"]
        self.primary = primary or cfg.get("primary", "pref_margin_shift")
        self.margin, self.keep = cfg["verdicts"]["margin"], cfg["verdicts"]["keep"]
        base = next((r for r in rows if r["condition"] == "base"), None)
        if base is None:
            raise ExperimentError("the store has no base row: the run did not get far enough (resume it)")
        self.parts = [r for r in rows if r["kind"] != "base"]
        self.units = list(dict.fromkeys(r["unit"] for r in self.parts))
        self.raw = {r["condition"]: _items(r, self.primary, base) for r in self.parts}
        self.full, self.testable = {}, {}
        for u in self.units:
            f = next((r for r in self.parts if r["unit"] == u and r["kind"] == "full"), None)
            if f is None:
                continue
            self.full[u] = self.raw[f["condition"]]
            self.testable[u] = interval(*mean_se(self.full[u])).verdict() != "inconclusive"

    def x(self, row: dict) -> np.ndarray:
        """Per-item retained fraction (its mean is R)."""
        return self.raw[row["condition"]] / self.full[row["unit"]].mean()

    def select(self, unit, kind, k=None) -> list[dict]:
        return [r for r in self.parts if r["unit"] == unit and r["kind"] == kind and (k is None or r.get("k") == k)]

    def table(self) -> pd.DataFrame:
        """One row per part (seeded parts one row per member): share, shift, retained fraction with its 95% CI."""
        out = []
        for r in self.parts:
            u, iv = r["unit"], None
            if u in self.full and self.testable[u]:
                iv = paired_ratio(self.raw[r["condition"]], self.full[u])
            shift, se = mean_se(self.raw[r["condition"]])
            out.append({"condition": r["condition"], "unit": u, "kind": r["kind"], "k": r.get("k"), "r": r.get("r"),
                        "seed": r.get("seed"), "share": r["share"], "shift": shift, "shift_stderr": se,
                        "retained": None if iv is None else iv.estimate,
                        "retained_stderr": None if iv is None else iv.se,
                        "retained_ci_low": None if iv is None else iv.low,
                        "retained_ci_high": None if iv is None else iv.high,
                        "retained_per_share": None if iv is None or r["share"] == 0 else iv.estimate / r["share"]})
        return pd.DataFrame(out)

    def ks(self) -> list[int]:
        return sorted({int(r["k"]) for r in self.parts if r.get("k") is not None})

    def verdicts(self) -> list[dict]:
        units = [u for u in self.units if self.testable.get(u)]
        out = []
        for k in self.ks():
            for control in ("random", "randnorm"):
                v = self._vs_random(units, k, control)
                if v is not None:
                    out.append(v)
            for what in ("share", "additivity"):
                v = self._paired(units, k, what)
                if v is not None:
                    out.append(v)
        return out

    def _vs_random(self, units, k, control) -> dict | None:
        P, Cs, per_unit = [], [], []
        for u in units:
            p, c = self.select(u, "principal", k), self.select(u, control, k)
            if p and c:
                P.append(self.x(p[0]))
                Cs.append(np.stack([self.x(r) for r in c]))
                iv = hierarchical_bootstrap(P[-1], Cs[-1])
                per_unit.append({"unit": u, "effect": iv.estimate, "ci_low": iv.low, "ci_high": iv.high,
                                 "answer": iv.verdict(self.margin)})
        if not P:
            return None
        iv = pooled_bootstrap(np.stack(P), Cs, list(range(len(P)))) if len(P) > 1 else hierarchical_bootstrap(P[0], Cs[0])
        diffs = np.mean([p - c.mean(axis=0) for p, c in zip(P, Cs)], axis=0)
        sd = float(diffs.std(ddof=1))
        label = "random" if control == "random" else "norm-matched random"
        return {"claim": f"principal > {label}", "k": k, "answer": iv.verdict(self.margin), "effect": iv.estimate,
                "ci_low": iv.low, "ci_high": iv.high, "n_items": len(diffs), "mde": mde(sd, len(diffs)),
                "items_needed": items_to_detect(iv.estimate - self.margin, sd), "units": per_unit,
                "rests_on": f"{len(P)} unit(s), principal vs {Cs[0].shape[0]} {label} k-subspaces each; {iv.how}",
                "meaning": f"R(principal) − R({label}) at k = {k}: the principal part keeps at least {self.margin:g} "
                           f"more of the full update's shift than {label} parts of the same k"}

    def _paired(self, units, k, what) -> dict | None:
        per, per_unit = [], []
        for u in units:
            p = self.select(u, "principal", k)
            if not p:
                continue
            comp, full = self.select(u, "complement", k), self.select(u, "full")
            if what == "share":  # paired with the full shift: mean R − share, each item's own ratio noise removed
                y = self.x(p[0]) - p[0]["share"] * self.x(full[0])
            elif comp:
                y = self.x(p[0]) + self.x(comp[0]) - self.x(full[0])
            else:
                continue
            per.append(y)
            iv = interval(*mean_se(y), df=len(y) - 1)
            per_unit.append({"unit": u, "effect": iv.estimate, "ci_low": iv.low, "ci_high": iv.high,
                             "answer": self._answer(iv, what)})
        if not per:
            return None
        y = np.mean(per, axis=0)
        m, se = mean_se(y)
        iv = interval(m, se, df=len(y) - 1)
        sd = float(np.std(y, ddof=1))
        if what == "share":
            claim, meaning = ("principal keeps more than its norm share", f"R(principal) − its share of ‖ΔW‖²_F at "
                              f"k = {k}: the principal part keeps at least {self.margin:g} more of the shift than "
                              f"its share of the update's squared norm")
        else:
            claim, meaning = ("principal + complement ≠ full", f"R(principal) + R(complement) − 1 at k = {k} (the "
                              f"non-additivity): yes when the parts' shifts sum to the full shift ± more than "
                              f"{self.margin:g}, no when within ±{self.margin:g}")
        return {"claim": claim, "k": k, "answer": self._answer(iv, what), "effect": m, "ci_low": iv.low,
                "ci_high": iv.high, "n_items": len(y), "mde": mde(sd, len(y)),
                "items_needed": items_to_detect(m - (self.margin if what == "share" else 0.0), sd), "units": per_unit,
                "rests_on": f"{len(per)} unit(s), paired over {len(y)} items (t)", "meaning": meaning}

    def _answer(self, iv, what) -> str:
        if what != "additivity":
            return iv.verdict(self.margin)
        if iv.low > self.margin or iv.high < -self.margin:
            return "yes"
        return "no" if -self.margin < iv.low and iv.high < self.margin else "inconclusive"

    def top_r(self, table: pd.DataFrame) -> list[dict]:
        """Per unit, the smallest r of the top-r parts whose retained fraction keeps ``keep`` (95% lower bound)."""
        out = []
        for u in self.units:
            svd = table[(table["unit"] == u) & (table["kind"] == "svd")].sort_values("r")
            if svd.empty or not self.testable.get(u):
                continue
            ok = svd[svd["retained_ci_low"] >= self.keep]
            best = ok.iloc[0] if not ok.empty else None
            out.append({"unit": u, "condition": None if best is None else best["condition"],
                        "r": None if best is None else int(best["r"]), "ranks": [int(r) for r in svd["r"]],
                        "retained": None if best is None else best["retained"],
                        "ci_low": None if best is None else best["retained_ci_low"],
                        "ci_high": None if best is None else best["retained_ci_high"],
                        "share": None if best is None else best["share"]})
        return out


def exported(folder: str | Path) -> dict[str, dict]:
    """Each unit's exported top-r adapter → the numbers its model card gets (the row's measured metrics and its
    retained fraction with stderr)."""
    from rwedit.editor.export import metrics_from_results

    a = Analysis(folder)
    table = a.table().set_index("condition")
    out = {}
    for t in a.top_r(table.reset_index()):
        if t["condition"] is not None:
            row = table.loc[t["condition"]]
            out[t["condition"]] = {**metrics_from_results(folder, t["condition"]),
                                   "retained_fraction": {"value": float(row["retained"]),
                                                         "stderr": float(row["retained_stderr"])},
                                   "share_of_update_norm2": float(row["share"])}
    return out


def _unit_name(u: str) -> str:
    return u if u != "all" else "all cells"


def plot_curves(a: Analysis, table: pd.DataFrame, path: Path) -> Path:
    """Retained fraction vs k (principal, random, norm-matched, complement) and vs r (top-r), one row per unit."""
    plt = pyplot()
    units = [u for u in a.units if a.testable.get(u)]
    fig, axes = plt.subplots(len(units), 2, figsize=(9, 3.2 * len(units)), squeeze=False)
    for row, u in zip(axes, units):
        t = table[table["unit"] == u]
        for i, kind in enumerate(("principal", "random", "randnorm", "complement")):
            g = t[t["kind"] == kind]
            if g.empty:
                continue
            pts = [(k, over_members(h["retained"].tolist()) if len(h) > 1 else
                    interval(h["retained"].iloc[0], h["retained_stderr"].iloc[0])) for k, h in g.groupby("k")]
            ks = [p[0] for p in pts]
            row[0].errorbar(ks, [p[1].estimate for p in pts], yerr=[[p[1].estimate - p[1].low for p in pts],
                                                                    [p[1].high - p[1].estimate for p in pts]],
                            marker="o", capsize=3, color=f"C{i}", label=kind)
        svd = t[t["kind"] == "svd"].sort_values("r")
        if not svd.empty:
            row[1].errorbar(svd["r"], svd["retained"], yerr=[svd["retained"] - svd["retained_ci_low"],
                                                             svd["retained_ci_high"] - svd["retained"]],
                            marker="o", capsize=3, color="C5", label="top-r of ΔW")
            row[1].plot(svd["r"], svd["share"], ls="--", color="grey", label="share of ‖ΔW‖²")
            row[1].axhline(a.keep, color="C3", lw=0.8, ls=":", label=f"keep = {a.keep:g}")
        for ax, x in zip(row, ("k", "r")):
            ax.axhline(0, color="grey", lw=0.6)
            ax.axhline(1, color="grey", lw=0.6)
            ax.set_xscale("log", base=2)
            ax.set_xlabel(x)
            ax.legend(fontsize=7)
        row[0].set_ylabel(f"retained fraction ({_unit_name(u)})", fontsize=8)
    fig.suptitle(f"share of the full update's {a.primary} shift each part keeps (95% CI)", fontsize=9)
    return save_figure(fig, path, dpi=120)


def write_decompose_report(folder: str | Path, primary: str | None = None) -> Path:
    """``report.md`` and ``report.html``, ``parts.csv``, ``verdicts.csv`` and ``retained.png`` from the store."""
    folder = Path(folder)
    a = Analysis(folder, primary)
    table = a.table()
    table.to_csv(folder / "parts.csv", index=False)
    ver = a.verdicts()
    pd.DataFrame([{k: v for k, v in x.items() if k != "units"} for x in ver]).to_csv(folder / "verdicts.csv", index=False)
    tops = a.top_r(table)
    cfg = a.meta["config"]
    lines = [f"# rwedit decomposition: {cfg.get('name', folder.name)}", "",
             f"Which part of the observed update ΔW = W_post − W_base (`{cfg['post']}` over `{cfg['model']}`) carries "
             f"its shift of **{a.primary}**, at the observed dose: {len(a.parts)} parts + base, units "
             f"{', '.join(map(_unit_name, a.units))}; recipe hash `{a.meta['config_hash']}`.", "", "## Findings", ""]
    untestable = [u for u in a.units if not a.testable.get(u)]
    find = [[v["claim"] + f" (k = {v['k']})", "pooled", f"**{v['answer']}**",
             f"{fmt(v['effect'])} {fmt_ci(v['ci_low'], v['ci_high'])}", f"MDE {fmt(v['mde'])} over {v['n_items']} items",
             v["rests_on"]] for v in ver]
    find += [[f"top-r of ΔW keeps ≥ {a.keep:g}", _unit_name(t["unit"]),
              f"**r = {t['r']}**" if t["r"] is not None else "**none**",
              f"{fmt(t['retained'])} {fmt_ci(t['ci_low'], t['ci_high'])}" if t["r"] is not None else "–",
              "–", f"r in {t['ranks']}" + (f"; share of ‖ΔW‖² {fmt(t['share'])}, exported: adapters/{t['condition']}"
                                          if t["r"] is not None else "")] for t in tops]
    if find:
        lines += md_table(["claim", "unit", "verdict", "effect (share of the full shift), 95% CI", "power",
                           "rests on"], find)
    else:
        lines.append("No verdict: no unit's full update shifts the metric detectably.")
    if untestable:
        lines += ["", f"Left out of every verdict: unit(s) {', '.join(map(_unit_name, untestable))}, whose full update "
                      f"does not shift {a.primary} detectably (its 95% interval contains 0)."]
    lines += ["", "![retained fractions](retained.png)", "", "### Details", ""]
    for v in ver:
        lines.append(f"- **{v['answer']}**: {v['meaning']}. Effect {fmt(v['effect'])} {fmt_ci(v['ci_low'], v['ci_high'])}; "
                     f"power: MDE {fmt(v['mde'])} over {v['n_items']} items (80%, α = 0.05); the observed distance "
                     f"to the threshold would take {fmt(v['items_needed'])} items. Per unit: "
                     + "; ".join(f"{_unit_name(u['unit'])} {u['answer']} {fmt(u['effect'])} "
                                 f"{fmt_ci(u['ci_low'], u['ci_high'])}" for u in v["units"]) + ".")
    lines += ["", f"A verdict is *yes* when the whole 95% interval lies above the margin {a.margin:g} (a share of the "
              f"full update's shift), *no* when it lies below it, *inconclusive* otherwise; the additivity claim is "
              f"*yes* outside ±{a.margin:g} and *no* inside. Retained fractions R = (cond − base)/(full − base) are "
              f"paired over the same items; each unit's parts change its own cells only.", "",
              "## Parts", ""]
    cols = [("unit", str), ("condition", str), ("share", fmt), ("shift", fmt), ("retained", fmt),
            ("retained_per_share", fmt)]
    body = [[f(r[c]) if r[c] is not None and not (isinstance(r[c], float) and math.isnan(r[c])) else "–"
             for c, f in cols[:-2]] + ["–" if pd.isna(r["retained"]) else
                                       f"{fmt(r['retained'])} {fmt_ci(r['retained_ci_low'], r['retained_ci_high'])}",
                                       fmt(r["retained_per_share"])] for _, r in table.iterrows()]
    lines += md_table(["unit", "part", "share of ‖ΔW‖²", f"{a.primary} shift", "retained, 95% CI",
                       "retained / share"], body)
    lines += ["", "## Every condition", ""]
    beh = [c for c in ("pref_margin_shift", "pref_acc_shift", "kl_base_edited", "ce_shift") if c in a.rows[0]]
    lines += row_table(a.rows, ["share", "part_norm"] + beh)
    lines += ["", "## Files", "", "- `results.jsonl`: one row per condition (per-item values included)",
              "- `parts.csv`, `verdicts.csv`: the tables above", "- `adapters/<part>`: every low-rank part as a PEFT "
              "LoRA adapter with its model card (the exported ones carry the measured numbers)",
              "- `run.json`: the recipe, its hash, the checkpoints' fingerprints"]
    if a.testable and any(a.testable.values()):
        plot_curves(a, table, folder / "retained.png")
    else:
        lines.remove("![retained fractions](retained.png)")
    return write_pages(folder, lines)
