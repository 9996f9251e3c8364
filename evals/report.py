"""The experiment report, computed from the results store alone (``rwedit report DIR`` re-runs it).

Every behaviour metric becomes a *shift* against the base row (direct metrics carry their paired
stderr; lm-eval metrics combine the two stderrs), divided by ‖ΔW‖_F for the per-unit-norm view.
Conditions of one kind and α with several members (random seeds, low-variance indices) are a sample of
directions: summarised over members with a t interval (:func:`rwedit.stats.over_members`); single
conditions use their own stderr.  Verdicts compare the *magnitude* of the shift of the principal
read-pathway edit with each control at matched norm.

The small helpers both experiment reports share (reading a run, number and interval cells, markdown
tables, figures) are here: :func:`load_run`, :func:`fmt`, :func:`fmt_ci`, :func:`fmt_se`, :func:`md_table`,
:func:`row_table` (figures: :mod:`rwedit.evals.plots`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from rwedit.evals.store import ResultStore
from rwedit.evals.plots import plot_dose_response, plot_forest, plot_overview
from rwedit.evals.direct import ITEMS
from rwedit.stats import (Interval, combined_se, difference, hierarchical_bootstrap, interval, items_to_detect, mde,
                          over_members, pooled_bootstrap)
from rwedit.errors import ExperimentError
from rwedit.pages import write_pages

#: direct metrics already expressed as a paired shift against the base (stderr from the pairs)
DIRECT_SHIFTS = {"pref_margin_shift": "preference margin shift (nats)", "pref_acc_shift": "preference accuracy shift",
                 "kl_base_edited": "KL(base ‖ edited), nats/token", "ce_shift": "held-out CE shift (nats/token)",
                 "ppl_change": "held-out perplexity change"}
KIND_ORDER = ["principal", "given", "random", "lowvar", "write"]


# ----------------------------------------------------------------------------- shared by both reports


def load_run(folder: str | Path) -> tuple[list[dict], dict]:
    """The rows of a run folder's results store and its ``run.json`` (of a sharded run: every shard's rows
    merged, and the merged description, :class:`~rwedit.evals.store.ResultStore`); raises when there are no
    rows yet."""
    store = ResultStore(folder)
    rows = store.rows()
    if not rows:
        raise ExperimentError(f"{folder}: no results yet (results.jsonl is empty or missing)")
    return rows, store.meta()


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x, digits=3) -> str:
    """A number with ``digits`` significant digits; ``–`` when missing, ``∞`` when infinite."""
    if _missing(x):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}g}"


def fmt_ci(low, high) -> str:
    """``[low, high]``, or ``–`` when the interval is undefined."""
    return "–" if _missing(low) else f"[{fmt(low)}, {fmt(high)}]"


def fmt_se(value, se) -> str:
    """``value ± se`` (the stderr to 2 digits), or the value alone when its stderr is missing."""
    return fmt(value) + ("" if _missing(se) else f" ± {fmt(se, 2)}")


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a markdown table."""
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


def row_table(rows: list[dict], cols: Sequence[str], labels: dict[str, str] | None = None) -> list[str]:
    """One table row per stored row: its condition, then each column as ``value ± stderr``."""
    labels = labels or {}
    return md_table(["condition"] + [labels.get(c, c) for c in cols],
                    [[r["condition"]] + [fmt_se(r.get(c), r.get(c + "_stderr")) for c in cols] for r in rows])


# ----------------------------------------------------------------------------- the control experiment


def lmeval_metrics(rows: list[dict]) -> list[str]:
    """The lm-eval ``task/metric`` columns that have a value in the base row."""
    base = next(r for r in rows if r["condition"] == "base")
    return sorted(k for k, v in base.items() if "/" in k and not k.endswith(("_stderr", ITEMS)) and v is not None)


def long_shifts(rows: list[dict]) -> pd.DataFrame:
    """One row per (condition, metric): shift against the base, its stderr, and both per unit ‖ΔW‖."""
    base = next((r for r in rows if r["condition"] == "base"), None)
    if base is None:
        raise ExperimentError("the store has no base row: the run did not get far enough (resume it)")
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
                se = combined_se(r.get(f"{m}_stderr"), base.get(f"{m}_stderr"))
            if shift is None:
                continue
            n = r["delta_norm"]
            out.append({"condition": r["condition"], "kind": r["kind"], "alpha": r["alpha"], "seed": r.get("seed"),
                        "index": r.get("index"), "layers": tuple(r.get("layers") or ()), "delta_norm": n, "metric": m, "shift": shift, "stderr": se,
                        "per_norm": shift / n, "per_norm_stderr": None if se is None else se / n})
    return pd.DataFrame(out)


def _members(values: Sequence[float], ses: Sequence[float | None]) -> Interval:
    """A group of conditions as a sample of directions (t over members), one condition with its own stderr."""
    if len(values) > 1:
        return over_members(list(values))
    se = ses[0]
    return interval(values[0], None if _missing(se) else se, how="±1.96 stderr")


def summarise(group: pd.DataFrame) -> dict:
    """Mean shift of a (kind, α) group with a 95% interval: over members if several, else ±1.96·stderr."""
    iv = _members(group["shift"].tolist(), group["stderr"].tolist())
    norm = float(group["delta_norm"].mean())
    return {"n": len(group), "shift": iv.estimate, "ci_low": iv.low, "ci_high": iv.high,
            "per_norm": float(group["per_norm"].mean()), "per_norm_ci_low": iv.low / norm,
            "per_norm_ci_high": iv.high / norm, "interval": iv.how, "df": iv.df}


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


def direction(config: dict, metric: str, alpha: float) -> int | None:
    """+1 when a larger ``metric`` is in the direction of the edit's objective, −1 when a smaller one is, None
    when the b rule defines no direction (then verdicts test the magnitude of the shift). ``b: gradient`` of
    the preference margin and ``b: delta`` of an aligned checkpoint push the margin up; ``b: gradient`` of
    cross-entropy pushes CE down; a negative α reverses the push."""
    e = (config.get("edit") or {}).get("edit") or {}
    b, objective = e.get("b"), e.get("objective", "preference")
    up = {"pref_margin_shift": 1, "pref_acc_shift": 1, "rwedit_hh_preference/acc": 1,
          "rwedit_hh_preference/acc_norm": 1}
    if b == "delta" or (b == "gradient" and objective == "preference"):
        sign = up.get(metric)
    elif b == "gradient" and objective == "ce":
        sign = {"ce_shift": -1, "ppl_change": -1}.get(metric)
    else:
        sign = None
    return None if sign is None else sign * (1 if alpha > 0 else -1)


def _items(rows: Sequence[dict], metric: str, base: dict | None = None):
    """The per-item shifts of ``metric`` of each row against the base (None when any row lacks them): the
    direct metrics store shifts already; lm-eval metrics store values, and the base row's are subtracted."""
    vals = [r.get(metric + ITEMS) for r in rows]
    if not rows or any(v is None for v in vals) or len({len(v) for v in vals}) != 1:
        return None
    out = np.asarray(vals, dtype=np.float64)
    if metric not in DIRECT_SHIFTS:
        ref = (base or {}).get(metric + ITEMS)
        if ref is None or len(ref) != out.shape[1]:
            return None
        out = out - np.asarray(ref, dtype=np.float64)[None, :]
    return out


def unit_label(layers: Sequence[int], index) -> str:
    """A replicate unit's name in tables and plots: its layer(s) and direction, e.g. ``L1 principal[2]``."""
    where = "L" + ",".join(str(l) for l in layers) if layers else "all layers"
    return f"{where} principal[{int(index) if index is not None and not _missing(index) else 0}]"


def compare(df: pd.DataFrame, metric: str, alpha: float, control: str, rows: Sequence[dict] | None = None,
            config: dict | None = None, seed: int = 0) -> dict | None:
    """The principal edit against a control at the same α. With per-item values stored (the same items for
    every condition) the verdict is *paired*: the signed shift in the objective's direction
    (:func:`direction`), or the magnitude where the b rule defines none, by a hierarchical bootstrap over
    items and control members, with its minimum detectable effect and the items that would detect the
    observed effect. Several principal conditions (directions × layers) are replicate units, each compared
    with the controls of its own layer(s): the verdict is their pooled effect (bootstrap over items, members
    and units, :func:`rwedit.stats.pooled_bootstrap`) and ``units`` lists each unit's own. The unpaired
    comparison of |shift| (each condition's own stderr, t over members) is kept beside it."""
    sel = df[(df["metric"] == metric) & (df["alpha"] == alpha)]
    p, c = sel[sel["kind"] == "principal"], sel[sel["kind"] == control]
    if p.empty or c.empty:
        return None
    pi = _members(p["shift"].abs().tolist(), p["stderr"].tolist())
    ci = _members(c["shift"].abs().tolist(), c["stderr"].tolist())
    d = difference(pi, ci)
    ep, ec = pi.estimate, ci.estimate
    out = {"metric": metric, "alpha": alpha, "control": control, "n_control": len(c), "principal_abs": ep,
           "control_abs": ec, "ratio": ep / ec if ec > 0 else math.inf,
           "unpaired_effect": d.estimate, "unpaired_ci_low": d.low, "unpaired_ci_high": d.high,
           "unpaired_answer": d.verdict() if d.se is not None else "inconclusive"}
    by_name = {r["condition"]: r for r in rows or []}
    base = by_name.get("base")
    groups: dict[tuple, object] = {}
    for layers, g in c.groupby("layers", sort=False):
        C = _items([by_name[n] for n in g["condition"] if n in by_name], metric, base) if rows else None
        if C is not None and len(C) == len(g):
            groups[layers] = C
    units = []
    for _, r in p.iterrows():
        P = _items([by_name[r["condition"]]], metric, base) if r["condition"] in by_name else None
        C = groups.get(r["layers"])
        if P is not None and C is not None and P.shape[1] == C.shape[1] and P.shape[1] >= 2:
            units.append((r, P[0], r["layers"]))
    if not units or len({u[1].shape[0] for u in units}) != 1:
        out.update(test="magnitude (unpaired: no per-item values stored)", effect=d.estimate, ci_low=d.low,
                   ci_high=d.high, answer=out["unpaired_answer"], n_items=None, mde=None, items_needed=None,
                   n_units=len(p), units=[])
        return out if d.se is not None else None
    sign = direction(config or {}, metric, alpha)
    statistic = "magnitude" if sign is None else "signed"
    s = 1 if sign is None else sign
    keys = list(dict.fromkeys(u[2] for u in units))
    Cs = [s * groups[k] for k in keys]
    n = int(units[0][1].shape[0])

    def power(P, gidx):  # per-item paired differences of the (pooled) units against their controls
        diffs = (s * P - np.stack([Cs[g].mean(axis=0) for g in gidx])).mean(axis=0)
        sd = float(diffs.std(ddof=1))
        return mde(sd, n), sd

    per_unit, ivs = [], []
    for r, P, layers in units:
        g = keys.index(layers)
        iv = hierarchical_bootstrap(s * P, Cs[g], statistic, seed=seed)
        ivs.append(iv)
        m, sd = power(P[None], [g])
        per_unit.append({"condition": r["condition"], "unit": unit_label(layers, r["index"]), "effect": iv.estimate,
                         "ci_low": iv.low, "ci_high": iv.high, "answer": iv.verdict(), "mde": m,
                         "items_needed": items_to_detect(iv.estimate, sd)})
    P = np.stack([u[1] for u in units])
    gidx = [keys.index(u[2]) for u in units]
    # one unit: its own interval is the pooled one (pooled_bootstrap of one unit is hierarchical_bootstrap)
    iv = ivs[0] if len(units) == 1 else pooled_bootstrap(s * P, Cs, gidx, statistic, seed=seed)
    m, sd = power(P, gidx)
    test = ("signed: shift in the direction of the edit's objective (larger is "
            f"{'up' if s > 0 else 'down'} for {metric} at α = {alpha:g})" if sign is not None else
            "magnitude: |mean shift| (the b rule defines no direction for this metric)")
    if len(units) > 1:
        test += f"; pooled over {len(units)} replicate units (directions × layers), each against its own layer's controls"
    out.update(test=test, effect=iv.estimate, ci_low=iv.low, ci_high=iv.high, answer=iv.verdict(), n_items=n,
               mde=m, items_needed=items_to_detect(iv.estimate, sd), interval=iv.how, n_units=len(units),
               unit_sd=float(np.std([u["effect"] for u in per_unit], ddof=1)) if len(units) > 1 else None,
               units=per_unit)
    return out


#: each verdict's claim in a few words (the findings table's first column)
SHORT_CLAIMS = {"random": "principal > random directions", "lowvar": "principal > low-variance directions",
                "write": "principal (read) > write-pathway edit"}
CLAIMS = {
    "random": "principal read-pathway edits shift {m} more than random directions at matched norm",
    "lowvar": "principal read-pathway edits shift {m} more than low-variance directions at matched norm",
    "write": "principal read-pathway edits shift {m} more than the write-pathway edit at matched norm",
}


def verdicts(df: pd.DataFrame, metric: str, rows: Sequence[dict] | None = None, config: dict | None = None) -> list[dict]:
    """One verdict per control kind and α (paired where per-item values are stored, see :func:`compare`)."""
    out = []
    for control in CLAIMS:
        for alpha in sorted(df["alpha"].unique(), key=abs):
            v = compare(df, metric, alpha, control, rows, config)
            if v is not None:
                out.append(v)
    return out


def unit_table(ver: Sequence[dict]) -> pd.DataFrame:
    """One row per (verdict, replicate unit): the unit's own paired effect against its controls."""
    return pd.DataFrame([{"metric": v["metric"], "alpha": v["alpha"], "control": v["control"], **u}
                         for v in ver for u in v.get("units") or []],
                        columns=["metric", "alpha", "control", "condition", "unit", "effect", "ci_low", "ci_high",
                                 "answer", "mde", "items_needed"])


def _primary(meta: dict, primary: str | None) -> str:
    return primary or meta["config"].get("primary", "pref_margin_shift")


def headline_lines(folder: str | Path, primary: str | None = None) -> list[str]:
    """The markdown lines of the report's "Headline" section of a finished run folder (its ``## Headline``
    heading, then the table of the primary metric by direction kind), computed from the results store.
    ``primary`` defaults to the recipe's primary metric."""
    rows, meta = load_run(folder)
    primary = _primary(meta, primary)
    head = headline(long_shifts(rows))
    sel = head[head["metric"] == primary] if not head.empty else head
    table = [[h["kind"], fmt(h["alpha"]), str(h["n"]), fmt(h["delta_norm"]), fmt(h["shift"]),
              fmt_ci(h["ci_low"], h["ci_high"]), fmt(h["per_norm"]), h["interval"]] for _, h in sel.iterrows()]
    return [f"## Headline: {primary} by direction kind", ""] + md_table(
        ["kind", "α", "n", "‖ΔW‖", "shift", "95% CI", "shift per unit ‖ΔW‖", "interval"], table)


def findings_lines(ver: Sequence[dict], primary: str) -> list[str]:
    """The report's first section: one row per verdict (the claim in a few words, the verdict, the effect with
    its interval, the power, the cell it rests on); the sentences follow under "Details"."""
    lines = ["## Findings", ""]
    if not ver:
        return lines + [f"No verdict: the store has no principal edit and control rows for {primary}.", ""]
    table = [[SHORT_CLAIMS[v["control"]], f"**{v['answer']}**", f"{fmt(v['effect'])} {fmt_ci(v['ci_low'], v['ci_high'])}",
              f"MDE {fmt(v['mde'])} over {v['n_items']} items" if v.get("n_items") else "–",
              f"{primary} at α = {fmt(v['alpha'])}, principal vs {v['n_control']} {v['control']}"] for v in ver]
    return lines + md_table(["claim", "verdict", "effect (principal − control), 95% CI", "power", "rests on"], table)


def write_control_report(folder: str | Path, primary: str | None = None) -> Path:
    """``report.md`` and ``report.html``, ``headline.csv``, ``verdicts.csv`` and dose–response plots from the
    store alone."""
    folder = Path(folder)
    rows, meta = load_run(folder)
    primary = _primary(meta, primary)
    df = long_shifts(rows)
    if not df.empty and primary not in set(df["metric"]):
        raise ExperimentError(f"primary metric {primary!r} is not among this run's metrics: "
                              f"{', '.join(sorted(set(df['metric'])))}")
    head = headline(df)
    head.to_csv(folder / "headline.csv", index=False)
    ver = verdicts(df, primary, rows, meta["config"]) if primary in set(df["metric"]) else []
    pd.DataFrame([{k: v for k, v in x.items() if k != "units"} for x in ver]).to_csv(folder / "verdicts.csv",
                                                                                   index=False)
    plots = [plot_dose_response(head, m, folder / f"dose_response_{m.replace('/', '_')}.png", DIRECT_SHIFTS.get(m))
             for m in dict.fromkeys([primary] + [m for m in ("pref_acc_shift", "kl_base_edited")
                                                  if m in set(df["metric"])] + lmeval_metrics(rows))
             if m in set(df["metric"])]
    units = unit_table(ver)
    units.to_csv(folder / "units.csv", index=False)
    if units["condition"].nunique() > 1:
        plots.append(plot_forest(ver, primary, folder / "forest.png", DIRECT_SHIFTS.get(primary)))
    if ver:
        plots.insert(0, plot_overview(head, ver, primary, folder / "overview.png", DIRECT_SHIFTS.get(primary)))

    lines = [f"# rwedit experiment: {meta['config'].get('name', folder.name)}", ""]
    n_cond = len([r for r in rows if r["condition"] != "base"])
    lines += [f"{n_cond} conditions + base, recipe hash `{meta['config_hash']}`, started {meta['started']}. "
              f"Primary behaviour metric: **{primary}** ({DIRECT_SHIFTS.get(primary, 'lm-eval metric')}).", ""]
    lines += findings_lines(ver, primary)
    if ver:
        lines += ["", "![overview](overview.png)"]
    lines += ["", "### Details", ""]
    for v in ver:
        claim = CLAIMS[v["control"]].format(m=primary)
        lines.append(f"- **{v['answer']}** (α = {fmt(v['alpha'])}): {claim}. Test: {v['test']}. Effect "
                     f"{fmt(v['effect'])}, 95% CI {fmt_ci(v['ci_low'], v['ci_high'])} ({v.get('interval') or 'unpaired'}); "
                     f"|shift| principal {fmt(v['principal_abs'])} vs {v['control']} {fmt(v['control_abs'])} "
                     f"(n = {v['n_control']}), ratio {fmt(v['ratio'])}.")
        if v.get("n_items"):
            lines.append(f"  - power: over {v['n_items']} items the minimum detectable effect (80% power, α = 0.05) is "
                         f"{fmt(v['mde'])}; detecting the observed {fmt(v['effect'])} would take "
                         f"{fmt(v['items_needed'])} items. Unpaired (each condition's own stderr): "
                         f"{v['unpaired_answer']}, {fmt(v['unpaired_effect'])} "
                         f"{fmt_ci(v['unpaired_ci_low'], v['unpaired_ci_high'])}.")
        if (v.get("n_units") or 0) > 1 and v.get("units"):
            u = v["units"]
            lines.append(f"  - replicate units: {len(u)} (directions × layers); per-unit effects "
                         f"{fmt(min(x['effect'] for x in u))} to {fmt(max(x['effect'] for x in u))} (sd {fmt(v['unit_sd'])}), "
                         f"{sum(x['answer'] == 'yes' for x in u)} of {len(u)} *yes* alone; `units.csv`, `forest.png`.")
    lines += ["", "A verdict is *yes* when the whole 95% interval of the effect (principal edit − control) is above 0, "
              "*no* when it is below 0, *inconclusive* otherwise. Paired verdicts compare the conditions item by item "
              "on the same held-out items; the unpaired comparison is shown beside them.", ""]
    lines += headline_lines(folder, primary)
    lines += ["", "## Every condition", ""]
    probe_cols = ["delta_norm", "rsf_read_activation_k1", "rsf_read_activation_k16", "rsf_residual_prediction_k1"]
    beh_cols = [c for c in ("pref_margin_shift", "pref_acc_shift", "kl_base_edited", "ppl_change") if c in rows[0]]
    lines += row_table(rows, probe_cols + beh_cols + lmeval_metrics(rows))
    lines += ["", "RSF columns: read-side RSF of v against the activation subspace of the edited input (k = 1, 16), "
              "and RSF of the residual-stream side of the edit against the prediction subspace (k = 1); 1 = isotropic.",
              "", "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots if p.name != "overview.png"]
    probe_pngs = sorted((folder / "probe").glob("*.png")) if (folder / "probe").exists() else []
    if probe_pngs:
        lines += ["", "### RSF of the observed pair (post − base)", "",
                  "Full tables: `probe/rsf.csv`, `probe/headline.csv`, `probe/summary.md`.", ""]
        lines += [f"![{p.stem}](probe/{p.name})" for p in probe_pngs]
    store = ("`shards/I-of-N/results.jsonl` (one store per shard; `rwedit.evals.store.ResultStore(folder).frame()` "
             "merges them)" if meta.get("shards") else "`results.jsonl`")
    lines += ["", "## Files", "", f"- {store}: one row per condition (load with `pandas.read_json(path, lines=True)`)",
              "- `headline.csv`, `verdicts.csv`: the tables above for every metric; `units.csv`: each replicate "
              "unit's paired effect against its own controls", "- `edit/adapters/<condition>`: "
              "PEFT adapters (`PeftModel.from_pretrained`) with model cards", "- `run.json`: the recipe, its hash, versions"]
    from rwedit.editor.pipeline import edit_cards_section

    cards_md, cards_page = edit_cards_section(folder / "edit")
    return write_pages(folder, lines + cards_md, extra_html=cards_page)
