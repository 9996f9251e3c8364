"""The experiment runner: a small grid completes; an interrupted run resumes to exactly the rows of an
uninterrupted one; a changed recipe is refused; the report's numbers follow from the stored rows."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from rwedit.cli import main
from rwedit.evals.direct import DirectScorer
from rwedit.evals.core import run_recipe
from rwedit.evals.experiment import Recipe
from rwedit.stats import quantile
from rwedit.errors import ExperimentError
from rwedit.evals.store import ResultStore
from conftest import WIKITEXT
from tiny_models import save_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory, wiki_tokenizer):
    return save_pair(tmp_path_factory.mktemp("exp-models"), wiki_tokenizer, seed=3, max_position_embeddings=1024,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2)


def recipe_dict(root, alpha=(2.0,)):
    return {
        "name": "tiny-control",
        "edit": {"model": str(root / "base"), "post": str(root / "post"),
                 "calibration": {"data": str(WIKITEXT), "tokens": 512, "seq_len": 64},
                 "edit": {"layers": [1], "role": "q", "v": "principal[0]", "b": "delta"},
                 "alpha": list(alpha), "controls": {"random": 3, "lowvar": 1, "write": "o"}},
        "eval": {"tasks": ["rwedit_hh_preference"], "limit": 2, "batch_size": 4},
        "direct": {"pairs": 4, "texts": 2, "seq_len": 32, "max_len": 128},
        "probe": {"ks": [1, 4], "null_seeds": 2},
        "export": ["principal0_a2"],
    }


def run_experiment(recipe, out, **kw):
    return run_recipe(recipe, out, **kw).folder


def t975(df):
    return quantile(df)


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def finished_run(pair, tmp_path_factory):
    return run_recipe(Recipe.from_dict(recipe_dict(pair)), tmp_path_factory.mktemp("runs") / "a")


@pytest.fixture(scope="module")
def finished(finished_run):
    return finished_run.folder


def test_the_run_returns_its_rows_and_verdicts_as_dataframes(finished_run):
    """What a notebook gets back is what the folder holds: the stored rows, per-item lists kept, and the
    report's tables (verdicts, headline, units) with the numbers of its CSVs."""
    stored = ResultStore(finished_run.folder).rows()
    assert finished_run.rows["condition"].tolist() == [r["condition"] for r in stored]
    assert finished_run.rows["pref_margin_shift_items"][1] == stored[1]["pref_margin_shift_items"]
    assert {"verdicts", "headline", "units"} <= set(finished_run.tables)
    ver = pd.read_csv(finished_run.folder / "verdicts.csv")
    assert len(finished_run.verdicts) == len(ver) > 0
    assert finished_run.verdicts["effect"].tolist() == pytest.approx(ver["effect"].tolist())


def test_small_grid_completes_with_probe_edits_scores_and_report(finished):
    rows = ResultStore(finished).rows()
    names = [r["condition"] for r in rows]
    assert names[0] == "base" and len(names) == 1 + 1 + 3 + 1 + 1 and len(set(names)) == len(names)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"base", "principal", "random", "lowvar", "write"}
    for r in rows[1:]:
        assert r["delta_norm"] == pytest.approx(2.0)  # matched norm
        assert r["pref_margin_shift_stderr"] > 0 and "rwedit_hh_preference/acc" in r
    p = next(r for r in rows if r["kind"] == "principal")
    assert p["rsf_read_activation_k1"] > 1  # v is the top eigenvector: concentrated by construction
    for f in ("report.md", "headline.csv", "verdicts.csv", "probe/rsf.csv", "edit/edits.json",
              "edit/adapters/principal0_a2/README.md"):
        assert (finished / f).exists(), f
    card = json.loads((finished / "edit/adapters/principal0_a2/rwedit.json").read_text())
    assert card["metrics"]["pref_margin_shift"] == pytest.approx(p["pref_margin_shift"])
    sources = json.loads((finished / "run.json").read_text())["sources"]  # the weights the numbers trace to
    assert sources["base"]["fingerprint"] != sources["post"]["fingerprint"] and sources["base"]["commit"] is None


def test_interrupted_run_resumes_to_the_same_rows_and_a_changed_recipe_is_refused(pair, finished, tmp_path,
                                                                                   monkeypatch):
    recipe = Recipe.from_dict(recipe_dict(pair))
    out = tmp_path / "b"
    run_experiment(recipe, out, stop_after=3)
    assert len(ResultStore(out).rows()) == 3 and not (out / "report.md").exists()
    with open(out / "results.jsonl", "a") as f:  # what kill -9 in the middle of a write leaves behind
        f.write('{"condition": "random_s1_a2", "pref_mar')
    with pytest.raises(ExperimentError, match="--resume"):
        run_experiment(recipe, out)
    scored = []
    real = DirectScorer.score
    monkeypatch.setattr(DirectScorer, "score",
                        lambda self, *a: scored.append(self.model.active_adapter) or real(self, *a))
    run_experiment(recipe, out, resume=True)
    want, got = _strip(ResultStore(finished).rows()), _strip(ResultStore(out).rows())
    assert len(scored) == len(want) - 3 and not set(scored) & {r["condition"] for r in got[:3]}
    assert [r["condition"] for r in got] == [r["condition"] for r in want]  # no duplicates, same order
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), (a["condition"], k)
            else:
                assert a[k] == b[k], (a["condition"], k)
    changed = Recipe.from_dict(recipe_dict(pair, alpha=(2.0, 3.0)))
    with pytest.raises(ExperimentError, match=r"different recipe.*edit\.alpha"):
        run_experiment(changed, out, resume=True)


def test_report_numbers_follow_from_the_stored_rows(finished):
    rows = [json.loads(line) for line in (finished / "results.jsonl").read_text().splitlines()]
    base = rows[0]
    m = "pref_margin_shift"
    p = next(r for r in rows if r["kind"] == "principal")
    rand = [r for r in rows if r["kind"] == "random"]
    # principal vs random at matched norm, recomputed here from the rows
    ep, sp = abs(p[m]), p[f"{m}_stderr"]
    er = [abs(r[m]) for r in rand]
    mean_r = sum(er) / len(er)
    sd_r = math.sqrt(sum((x - mean_r) ** 2 for x in er) / (len(er) - 1))
    se = math.sqrt(sp ** 2 + (sd_r / math.sqrt(len(er))) ** 2)
    effect = ep - mean_r
    lo, hi = effect - t975(len(er) - 1) * se, effect + t975(len(er) - 1) * se
    ver = pd.read_csv(finished / "verdicts.csv")
    v = ver[(ver["control"] == "random") & (ver["metric"] == m)].iloc[0]
    assert v["unpaired_effect"] == pytest.approx(effect) and v["unpaired_ci_low"] == pytest.approx(lo)
    assert v["unpaired_ci_high"] == pytest.approx(hi)
    answer = "yes" if lo > 0 else ("no" if hi < 0 else "inconclusive")
    md = (finished / "report.md").read_text()
    assert f"Unpaired (each condition's own stderr): {answer}, {effect:.3g} [{lo:.3g}, {hi:.3g}]" in md
    assert md.index("## Findings") < md.index("![overview](overview.png)") < md.index("### Details")
    assert (finished / "overview.png").exists()
    findings = md[md.index("## Findings"):md.index("![overview]")].strip().splitlines()[2:]  # heading, blank
    assert findings[0].startswith("| claim | verdict |") and len(findings) == 2 + len(ver[ver["metric"] == m])
    assert f"| **{v['answer']}** |" in "\n".join(findings)
    # the paired verdict, from the per-item values every row stores (b: delta, α > 0: a larger margin is
    # in the edit's direction, so the test is signed): effect and power line recomputed here
    P = p[f"{m}_items"]
    C = [r[f"{m}_items"] for r in rand]
    n = len(P)
    assert n == 4 and all(len(c) == n for c in C)
    cbar = [sum(c[i] for c in C) / len(C) for i in range(n)]
    d = [P[i] - cbar[i] for i in range(n)]
    est = sum(d) / n
    assert v["effect"] == pytest.approx(est) and v["n_items"] == n and v["test"].startswith("signed")
    assert v["ci_low"] <= est <= v["ci_high"]
    from statistics import NormalDist, stdev

    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    assert v["mde"] == pytest.approx(z * stdev(d) / math.sqrt(n))
    assert v["items_needed"] == math.ceil((z * stdev(d) / abs(est)) ** 2)
    paired = "yes" if v["ci_low"] > 0 else ("no" if v["ci_high"] < 0 else "inconclusive")
    assert f"**{paired}** (α = 2): principal read-pathway edits shift {m} more than random" in md
    assert "Test: signed: shift in the direction of the edit's objective" in md and "minimum detectable effect" in md
    # headline: the random group's mean shift and t interval; lm-eval shifts are differences to the base row
    head = pd.read_csv(finished / "headline.csv")
    h = head[(head["metric"] == m) & (head["kind"] == "random")].iloc[0]
    shifts = [r[m] for r in rand]
    mu = sum(shifts) / 3
    half = t975(2) * math.sqrt(sum((x - mu) ** 2 for x in shifts) / 2) / math.sqrt(3)
    assert h["shift"] == pytest.approx(mu) and h["ci_high"] == pytest.approx(mu + half)
    assert f"| random | 2 | 3 | 2 | {mu:.3g} | [{mu - half:.3g}, {mu + half:.3g}]" in md
    acc = head[(head["metric"] == "rwedit_hh_preference/acc") & (head["kind"] == "principal")].iloc[0]
    assert acc["shift"] == pytest.approx(p["rwedit_hh_preference/acc"] - base["rwedit_hh_preference/acc"])


def test_report_cli_regenerates_without_recomputing(finished, capsys):
    (finished / "report.md").unlink()
    assert main(["report", str(finished)]) == 0
    assert (finished / "report.md").exists() and "report.md" in capsys.readouterr().out
    assert main(["report", str(finished.parent / "missing")]) == 2


def test_lmeval_metrics_get_paired_verdicts_from_their_per_item_values(finished):
    """lm-eval rows store per-document values (acc per item); a verdict on an lm-eval metric pairs them
    against the base row's: recomputed here from the stored lists."""
    from rwedit.evals.report import compare, long_shifts
    from rwedit.evals.store import ResultStore

    rows = ResultStore(finished).rows()
    m = "rwedit_hh_preference/acc"
    base = rows[0][m + "_items"]
    assert len(base) == 2 and sum(base) / 2 == pytest.approx(rows[0][m])
    v = compare(long_shifts(rows), m, 2.0, "random", rows, json.loads((finished / "run.json").read_text())["config"])
    p = next(r for r in rows if r["kind"] == "principal")[m + "_items"]
    rand = [r[m + "_items"] for r in rows if r["kind"] == "random"]
    want = sum(a - b for a, b in zip(p, base)) / 2 - sum(sum(a - b for a, b in zip(c, base)) / 2 for c in rand) / 3
    assert v["n_items"] == 2 and v["effect"] == pytest.approx(want) and v["test"].startswith("signed")


def test_replicate_units_pool_into_one_verdict_recomputed_from_the_rows(pair, tmp_path):
    """principal[0..1] on layers 0 and 1, each layer its own unit: four units, each against its own layer's
    random controls; the pooled effect is the mean of the unit effects, each recomputed here from the
    stored per-item values, and the report lists the units beside a forest plot."""
    import numpy as np

    d = recipe_dict(pair)
    d["edit"]["edit"].update(layers=[0, 1], v="principal[0..1]", per_layer=True)
    d["edit"]["controls"] = {"random": 2, "lowvar": 0, "write": None}
    d.update(eval=None, probe={"enabled": False}, export=["L1_principal1_a2"])
    d["direct"]["pairs"] = 6
    out = run_experiment(Recipe.from_dict(d), tmp_path / "u")
    rows = ResultStore(out).rows()
    m = "pref_margin_shift_items"
    units = {}
    for layer in (0, 1):
        C = np.array([r[m] for r in rows if r["kind"] == "random" and r["layers"] == [layer]])
        assert C.shape == (2, 6)
        for r in rows:
            if r["kind"] == "principal" and r["layers"] == [layer]:
                units[r["condition"]] = float(np.mean(r[m]) - C.mean())
    assert sorted(units) == ["L0_principal0_a2", "L0_principal1_a2", "L1_principal0_a2", "L1_principal1_a2"]
    v = pd.read_csv(out / "verdicts.csv").iloc[0]
    assert v["n_units"] == 4 and v["effect"] == pytest.approx(np.mean(list(units.values())))
    assert v["ci_low"] <= v["effect"] <= v["ci_high"] and "pooled over 4 replicate units" in v["test"]
    u = pd.read_csv(out / "units.csv")
    assert dict(zip(u["condition"], u["effect"])) == pytest.approx(units)
    assert v["unit_sd"] == pytest.approx(np.std(list(units.values()), ddof=1))
    md = (out / "report.md").read_text()
    assert "replicate units: 4 (directions × layers)" in md and "![forest](forest.png)" in md
    assert (out / "forest.png").stat().st_size > 0
    cards = [json.loads(x) for x in (out / "edit" / "directions.jsonl").read_text().splitlines()]
    assert sorted({c["label"] for c in cards if c["index"] == 0}) == ["L0_principal0", "L1_principal0"]  # each unit's
    assert "edit_v #0 of L1_principal0" in md and "of L0_principal1" not in md


def test_export_results_writes_a_dataset_that_load_dataset_reads_back(finished, tmp_path, capsys):
    """A run's tables as a dataset folder: datasets.load_dataset reads each configuration back with the
    same rows (per-item lists kept); the card lists them; an offline push fails with the folder complete."""
    from datasets import load_dataset
    from huggingface_hub import DatasetCard

    out = tmp_path / "ds"
    assert main(["export-results", str(finished), "--out", str(out)]) == 0
    rows = ResultStore(finished).rows()

    def load(name):
        return load_dataset(str(out), name, split="train", cache_dir=str(tmp_path / "hf"))

    ds = load("rows")
    assert ds["condition"] == [r["condition"] for r in rows] == ResultStore(finished).frame()["condition"].tolist()
    assert ds["pref_margin_shift"] == pytest.approx([r["pref_margin_shift"] for r in rows])
    assert ds["pref_margin_shift_items"][1] == pytest.approx(rows[1]["pref_margin_shift_items"])
    ver = pd.read_csv(finished / "verdicts.csv")
    assert load("verdicts")["effect"] == pytest.approx(ver["effect"].tolist())
    grid = pd.read_csv(finished / "probe" / "rsf.csv")
    assert load("probe_rsf_grid")["rsf"] == pytest.approx(grid["rsf"].tolist(), nan_ok=True)
    card = DatasetCard.load(out / "README.md")
    names = {c["config_name"] for c in card.data.configs}
    assert {"rows", "verdicts", "headline", "units", "probe_rsf_grid"} <= names
    assert "principal0_a2" in card.text and "rwedit" in card.data.tags
    assert main(["export-results", str(finished), "--out", str(out), "--overwrite", "--push-to-hub", "me/results"]) == 2
    assert "the local folder" in capsys.readouterr().err and (out / "data" / "rows.jsonl").exists()


def test_export_of_an_unfinished_run_is_refused_or_marked_partial(finished, tmp_path, capsys):
    """A run killed before its last row: export-results names the missing condition and refuses; with
    --allow-partial the card's first line and a missing_conditions column on every row say what is missing."""
    import shutil

    from huggingface_hub import DatasetCard

    run = tmp_path / "killed"
    shutil.copytree(finished, run)
    lines = (run / "results.jsonl").read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])["condition"]
    (run / "results.jsonl").write_text("".join(lines[:-1]))
    assert main(["export-results", str(run), "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert "not finished" in err and last in err and "--allow-partial" in err and not (tmp_path / "ds").exists()
    assert main(["export-results", str(run), "--out", str(tmp_path / "ds"), "--allow-partial"]) == 0
    card = DatasetCard.load(tmp_path / "ds" / "README.md")
    first = card.text.lstrip().splitlines()[0]
    assert first.startswith("**Partial results") and last in first
    rows = [json.loads(line) for line in (tmp_path / "ds" / "data" / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == len(lines) - 1 and all(r["missing_conditions"] == [last] for r in rows)
    assert main(["export-results", str(finished), "--out", str(tmp_path / "whole")]) == 0  # a finished run: as before
    assert "Partial" not in (tmp_path / "whole" / "README.md").read_text()


def test_the_experiment_report_opens_in_a_browser_with_the_findings_first(finished, tmp_path):
    from browser import open_page

    met = open_page(finished / "report.html", tmp_path)
    assert met["console_errors"] == [] and met["broken"] == [] and met["external"] == []
    assert met["images"] >= 2 and met["first_table_top"] < 800, met  # the findings table in the first screen
    assert "<h2>Findings</h2>" in (finished / "report.html").read_text()


def test_every_edits_v_and_b_has_cards_and_the_report_shows_the_edits(finished):
    """edit/directions.jsonl: v and b of the edit and of each control once (α aside), numbered in build order;
    the principal v (q reads the residual stream) has contexts, a share and the lens; the write control's b
    (the top prediction direction, written by o into the residual stream) the lens; the report shows the
    edit's own cards."""
    rows = [json.loads(x) for x in (finished / "edit" / "directions.jsonl").read_text().splitlines()]
    labels = ["principal0", "random_s1", "random_s2", "random_s3", "lowvar0", "write_o"]
    assert [(r["label"], r["kind"]) for r in rows] == [(n, k) for n in labels for k in ("edit_v", "edit_b")]
    assert [r["index"] for r in rows] == [i for i in range(len(labels)) for _ in range(2)]
    v, b = rows[0], rows[1]
    assert v["layer"] == 1 and v["role"] == "q" and v["top_contexts"] and 0 < v["share"] < 1 and v["promoted"]
    assert v["value"] > 0 and not b["promoted"] and not b["top_contexts"]  # b in q's output space: no lens
    wv, wb = rows[-2], rows[-1]
    assert wb["role"] == "o" and wb["promoted"] and wv["top_contexts"] and not wv["promoted"]
    md = (finished / "report.md").read_text()
    assert "## What the edit's directions are" in md and "edit_v #0 of principal0" in md and "of random_s1" not in md
    assert md.count('class="card"') == 0 and (finished / "report.html").read_text().count('class="card"') == 2


def test_the_exported_dataset_carries_the_reports_and_they_open_in_a_browser(finished, tmp_path):
    """export-results copies report.html (self-contained), report.md and the figures it shows, and the probe's
    summary, under reports/ as laid out in the run; the card names them; the copy opens in Chromium intact."""
    import re

    from browser import open_page

    out = tmp_path / "ds"
    assert main(["export-results", str(finished), "--out", str(out)]) == 0
    rep = out / "reports"
    assert (rep / "report.html").read_bytes() == (finished / "report.html").read_bytes()
    assert (rep / "probe" / "summary.html").exists() and (rep / "probe" / "summary.md").exists()
    figures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", (rep / "report.md").read_text())
    assert figures and all((rep / f).read_bytes() == (finished / f).read_bytes() for f in figures)
    assert "`reports/report.html`" in (out / "README.md").read_text()
    met = open_page(rep / "report.html", tmp_path)
    assert met["console_errors"] == [] and met["broken"] == [] and met["images"] >= 2 and met["external"] == []


def test_report_open_opens_the_page_where_there_is_a_display_and_says_so_where_not(finished, capsys, monkeypatch):
    import webbrowser

    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["report", str(finished), "--open"]) == 0
    said = capsys.readouterr().out
    assert "no display here, nothing opened" in said and str(finished / "report.html") in said and not opened
    monkeypatch.setenv("DISPLAY", ":0")
    assert main(["report", str(finished), "--open"]) == 0
    assert opened == [(finished / "report.html").resolve().as_uri()] and "opened" in capsys.readouterr().out


def test_lm_evals_own_results_json_is_kept_beside_each_row(finished):
    """OUT/raw/lmeval/<condition>.json: lm-eval's own output (per-task config, versions, samples) for every
    condition, agreeing with the flat row."""
    rows = ResultStore(finished).rows()
    for r in rows:
        raw = json.loads((finished / "raw" / "lmeval" / f"{r['condition']}.json").read_text())
        assert {"results", "configs", "versions", "samples"} <= set(raw)
        assert raw["configs"]["rwedit_hh_preference"]["task"] == "rwedit_hh_preference"
        assert raw["results"]["rwedit_hh_preference"]["acc,none"] == pytest.approx(r["rwedit_hh_preference/acc"])
        assert len(raw["samples"]["rwedit_hh_preference"]) == len(r["rwedit_hh_preference/acc_items"])


def _plain_kl(ref, model, ids):
    """KL(ref ‖ model) per token, mean over positions and sequences, in plain torch (float64 softmax)."""
    import torch

    with torch.no_grad():
        lp = torch.log_softmax(ref(input_ids=ids).logits[:, :-1].double(), -1)
        lq = torch.log_softmax(model(input_ids=ids).logits[:, :-1].double(), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def test_kl_matched_controls_reach_the_edits_kl_checked_by_an_independent_computation(pair, wiki_tokenizer, tmp_path):
    """kl_matched scales each control's α until its KL(base ‖ edited) on the search text equals the principal
    edit's within the tolerance: recomputed here by writing α b vᵀ into a plain copy of the model's weights and
    taking the KL in float64; the norm-matched controls' KLs differ from the target by far more."""
    import torch
    from transformers import AutoModelForCausalLM

    from rwedit.data import pack_tokens, read_texts
    from rwedit.editor.adapters import attach_conditions
    from rwedit.editor.edits import build_conditions
    from rwedit.editor.pipeline import edit_stats
    from rwedit.evals.direct import HeldoutText
    from rwedit.evals.experiment import EffectSettings, kl_matched
    from rwedit.editor.spec import EditSpec

    spec = EditSpec.from_dict({**recipe_dict(pair)["edit"], "controls": {"random": 2, "lowvar": 1, "write": "o"}})
    plain = lambda: AutoModelForCausalLM.from_pretrained(pair / "base").eval()  # noqa: E731
    model = plain()
    conds = build_conditions(spec, model, wiki_tokenizer, edit_stats(spec, model, wiki_tokenizer))
    peft_model = attach_conditions(model, conds)
    ids = pack_tokens(wiki_tokenizer, read_texts(WIKITEXT), 32, 3 * 32)
    settings = EffectSettings(match="kl", tol=0.02)
    matched = kl_matched(peft_model, conds, HeldoutText(peft_model, ids, 4), settings)
    ref = plain()

    def kl_of(cond):
        edited = plain()
        with torch.no_grad():
            for e in cond.edits:
                w = edited.model.layers[e.layer].self_attn.get_submodule(f"{e.role}_proj").weight
                w += (e.alpha * torch.outer(e.b, e.v)).float()
        return _plain_kl(ref, edited, ids)

    target = kl_of(next(c for c in conds if c.kind == "principal"))
    assert [m.name for m in matched] == [c.name + "_kl" for c in conds if c.control] and len(matched) == 4
    for m, c in zip(matched, [c for c in conds if c.control]):
        got = kl_of(m)
        assert m.kl_match["converged"] and m.kl_match["target"] == pytest.approx(target, rel=1e-4)
        assert abs(got / target - 1) <= settings.tol + 1e-4, (m.name, got, target)
        assert m.kl_match["found"] == pytest.approx(got, rel=1e-4)
        assert m.alpha == pytest.approx(c.alpha * m.kl_match["scale"]) and m.match == "kl" and m.dose == c.dose
        assert m.kl_match["steps"] <= settings.max_steps
    assert max(abs(kl_of(c) / target - 1) for c in conds if c.control) > 10 * settings.tol  # matching was needed


def test_kl_matched_and_relative_doses_run_end_to_end_with_their_flags(pair, tmp_path):
    """effect.match: both with a dose at the observed update and one far beyond it: results.jsonl holds every
    KL-matched control's found α and KL, every row its dose relative to ‖W‖_F and to the observed update and
    broken_model (CE up by more than effect.broken_ce), and the report names the broken conditions and gives
    each verdict per unit KL and its dose."""
    d = recipe_dict(pair, alpha=(40.0,))
    d["edit"].update(alpha_rel_observed=[1.0], controls={"random": 2, "lowvar": 1, "write": "o"})
    d.update(eval=None, probe={"enabled": False}, export=["random_s1_a40_kl"],
             effect={"match": "both", "texts": 2, "broken_ce": 0.1})
    out = run_experiment(Recipe.from_dict(d), tmp_path / "kl")
    rows = ResultStore(out).rows()
    by = {r["condition"]: r for r in rows}
    assert set(by) == {"base"} | set(Recipe.from_dict(d).edit.condition_names("both"))
    kl_rows = [r for r in rows if r.get("match") == "kl"]
    assert len(kl_rows) == 2 * 4 and all(r["kl_match_converged"] for r in kl_rows)
    for r in kl_rows:
        norm = by[r["condition"][:-3]]
        assert r["alpha"] == pytest.approx(r["kl_match_alpha"]) == pytest.approx(norm["alpha"] * r["kl_match_scale"])
        assert abs(r["kl_match_found"] / r["kl_match_target"] - 1) <= 0.02
    from safetensors.torch import load_file

    sd = load_file(pair / "base" / "model.safetensors")
    for r in rows[1:]:
        assert r["broken_model"] == (r["ce_shift"] > 0.1)
        w = float(sd[f"model.layers.1.self_attn.{r['role']}_proj.weight"].double().norm())
        assert r["alpha_rel_w"] == pytest.approx(r["delta_norm"] / w, rel=1e-6)
    p1, p40 = by["principal0_r1"], by["principal0_a40"]
    assert p1["alpha_rel_observed"] == pytest.approx(1.0) and p1["dose_unit"] == "observed"
    assert p40["alpha_rel_observed"] == pytest.approx(40.0 / p1["alpha"])
    assert p40["broken_model"] and not p1["broken_model"]  # far beyond the weight's norm, the model breaks
    ver = pd.read_csv(out / "verdicts.csv")
    assert set(ver["match"]) == {"norm", "kl"} and set(ver["dose_unit"]) == {"alpha", "observed"}
    v40 = ver[(ver["dose_unit"] == "alpha") & (ver["control"] == "random") & (ver["match"] == "norm")].iloc[0]
    assert v40["broken_model"] and "principal0_a40" in v40["broken_conditions"]
    md = (out / "report.md").read_text()
    assert "**Broken model**" in md and "`principal0_a40`" in md and "broken model: principal0_a40" in md
    assert "per unit KL" in md and "× ‖ΔW_obs v‖" in md and "## Effect and dose of each condition" in md
    card = json.loads((out / "edit/adapters/random_s1_a40_kl/rwedit.json").read_text())
    assert card["metrics"]["kl_match_found"] == pytest.approx(by["random_s1_a40_kl"]["kl_match_found"])
