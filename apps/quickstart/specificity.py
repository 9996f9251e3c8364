"""Specificity of the quickstart's RW claims (#30.2): an RSF above the random-subspace null says that an update
is concentrated, not that the *objective* concentrated it. Each claim is set against three controls, paired over
the claim's matrices: the other training regime (the SFT control for alignment, and back), the pretrained weights
themselves (RSF of W_base against the same subspace) and a random gradient-shaped update given that side's
spectrum.

The last is derived, not sampled. An update ΔW = Σ_t δ_t a_tᵀ whose error signals δ_t are independent of its
inputs a_t (second moment C = E[a aᵀ], eigenvalues λ_1 ≥ … ≥ λ_d) has E[ΔWᵀΔW] ∝ C, so its expected share of
‖ΔW‖² in the top-k eigenspace A_k is Σ_{i≤k} λ_i / Σ λ_i, and its RSF that share over k/d (an isotropic
Gaussian ΔW, C ∝ I, gets 1: the random-subspace null). On the write side the error signals are what the
unembedding sends back, δ = W_Uᵀ r for random logit errors r: E[δδᵀ] ∝ W_UᵀW_U, whose top eigenspace is P_k.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import pandas as pd

from rwedit.stats import Interval, over_members, verdict

#: per matrix of the claims: RSF of W_base and of the random gradient-shaped update against the claim's subspace
CONTROLS_CSV = "rsf_controls.csv"
#: the two observed regimes, each the other's control: (its label in a report line, its short label)
REGIMES = {"aligned": ("the aligned model (preference loss)", "aligned"),
           "sft": ("the SFT control (CE on the chosen responses)", "SFT")}
BASE_LABEL = ("the pretrained weights W_base themselves", "W_base")
SPECTRUM_LABEL = ("a random gradient-shaped update Σ δ aᵀ given the spectrum (δ independent of a)",
                  "random gradient")


def claim_rows(df: pd.DataFrame, roles, side: str, subspace: str, k: int) -> pd.DataFrame:
    """The rows of an RSF table for one claim: these roles, this side and subspace, this k."""
    return df[df["role"].astype(str).isin(roles) & (df["side"] == side) & (df["subspace"] == subspace) &
              (df["k"] == k)]


def spectrum_rsf(spectrum, k: int) -> float:
    """Expected RSF against the top-k eigenspace of ``spectrum`` (a :class:`~rwedit.probes.subspaces.Spectrum`)
    of an update whose energy follows it (module docstring): top-k share of the eigenvalues over k/d."""
    return spectrum.spikedness(k)["topk_share"] * spectrum.d / k


def rsf_controls(model: str, calib, ks: Sequence[int], cells) -> pd.DataFrame:
    """Per matrix of each claim cell ``(roles, side, subspace)``: ``base_rsf`` (RSF of W_base itself against the
    subspace) and ``spectrum_rsf`` (:func:`spectrum_rsf` of that side's spectrum), for every k of ``ks`` below
    the side's dimension; the activation statistics are the probe's (same calibration, the run-wide cache)."""
    from rwedit.checkpoints import Checkpoint, TensorReader
    from rwedit.probes.grid import GridContext, GridSettings, prediction_from_pair, rsf_grid_deltas
    from rwedit.probes.pipeline import activation_stats_for
    from rwedit.runtime import using

    base = Checkpoint.open(model)
    layout = base.layout
    with using(progress=False):
        stats = activation_stats_for(base, calib, tuple(r for r in layout.roles() if r != "unembed"))
    ctx = GridContext(stats, prediction_from_pair(base))
    rows = []
    with TensorReader(base) as reader:
        for roles, side, subspace in cells:
            settings = GridSettings(ks=tuple(ks), sides=(side,), subspaces=(subspace,))
            for view in layout.views(roles):
                spec = ctx.prediction if subspace == "prediction" else \
                    ctx.activation_spectrum(view.layer, view.role, settings.centred, 0)
                for r in rsf_grid_deltas({(view.layer, view.role): reader.matrix(view)}, layout, ctx, settings):
                    rows.append({c: r[c] for c in ("layer", "role", "side", "subspace", "k", "d")} |
                                {"base_rsf": r["rsf"], "spectrum_rsf": spectrum_rsf(spec, r["k"])})
    return pd.DataFrame(rows)


class Comparison(NamedTuple):
    """The claim's update against one control: the control's RSF over the matrices (mean, t interval), observed −
    control paired over them (t interval), and whether the update beats it in the claim's direction
    (yes/no/inconclusive)."""

    label: str
    short: str
    control: Interval
    diff: Interval
    answer: str


def compare(observed: pd.Series, controls: dict[tuple[str, str], pd.Series], expect: str | None) -> list[Comparison]:
    """``observed`` (RSF per matrix, indexed by layer and role) against each control (same index), paired over
    the matrices both have. The claim's direction: more concentrated than the control, or less when ``expect``
    is ``isotropic``. A control with fewer than two matrices in common is left out."""
    out = []
    for (label, short), ctrl in controls.items():
        diff = (observed - ctrl).dropna()
        if len(diff) < 2:
            continue
        ci = over_members([float(x) for x in diff])
        answer = verdict(-ci.high, -ci.low) if expect == "isotropic" else ci.verdict()
        out.append(Comparison(label, short, over_members([float(x) for x in ctrl[diff.index]]), ci, answer))
    return out


def specific_word(comps: list[Comparison], expect: str | None) -> str:
    """The findings table's specificity cell: ``yes`` when the update beats every control, else ``not
    specific`` naming the controls it does not beat (``—`` without controls)."""
    if not comps:
        return "—"
    missed = [c.short for c in comps if c.answer != "yes"]
    if not missed:
        return "yes"
    return ("not specific: not below " if expect == "isotropic" else "not specific: no more than ") + \
        ", ".join(missed)


def specific_text(comps: list[Comparison], expect: str | None) -> str:
    """The report line's specificity sentence: the verdict, then each control's RSF and the paired difference."""
    if not comps:
        return ""
    missed = [c.label for c in comps if c.answer != "yes"]
    than = "less concentrated than" if expect == "isotropic" else "more concentrated than"
    word = (f"**yes**: {than} every control" if not missed else
            f"**not specific**: no {than} " + " and ".join(missed))
    parts = [f"{c.label} {c.control.estimate:.3g} (observed − it {c.diff.text()}: {c.answer})" for c in comps]
    return (f" Specific to the objective: {word}. Controls (mean RSF; observed − control, paired t interval over "
            f"{comps[0].diff.n} matrices): " + "; ".join(parts) + ".")


def claim_controls(out: Path, pair: str, roles, side: str, subspace: str,
                   k: int) -> tuple[pd.Series | None, dict[tuple[str, str], pd.Series]]:
    """The per-matrix RSF of ``pair``'s claim (from ``probe_<pair>/rsf.csv``) and its controls: the other regime's
    probe (when present), W_base and the random gradient-shaped update (``rsf_controls.csv``)."""
    def series(path: Path, column: str) -> pd.Series | None:
        if not path.exists():
            return None
        d = claim_rows(pd.read_csv(path), roles, side, subspace, k)
        return d.set_index(["layer", "role"])[column] if len(d) else None

    observed = series(out / f"probe_{pair}" / "rsf.csv", "rsf")
    controls = {}
    for other in REGIMES:
        if other != pair:
            controls[REGIMES[other]] = series(out / f"probe_{other}" / "rsf.csv", "rsf")
    controls[BASE_LABEL] = series(out / CONTROLS_CSV, "base_rsf")
    controls[SPECTRUM_LABEL] = series(out / CONTROLS_CSV, "spectrum_rsf")
    return observed, {k: v for k, v in controls.items() if v is not None}


__all__ = ["BASE_LABEL", "CONTROLS_CSV", "Comparison", "REGIMES", "SPECTRUM_LABEL", "claim_controls", "claim_rows",
           "compare", "rsf_controls", "specific_text", "specific_word", "spectrum_rsf"]
