"""The experiment report, computed from the results store alone (``rwedit report DIR`` re-runs it).

Every behaviour metric becomes a *shift* against the base row (direct metrics carry their paired
stderr; lm-eval metrics combine the two stderrs), divided by ‖ΔW‖_F and by KL(base ‖ edited) for the
per-unit-norm and per-unit-effect views. Conditions of one kind and dose with several members (random
seeds, low-variance indices) are a sample of directions: summarised over members with a t interval
(:func:`rwedit.stats.over_members`); single conditions use their own stderr. Verdicts compare the
principal read-pathway edit with each control at matched norm (and, for KL-matched controls, at matched
KL), state the dose relative to ‖W‖_F and to the observed update along v, and carry the flags of the
conditions they rest on: a *broken model* (held-out CE up by more than ``effect.broken_ce``) and a control
that *does nothing measurable* (its KL interval over held-out items lies below the noise floor
``effect.kl_floor``) (:func:`condition_effects`).

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
from rwedit.evals.direct import ITEMS, EffectSettings
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


def _effect_settings(config: dict | None):
    """The run's ``effect:`` settings (defaults for runs recorded without them)."""
    return EffectSettings.from_dict((config or {}).get("effect") or {}, where="effect")


def condition_effects(rows: list[dict], config: dict | None = None) -> pd.DataFrame:
    """One row per condition: its dose (α, and α relative to ‖W‖_F and to the observed update along v), its
    KL(base ‖ edited) with a t interval over the held-out items, its held-out CE shift, the KL search of a
    KL-matched control, and two flags: ``broken`` (CE up by more than ``effect.broken_ce`` nats/token) and
    ``null_edit`` (the whole 95% KL interval lies at or below the noise floor ``effect.kl_floor``: an edit that
    does nothing measurable; KL is never negative, so an edit is null only when its KL is shown to be small)."""
    eff = _effect_settings(config)
    out = []
    for r in rows:
        if r["condition"] == "base":
            continue
        kl, items = r.get("kl_base_edited"), r.get("kl_base_edited" + ITEMS)
        iv = (over_members(items) if items and len(items) > 1 else
              None if kl is None else interval(kl, r.get("kl_base_edited_stderr")))
        ce = r.get("ce_shift")
        out.append({"condition": r["condition"], "kind": r["kind"], "match": r.get("match", "norm"),
                    "dose": r.get("dose", r["alpha"]), "dose_unit": r.get("dose_unit", "alpha"), "alpha": r["alpha"],
                    "alpha_rel_w": r.get("alpha_rel_w"), "alpha_rel_observed": r.get("alpha_rel_observed"),
                    "kl": kl, "kl_ci_low": None if iv is None else iv.low, "kl_ci_high": None if iv is None else iv.high,
                    "ce_shift": ce, "broken": ce is not None and ce > eff.broken_ce,
                    "null_edit": iv is not None and iv.high <= eff.kl_floor,
                    **{k: r.get(k) for k in ("kl_match_target", "kl_match_found", "kl_match_steps",
                                             "kl_match_converged")}})
    return pd.DataFrame(out)


def long_shifts(rows: list[dict], config: dict | None = None) -> pd.DataFrame:
    """One row per (condition, metric): shift against the base, its stderr, both per unit ‖ΔW‖, the shift per
    unit KL(base ‖ edited), and the condition's dose and effect flags (:func:`condition_effects`)."""
    base = next((r for r in rows if r["condition"] == "base"), None)
    if base is None:
        raise ExperimentError("the store has no base row: the run did not get far enough (resume it)")
    eff = {e["condition"]: e for e in condition_effects(rows, config).to_dict("records")}
    out = []
    metrics = [m for m in DIRECT_SHIFTS if m in base] + lmeval_metrics(rows)
    for r in rows:
        if r["condition"] == "base":
            continue
        e = eff[r["condition"]]
        for m in metrics:
            if m in DIRECT_SHIFTS:
                shift, se = r.get(m), r.get(f"{m}_stderr")
            else:
                v, b = r.get(m), base.get(m)
                shift = None if v is None or b is None else v - b
                se = combined_se(r.get(f"{m}_stderr"), base.get(f"{m}_stderr"))
            if shift is None:
                continue
            n, kl = r["delta_norm"], e["kl"]
            out.append({"condition": r["condition"], "kind": r["kind"], "alpha": r["alpha"], "seed": r.get("seed"),
                        "index": r.get("index"), "layers": tuple(r.get("layers") or ()), "delta_norm": n, "metric": m,
                        "shift": shift, "stderr": se, "per_norm": shift / n, "per_norm_stderr": None if se is None else se / n,
                        "per_kl": shift / kl if kl and kl > 0 else None,
                        **{k: e[k] for k in ("match", "dose", "dose_unit", "alpha_rel_w", "alpha_rel_observed", "kl",
                                             "ce_shift", "broken", "null_edit", "kl_match_converged")}})
    return pd.DataFrame(out)


def _mean(x) -> float:
    """Mean of the numbers in ``x`` (NaN when there are none)."""
    x = pd.to_numeric(pd.Series(list(x), dtype=object), errors="coerce")
    return float(x.mean()) if x.notna().any() else math.nan


def _members(values: Sequence[float], ses: Sequence[float | None]) -> Interval:
    """A group of conditions as a sample of directions (t over members), one condition with its own stderr."""
    if len(values) > 1:
        return over_members(list(values))
    se = ses[0]
    return interval(values[0], None if _missing(se) else se, how="±1.96 stderr")


def summarise(group: pd.DataFrame) -> dict:
    """Mean shift of a (kind, dose) group with a 95% interval: over members if several, else ±1.96·stderr;
    beside it the group's mean KL, shift per unit KL, dose relative to ‖W‖_F and to the observed update, and
    how many members are flagged broken or do nothing measurable."""
    iv = _members(group["shift"].tolist(), group["stderr"].tolist())
    norm = float(group["delta_norm"].mean())
    return {"n": len(group), "shift": iv.estimate, "ci_low": iv.low, "ci_high": iv.high,
            "per_norm": float(group["per_norm"].mean()), "per_norm_ci_low": iv.low / norm,
            "per_norm_ci_high": iv.high / norm, "interval": iv.how, "df": iv.df,
            **{k: _mean(group[k]) for k in ("kl", "per_kl", "alpha_rel_w", "alpha_rel_observed")},
            "broken": int(group["broken"].sum()), "null_edit": int(group["null_edit"].sum())}


#: what identifies a dose group: its dose as given and the unit it is given in, and what its controls match
DOSE_KEYS = ["dose_unit", "dose", "match"]


def headline(df: pd.DataFrame) -> pd.DataFrame:
    """Per metric, kind and dose (and match): the mean shift and per-unit-norm shift with their 95% intervals
    (``alpha``: the group's mean α, which differs from the dose for relative doses and KL-matched controls)."""
    rows = []
    for (metric, kind, unit, dose, match), g in df.groupby(["metric", "kind"] + DOSE_KEYS, sort=False):
        rows.append({"metric": metric, "kind": kind, "alpha": float(g["alpha"].mean()), "dose": dose,
                     "dose_unit": unit, "match": match, "delta_norm": float(g["delta_norm"].mean()), **summarise(g)})
    h = pd.DataFrame(rows)
    if h.empty:
        return h
    h["kind_order"] = h["kind"].map(lambda k: KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER))
    h["unit_order"], h["match_order"] = h["dose_unit"] != "alpha", h["match"] != "norm"
    return h.sort_values(["metric", "unit_order", "dose", "match_order", "kind_order"]).drop(
        columns=["kind_order", "unit_order", "match_order"]).reset_index(drop=True)


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


def _dose_and_flags(p: pd.DataFrame, c: pd.DataFrame) -> dict:
    """A verdict's dose (the principal edit's α relative to ‖W‖_F and to the observed update along v, the
    controls' α), the KLs it compares, and the flags of the conditions it rests on."""
    broken = [f"{r['condition']} (CE {r['ce_shift']:+.2g})" for _, r in pd.concat([p, c]).iterrows() if r["broken"]]
    return {"alpha_rel_w": _mean(p["alpha_rel_w"]), "alpha_rel_observed": _mean(p["alpha_rel_observed"]),
            "control_alpha": _mean(c["alpha"].abs()), "control_alpha_rel_w": _mean(c["alpha_rel_w"]),
            "principal_kl": _mean(p["kl"]), "control_kl": _mean(c["kl"]),
            "broken_model": bool(broken), "broken_conditions": "; ".join(broken),
            "principal_null": int(p["null_edit"].sum()), "control_null": int(c["null_edit"].sum()),
            "kl_unmatched": int((c["kl_match_converged"] == False).sum())}  # noqa: E712 (None: not a KL match)


def compare(df: pd.DataFrame, metric: str, alpha: float, control: str, rows: Sequence[dict] | None = None,
            config: dict | None = None, seed: int = 0, match: str = "norm", unit: str = "alpha") -> dict | None:
    """The principal edit against a control at the same dose (``alpha``, given in ``unit``: α itself or a
    multiple of the observed update), the control matched in norm or in KL (``match``). With per-item values
    stored (the same items for every condition) the verdict is *paired*: the signed shift in the objective's
    direction (:func:`direction`), or the magnitude where the b rule defines none, by a hierarchical bootstrap
    over items and control members, with its minimum detectable effect and the items that would detect the
    observed effect. Several principal conditions (directions × layers) are replicate units, each compared
    with the controls of its own layer(s): the verdict is their pooled effect (bootstrap over items, members
    and units, :func:`rwedit.stats.pooled_bootstrap`) and ``units`` lists each unit's own. The unpaired
    comparison of |shift| (each condition's own stderr, t over members) is kept beside it. The same effect per
    unit KL(base ‖ edited) (each condition's shift divided by its KL, taken as measured) is reported beside
    it, except against a condition that does nothing measurable (its shift per KL is noise over ~0)."""
    sel = df[(df["metric"] == metric) & (df["dose"] == alpha) & (df["dose_unit"] == unit)]
    p, c = sel[sel["kind"] == "principal"], sel[(sel["kind"] == control) & (sel["match"] == match)]
    if p.empty or c.empty:
        return None
    pi = _members(p["shift"].abs().tolist(), p["stderr"].tolist())
    ci = _members(c["shift"].abs().tolist(), c["stderr"].tolist())
    d = difference(pi, ci)
    ep, ec = pi.estimate, ci.estimate
    out = {"metric": metric, "alpha": alpha if unit == "alpha" else _mean(p["alpha"]), "dose": alpha,
           "dose_unit": unit, "match": match, "control": control, "n_control": len(c), "principal_abs": ep,
           "control_abs": ec, "ratio": ep / ec if ec > 0 else math.inf,
           "unpaired_effect": d.estimate, "unpaired_ci_low": d.low, "unpaired_ci_high": d.high,
           "unpaired_answer": d.verdict() if d.se is not None else "inconclusive", **_dose_and_flags(p, c)}
    kl_p, kl_c = pd.to_numeric(p["kl"]).to_numpy(float), pd.to_numeric(c["kl"]).to_numpy(float)
    per_kl = bool(np.all(kl_p > 0) and np.all(kl_c > 0)) and not (out["principal_null"] or out["control_null"])
    out.update(principal_per_kl=None, control_per_kl=None, effect_per_kl=None, per_kl_ci_low=None,
               per_kl_ci_high=None, per_kl_answer=None)
    if per_kl:
        pk = _members((p["shift"].abs() / kl_p).tolist(), (pd.to_numeric(p["stderr"]) / kl_p).tolist())
        ck = _members((c["shift"].abs() / kl_c).tolist(), (pd.to_numeric(c["stderr"]) / kl_c).tolist())
        dk = difference(pk, ck)
        out.update(principal_per_kl=pk.estimate, control_per_kl=ck.estimate, effect_per_kl=dk.estimate,
                   per_kl_ci_low=dk.low, per_kl_ci_high=dk.high,
                   per_kl_answer=dk.verdict() if dk.se is not None else "inconclusive")
    by_name = {r["condition"]: r for r in rows or []}
    base = by_name.get("base")
    groups: dict[tuple, tuple] = {}
    for layers, g in c.groupby("layers", sort=False):
        C = _items([by_name[n] for n in g["condition"] if n in by_name], metric, base) if rows else None
        if C is not None and len(C) == len(g):
            groups[layers] = (C, pd.to_numeric(g["kl"]).to_numpy(float))
    units = []
    for i, (_, r) in enumerate(p.iterrows()):
        P = _items([by_name[r["condition"]]], metric, base) if r["condition"] in by_name else None
        C = groups.get(r["layers"])
        if P is not None and C is not None and P.shape[1] == C[0].shape[1] and P.shape[1] >= 2:
            units.append((r, P[0], r["layers"], kl_p[i]))
    if not units or len({u[1].shape[0] for u in units}) != 1:
        out.update(test="magnitude (unpaired: no per-item values stored)", effect=d.estimate, ci_low=d.low,
                   ci_high=d.high, answer=out["unpaired_answer"], n_items=None, mde=None, items_needed=None,
                   n_units=len(p), units=[])
        return out if d.se is not None else None
    sign = direction(config or {}, metric, alpha)
    statistic = "magnitude" if sign is None else "signed"
    s = 1 if sign is None else sign
    keys = list(dict.fromkeys(u[2] for u in units))
    gidx = [keys.index(u[2]) for u in units]
    n = int(units[0][1].shape[0])

    def paired(by_kl: bool):
        """Each unit's and the pooled paired effect, and the items' power (shifts divided by KL: ``by_kl``)."""
        Cs = [s * groups[k][0] / (groups[k][1][:, None] if by_kl else 1) for k in keys]
        P = np.stack([s * u[1] / (u[3] if by_kl else 1) for u in units])
        ivs = [hierarchical_bootstrap(P[i], Cs[gidx[i]], statistic, seed=seed) for i in range(len(units))]
        # one unit: its own interval is the pooled one (pooled_bootstrap of one unit is hierarchical_bootstrap)
        iv = ivs[0] if len(units) == 1 else pooled_bootstrap(P, Cs, gidx, statistic, seed=seed)

        def power(rows_, g):  # per-item paired differences of the (pooled) units against their controls
            sd = float((P[rows_] - np.stack([Cs[j].mean(axis=0) for j in g])).mean(axis=0).std(ddof=1))
            return mde(sd, n), sd
        return iv, ivs, power

    iv, ivs, power = paired(False)
    per_unit = []
    for i, ((r, _, layers, _), uiv) in enumerate(zip(units, ivs)):
        m, sd = power([i], [gidx[i]])
        per_unit.append({"condition": r["condition"], "unit": unit_label(layers, r["index"]), "effect": uiv.estimate,
                         "ci_low": uiv.low, "ci_high": uiv.high, "answer": uiv.verdict(), "mde": m,
                         "items_needed": items_to_detect(uiv.estimate, sd)})
    m, sd = power(list(range(len(units))), gidx)
    test = ("signed: shift in the direction of the edit's objective (larger is "
            f"{'up' if s > 0 else 'down'} for {metric} at α = {out['alpha']:.3g})" if sign is not None else
            "magnitude: |mean shift| (the b rule defines no direction for this metric)")
    if len(units) > 1:
        test += f"; pooled over {len(units)} replicate units (directions × layers), each against its own layer's controls"
    out.update(test=test, effect=iv.estimate, ci_low=iv.low, ci_high=iv.high, answer=iv.verdict(), n_items=n,
               mde=m, items_needed=items_to_detect(iv.estimate, sd), interval=iv.how, n_units=len(units),
               unit_sd=float(np.std([u["effect"] for u in per_unit], ddof=1)) if len(units) > 1 else None,
               units=per_unit)
    if per_kl:
        ik = paired(True)[0]
        out.update(effect_per_kl=ik.estimate, per_kl_ci_low=ik.low, per_kl_ci_high=ik.high,
                   per_kl_answer=ik.verdict())
    return out


#: each verdict's claim in a few words (the findings table's first column)
SHORT_CLAIMS = {"random": "principal > random directions", "lowvar": "principal > low-variance directions",
                "write": "principal (read) > write-pathway edit"}
CLAIMS = {
    "random": "principal read-pathway edits shift {m} more than random directions at matched {by}",
    "lowvar": "principal read-pathway edits shift {m} more than low-variance directions at matched {by}",
    "write": "principal read-pathway edits shift {m} more than the write-pathway edit at matched {by}",
}
MATCHED_BY = {"norm": "norm", "kl": "KL(base ‖ edited)"}


def verdicts(df: pd.DataFrame, metric: str, rows: Sequence[dict] | None = None, config: dict | None = None) -> list[dict]:
    """One verdict per control kind, dose and match (paired where per-item values are stored, see
    :func:`compare`); a *yes* at doses above ‖W‖_F only says so in its ``dose_note``."""
    out = []
    doses = sorted(set(zip(df["dose_unit"], df["dose"])), key=lambda k: (k[0] != "alpha", abs(k[1]), k[1]))
    for control in CLAIMS:
        for unit, dose in doses:
            for match in MATCHED_BY:
                v = compare(df, metric, dose, control, rows, config, match=match, unit=unit)
                if v is not None:
                    out.append(v)
    for v in out:
        v["dose_note"] = ""
        if v["answer"] == "yes" and not _missing(v["alpha_rel_w"]) and v["alpha_rel_w"] > 1:
            below = [w for w in out if (w["control"], w["match"]) == (v["control"], v["match"])
                     and not _missing(w["alpha_rel_w"]) and w["alpha_rel_w"] <= 1]
            if not any(w["answer"] == "yes" for w in below):
                v["dose_note"] = "holds only above ‖W‖_F" + ("" if below else " (no dose at or below ‖W‖_F tested)")
    return out


def dose_text(v: dict) -> str:
    """A verdict's dose in words: α, and α relative to ‖W‖_F and to the observed update along v; a
    KL-matched control's own α beside it."""
    rel = [f"{fmt(v[k])}{what}" for k, what in (("alpha_rel_w", " ‖W‖_F"), ("alpha_rel_observed", " × ‖ΔW_obs v‖"))
           if not _missing(v.get(k))]
    out = f"α = {fmt(v['alpha'])}" + (f" ({fmt(v['dose'])} × observed)" if v["dose_unit"] == "observed" else "")
    out += f" = {' = '.join(rel)}" if rel else ""
    if v["match"] == "kl":
        out += f"; KL-matched {v['control']} α = {fmt(v['control_alpha'])}" + (
            "" if _missing(v.get("control_alpha_rel_w")) else f" ({fmt(v['control_alpha_rel_w'])} ‖W‖_F)")
    return out


def caveats(v: dict) -> list[str]:
    """What a reader must know before taking a verdict as one about preference: broken models, a control (or
    the edit) that does nothing measurable, a dose above ‖W‖_F only, KL matches not reached."""
    out = [f"broken model: {v['broken_conditions']}"] if v.get("broken_model") else []
    if v.get("control_null"):
        out.append(f"against a null edit: {v['control']} does nothing measurable" if v["control_null"] == v["n_control"]
                   else f"{v['control_null']} of {v['n_control']} {v['control']} controls do nothing measurable")
    if v.get("principal_null"):
        out.append("the principal edit does nothing measurable")
    out += [v["dose_note"]] if v.get("dose_note") else []
    if v.get("kl_unmatched"):
        out.append(f"KL match not reached for {v['kl_unmatched']} control(s)")
    return out


def unit_table(ver: Sequence[dict]) -> pd.DataFrame:
    """One row per (verdict, replicate unit): the unit's own paired effect against its controls."""
    return pd.DataFrame([{"metric": v["metric"], "alpha": v["alpha"], "dose": v["dose"], "dose_unit": v["dose_unit"],
                          "match": v["match"], "control": v["control"], **u} for v in ver for u in v.get("units") or []],
                        columns=["metric", "alpha", "dose", "dose_unit", "match", "control", "condition", "unit",
                                 "effect", "ci_low", "ci_high", "answer", "mde", "items_needed"])


def _primary(meta: dict, primary: str | None) -> str:
    return primary or meta["config"].get("primary", "pref_margin_shift")


def headline_lines(folder: str | Path, primary: str | None = None) -> list[str]:
    """The markdown lines of the report's "Headline" section of a finished run folder (its ``## Headline``
    heading, then the table of the primary metric by direction kind), computed from the results store.
    ``primary`` defaults to the recipe's primary metric."""
    rows, meta = load_run(folder)
    primary = _primary(meta, primary)
    head = headline(long_shifts(rows, meta["config"]))
    sel = head[head["metric"] == primary] if not head.empty else head
    table = [[h["kind"] + (" (KL-matched)" if h["match"] == "kl" else ""),
              fmt(h["alpha"]) + (f" ({fmt(h['dose'])} × obs)" if h["dose_unit"] == "observed" else ""), str(h["n"]),
              fmt(h["delta_norm"]), fmt(h["shift"]), fmt_ci(h["ci_low"], h["ci_high"]), fmt(h["per_norm"]), h["interval"],
              fmt(h["kl"]), fmt(h["per_kl"]), fmt(h["alpha_rel_w"]), fmt(h["alpha_rel_observed"]),
              ", ".join(f"{h[k]} {what}" for k, what in (("broken", "broken"), ("null_edit", "null")) if h[k]) or "–"]
             for _, h in sel.iterrows()]
    return [f"## Headline: {primary} by direction kind", ""] + md_table(
        ["kind", "α", "n", "‖ΔW‖", "shift", "95% CI", "shift per unit ‖ΔW‖", "interval", "KL(base ‖ edited)",
         "shift per unit KL", "α / ‖W‖_F", "α / ‖ΔW_obs v‖", "flagged"], table)


def findings_lines(ver: Sequence[dict], primary: str) -> list[str]:
    """The report's first section: one row per verdict (the claim in a few words, the verdict, the effect with
    its interval, the same per unit KL, the dose, the caveats, the power, the cell it rests on); the sentences
    follow under "Details"."""
    lines = ["## Findings", ""]
    if not ver:
        return lines + [f"No verdict: the store has no principal edit and control rows for {primary}.", ""]

    def per_kl(v):
        if v.get("effect_per_kl") is None or _missing(v.get("effect_per_kl")):
            return "– (null edit)" if v.get("control_null") or v.get("principal_null") else "–"
        return f"{fmt(v['effect_per_kl'])} {fmt_ci(v['per_kl_ci_low'], v['per_kl_ci_high'])} ({v['per_kl_answer']})"

    table = [[SHORT_CLAIMS[v["control"]] + (" (KL-matched)" if v["match"] == "kl" else ""), f"**{v['answer']}**",
              f"{fmt(v['effect'])} {fmt_ci(v['ci_low'], v['ci_high'])}", per_kl(v), dose_text(v),
              "; ".join(caveats(v)) or "–",
              f"MDE {fmt(v['mde'])} over {v['n_items']} items" if v.get("n_items") else "–",
              f"{primary}, principal vs {v['n_control']} {v['control']}"] for v in ver]
    return lines + md_table(["claim", "verdict", "effect (principal − control), 95% CI", "per unit KL, 95% CI",
                             "dose", "caveats", "power", "rests on"], table)


def flag_lines(effects: pd.DataFrame, config: dict | None) -> list[str]:
    """The report's sentences naming the conditions that are broken models or do nothing measurable."""
    eff, out = _effect_settings(config), []
    if effects.empty:
        return out
    broken = effects[effects["broken"]]
    if len(broken):
        out.append(f"- **Broken model** (held-out CE up by more than {fmt(eff.broken_ce)} nats/token): "
                   + ", ".join(f"`{r.condition}` ({r.ce_shift:+.3g})" for r in broken.itertuples())
                   + ". A verdict resting on one says little about preference; its row is marked.")
    null = effects[effects["null_edit"]]
    if len(null):
        out.append(f"- **Does nothing measurable** (the 95% interval of KL(base ‖ edited) over the held-out items lies "
                   f"below the noise floor {fmt(eff.kl_floor)} nats/token): "
                   + ", ".join(f"`{r.condition}` (KL {fmt(r.kl)})" for r in null.itertuples())
                   + ". A verdict against such a control compares the edit with a null edit.")
    return out


def effect_lines(effects: pd.DataFrame) -> list[str]:
    """The "Effect and dose of each condition" table: α and its yardsticks, KL with its interval, CE shift,
    the flags and a KL-matched control's search."""
    if effects.empty:
        return []

    def search(r):
        return "–" if _missing(r["kl_match_target"]) else (
            f"target {fmt(r['kl_match_target'])} → {fmt(r['kl_match_found'])} in {int(r['kl_match_steps'])} steps"
            + ("" if r["kl_match_converged"] else " (not reached)"))
    table = [[r["condition"], r["kind"], r["match"], fmt(r["alpha"]), fmt(r["alpha_rel_w"]),
              fmt(r["alpha_rel_observed"]), f"{fmt(r['kl'])} {fmt_ci(r['kl_ci_low'], r['kl_ci_high'])}",
              fmt(r["ce_shift"]), ", ".join(f for f, on in (("broken_model", r["broken"]),
                                                            ("does nothing measurable", r["null_edit"])) if on) or "–",
              search(r)] for _, r in effects.iterrows()]
    return ["## Effect and dose of each condition", ""] + md_table(
        ["condition", "kind", "matched in", "α", "α / ‖W‖_F", "α / ‖ΔW_obs v‖", "KL(base ‖ edited), 95% CI",
         "CE shift", "flags", "KL search"], table) + [
        "", "‖W‖_F: the edited matrix's norm (Frobenius over the edited layers); ‖ΔW_obs v‖: the observed update "
        "(post − base) along the edited direction(s), mean over the edited directions of the layer. KL and CE "
        "shift: nats/token on the held-out text, KL's interval a t interval over its sequences.", ""]


def write_control_report(folder: str | Path, primary: str | None = None) -> Path:
    """``report.md`` and ``report.html``, ``headline.csv``, ``verdicts.csv``, ``effects.csv`` and dose–response
    plots from the store alone."""
    folder = Path(folder)
    rows, meta = load_run(folder)
    primary = _primary(meta, primary)
    df = long_shifts(rows, meta["config"])
    if not df.empty and primary not in set(df["metric"]):
        raise ExperimentError(f"primary metric {primary!r} is not among this run's metrics: "
                              f"{', '.join(sorted(set(df['metric'])))}")
    head = headline(df)
    head.to_csv(folder / "headline.csv", index=False)
    effects = condition_effects(rows, meta["config"])
    effects.to_csv(folder / "effects.csv", index=False)
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
    flags = flag_lines(effects, meta["config"])
    lines += ["", *flags] if flags else []
    if ver:
        lines += ["", "![overview](overview.png)"]
    lines += ["", "### Details", ""]
    for v in ver:
        claim = CLAIMS[v["control"]].format(m=primary, by=MATCHED_BY[v["match"]])
        at = f"α = {fmt(v['alpha'])}" + (f", {fmt(v['dose'])} × observed" if v["dose_unit"] == "observed" else "")
        lines.append(f"- **{v['answer']}** ({at}): {claim}. Test: {v['test']}. Effect "
                     f"{fmt(v['effect'])}, 95% CI {fmt_ci(v['ci_low'], v['ci_high'])} ({v.get('interval') or 'unpaired'}); "
                     f"|shift| principal {fmt(v['principal_abs'])} vs {v['control']} {fmt(v['control_abs'])} "
                     f"(n = {v['n_control']}), ratio {fmt(v['ratio'])}.")
        lines.append(f"  - dose: {dose_text(v)}. KL(base ‖ edited): principal {fmt(v['principal_kl'])}, "
                     f"{v['control']} {fmt(v['control_kl'])}; per unit KL: " + (
                         f"|shift|/KL principal {fmt(v['principal_per_kl'])} vs {fmt(v['control_per_kl'])}, effect "
                         f"{fmt(v['effect_per_kl'])} {fmt_ci(v['per_kl_ci_low'], v['per_kl_ci_high'])}: "
                         f"{v['per_kl_answer']}" if v.get("per_kl_answer") else "undefined (an edit that does nothing "
                         "measurable, or no KL)") + "." + (f" Caveats: {'; '.join(caveats(v))}." if caveats(v) else ""))
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
              "on the same held-out items; the unpaired comparison is shown beside them. Per unit KL: each "
              "condition's shift divided by its KL(base ‖ edited) on held-out text (KL taken as measured), the same "
              "test; a KL-matched control's α was searched so that its KL equals the edit's (`effect.match`).", ""]
    lines += headline_lines(folder, primary)
    lines += ["", "## Every condition", ""]
    probe_cols = ["delta_norm", "rsf_read_activation_k1", "rsf_read_activation_k16", "rsf_residual_prediction_k1"]
    beh_cols = [c for c in ("pref_margin_shift", "pref_acc_shift", "kl_base_edited", "ppl_change") if c in rows[0]]
    lines += row_table(rows, probe_cols + beh_cols + lmeval_metrics(rows))
    lines += ["", "RSF columns: read-side RSF of v against the activation subspace of the edited input (k = 1, 16), "
              "and RSF of the residual-stream side of the edit against the prediction subspace (k = 1); 1 = isotropic.",
              ""] + effect_lines(effects) + ["## Plots", ""]
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
              "unit's paired effect against its own controls; `effects.csv`: each condition's dose, KL and flags", "- `edit/adapters/<condition>`: "
              "PEFT adapters (`PeftModel.from_pretrained`) with model cards", "- `run.json`: the recipe, its hash, versions"]
    from rwedit.editor.pipeline import edit_cards_section

    cards_md, cards_page = edit_cards_section(folder / "edit")
    return write_pages(folder, lines + cards_md, extra_html=cards_page)
