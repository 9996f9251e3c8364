"""Claims replicated over independently seeded organisms (#29.3). ``rwedit quickstart --seeds N`` runs the
quickstart on N organisms (seeds s, s + 1, …, each built and cached apart) into ``OUT/seed_S/`` and pools every
claim: its per-seed numbers, their mean with a t interval over seeds (n − 1 degrees of freedom, n stated) and
the count of seeds on which it holds, as ``findings.csv`` (per-seed rows and pooled rows, for a notebook) and
``report.md``. A one-seed run writes the same ``findings.csv`` (its pooled rows have no interval)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from rwedit.apps.quickstart.report import TABLE_COLUMNS, Finding, markdown_rows
from rwedit.stats import over_members

FINDINGS_CSV = "findings.csv"
#: ``findings.csv``: one row per (scope, seed, claim, quantity); ``scope`` is ``seed`` or ``pooled`` (``seed``
#: empty); ``null``/``specific`` are the table's verdict cells (pooled: the count of each over seeds);
#: ``null_holds``/``specific_holds`` 1/0 per seed (empty for a measurement), the number of seeds on which the
#: claim holds when pooled; ``seeds`` the seeds pooled; ``n``/``how`` what each interval is over; ``numbers`` the
#: table's numbers cell (pooled: each seed's, for a claim that names no value to pool)
FRAME_COLUMNS = ("scope", "seed", "claim", "quantity", "estimate", "low", "high", "n", "how", "null", "specific",
                 "null_holds", "specific_holds", "seeds", "numbers")


def holds(word: str) -> bool | None:
    """Whether a verdict cell says the claim holds: ``yes`` (on every dose of a causal row) is True; ``no…``,
    ``not specific…``, ``inconclusive`` are False; a measurement, ``—`` or ``not measured`` is None."""
    w = str(word).strip()
    if w in ("", "—", "measured", "not measured", "nan"):
        return None
    if w.startswith(("no", "not specific", "inconclusive")):
        return False
    answers = [a.strip() for a in w.split(",")]
    if all(a == "yes" for a in answers):
        return True
    return False if all(a.startswith(("yes", "no", "inconclusive")) for a in answers) else None


def seed_rows(seed: int, found: Sequence[Finding]) -> list[dict]:
    """The per-seed rows of ``findings.csv``: one per claim and named value (a claim without values: one row)."""
    rows = []
    for f in found:
        head = {"scope": "seed", "seed": seed, "claim": f.claim, "null": f.found, "specific": f.specific,
                "null_holds": holds(f.found), "specific_holds": holds(f.specific), "seeds": 1, "numbers": f.numbers}
        for name, iv in f.values or (("", None),):
            rows.append(head | ({"quantity": name, "estimate": iv.estimate, "low": iv.low, "high": iv.high,
                                 "n": iv.n, "how": iv.how} if iv is not None else {"quantity": ""}))
    return rows


def _counts(words: Sequence[str]) -> str:
    n = len(words)
    return ", ".join(f"{w} ({c}/{n})" for w, c in Counter(words).most_common())


def _held(flags: Sequence) -> float | None:
    """The number of seeds on which it holds (None when no seed's cell is a verdict)."""
    flags = [x for x in flags if x is not None and not pd.isna(x)]
    return float(sum(bool(x) for x in flags)) if flags else None


def pooled_rows(seeds: pd.DataFrame) -> list[dict]:
    """The pooled rows: per claim and value, the mean over seeds with a t interval over them, and per claim the
    count of each verdict and of the seeds on which it holds."""
    rows = []
    for claim, g in seeds.groupby("claim", sort=False):
        per_seed = g.drop_duplicates("seed")
        head = {"scope": "pooled", "seed": None, "claim": claim, "null": _counts(list(per_seed["null"])),
                "specific": _counts(list(per_seed["specific"])), "null_holds": _held(per_seed["null_holds"]),
                "specific_holds": _held(per_seed["specific_holds"]), "seeds": len(per_seed),
                "numbers": "; ".join(f"seed {s}: {x}" for s, x in zip(per_seed["seed"], per_seed["numbers"]))}
        for quantity, q in g.groupby("quantity", sort=False):
            est = [float(x) for x in q["estimate"].dropna()]
            if not quantity or not est:
                rows.append(head | {"quantity": quantity})
                continue
            iv = over_members(est)
            rows.append(head | {"quantity": quantity, "estimate": iv.estimate, "low": iv.low, "high": iv.high,
                                "n": len(est), "how": f"t over {len(est)} seeds" if len(est) > 1 else "one seed"})
    return rows


def findings_frame(found: Mapping[int, Sequence[Finding]]) -> pd.DataFrame:
    """Every claim of every seed (``{seed: findings}``) and pooled over them, as :data:`FRAME_COLUMNS`."""
    seeds = pd.DataFrame([r for s, f in found.items() for r in seed_rows(s, f)], columns=list(FRAME_COLUMNS))
    frame = pd.concat([seeds, pd.DataFrame(pooled_rows(seeds), columns=list(FRAME_COLUMNS))], ignore_index=True)
    return frame.astype({"seed": "Int64", "n": "Int64", "seeds": "Int64"})


def write_findings(out: Path, found: Mapping[int, Sequence[Finding]]) -> pd.DataFrame:
    """``OUT/findings.csv`` of :func:`findings_frame`; returns the frame."""
    frame = findings_frame(found)
    frame.to_csv(out / FINDINGS_CSV, index=False)
    return frame


def _numbers(g: pd.DataFrame) -> str:
    """A claim's pooled values (its control levels aside), each mean [t interval over seeds]; each seed's numbers
    for a claim without values."""
    n = int(g["n"].max()) if g["n"].notna().any() else 0
    cells = [f"{r['quantity']} {r['estimate']:.3g}" + (f" [{r['low']:.3g}, {r['high']:.3g}]" if n > 1 else "")
             for _, r in g.iterrows()
             if r["quantity"] and not str(r["quantity"]).startswith("RSF of ") and not pd.isna(r["estimate"])]
    if not cells:  # a claim that names no value to pool: each seed's numbers as they are
        return str(g["numbers"].iloc[0])
    return "; ".join(cells) + (f" (t over {n} seeds)" if n > 1 else " (one seed has a value: no interval)")


def pooled_table(frame: pd.DataFrame) -> list[str]:
    """The findings table pooled over seeds (:data:`~.report.TABLE_COLUMNS`): per claim the count of each verdict
    over seeds, whether it holds on every seed, and its pooled numbers."""
    rows = []
    for claim, g in frame[frame["scope"] == "pooled"].groupby("claim", sort=False):
        r, n = g.iloc[0], int(g["seeds"].iloc[0])
        held = r["null_holds"]
        if held is None or pd.isna(held):
            nulls = frame[(frame["scope"] == "seed") & (frame["claim"] == claim)].drop_duplicates("seed")["null"]
            every = "same on all" if nulls.nunique() == 1 else "varies"
        else:
            every = "yes" if int(held) == n else f"no ({int(held)} of {n})"
        rows.append((claim, r["null"], r["specific"], every, _numbers(g)))
    return markdown_rows(TABLE_COLUMNS, rows)


def per_seed_table(frame: pd.DataFrame) -> list[str]:
    """Claim × seed: each seed's verdict against the null, its specificity and its first value."""
    seeds = frame[frame["scope"] == "seed"]
    order = list(dict.fromkeys(seeds["seed"]))
    rows = []
    for claim, g in seeds.groupby("claim", sort=False):
        cells = []
        for s in order:
            r = g[g["seed"] == s]
            if r.empty:
                cells.append("not run")
                continue
            r = r.iloc[0]
            value = "" if pd.isna(r["estimate"]) else f"; {r['quantity']} {r['estimate']:.3g}"
            spec = {"—": "", "yes": "; specific"}.get(r["specific"], f"; {r['specific']}")
            cells.append(f"{r['null']}{spec}{value}")
        rows.append((claim, *cells))
    return markdown_rows(("claim", *[f"seed {int(s)}" for s in order]), rows)


def write_replicated_report(out: Path, frame: pd.DataFrame, times: Mapping[int, dict]) -> Path:
    """``OUT/report.md`` (and ``.html``) of a run over several seeds: the pooled findings table, the per-seed
    table, each seed's own report, the wall times."""
    from rwedit.pages import write_pages

    seeds = list(times)
    lines = [f"# rwedit quickstart over {len(seeds)} seeds: where alignment writes, and whether it replicates", "",
             f"## What was found (pooled over {len(seeds)} independently seeded organisms: seeds "
             f"{', '.join(map(str, seeds))})", ""]
    lines += pooled_table(frame) + ["", "Verdict cells count the seeds giving each verdict; *holds on all seeds* "
                                    "is *yes* when the claim's test against its null holds on every seed; numbers "
                                    "are the mean over seeds of each seed's estimate with a 95% t interval over "
                                    "seeds (n − 1 degrees of freedom). Every row, per seed and pooled: "
                                    f"`{FINDINGS_CSV}`.", "", "## Per seed", ""]
    lines += per_seed_table(frame) + [""] + [f"- seed {s}: [`seed_{s}/report.md`](seed_{s}/report.md)"
                                             for s in seeds]
    lines += ["", "## Wall time (s)", ""] + [f"- seed {s}: " + " · ".join(f"{k} {v}" for k, v in t.items())
                                              for s, t in times.items()]
    lines.append(f"- all seeds: {round(sum(t.get('total', 0) for t in times.values()), 1)}")
    return write_pages(out, lines)


__all__ = ["FINDINGS_CSV", "FRAME_COLUMNS", "findings_frame", "holds", "per_seed_table", "pooled_rows",
           "pooled_table", "seed_rows", "write_findings", "write_replicated_report"]
