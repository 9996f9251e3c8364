"""The experiment figures read in seconds: one dose is dots per direction kind (no line), an interval on one
degree of freedom is left out and said so, a divergence's interval never goes below 0, axes carry units, and
no text lands on other text (renderer boxes)."""

from __future__ import annotations

import pytest

import rwedit.evals.plots as plots
from figures import capture, drawn_intervals, text_overlaps
from rwedit.evals.report import DIRECT_SHIFTS, headline, long_shifts

KL_RANDOM = (0.01, 0.05, 0.002)  # t over 3 members: mean − t·se < 0, a negative KL bound unless clipped


def rows(alphas):
    """A base row and, per α, one principal edit (own stderr), three random directions (t, 2 df) and a write
    control on two layers (t, 1 df)."""
    out = [{"condition": "base", "kind": "base", "alpha": 0.0, "delta_norm": 0.0, "pref_margin_shift": 0.0,
            "kl_base_edited": 0.0}]
    for a in alphas:
        def row(name, kind, margin, kl, layers=(1,), se=0.4):
            return {"condition": f"{name}_a{a:g}", "kind": kind, "alpha": a, "delta_norm": abs(a), "layers": list(layers),
                    "pref_margin_shift": margin * a, "pref_margin_shift_stderr": se,
                    "kl_base_edited": kl * a, "kl_base_edited_stderr": 0.002}
        out.append(row("principal0", "principal", 2.0, 0.06))
        out += [row(f"random_s{i}", "random", m, kl) for i, (m, kl) in enumerate(zip((-0.3, 0.4, 0.1), KL_RANDOM))]
        out += [row(f"L{l}_write_o", "write", m, 0.015, layers=(l,)) for l, m in ((0, -3.0), (1, 2.0))]
    return out


@pytest.mark.parametrize("alphas", [(2.0,), (1.0, 2.0)])
def test_dose_plots_draw_only_supported_intervals_in_units_without_overlaps(alphas, tmp_path, monkeypatch):
    figs = capture(monkeypatch, plots)
    head = headline(long_shifts(rows(alphas)))
    for metric, unit in (("pref_margin_shift", "(nats)"), ("kl_base_edited", "nats/token")):
        plots.plot_dose_response(head, metric, tmp_path / f"{metric}.png", {"pref_margin_shift": "margin shift (nats)",
                                                                          "kl_base_edited": "KL, nats/token"}[metric])
        fig = figs[-1]
        assert text_overlaps(fig) == [], metric
        axes = [ax for ax in fig.axes]
        assert unit in axes[0].get_ylabel()
        lows = [lo for ax in axes for lo, _ in drawn_intervals(ax)]
        n_drawn = sum(len(drawn_intervals(ax)) for ax in axes)
        notes = " ".join(" ".join(ax.get_xlabel().split()) for ax in axes)
        assert "no interval drawn for write" in notes and "principal" not in notes.split("no interval drawn")[1]
        if len(alphas) == 1:  # dots per kind: one axes, the kinds as ticks, no line through the doses
            (ax,) = axes
            assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["principal", "random", "write"]
            assert all(ln.get_linestyle() == "None" for ln in ax.get_lines() if len(ln.get_xdata()) == 1)
            assert n_drawn == 2  # principal and random; the write control's 1-df interval is left out
        else:  # a panel per control, a line through the doses
            assert len(axes) == 2 and n_drawn == 2 * 2 + 2 * 1  # principal twice (one per panel) + random
        if metric == "kl_base_edited":
            assert min(lows) == pytest.approx(0.0) and all(lo >= 0 for lo in lows)
        else:
            assert min(lows) < 0


def test_the_overview_and_the_forest_plot_carry_units_and_do_not_overlap(tmp_path, monkeypatch):
    figs = capture(monkeypatch, plots)
    head = headline(long_shifts(rows((2.0,))))
    units = [{"unit": f"L{l} principal[{i}]", "effect": 1.0 + l - i, "ci_low": 0.2 + l - i, "ci_high": 1.8 + l - i}
             for l in (0, 1) for i in (0, 1)]
    ver = [{"control": c, "alpha": 2.0, "effect": 1.2, "ci_low": 0.1, "ci_high": 2.3, "answer": "yes", "units": units}
           for c in ("random", "lowvar", "write")]
    label = DIRECT_SHIFTS["pref_margin_shift"]  # as the report passes it
    plots.plot_overview(head, ver, "pref_margin_shift", tmp_path / "o.png", label)
    plots.plot_forest(ver, "pref_margin_shift", tmp_path / "f.png", label)
    overview, forest = figs
    assert text_overlaps(overview) == [] and text_overlaps(forest) == []
    assert overview.axes[0].get_ylabel() == label and "(nats)" in forest.get_supxlabel()
    assert "no interval drawn for write" in " ".join(overview.axes[-1].get_xlabel().split())  # the 2-layer write control: 1 df
    assert len(drawn_intervals(overview.axes[-1])) == 1 and len(drawn_intervals(forest.axes[0])) == 5


def test_the_overlap_check_sees_overlapping_text(monkeypatch):
    """The checker itself: two labels placed on each other are reported."""
    from rwedit.probes.report import pyplot

    fig, ax = pyplot().subplots()
    ax.set_title("a title")
    ax.text(0.5, 1.02, "on the title", transform=ax.transAxes, ha="center")
    fig.texts.append(ax.texts[0])
    assert ("a title", "on the title") in text_overlaps(fig) or ("on the title", "a title") in text_overlaps(fig)


def test_the_svd_conditions_plot_clips_to_what_a_metric_can_take_and_omits_one_df(tmp_path, monkeypatch):
    """An accuracy shift's interval of ±1.4 (two items) is drawn within [−1, 1]; a seeded condition of two
    members (1 df) gets no interval and a note; units on every axis; no overlapping text."""
    import pandas as pd

    import rwedit.evals.svd_report as svd_report

    figs = capture(monkeypatch, svd_report)
    summ = pd.DataFrame([
        {"metric": m, "kind": k, "n": n, "shift": s, "ci_low": s - w, "ci_high": s + w, "df": df}
        for m in ("task/acc", "pref_margin")
        for k, n, s, w, df in (("base", 1, -0.2, 1.4, None), ("sv_replacement", 1, 0.1, 0.3, None),
                               ("disrupt_left_random", 2, -0.5, 9.0, 1))])
    svd_report.plot_conditions(summ, tmp_path / "c.png")
    (fig,) = figs
    assert text_overlaps(fig) == []
    acc, margin = fig.axes
    assert acc.get_ylabel() == "shift vs post (fraction of items)" and margin.get_ylabel() == "shift vs post (nats)"
    lows, highs = zip(*drawn_intervals(acc))
    assert len(lows) == 2 and min(lows) == pytest.approx(-1.0) and max(highs) <= 1.0
    assert max(hi for _, hi in drawn_intervals(margin)) == pytest.approx(1.2)  # unbounded: as computed
    assert all("no interval drawn for disrupt_left_random" in " ".join(ax.get_xlabel().split()) for ax in fig.axes)


def test_training_trajectories_have_whole_step_ticks(tmp_path, monkeypatch):
    """Three snapshots at steps 0, 1, 2: the step axis is ticked at whole steps only (not 0.25, 0.5, …)."""
    import pandas as pd

    import rwedit.probes.report as probe_report
    from figures import whole_ticks
    from rwedit.apps.quickstart.run import plot_trajectories

    figs = capture(monkeypatch, probe_report)
    pd.DataFrame([{"step": s, "layer": l, "role": r, "side": side, "subspace": sub, "k": 4, "rsf": 1 + s * (l + 1) / 4}
                  for s in (0, 1, 2) for l in range(3) for r, side, sub in (("q", "read", "activation"),
                                                                           ("o", "write", "prediction"))]
                 ).to_csv(tmp_path / "t.csv", index=False)
    plot_trajectories({"pretrain": tmp_path / "t.csv"}, tmp_path / "t.png")
    (fig,) = figs
    assert whole_ticks(fig.axes[0].xaxis) and not whole_ticks(fig.axes[0].yaxis)
    assert text_overlaps(fig) == []
