"""The quickstart's findings and ``report.md``: one line per read/write (RW) and He & Cao (HC) claim,
read from the probe folders, the training-side CSVs and the control experiment's verdicts. The findings
table keeps apart whether a claim differs from its null, whether it is specific to the objective (beats its
controls, :mod:`.specificity`) and whether it holds on every seed (:mod:`.replicate`)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from rwedit.apps.quickstart.specificity import (REGIMES, claim_controls, claim_rows, compare, specific_text,
                                                specific_word)
from rwedit.evals.plots import dose_label
from rwedit.evals.report import caveats, dose_text
from rwedit.probes.svd import hc_claims, null_draws
from rwedit.stats import Interval, interval, over_members

#: the headline k of the RSF grid the claims are read at, and the roles each side's claim is about
CLAIM_K = 4
READ_ROLES_CLAIM = ("q", "k")
WRITE_ROLES_CLAIM = ("o", "down")


def claim_series(df: pd.DataFrame, k: int = CLAIM_K) -> dict[str, pd.DataFrame]:
    """Read-side RSF of q,k vs the activation subspace and write-side RSF of o,down vs the prediction
    subspace, mean over layers and roles, per value of the first column (step or λ)."""
    x = df.columns[0]
    read = claim_rows(df, READ_ROLES_CLAIM, "read", "activation", k)
    write = claim_rows(df, WRITE_ROLES_CLAIM, "write", "prediction", k)
    return {f"read: {'/'.join(READ_ROLES_CLAIM)} vs activation A_{k}": read.groupby(x)["rsf"].agg(["mean", "sem"]),
            f"write: {'/'.join(WRITE_ROLES_CLAIM)} vs prediction P_{k}": write.groupby(x)["rsf"].agg(["mean", "sem"])}


def _rsf_claim(head: pd.DataFrame, roles, side: str, subspace: str, k: int) -> dict | None:
    sel = claim_rows(head, roles, side, subspace, k)
    if sel.empty:
        return None
    return {"rsf": float(sel["rsf_mean"].mean()), "null_mean": float(sel["null_mean"].mean()),
            "null_sd": float(sel["null_sd"].mean()), "z": float(sel["z_mean"].mean()),
            "min": float(sel["rsf_min"].min()), "max": float(sel["rsf_max"].max())}


#: the cells the RW claims are about (roles, side, subspace): what the specificity controls are computed for
CLAIM_CELLS = ((READ_ROLES_CLAIM, "read", "activation"), (WRITE_ROLES_CLAIM, "write", "prediction"))

# --- the decomposition of the observed update (#29.4) ------------------------------------------------------

#: the decomposition's folder in a quickstart run, and each side's roles and subspace name in its rows
DECOMPOSE_DIR = "decompose"
SIDES = {"read": (READ_ROLES_CLAIM, "A"), "write": (WRITE_ROLES_CLAIM, "P")}


@lru_cache(maxsize=4)
def _decomposed(folder: str, stamp: int):
    """The decomposition's analysis, parts table and verdicts (cached per results file: the report reads them
    several times, and the verdicts bootstrap)."""
    from rwedit.evals.decompose_report import Analysis

    a = Analysis(folder)
    return a, a.table(), a.verdicts()


def decomposition(out: Path):
    """``(analysis, parts table, verdicts)`` of the quickstart's finished decomposition, or None."""
    folder = out / DECOMPOSE_DIR
    if not (folder / "report.md").exists():
        return None
    return _decomposed(str(folder), (folder / "results.jsonl").stat().st_mtime_ns)


def _unit_verdict(ver: list[dict], claim: str, k: int, unit: str) -> dict | None:
    v = next((v for v in ver if v["claim"] == claim and v["k"] == k), None)
    return None if v is None else next((u for u in v["units"] if u["unit"] == unit), None)


def _part(table: pd.DataFrame, unit: str, kind: str, k: int | None = None) -> pd.Series | None:
    sel = table[(table["unit"] == unit) & (table["kind"] == kind) & ((table["k"] == k) if k is not None else True)]
    return None if sel.empty else sel.iloc[0]


def _r(row) -> str:
    """A part's retained fraction with its 95% interval and its share of ‖ΔW‖²."""
    return (f"{row['retained']:.2g} {_ci_text(row['retained_ci_low'], row['retained_ci_high'])} with "
            f"{row['share']:.0%} of ‖ΔW‖²")


def _ci_text(low, high) -> str:
    return f"[{low:.2g}, {high:.2g}]"


def _side(unit: str, k: int) -> tuple[str, str]:
    """(the unit in words, its principal subspace) — ``read`` → ("read side (q, k)", "A_4")."""
    if unit not in SIDES:  # a recipe that groups the cells otherwise (parts.units: all, layer)
        return f"unit {unit}", f"the principal {k}-subspace"
    roles, sub = SIDES[unit]
    return f"{unit} side ({', '.join(roles)})", f"{sub}_{k}"


def observed_dose_line(out: Path, k: int = CLAIM_K) -> str | None:
    """The report's opening line: at the observed dose, which part of alignment's update carries its margin
    shift, per side (the principal part's and the complement's retained fractions with their shares of the
    norm, the principal part against norm-matched random parts and its own share, the top-r adapter)."""
    got = decomposition(out)
    if got is None:
        return None
    a, table, ver = got
    k = k if k in a.ks() else a.ks()[0]
    cells = []
    for u in a.units:
        side, sub = _side(u, k)
        full = _part(table, u, "full")
        if not a.testable.get(u):
            cells.append(f"{side}: its full update does not shift {a.primary} detectably ({full['shift']:.3g} ± "
                         f"{full['shift_stderr']:.2g}), so no part can be said to carry it")
            continue
        p, c = _part(table, u, "principal", k), _part(table, u, "complement", k)
        share = _unit_verdict(ver, "principal keeps more than its norm share", k, u)
        rand = _unit_verdict(ver, "principal > norm-matched random", k, u)
        word = {"yes": "more than its share of the norm", "no": "no more than its share of the norm"}.get(
            share["answer"] if share else "", "indistinguishable from its share of the norm")
        cell = f"{side}, full shift {full['shift']:+.3g} nats: {sub}'s part keeps {_r(p)}, {word}"
        if rand is not None:
            cell += (f"; against norm-matched random parts: **{rand['answer']}** "
                     f"({rand['effect']:+.2g} {_ci_text(rand['ci_low'], rand['ci_high'])})")
        if c is not None:
            cell += f"; the complement keeps {_r(c)}"
        cells.append(cell)
    tops = [t for t in a.top_r(table) if t["r"] is not None]
    tail = "; ".join(f"{t['unit']}: top-{t['r']} keeps {t['retained']:.2g} {_ci_text(t['ci_low'], t['ci_high'])} "
                     f"(`{DECOMPOSE_DIR}/adapters/{t['condition']}`)" for t in tops)
    return (f"**At the observed dose, which part of alignment's update carries its margin shift** (retained "
            f"fractions R = (part − base)/(full − base) of {a.primary} with 95% CIs, `{DECOMPOSE_DIR}/report.md`) — "
            + "; ".join(cells) + "." + (f" The update's own top singular directions as an adapter: {tail}." if tail
                                        else ""))


def decomposition_findings(out: Path, k: int = CLAIM_K) -> list["Finding"]:
    """The decomposition's rows of the findings table, per side: the principal part against norm-matched random
    parts (the null: the same norm in random directions), against its own share of ‖ΔW‖², and the smallest top-r
    part that keeps ``verdicts.keep`` of the shift. No row has an objective control (the SFT pair is not
    decomposed): *specific* is ``—``."""
    got = decomposition(out)
    if got is None:
        return []
    a, table, ver = got
    k = k if k in a.ks() else a.ks()[0]
    tops = {t["unit"]: t for t in a.top_r(table)}
    found = []
    for u in a.units:
        side, sub = _side(u, k)
        head = f"Observed dose, {side}: "
        line = f"- **Decomposition at the observed dose, {side}**: "
        more = f"{sub}'s part keeps ≥ {a.margin:g} more than"
        top_what = f"the update's top-r singular directions keep ≥ {a.keep:g} of the shift"
        if not a.testable.get(u):  # the same claims as a testable side (so seeds pool), none answerable here
            full = _part(table, u, "full")
            word, numbers = ("inconclusive: the full update's shift is not detectable",
                             f"full shift {full['shift']:.3g} ± {full['shift_stderr']:.2g}")
            found += [Finding(f"{line}{word} ({numbers})." if i == 0 else "", head + what, word, numbers)
                      for i, what in enumerate((f"{more} norm-matched random parts", f"{more} its share of ‖ΔW‖²",
                                                top_what))]
            continue
        p, c = _part(table, u, "principal", k), _part(table, u, "complement", k)
        r_p = _given(p["retained"], p["retained_ci_low"], p["retained_ci_high"], a.raw[p["condition"]].size,
                     "paired ratio over items (t)")
        for claim, what, name in (("principal > norm-matched random", f"{more} norm-matched random parts",
                                   "R − R(norm-matched random)"),
                                  ("principal keeps more than its norm share", f"{more} its share of ‖ΔW‖²",
                                   "R − share")):
            v = _unit_verdict(ver, claim, k, u)
            if v is None:
                continue
            diff = _given(v["effect"], v["ci_low"], v["ci_high"], r_p.n, "paired over items")
            numbers = f"R {_r(p)}; {name} {v['effect']:.2g} {_ci_text(v['ci_low'], v['ci_high'])}"
            if c is not None and "share" in claim:
                numbers += f"; complement R {_r(c)}"
            found.append(Finding(f"{line}{what}: **{v['answer']}** ({numbers}).", head + what, v["answer"], numbers,
                                 values=(("R", r_p), (name, diff))))
        t = tops.get(u)
        if t is not None:
            what = top_what
            word = f"r = {t['r']}" if t["r"] is not None else f"none of r in {t['ranks']}"
            numbers = (f"R {t['retained']:.2g} {_ci_text(t['ci_low'], t['ci_high'])} with {t['share']:.0%} of "
                       f"‖ΔW‖²; adapter {DECOMPOSE_DIR}/adapters/{t['condition']}" if t["r"] is not None else "")
            values = (("R of the top-r adapter", _given(t["retained"], t["ci_low"], t["ci_high"], r_p.n,
                                                        "paired ratio over items (t)")),) if t["r"] is not None else ()
            found.append(Finding(f"{line}{what}: **{word}**" + (f" ({numbers})." if numbers else "."), head + what,
                                 word, numbers, values=values))
    return found


class Finding(NamedTuple):
    """One claim's finding: its line in ``report.md`` and its row of the findings table: the claim, whether it
    differs from its null (``found``, or what was measured), its numbers, whether it is specific to the
    objective (beats its controls; ``—`` where no control applies) and the named estimates that are pooled
    over seeds (``values``: (name, interval) pairs)."""

    line: str
    claim: str
    found: str
    numbers: str
    specific: str = "—"
    values: tuple[tuple[str, Interval], ...] = ()


def _yardsticks(r: dict) -> str:
    """A dose against ‖W‖_F and (for an α dose) the observed update along v: `` (1.2 ‖W‖_F, 64× observed)``."""
    cells = [f"{r['alpha_rel_w']:.2g} ‖W‖_F"] if r.get("alpha_rel_w") is not None else []
    if r.get("dose_unit", "alpha") == "alpha" and r.get("alpha_rel_observed") is not None:
        cells.append(f"{r['alpha_rel_observed']:.2g}× observed")
    return f" ({', '.join(cells)})" if cells else ""


def _verdict(r) -> dict:
    """A ``verdicts.csv`` row as the control report's verdict dict (missing cells None)."""
    return {k: None if not isinstance(x, str) and pd.isna(x) else x for k, x in r.items()}


def _kind(c: dict) -> str:
    return "concentrated" if c["z"] > 3 else ("below" if c["z"] < -3 else "isotropic")


def _short(c: dict | None, expect: str | None = None) -> tuple[str, str]:
    """(found, numbers) of an RSF claim for the findings table: yes / no and what was found instead (or what
    was found, when nothing is expected), and the RSF against its null."""
    if c is None:
        return "not measured", ""
    kind = _kind(c)
    found = kind if expect is None else ("yes" if kind == expect else f"no: {kind}")
    return found, f"RSF {c['rsf']:.3g} vs null {c['null_mean']:.3g} ± {c['null_sd']:.2g}"


def _rsf_finding(out: Path, pair: str, text: str, claim: str, roles, side: str, subspace: str, k: int,
                 expect: str | None = None) -> Finding:
    """The finding of one RSF claim of ``pair``'s probe, against its null and its controls; ``text`` is its
    report line with ``{w}`` and ``{n}`` for the verdict words and the numbers."""
    c = _rsf_claim(pd.read_csv(out / f"probe_{pair}" / "headline.csv"), roles, side, subspace, k)
    w, n = _describe(c, expect)
    found, numbers = _short(c, expect)
    observed, controls = claim_controls(out, pair, roles, side, subspace, k)
    if observed is None or c is None:
        return Finding(text.format(w=w, n=n), claim, found, numbers)
    comps = compare(observed, controls, expect)
    values = (("RSF", over_members([float(x) for x in observed])),)
    for cmp in comps:
        values += ((f"RSF of {cmp.short}", cmp.control), (f"RSF − {cmp.short}", cmp.diff))
    numbers += "".join(f"; − {cmp.short} {cmp.diff.text()}" for cmp in comps)
    return Finding(text.format(w=w, n=n) + specific_text(comps, expect), claim, found, numbers,
                   specific_word(comps, expect), values)


def _describe(c: dict | None, expect: str | None = None) -> tuple[str, str]:
    """(verdict word, numbers) of an RSF against its random null: above / isotropic / below, and — when
    ``expect`` names what the claim predicts ("concentrated" or "isotropic") — whether this agrees."""
    if c is None:
        return "not measured", ""
    kind = _kind(c)
    word = {"concentrated": "concentrated (above the random null)", "below": "below the random null",
            "isotropic": "consistent with isotropic (within 3 null sd)"}[kind]
    if expect is not None:
        word += " — **as the claim predicts**" if kind == expect else f" — **not what the claim predicts** ({expect})"
    return word, (f"RSF {c['rsf']:.3g} (layers {c['min']:.3g}–{c['max']:.3g}) vs random {c['null_mean']:.3g} ± "
                  f"{c['null_sd']:.2g}, mean z {c['z']:.3g}")


def findings(out: Path, k: int = CLAIM_K) -> list[str]:
    """One line per RW/HC claim, from the probe folders and the experiment's verdicts."""
    return [f.line for f in claim_findings(out, k) if f.line]


#: the findings table's columns: the claim, the three questions a finding answers apart (#30.4: does it differ from
#: the null as claimed, is it specific to the objective, does it hold on every seed), its numbers
TABLE_COLUMNS = ("claim", "vs the null", "specific to the objective", "holds on all seeds", "numbers")


def findings_table(out: Path, k: int = CLAIM_K) -> list[str]:
    """The findings of one run as a markdown table (:data:`TABLE_COLUMNS`), one row per claim: what the
    quickstart prints last and what ``report.md`` opens with (one seed: "holds on all seeds" says so)."""
    return markdown_rows(TABLE_COLUMNS, [(f.claim, f.found, f.specific, "1 seed only", f.numbers)
                                         for f in claim_findings(out, k)])


def markdown_rows(header, rows) -> list[str]:
    """A markdown table with aligned columns (none without rows)."""
    rows = [tuple(header)] + [tuple(r) for r in rows]
    if len(rows) == 1:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows[1:]]


def claim_findings(out: Path, k: int = CLAIM_K) -> list[Finding]:
    """One :class:`Finding` per RW/HC claim, from the probe folders and the experiment's verdicts."""
    found: list[Finding] = decomposition_findings(out, k)
    head_a = out / "probe_aligned" / "headline.csv"
    head_s = out / "probe_sft" / "headline.csv"
    if head_a.exists():
        found.append(_rsf_finding(
            out, "aligned", f"- **RW: alignment concentrates on the read side of q, k** (vs activation subspace "
                            f"A_{k}): {{w}}. {{n}}.", f"RW: alignment concentrates on q, k's read side (A_{k})",
            READ_ROLES_CLAIM, "read", "activation", k, "concentrated"))
        found.append(_rsf_finding(
            out, "aligned", f"- **RW: alignment is isotropic on the write side of o, down** (vs prediction subspace "
                            f"P_{k}): {{w}}. {{n}}.", f"RW: alignment is isotropic on o, down's write side (P_{k})",
            WRITE_ROLES_CLAIM, "write", "prediction", k, "isotropic"))
    if head_s.exists():
        found.append(_rsf_finding(
            out, "sft", f"- **RW: cross-entropy training writes into the prediction subspace** (SFT control, write "
                        f"side of o, down vs P_{k}): {{w}}. {{n}}.",
            f"RW: CE (SFT control) writes into P_{k} (o, down)",
            WRITE_ROLES_CLAIM, "write", "prediction", k, "concentrated"))
        found.append(_rsf_finding(out, "sft", f"- SFT control, read side of q, k vs A_{k}: {{w}}. {{n}}.",
                                  f"SFT control: q, k's read side (A_{k})", READ_ROLES_CLAIM, "read",
                                  "activation", k))
    if head_a.exists() and head_s.exists():
        found += _contrast(out, k)
    traj = out / "training" / "trajectory_pretrain.csv"
    if traj.exists():
        s = claim_series(pd.read_csv(traj), k)
        wkey = next(x for x in s if x.startswith("write"))
        last = s[wkey].iloc[-1]
        found.append(Finding(
            f"- Pretraining trajectory (W_t − W_0 vs the final model's P_{k}): write-side RSF of o, down at the last "
            f"snapshot {last['mean']:.3g} ± {last['sem']:.2g} (sem over layers/roles); see "
            "`training/trajectory.png`.", f"Pretraining trajectory: o, down's write side (P_{k})",
            "measured", f"{last['mean']:.3g} ± {last['sem']:.2g} at the last snapshot",
            values=(("write-side RSF at the last snapshot", interval(last["mean"], last["sem"], how="± sem")),)))
    graded = out / "training" / "graded_rsf.csv"
    if graded.exists():
        parts = []
        series = claim_series(pd.read_csv(graded), k)
        for label, ser in series.items():
            cells = ", ".join(f"λ={lam:g}: {r['mean']:.3g} ± {r['sem']:.2g}" for lam, r in ser.iterrows())
            parts.append(f"{label.split(':')[0]}-side RSF {cells}")
        write = series[next(x for x in series if x.startswith("write"))]["mean"]
        found.append(Finding(
            "- **Graded objective λ·L_pref + (1 − λ)·L_CE** (RW: write-side RSF should fall as λ → 1): "
            + "; ".join(parts) + " (sem over layers/roles); see `training/graded_rsf.png`.",
            "RW graded objective: write-side RSF falls as λ → 1",
            "yes" if write.iloc[-1] < write.iloc[0] else "no: it rises",
            "λ = " + ", ".join(f"{lam:g}" for lam in write.index) + ": " + ", ".join(f"{x:.3g}" for x in write),
            values=tuple((f"write-side RSF at λ={lam:g}", interval(x, None)) for lam, x in write.items())))
    ver = out / "experiment" / "verdicts.csv"
    if ver.exists() and ver.stat().st_size > 1:
        v = pd.read_csv(ver)
        if "match" not in v:  # verdicts written before controls could be matched in KL
            v["match"] = "norm"
        for (control, match), g in v.groupby(["control", "match"], sort=False):
            rows = [_verdict(r) for _, r in g.iterrows()]
            said = [(dose_text(r), "; ".join(caveats(r)), _per_kl(r)) for r in rows]
            parts = [f"{d}: **{r['answer']}** (effect {r['effect']:.3g}, 95% CI [{r['ci_low']:.3g}, {r['ci_high']:.3g}]"
                     + _power(r) + (f"; {c}" if c else "") + k + ")" for r, (d, c, k) in zip(rows, said)]
            metric, matched = g["metric"].iloc[0], "KL(base ‖ edited)" if match == "kl" else "‖ΔW‖"
            found.append(Finding(
                f"- **RW causal test: principal read-pathway edit shifts {metric} more than the {control} control "
                f"at matched {matched}**: " + "; ".join(parts) + ".",
                f"RW causal ({metric}): principal read edit > {control} (matched {matched})",
                ", ".join(str(r["answer"]) for r in rows),
                "; ".join(f"{dose_label(r)}{_yardsticks(r)}: {r['effect']:.3g} [{r['ci_low']:.3g}, {r['ci_high']:.3g}]"
                          + (f" ({c})" if c else "") for r, (d, c, k) in zip(rows, said)),
                values=tuple((f"effect at {dose_label(r)}", _bootstrap(r)) for r in rows)))
    for name in ("aligned", "sft"):
        sv = out / f"svd_{name}" / "svd.csv"
        if sv.exists():  # HC's claims against same-norm random updates of the base (svd_null.csv, when probed)
            d, null = pd.read_csv(sv), sv.with_name("svd_null.csv")
            claims = hc_claims(d.mean(numeric_only=True).to_dict(),
                               null_draws(pd.read_csv(null).to_dict("records")) if null.exists() else {})
            found += [Finding(f"- **HC (base → {name}): {c['claim']}**: **{c['found']}**; {c['numbers']} (means over "
                              f"{len(d)} matrices).", f"HC (base → {name}): {c['claim']}", c["found"], c["numbers"],
                               values=((c["measure"], interval(c["observed"], None)),))
                      for c in claims]
    return found


def contrast_lines(out: Path, k: int = CLAIM_K) -> list[str]:
    """RW's contrast between the two regimes as a report line (none when fewer than two matrices pair up)."""
    return [f.line for f in _contrast(out, k)]


def _contrast(out: Path, k: int) -> list[Finding]:
    """RW's contrast between the two regimes, paired over (layer, role): write-side RSF of o, down vs P_k
    under CE (SFT control) minus under the preference loss (aligned), with a t interval over the matrices."""
    observed, controls = claim_controls(out, "sft", WRITE_ROLES_CLAIM, "write", "prediction", k)
    aligned = {c: v for c, v in controls.items() if c == REGIMES["aligned"]}
    comps = compare(observed, aligned, "concentrated") if observed is not None else []
    if not comps:
        return []
    ci = comps[0].diff
    word = "no: the reverse" if comps[0].answer == "no" else comps[0].answer
    return [Finding(
        f"- **RW contrast: CE writes more into the prediction subspace than the preference loss** (write-side "
        f"RSF of o, down vs P_{k}, SFT control − aligned, paired over {ci.n} layer × role matrices): "
        f"**{word}** ({ci.estimate:.3g}, 95% CI [{ci.low:.3g}, {ci.high:.3g}]).",
        f"RW: CE writes into P_{k} more than the preference loss", word,
        f"SFT − aligned {ci.estimate:.3g} [{ci.low:.3g}, {ci.high:.3g}] ({ci.n} matrices)",
        values=(("SFT − aligned", ci),))]


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
    """``OUT/report.md`` (what was found first: the findings table, then each claim's line; then the organism,
    the models, the experiment's headline, plots, wall times and files) and ``OUT/quickstart.json``; ``found``
    defaults to :func:`findings` and :func:`spectrum_lines`."""
    from rwedit.apps.organism import summary_lines
    from rwedit.evals.report import headline_lines
    from rwedit.pages import write_pages
    from rwedit.probes.directions import card_lines, cards_html

    found = (findings(out) + spectrum_lines(out)) if found is None else found
    opening = observed_dose_line(out)
    lines = ["# rwedit quickstart: where alignment writes, and whether editing there matters", ""]
    lines += [opening, ""] if opening else []
    lines += ["## What was found", ""]
    lines += findings_table(out) + [""] + found
    if (out / "experiment" / "overview.png").exists():
        lines += ["", "![overview](experiment/overview.png)"]
    lines += ["", "RSF = share of ‖ΔW‖²_F inside a k-dim subspace over k/d (1 = isotropic); z = (RSF − random "
              "null mean) / null sd, averaged over layers. Verdicts: *yes* when the whole 95% interval of "
              "the paired effect (principal − control item by item on the same held-out items, signed in the "
              "direction of the edit's objective, pooled over the replicate units) is above 0, *no* below, "
              "*inconclusive* otherwise; each comes with its minimum detectable effect (80% power) and the items "
              "that would detect the observed effect. Columns: *vs the null*: the claim tested against its "
              "null (RSF against random subspaces, a paired verdict against random directions): *yes* when the "
              "data stand where the claim puts them (beyond the null, or within it for an isotropy claim); "
              "*specific to the objective*: an RW update beats each of its controls, paired over matrices (the "
              "other training regime, the pretrained weights W_base against the same subspace, and a random "
              "gradient-shaped update Σ δ aᵀ given the spectrum, whose expected RSF is the top-k share of the "
              "eigenvalues over k/d); *holds on all seeds*: `rwedit quickstart --seeds N` replicates every claim "
              "over N organisms. *Observed dose* rows: the decomposition of alignment's own update ΔW on each side "
              "(read: q, k split by A_k; write: o, down by P_k), each part scored as it is; R = (part − base)/(full − "
              "base) of the margin shift, paired over the held-out items; a part *keeps more* when R's 95% interval "
              "lies above the compared amount by the margin of `decompose.verdicts` (no objective control: the SFT "
              "pair is not decomposed).", ""]
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
                "training/graded_rsf.png", "probe_aligned/rsf_heatmap_read_activation.png", "probe_aligned/rsf_heatmap_write_prediction.png",
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
              "- `decompose/`: the decomposition of the observed update (results.jsonl, report.md, parts.csv, the "
              "parts as adapters)",
              "- `experiment/`: the control experiment (results.jsonl, report.md, adapters)",
              "- `rsf_controls.csv`: per matrix of the RW claims, RSF of W_base and of the random gradient-shaped "
              "update (the specificity controls)",
              "- `findings.csv`: the findings table, a row per claim and value (per seed and pooled)",
              "- `quickstart.json`: models, wall times, organism measurements"]
    (out / "quickstart.json").write_text(json.dumps({"models": models, "seconds": times, "runs": runs,
                                                     "organism": organism},
                                                    indent=2, default=str))
    cards = headline_cards(out / "probe_aligned")
    if cards:
        lines += ["", "## What the headline directions are", "",
                  "The first direction of each kind on the cells the claims rest on (q's read side, o's and down's "
                  "write side), as the calibration texts that drive it (token in brackets) and the tokens it "
                  "promotes and suppresses; `rwedit explain probe_aligned` prints them, `report.html` shows them as "
                  "cards, `probe_aligned/directions.jsonl` holds every direction.", "", "```"]
        lines += [x for c in cards for x in card_lines(c)] + ["```"]
    from rwedit.editor.pipeline import edit_cards_section

    edit_md, edit_html = edit_cards_section(out / "experiment" / "edit")  # the causal edit's v and b
    return write_pages(out, lines + edit_md, extra_html=cards_html(cards) + edit_html)


def headline_cards(probe: Path) -> list[dict]:
    """The direction cards (``directions.jsonl`` rows) of the claims' cells: q's activation and ΔW-input
    directions, o's and down's ΔW-output directions, the prediction direction; the first of each, every layer."""
    path = probe / "directions.jsonl"
    if not path.exists():
        return []
    want = {("activation", "q"), ("delta_right", "q"), ("delta_left", "o"), ("delta_left", "down"),
            ("prediction", "unembed")}
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in rows if (r["kind"], r["role"]) in want and r["index"] == 0]


__all__ = ["CLAIM_CELLS", "CLAIM_K", "DECOMPOSE_DIR", "READ_ROLES_CLAIM", "TABLE_COLUMNS", "WRITE_ROLES_CLAIM",
           "Finding", "claim_findings", "claim_series", "contrast_lines", "decomposition", "decomposition_findings",
           "findings", "findings_table", "markdown_rows", "observed_dose_line", "spectrum_lines",
           "write_quickstart_report"]


def _given(estimate, low, high, n, how: str) -> Interval:
    """An estimate with an interval given by its bounds (a bootstrap's percentiles, a ratio's t interval)."""
    from rwedit.stats import BootInterval

    return BootInterval(float(estimate), None, None, int(n), how, boot_low=float(low), boot_high=float(high))


def _bootstrap(r) -> Interval:
    """A verdict row's effect with its bootstrap percentile interval."""
    n = int(r["n_items"]) if "n_items" in r and not pd.isna(r["n_items"]) else 1
    return _given(r["effect"], r["ci_low"], r["ci_high"], n, "paired bootstrap over items")


def _per_kl(r) -> str:
    """A verdict's effect per unit of KL(base ‖ edited), where both edits move the distribution measurably."""
    if r.get("per_kl_answer") is None:
        return ""
    return (f"; per unit KL: {r['per_kl_answer']} ({r['effect_per_kl']:.3g} [{r['per_kl_ci_low']:.3g}, "
            f"{r['per_kl_ci_high']:.3g}])")


def _power(r) -> str:
    """The power line of a paired verdict row (empty for an unpaired one)."""
    if "n_items" not in r or pd.isna(r.get("n_items")):
        return ""
    test = str(r.get("test", "")).split(":")[0]
    units = int(r["n_units"]) if "n_units" in r and not pd.isna(r.get("n_units")) else 1
    pooled = (f", pooled over {units} replicate units (sd between units {r['unit_sd']:.3g})" if units > 1 else "")
    return (f"; {test} paired test over {int(r['n_items'])} items{pooled}, minimum detectable effect {r['mde']:.3g}, "
            f"{r['items_needed']:.0f} items would detect the observed effect; unpaired: {r['unpaired_answer']}")

