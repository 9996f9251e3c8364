"""The SVD-structure experiment's report, computed from its results store alone (``rwedit report DIR``).

For each behaviour metric named in the recipe's ``verdicts.metrics``:
- a condition's **shift vs post** ``d = value − post`` with its stderr: the paired stderr of the direct
  metrics (``pref_margin``, ``pref_acc``, ``ce``, ``ppl``: the scorer's reference is the post model), or
  ``sqrt(se² + se_post²)`` for lm-eval metrics (two independent-looking scores; conservative);
- a group of seeded conditions (the random disruptions) as one entry, one construction measured several
  times (:func:`rwedit.stats.over_members` with the members' stderrs): mean over seeds, stderr
  ``sqrt(s²/n + mean(se_i²))`` (spread over seeds plus the evaluation noise, which the seeds share and
  which does not average out), 95% interval with the t quantile of n − 1 degrees of freedom;
- post-training's own change ``G = post − base``; the **retained fraction** ``(value − base) / G``
  (1 = behaves like post, 0 = like base).

He & Cao's (HC) claims as plain verdicts (95% intervals; ``G``'s own uncertainty enters only the testability check):
- *keeps the score* (``sv_replacement``; also ``reparam`` and ``swap``): **yes** when the whole interval of
  ``sign(G)·d`` lies above ``−keep_margin·|G|`` (the condition keeps at least ``1 − keep_margin`` of what
  post-training changed, or goes further), **no** when it lies wholly below, *inconclusive* otherwise,
  *untestable* when ``G``'s interval contains 0 (post and base do not differ on that metric);
- *collapses* (the random disruptions): **yes** when the condition is worse, in the metric's own
  direction, than both post and base (the whole interval of the difference to the worse of the two is
  below 0), **no** when it is better than that one, *inconclusive* otherwise.
- *keeps the score* against its same-norm random control (``null_<kind>`` seeds, when the recipe has
  ``conditions.null_seeds``): a **yes** stands only where the construction's shift lies beyond the 95%
  interval of one more control seed (:func:`rwedit.stats.null_interval`) in the direction of post − base;
  otherwise it is "indistinguishable from a random update of the same norm".

The structure of the update itself (base → post: scale s, its residual, consistency, reparameterisation error,
means over matrices) is judged against the SVD probe's null stored in the post row
(:func:`rwedit.probes.svd.hc_claims`): "yes" only outside every same-norm random update's interval, with its z.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from rwedit.pages import write_pages
from rwedit.evals.report import fmt, fmt_ci, fmt_se, load_run, md_table, row_table
from rwedit.probes.report import pyplot, save_figure
from rwedit.stats import Interval, combined_se, difference, interval, null_interval, over_members, verdict
from rwedit.errors import ExperimentError
from rwedit.editor.svd_edits import NULL_PREFIX
from rwedit.probes.svd import hc_claims

#: direct metrics whose shift vs post is stored paired (key of the shift)
PAIRED = {"pref_margin": "pref_margin_shift_vs_post", "pref_acc": "pref_acc_shift_vs_post",
          "ce": "ce_shift_vs_post", "ppl": "ppl_change_vs_post"}
KEEP_KINDS = {
    "sv_replacement": "singular-value replacement (post singular vectors, base singular values × s) keeps the score",
    "reparam": "the reparameterisation (base vectors, one shared rotation Q, post singular values) keeps the score",
    "swap": "swapping the left rotation for the right one keeps the score",
}
COLLAPSE_KINDS = {
    "disrupt_left_random": "replacing the left rotation by a random orthogonal matrix collapses the score",
    "disrupt_right_random": "replacing the right rotation by a random orthogonal matrix collapses the score",
}
ORDER = ["post", "base", "sv_replacement", "reparam", "swap", "disrupt_left_random", "disrupt_right_random"]
WEIGHT_COLS = {"rel_change_vs_post": "‖W−W_post‖/‖W_post‖", "scale": "scale s", "scale_residual": "s residual",
               "consistency": "consistency", "reparam_error": "reparam err."}


def direction(metric: str) -> int:
    """+1 when higher is better, −1 for losses, perplexities and divergences."""
    last = metric.split("/")[-1]
    if last in ("ce", "ppl") or "perplexity" in last or last in ("bits_per_byte", "kl_post_condition"):
        return -1
    return 1


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def shift_vs_post(row: dict, post: dict, metric: str) -> tuple[float | None, float | None]:
    """(value − post, its stderr) of one row for one metric."""
    if metric in PAIRED and PAIRED[metric] in row:
        return _num(row.get(PAIRED[metric])), _num(row.get(PAIRED[metric] + "_stderr"))
    v, p = _num(row.get(metric)), _num(post.get(metric))
    if v is None or p is None:
        return None, None
    if row is post:
        return 0.0, 0.0
    return v - p, combined_se(_num(row.get(metric + "_stderr")), _num(post.get(metric + "_stderr")))


def summary(rows: list[dict], metrics: list[str]) -> pd.DataFrame:
    """One row per (condition kind, metric): value, shift vs post with stderr and 95% CI, retained fraction."""
    post = next(r for r in rows if r["condition"] == "post")
    base = next(r for r in rows if r["condition"] == "base")
    kinds = [k for k in ORDER if any(r["kind"] == k for r in rows)]
    kinds += sorted({r["kind"] for r in rows} - set(kinds))
    out = []
    for m in metrics:
        g_shift, g_se = shift_vs_post(base, post, m)  # base − post
        G = None if g_shift is None else -g_shift
        # the keep claims are testable only where post and base differ: G's 95% interval excludes 0
        testable = G is not None and interval(G, g_se).verdict() != "inconclusive"
        for kind in kinds:
            members = [r for r in rows if r["kind"] == kind]
            sh = [shift_vs_post(r, post, m) for r in members]
            vals = [_num(r.get(m)) for r in members]
            if any(s is None for s, _ in sh):
                continue
            n = len(members)
            iv = over_members([s for s, _ in sh], [se for _, se in sh])
            vse = [_num(r.get(m + "_stderr")) for r in members]
            value = over_members(vals, vse) if None not in vals else None
            has_ci = iv.se is not None
            draw = null_interval([s for s, _ in sh]) if kind.startswith(NULL_PREFIX) else None  # one more seed
            out.append({"metric": m, "kind": kind, "n": n, "value": None if value is None else value.estimate,
                        "value_stderr": None if value is None or None in vse else value.se, "shift": iv.estimate,
                        "shift_stderr": iv.se, "ci_low": iv.low if has_ci else None,
                        "ci_high": iv.high if has_ci else None, "q": iv.q, "df": iv.df, "post_minus_base": G,
                        "post_minus_base_stderr": g_se, "gap_significant": testable,
                        "retained": (1.0 + iv.estimate / G) if testable else None,
                        "draw_sd": draw and draw.sd, "draw_low": draw and draw.low, "draw_high": draw and draw.high})
    return pd.DataFrame(out)


def _shift_interval(r) -> Interval:
    """A summary row's shift vs post as an :class:`Interval` (t on its degrees of freedom, else normal)."""
    df = r.get("df")
    return Interval(float(r["shift"]), float(r["shift_stderr"]), None if df is None or pd.isna(df) else float(df),
                    int(r["n"]))


def verdicts(summ: pd.DataFrame, keep_margin: float) -> list[dict]:
    """HC's claims per metric (see the module docstring for the rules)."""
    out = []
    for m, g in summ.groupby("metric", sort=False):
        byk = {r["kind"]: r for _, r in g.iterrows()}
        base = byk.get("base")
        for kind, claim in list(KEEP_KINDS.items()) + list(COLLAPSE_KINDS.items()):
            r = byk.get(kind)
            if r is None:
                continue
            v = {"metric": m, "kind": kind, "claim": claim, "n": int(r["n"]), "shift": r["shift"],
                 "ci_low": r["ci_low"], "ci_high": r["ci_high"], "retained": r["retained"]}
            G = r["post_minus_base"]
            if r["shift_stderr"] is None or pd.isna(r["shift_stderr"]):
                v.update(answer="no interval", test_low=None, test_high=None, threshold=None)
            elif kind in KEEP_KINDS:
                if not r["gap_significant"]:
                    v.update(answer="untestable", test_low=None, test_high=None, threshold=None)
                else:
                    sg = 1.0 if G > 0 else -1.0
                    lo, hi = sorted((sg * r["ci_low"], sg * r["ci_high"]))
                    thr = -keep_margin * abs(G)
                    v.update(test_low=lo, test_high=hi, threshold=thr, answer=verdict(lo, hi, thr))
                    v.update(_against_null(r, byk.get(NULL_PREFIX + kind), sg, v["answer"]))
            else:
                d = direction(m)
                # the worse of post (shift 0) and base (shift base − post) in the metric's direction
                b_shift, b_se = (base["shift"], base["shift_stderr"]) if base is not None else (0.0, 0.0)
                ref_is_base = base is not None and d * b_shift < 0
                ref = interval(b_shift, 0.0 if pd.isna(b_se) else b_se) if ref_is_base else interval(0.0, 0.0)
                cond = _shift_interval(r)
                # the condition minus the reference, in the metric's better direction
                diff = difference(cond, ref) if d > 0 else difference(ref, cond)
                # collapse: the whole interval below 0 (i.e. its negation wholly above 0)
                v.update(test_low=diff.low, test_high=diff.high, threshold=0.0,
                         reference="base" if ref_is_base else "post", answer=verdict(-diff.high, -diff.low))
            out.append(v)
    return out


def _against_null(r, null, sg: float, answer: str) -> dict:
    """A keep verdict against its same-norm random control (the ``null_<kind>`` seed group's summary row):
    the construction's shift beyond the interval of one more control seed, in the direction of post − base
    (``sg``), keeps a **yes**; inside it (or below) the answer says so."""
    if null is None or null["draw_low"] is None or pd.isna(null["draw_low"]):
        return {}
    lo, hi = sorted((sg * null["draw_low"], sg * null["draw_high"]))
    x = sg * r["shift"]
    where = "beyond" if x > hi else ("below" if x < lo else "within")
    if answer == "yes" and where != "beyond":
        answer = ("no: indistinguishable from a random update of the same norm" if where == "within" else
                  "no: a random update of the same norm keeps more")
    return {"answer": answer, "vs_null": where, "null_shift": null["shift"], "null_low": null["draw_low"],
            "null_high": null["draw_high"], "null_z": (r["shift"] - null["shift"]) / null["draw_sd"]
            if null["draw_sd"] else math.nan, "null_n": int(null["n"])}


def _against(v: dict) -> str:
    """What a behaviour verdict was judged against: its threshold, and its same-norm random control if any."""
    if v.get("reference"):
        return f"worse than the worse of post and base ({v['reference']}): difference wholly below 0"
    if v.get("threshold") is None or pd.isna(v.get("threshold")):
        return "–"
    out = f"signed shift above {fmt(v['threshold'])} (−keep_margin·|post − base|)"
    if v.get("vs_null") is not None and not pd.isna(v.get("vs_null")):
        out += f"; same-norm random: {fmt(v['null_shift'])} {fmt_ci(v['null_low'], v['null_high'])}, z {fmt(v['null_z'])}"
    return out


def plot_conditions(summ: pd.DataFrame, path: Path) -> Path | None:
    """Bars: each condition's shift vs post per metric (in its unit) with the 95% interval the verdicts use
    (paired for the direct metrics; none drawn on fewer than 2 degrees of freedom); the solid line is post (0),
    the dashed one the base model."""
    from rwedit.evals.plots import error_bars, omitted, shift_range, with_unit

    plt = pyplot()
    metrics = list(dict.fromkeys(summ["metric"]))
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        g = summ[(summ["metric"] == m) & (summ["kind"] != "post")].set_index("kind")
        x = list(range(len(g)))
        err, missing = error_bars(g, bounds=shift_range(m))
        colours = ["tab:grey" if k == "base" else "tab:red" if k in COLLAPSE_KINDS else
                   "tab:blue" if k.startswith(NULL_PREFIX) else "tab:green" for k in g.index]
        ax.bar(x, g["shift"], yerr=err, color=colours, capsize=3)
        ax.axhline(0.0, color="black", lw=0.8)
        if "base" in g.index:
            ax.axhline(float(g.loc["base", "shift"]), color="black", ls="--", lw=0.8)
        ax.set_xticks(x, [f"{k}\n(n={n})" if n > 1 else k for k, n in zip(g.index, g["n"])], rotation=30, ha="right",
                      fontsize=7)
        ax.set_title(f"{m} ({'higher' if direction(m) > 0 else 'lower'} is better)", fontsize=9)
        ax.set_ylabel(with_unit("shift vs post", m), fontsize=8)
        if missing:
            ax.set_xlabel(omitted(missing).strip(), fontsize=7)
    fig.suptitle("SVD-structure conditions: shift vs the post model (mean, 95% interval); solid line: post, "
                 "dashed: base", fontsize=10)
    return save_figure(fig, path, dpi=120)


def write_svd_report(folder: str | Path) -> Path:
    """``report.md``, ``conditions.csv``, ``verdicts.csv`` and ``svd_conditions.png`` from the store alone."""
    folder = Path(folder)
    rows, meta = load_run(folder)
    cfg = meta["config"]
    names = {r["condition"] for r in rows}
    if not {"post", "base"} <= names:
        raise ExperimentError(f"{folder}: the store has no {'post' if 'post' not in names else 'base'} row yet: "
                         f"resume the run (rwedit run RECIPE --out {folder} --resume)")
    wanted = list((cfg.get("verdicts") or {}).get("metrics") or [])
    metrics = [m for m in wanted if any(r.get(m) is not None for r in rows)]
    absent = [m for m in wanted if m not in metrics]
    summ = summary(rows, metrics)
    summ.to_csv(folder / "conditions.csv", index=False)
    keep_margin = float((cfg.get("verdicts") or {}).get("keep_margin", 0.5))
    ver = verdicts(summ, keep_margin) if not summ.empty else []
    pd.DataFrame(ver).to_csv(folder / "verdicts.csv", index=False)
    post = next(r for r in rows if r["condition"] == "post")
    structure = hc_claims(post, post.get("null") or {})
    pd.DataFrame(structure).to_csv(folder / "structure.csv", index=False)
    plot = plot_conditions(summ, folder / "svd_conditions.png") if not summ.empty else None

    sel = cfg.get("matrices") or {}
    cond = cfg.get("conditions") or {}
    n_mat = next((r.get("n_matrices") for r in rows if r.get("n_matrices")), "?")
    L = [f"# SVD-structure experiment: {cfg.get('name', folder.name)}", "",
         f"Base `{cfg.get('model')}`, post `{cfg.get('post')}`. Every condition replaces {n_mat} matrices "
         f"(roles {', '.join(sel.get('roles') or ['all'])}; layers {'all' if sel.get('layers') is None else sel['layers']}) "
         f"of the post model, rank {cond.get('rank')} (s fitted on the top {cond.get('fit_r')} singular values); "
         f"random disruptions use seeds {cond.get('seeds')}. Recipe hash `{meta['config_hash']}`, started "
         f"{meta['started']}.", ""]
    L += ["## Findings", ""]
    if absent:
        L += [f"Metrics named in `verdicts.metrics` but absent from the rows: {', '.join(absent)}.", ""]
    if not ver:
        L += ["No verdicts: no metric of `verdicts.metrics` has values in the rows.", ""]
    seeds = post.get("null_seeds") or []
    L += md_table(["claim", "verdict", "observed", "null (mean ± sd [95% interval of one draw], z) or threshold",
                   "rests on"],
                  [[f"the update base → post: {c['claim']}", f"**{c['found']}**", f"{c['measure']} {fmt(c['observed'], 4)}",
                    c["null"], f"SVD probe, mean over {n_mat} matrices; {len(seeds)} seeds per null"] for c in structure]
                  + [[v["claim"], f"**{v['answer']}**", f"shift vs post {fmt(v['shift'])} {fmt_ci(v['ci_low'], v['ci_high'])}",
                      _against(v), f"`{v['metric']}`, {v['kind']}" + (f" ({v['n']} seeds)" if v["n"] > 1 else "")]
                     for v in ver])
    L += ["", "Structure claims: \"yes\" only where the observed mean over matrices lies outside the 95% interval of "
          "one more draw (mean ± t·sd·√(1 + 1/K) over K seeds) of every null it is judged against: `gaussian` = "
          "W_base + an i.i.d. Gaussian ΔW, `rotation` = W_base's top-r singular vectors turned by two independent "
          "random rotations (singular values kept; not used for the scaling claims), each with the observed "
          "‖W_post − W_base‖_F per matrix, measured like the observed pair (probes/svd.py). Per-matrix draws: "
          "`matrices/post_null.csv`; the claims: `structure.csv`.", ""]
    if ver:
        L += ["### Details", ""]
    for v in ver:
        r = summ[(summ["metric"] == v["metric"]) & (summ["kind"] == v["kind"])].iloc[0]
        post_v = summ[(summ["metric"] == v["metric"]) & (summ["kind"] == "post")]["value"].iloc[0]
        base_r = summ[(summ["metric"] == v["metric"]) & (summ["kind"] == "base")]
        base_v = base_r["value"].iloc[0] if not base_r.empty else None
        who = f"{v['kind']} (mean of {v['n']} seeds)" if v["n"] > 1 else v["kind"]
        text = (f"- **{v['claim']}: {v['answer']}** — `{v['metric']}`: {who} {fmt(r['value'])} vs post "
                f"{fmt(post_v)}, base {fmt(base_v)}; shift vs post {fmt(v['shift'])}, 95% CI "
                f"{fmt_ci(v['ci_low'], v['ci_high'])}")
        if v["kind"] in KEEP_KINDS:
            if v["answer"] == "untestable":
                text += (f"; post − base = {fmt(r['post_minus_base'] + 0.0)} ± {fmt(r['post_minus_base_stderr'], 2)} "
                         f"is not distinguishable from 0 on this metric")
            elif v["threshold"] is not None:
                text += (f"; retains {fmt(100 * r['retained'], 3)}% of post-training's change "
                         f"(needed: the interval above {fmt(v['threshold'])} in the direction of post − base, "
                         f"i.e. at least {fmt(100 * (1 - keep_margin), 3)}% kept)")
                if v.get("vs_null") is not None and not pd.isna(v.get("vs_null")):
                    text += (f"; its same-norm random control ({v['null_n']} seeds) shifts {fmt(v['null_shift'])}, "
                             f"one more seed within {fmt_ci(v['null_low'], v['null_high'])}: the construction is "
                             f"{v['vs_null']} it (z {fmt(v['null_z'])})")
        elif v.get("test_low") is not None:
            text += (f"; vs the worse of post and base ({v['reference']}), in the metric's better direction: "
                     f"{fmt_ci(v['test_low'], v['test_high'])} (collapse: wholly below 0)")
        L.append(text + ".")
    L += ["", f"*keeps the score*: **yes** when the 95% interval of the shift vs post, signed in the direction "
          f"post-training moved the metric, lies wholly above −{keep_margin:g}·|post − base|; **no** when wholly "
          "below; *untestable* when post and base do not differ on the metric. *collapses*: **yes** when the "
          "condition is worse than both post and base (the 95% interval of its difference to the worse of the two "
          "lies below 0), **no** when it is better than that one. Groups of seeds: mean over seeds, stderr "
          "√(s²/n + mean se²), t interval.", ""]

    L += ["## Conditions", ""]
    for m in metrics:
        g = summ[summ["metric"] == m]
        L += [f"### `{m}` ({'higher' if direction(m) > 0 else 'lower'} is better)", ""]
        L += md_table(["condition", "n", "value ± se", "shift vs post", "95% CI", "retained fraction"],
                      [[r["kind"], str(r["n"]), fmt_se(r["value"], r["value_stderr"]), fmt(r["shift"]),
                        fmt_ci(r["ci_low"], r["ci_high"]), fmt(r["retained"])] for _, r in g.iterrows()])
        L.append("")
    L += ["Retained fraction = (value − base) / (post − base): 1 behaves like post, 0 like base (– when post and "
          "base do not differ significantly).", ""]

    L += ["## Weights and every condition", "",
          "Means over the replaced matrices. Structure metrics compare each condition's matrices with the base "
          "(probes/svd.py: scale s in σ ≈ sσ_base and its residual, consistency ‖Q_U − Q_V‖/‖Q_U‖, reparameterisation "
          "error); the `post` row is the SVD probe of the pair.", ""]
    beh = [c for c in ("kl_post_condition", "pref_margin_shift_vs_post", "ce_shift_vs_post") if c in rows[0]]
    L += row_table(rows, list(WEIGHT_COLS) + beh, WEIGHT_COLS)
    L += ["", "`kl_post_condition`: KL(post ‖ condition) of next-token distributions on held-out text "
          "(nats/token); `*_shift_vs_post`: paired shift against the post model.", ""]
    if plot is not None:
        L += ["## Plot", "", f"![{plot.stem}]({plot.name})", ""]
    L += ["## Files", "", "- `results.jsonl`: one row per condition (`pandas.read_json(path, lines=True)`)",
          "- `conditions.csv`, `verdicts.csv`, `structure.csv`: the tables above",
          "- `matrices/<condition>.csv`: per-matrix metrics; `matrices/post_null.csv`: the null's per-matrix draws",
          "- `run.json`: the recipe, its hash, versions"]
    return write_pages(folder, L)
