"""HC's SVD-structure experiment: the weight constructions against independent derivations, exact
write/restore through every storage layout, the runner (resume, refusal of a changed recipe, base row =
the base checkpoint) and the recipe as shipped."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from rwedit.architectures import get_weight, model_layout, set_weight
from rwedit.cli import main
from rwedit.editor.interventions import WeightSnapshot
from rwedit.editor.svd_edits import condition_matrix, haar_orthogonal
from rwedit.evals import svd_experiment as sx
from rwedit.evals.core import load_recipe, run_recipe, stored_kind
from rwedit.errors import ExperimentError
from rwedit.evals.store import ResultStore
from rwedit.evals.svd_experiment import SVDRecipe
from tiny_models import tiny_model

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "svd-structure.yaml"
D = torch.float64


def _orth(n, seed):
    return haar_orthogonal(n, seed)


def _planted(d_out, d_in, seed=0, scale=1.3, q_left=None, q_right=None):
    """W_base = U Σ Vᵀ and W_post = U Q_L (sΣ) (V Q_R)ᵀ (float64), distinct σ; Q_L = Q_R = Q by default."""
    m = min(d_out, d_in)
    U = _orth(d_out, seed)[:, :m]
    V = _orth(d_in, seed + 1)[:, :m]
    sig = torch.linspace(3.0, 0.5, m, dtype=D)
    Q = _orth(m, seed + 2)
    QL = Q if q_left is None else q_left
    QR = Q if q_right is None else q_right
    return (U * sig) @ V.T, ((U @ QL) * (scale * sig)) @ (V @ QR).T, (U, sig, V, Q)


# ----------------------------------------------------------------------------- constructions


@pytest.mark.parametrize("shape", [(12, 12), (20, 8), (8, 20)])
def test_sv_replacement_is_post_vectors_with_scaled_base_values(shape):
    g = torch.Generator().manual_seed(0)
    Wb = torch.randn(*shape, generator=g, dtype=D)
    Wp = Wb + 0.3 * torch.randn(*shape, generator=g, dtype=D)
    W = condition_matrix("sv_replacement", Wb, Wp, fit_r=64)
    # independent: the definition written out
    sb = torch.linalg.svdvals(Wb)
    Up, sp, Vph = torch.linalg.svd(Wp, full_matrices=False)
    s = float(sb @ sp) / float(sb @ sb)
    assert torch.allclose(Up.T @ W @ Vph.T, torch.diag(s * sb), atol=1e-10)  # post vectors, values s·σ_base
    # same singular values on both sides (W_base a rotated W_post): s = 1 and W_post comes back
    O1, O2 = _orth(shape[0], 5), _orth(shape[1], 6)
    assert torch.allclose(condition_matrix("sv_replacement", O1 @ Wp @ O2, Wp), Wp, atol=1e-10)


@pytest.mark.parametrize("shape", [(10, 10), (16, 6), (6, 16)])
def test_reparam_and_swap_are_exact_on_a_planted_rotation(shape):
    Wb, Wp, (U, sig, V, Q) = _planted(*shape)
    for kind in ("reparam", "swap", "post"):
        assert torch.allclose(condition_matrix(kind, Wb, Wp), Wp, atol=1e-10), kind
    # a pair whose two sides turned differently: swap puts the right rotation on the left, by definition
    m = min(shape)
    QL, QR = _orth(m, 11), _orth(m, 12)
    Wb, Wp, _ = _planted(*shape, q_left=QL, q_right=QR)
    want = ((U @ QR) * (1.3 * sig)) @ (V @ QR).T
    assert torch.allclose(condition_matrix("swap", Wb, Wp), want, atol=1e-10)
    assert (condition_matrix("swap", Wb, Wp) - Wp).norm() / Wp.norm() > 0.1
    # reparam with two different rotations is no longer exact, and its error is what the probe reports
    from rwedit.probes.svd import svd_structure

    W = condition_matrix("reparam", Wb, Wp)
    err = float((W - Wp).norm() / Wp.norm())
    assert err > 0.1 and err == pytest.approx(svd_structure(Wb, Wp, r="full").reparam_error, rel=1e-9)


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_disrupted_matrix_keeps_post_values_and_the_other_side_only(side):
    g = torch.Generator().manual_seed(1)
    Wb = torch.randn(14, 9, generator=g, dtype=D)
    Wp = Wb + 0.2 * torch.randn(14, 9, generator=g, dtype=D)
    W = condition_matrix(f"disrupt_{side}_random", Wb, Wp, seed=7)
    Up, sp, Vph = torch.linalg.svd(Wp, full_matrices=False)
    Ud, sd, Vdh = torch.linalg.svd(W, full_matrices=False)
    assert torch.allclose(sd, sp, atol=1e-10)  # same singular values
    keep, changed = ((Vph @ Vdh.T), (Up.T @ Ud)) if side == "left" else ((Up.T @ Ud), (Vph @ Vdh.T))
    assert torch.allclose(keep.abs(), torch.eye(9, dtype=D), atol=1e-8)  # the kept side: post's vectors (± sign)
    assert (changed.abs() - torch.eye(9, dtype=D)).norm() > 1.0  # the disrupted side: different vectors
    # seeded: the same seed gives the same matrix, another seed another one
    assert torch.equal(W, condition_matrix(f"disrupt_{side}_random", Wb, Wp, seed=7))
    assert not torch.allclose(W, condition_matrix(f"disrupt_{side}_random", Wb, Wp, seed=8))
    with pytest.raises(ValueError, match="seed"):
        condition_matrix(f"disrupt_{side}_random", Wb, Wp)


def test_top_r_replaces_the_top_triplets_and_keeps_the_post_residual():
    g = torch.Generator().manual_seed(2)
    Wb = torch.randn(16, 12, generator=g, dtype=D)
    Wp = Wb + 0.3 * torch.randn(16, 12, generator=g, dtype=D)
    r = 4
    assert torch.allclose(condition_matrix("post", Wb, Wp, rank=r), Wp, atol=1e-12)
    W = condition_matrix("sv_replacement", Wb, Wp, rank=r, fit_r=r)
    sb, sp = torch.linalg.svdvals(Wb), torch.linalg.svdvals(Wp)
    s = float(sb[:r] @ sp[:r]) / float(sb[:r] @ sb[:r])
    want = torch.sort(torch.cat([s * sb[:r], sp[r:]]), descending=True).values
    assert torch.allclose(torch.linalg.svdvals(W), want, atol=1e-10)
    Up, _, Vph = torch.linalg.svd(Wp, full_matrices=False)
    assert torch.allclose(Up[:, r:].T @ (W - Wp), torch.zeros(12 - r, 12, dtype=D), atol=1e-10)  # tail untouched
    # reparam on a pair rotated only inside its top-r block is exact in top-r mode
    m = 12
    Q = torch.eye(m, dtype=D)
    Q[:r, :r] = _orth(r, 9)
    Wb, Wp, _ = _planted(16, 12, q_left=Q, q_right=Q)
    assert torch.allclose(condition_matrix("reparam", Wb, Wp, rank=r), Wp, atol=1e-10)
    assert torch.allclose(condition_matrix("swap", Wb, Wp, rank=r), Wp, atol=1e-10)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "phi3"])  # plain, Conv1D + fused QKV, fused QKV + gate_up
def test_set_weight_writes_through_every_layout_and_the_snapshot_restores_bit_exactly(model_type):
    model = tiny_model(model_type)
    before = copy.deepcopy(model.state_dict())
    layout = model_layout(model)
    targets = [(layer, r) for layer in range(layout.n_layers) for r in layout.roles() if r != "unembed"]
    g = torch.Generator().manual_seed(0)
    with WeightSnapshot(model, targets) as snap:
        new = {}
        for layer, role in targets:
            assert torch.equal(snap.original(layer, role), get_weight(model, layer, role))
            new[(layer, role)] = torch.randn(layout.view(layer, role).shape, generator=g)
            set_weight(model, layer, role, new[(layer, role)])
        for key, w in new.items():  # every role reads back what was written (no fused neighbour clobbered)
            assert torch.equal(get_weight(model, *key), w), key
        assert not torch.equal(model.state_dict()[layout.view(0, "q").param], before[layout.view(0, "q").param])
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(ValueError, match="shape"):
        set_weight(model, 0, "q", torch.zeros(3, 3))


# ----------------------------------------------------------------------------- the runner


@pytest.fixture(scope="module")
def pair(tmp_path_factory, wiki_tokenizer):
    root = tmp_path_factory.mktemp("svd-models")
    kw = dict(vocab_size=len(wiki_tokenizer), max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
              eos_token_id=2)
    base, post = tiny_model("llama", **kw), tiny_model("llama", **kw)
    post.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in post.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    for name, m in (("base", base), ("post", post)):
        m.save_pretrained(root / name)
        wiki_tokenizer.save_pretrained(root / name)
    return root


def small_recipe(root, seeds=(1,), kinds=("sv_replacement", "disrupt_left_random")) -> dict:
    """The shipped recipe with the tiny pair, two of its condition kinds (every kind's construction is
    tested above; the runner treats them alike) and small scoring budgets; nothing else changed."""
    d = yaml.safe_load(RECIPE.read_text())
    d.update(model=str(root / "base"), post=str(root / "post"), name="tiny-svd")
    d["conditions"]["seeds"] = list(seeds)
    d["conditions"]["kinds"] = list(kinds)
    d["eval"] = {"tasks": ["rwedit_hh_preference"], "limit": 2, "batch_size": 4}
    d["direct"] = {"pairs": 4, "texts": 2, "seq_len": 32, "max_len": 128}
    return d


def base_row_ok(r) -> bool:
    """The base row's structure metrics are those of W_base against itself; its distance to post is real."""
    return (r["scale"], r["consistency"], r["rel_change_vs_base"]) == (1.0, 0.0, 0.0) and r["rel_change_vs_post"] > 0


def run_svd_experiment(recipe, out, **kw):
    return run_recipe(recipe, out, **kw).folder


def is_svd_run(folder) -> bool:
    return stored_kind(folder).name == "svd-structure"


def recipe_kind(path) -> str:
    return load_recipe(path)[0].name


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def finished(pair, tmp_path_factory):
    """An interrupted run (3 conditions, then a line cut off by a crash) finished with `rwedit run --resume`."""
    tmp = tmp_path_factory.mktemp("svd-runs")
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(small_recipe(pair)))
    out = tmp / "run"
    run_svd_experiment(path, out, stop_after=2)
    first = ResultStore(out).rows()
    assert [r["condition"] for r in first] == ["post", "sv_replacement"]
    assert not (out / "report.md").exists()
    with open(out / "results.jsonl", "a") as f:  # what kill -9 in the middle of a write leaves behind
        f.write('{"condition": "disrupt_left_random_s1", "pref_mar')
    with pytest.raises(ExperimentError, match="--resume"):
        run_svd_experiment(path, out)
    assert main(["run", str(path), "--out", str(out), "--resume", "--quiet"]) == 0
    return out, first


def test_runner_completes_resumes_and_stores_probe_next_to_behaviour(finished, pair):
    out, first = finished
    rows = ResultStore(out).rows()
    names = [r["condition"] for r in rows]
    assert names == ["post", "sv_replacement", "disrupt_left_random_s1", "base"]
    assert _strip(rows[:2]) == _strip(first)  # resume kept the stored rows and scored only the rest
    by = {r["condition"]: r for r in rows}
    for r in rows:
        assert r["n_matrices"] == 2 * 7 and "rwedit_hh_preference/acc" in r and r["pref_margin_stderr"] > 0
    post = by["post"]
    assert post["pref_margin_shift_vs_post"] == 0 and post["kl_post_condition"] == pytest.approx(0, abs=1e-6)
    assert post["rel_change_vs_post"] == 0
    # the post row's structure metrics are the SVD probe of the pair (independent code path: run_probe)
    from rwedit.probes.pipeline import ProbeRequest, SvdSettings, run_probe

    probe = run_probe(ProbeRequest(str(pair / "base"), str(pair / "post"), grid=None, svd=SvdSettings(r="full"))).svd
    for k in ("scale", "consistency", "reparam_error"):
        assert post[k] == pytest.approx(probe[k].mean(), rel=1e-6), k
    sv = by["sv_replacement"]
    assert sv["scale_residual"] < 1e-5  # σ_cond = s σ_base exactly (full rank, s over all 32 values)
    assert sv["kl_post_condition"] > 0 and sv["rel_change_vs_post"] > 0
    dis = by["disrupt_left_random_s1"]
    assert dis["consistency"] > 0.5 > post["consistency"]  # rotations no longer shared
    assert dis["scale"] == pytest.approx(post["scale"], rel=1e-4)  # σ' kept
    assert base_row_ok(by["base"])
    assert len(pd.read_csv(out / "matrices" / "disrupt_left_random_s1.csv")) == 14


def test_the_base_row_is_the_base_checkpoint_and_conditions_are_undone_exactly(finished, pair):
    from rwedit.checkpoints import Checkpoint
    from rwedit.evals.direct import DirectScorer, DirectSettings
    from rwedit.models import load_model_and_tokenizer

    out, _ = finished
    by = {r["condition"]: r for r in ResultStore(out).rows()}
    settings = DirectSettings(**{k: v for k, v in small_recipe(pair)["direct"].items()})
    base_model, tok = load_model_and_tokenizer(Checkpoint.open(pair / "base"))
    ref = DirectScorer(base_model, tok, settings).score(None)
    assert by["base"]["pref_margin"] == pytest.approx(ref["pref_margin"], rel=1e-5)
    assert by["base"]["ce"] == pytest.approx(ref["ce"], rel=1e-5)
    # apply + restore on the post model leaves it bit-identical and scoring exactly as before
    post_ckpt = Checkpoint.open(pair / "post")
    model, tok = load_model_and_tokenizer(post_ckpt)
    before = copy.deepcopy(model.state_dict())
    scorer = DirectScorer(model, tok, settings)
    s0 = scorer.score(None)
    recipe = SVDRecipe.from_dict(small_recipe(pair))
    snap = WeightSnapshot(model, sx.targets(recipe, post_ckpt.layout))
    from rwedit.checkpoints import TensorReader

    cond = sx.SVDCondition(recipe, "disrupt_left_random", 1, TensorReader(Checkpoint.open(pair / "base")), snap,
                           with_probe=False)
    with cond.intervention.applied(model):
        assert scorer.score(None)["pref_margin"] == pytest.approx(by["disrupt_left_random_s1"]["pref_margin"], rel=1e-5)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert scorer.score(None) == s0


def test_report_verdicts_follow_from_the_rows_and_a_changed_recipe_is_refused(finished, pair):
    out, _ = finished
    md = (out / "report.md").read_text()
    assert (out / "svd_conditions.png").stat().st_size > 1000
    ver = pd.read_csv(out / "verdicts.csv")
    assert set(ver["kind"]) == {"sv_replacement", "disrupt_left_random"}
    assert set(ver["answer"]) <= {"yes", "no", "inconclusive", "untestable", "no interval"}
    # recompute one keep verdict by hand: pref_margin of sv_replacement (paired shifts vs post)
    rows = {r["condition"]: r for r in ResultStore(out).rows()}
    sv, base = rows["sv_replacement"], rows["base"]
    d, se = sv["pref_margin_shift_vs_post"], sv["pref_margin_shift_vs_post_stderr"]
    G, g_se = -base["pref_margin_shift_vs_post"], base["pref_margin_shift_vs_post_stderr"]
    v = ver[(ver["kind"] == "sv_replacement") & (ver["metric"] == "pref_margin")].iloc[0]
    if abs(G) <= 1.959963984540054 * g_se:
        want = "untestable"
    else:
        sg = 1 if G > 0 else -1
        lo, hi = sorted((sg * (d - 1.959963984540054 * se), sg * (d + 1.959963984540054 * se)))
        want = "yes" if lo > -0.5 * abs(G) else ("no" if hi < -0.5 * abs(G) else "inconclusive")
    assert v["answer"] == want
    findings = md[md.index("## Findings"):md.index("### Details")]
    assert f"| {v['claim']} | **{want}** |" in findings  # one row per verdict, the first thing the report shows
    assert f"base singular values × s) keeps the score: {want}** — `pref_margin`" in md
    # `rwedit report` rebuilds the same report from the store alone
    (out / "report.md").unlink()
    assert is_svd_run(out) and main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == md
    # a different recipe is refused with the key that changed
    changed = SVDRecipe.from_dict(small_recipe(pair, seeds=(1, 2)))
    with pytest.raises(ExperimentError, match=r"different recipe.*conditions\.seeds"):
        run_svd_experiment(changed, out, resume=True)


def _synthetic_rows():
    """acc (lm-eval style: unpaired stderr) and pref_margin (direct: paired shift vs post)."""
    def row(name, kind, acc, seed=None, shift=0.0, shift_se=0.0):
        return {"condition": name, "kind": kind, "seed": seed, "n_matrices": 4, "t/acc": acc, "t/acc_stderr": 0.02,
                "t/flat": 0.7, "t/flat_stderr": 0.02, "pref_margin": 1.0 + shift, "pref_margin_stderr": 0.5,
                "pref_margin_shift_vs_post": shift, "pref_margin_shift_vs_post_stderr": shift_se}
    return [row("post", "post", 0.8), row("sv_replacement", "sv_replacement", 0.79, shift=-0.1, shift_se=0.05),
            row("reparam", "reparam", 0.62), row("swap", "swap", 0.75)] + \
           [row(f"disrupt_left_random_s{i}", "disrupt_left_random", a, seed=i, shift=-3.0, shift_se=0.2)
            for i, a in ((1, 0.30), (2, 0.31), (3, 0.29))] + \
           [row("disrupt_right_random_s1", "disrupt_right_random", 0.7, seed=1),
            row("base", "base", 0.6, shift=-1.0, shift_se=0.1)]


def test_report_rules_on_hand_computed_rows(tmp_path):
    from rwedit.evals.svd_report import summary, verdicts, write_svd_report

    rows = _synthetic_rows()
    summ = summary(rows, ["t/acc", "pref_margin", "t/flat"])
    ver = {(v["metric"], v["kind"]): v for v in verdicts(summ, keep_margin=0.5)}
    z, se2 = 1.959963984540054, 0.02 * 2 ** 0.5  # lm-eval shift stderr: sqrt(se² + se_post²)
    # keep: G = post − base = 0.2, threshold −0.1 on the interval of the shift vs post
    sv = summ[(summ["metric"] == "t/acc") & (summ["kind"] == "sv_replacement")].iloc[0]
    assert sv["shift"] == pytest.approx(-0.01) and sv["shift_stderr"] == pytest.approx(se2)
    assert sv["retained"] == pytest.approx(0.95)
    assert ver[("t/acc", "sv_replacement")]["answer"] == "yes"  # [-0.01 ∓ 1.96·0.028] above -0.1
    assert ver[("t/acc", "reparam")]["answer"] == "no"  # -0.18 + 0.055 < -0.1
    assert ver[("t/acc", "swap")]["answer"] == "inconclusive"  # -0.05 - 0.055 < -0.1 < -0.05 + 0.055
    assert ver[("t/flat", "sv_replacement")]["answer"] == "untestable"  # post = base on this metric
    # a seed group: mean over seeds, stderr sqrt(s²/n + mean se²), t quantile with n - 1 dof
    g = summ[(summ["metric"] == "t/acc") & (summ["kind"] == "disrupt_left_random")].iloc[0]
    shifts = [-0.5, -0.49, -0.51]
    sd2 = sum((x + 0.5) ** 2 for x in shifts) / 2
    se = (sd2 / 3 + se2 ** 2) ** 0.5
    assert g["n"] == 3 and g["shift"] == pytest.approx(-0.5) and g["shift_stderr"] == pytest.approx(se)
    t2 = 0.95 / (2 * 0.975 * 0.025) ** 0.5  # t quantile at 2 dof in closed form: (2p − 1)/√(2p(1 − p)) = 4.303
    assert g["ci_high"] == pytest.approx(-0.5 + t2 * se)
    # collapse: worse than the worse of post and base (here base, shift -0.2 vs post)
    v = ver[("t/acc", "disrupt_left_random")]
    tot = (se ** 2 + se2 ** 2) ** 0.5
    assert v["reference"] == "base" and v["test_high"] == pytest.approx(-0.3 + t2 * tot) and v["answer"] == "yes"
    assert ver[("t/acc", "disrupt_right_random")]["answer"] == "no"  # 0.7: between base and post
    # paired direct metric: the stored shift and stderr are used as they are
    p = summ[(summ["metric"] == "pref_margin") & (summ["kind"] == "sv_replacement")].iloc[0]
    assert (p["shift"], p["shift_stderr"]) == (-0.1, 0.05) and p["retained"] == pytest.approx(0.9)
    assert ver[("pref_margin", "sv_replacement")]["answer"] == "yes"
    # the report from a store holding these rows
    store = ResultStore(tmp_path / "r")
    store.begin({"experiment": "svd-structure", "name": "hand", "verdicts": {"metrics": ["t/acc", "missing/x"],
                                                                               "keep_margin": 0.5}}, resume=False)
    for r in rows:
        store.append(r)
    md = write_svd_report(tmp_path / "r").read_text()
    assert "keeps the score: yes** — `t/acc`: sv_replacement 0.79 vs post 0.8, base 0.6" in md
    assert "collapses the score: yes** — `t/acc`: disrupt_left_random (mean of 3 seeds) 0.3" in md
    assert "absent from the rows: missing/x" in md and is_svd_run(tmp_path / "r")


# ----------------------------------------------------------------------------- the recipe as shipped


def test_the_shipped_recipe_parses_and_is_recognised():
    r = SVDRecipe.from_yaml(RECIPE)
    assert recipe_kind(RECIPE) == "svd-structure" and recipe_kind(RECIPE.parent / "control-experiment.yaml") == "control"
    assert (r.model, r.post) == ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct")
    assert r.matrices.roles is None and r.matrices.layers is None and r.conditions.rank == "full"
    names = [n for n, _, _ in r.condition_list()]
    assert names[0] == "post" and names[-1] == "base" and len(names) == 1 + 3 + 2 * 3 + 1
    assert set(r.eval.tasks) == {"rwedit_hh_preference", "rwedit_blimp", "rwedit_wikitext"}
    o = SVDRecipe.from_yaml(RECIPE, overrides={"model": "a", "post": None})
    assert o.model == "a" and o.post == r.post
    with pytest.raises(ValueError, match="unknown key"):
        SVDRecipe.from_dict({**yaml.safe_load(RECIPE.read_text()), "edit": {}})
    with pytest.raises(ValueError, match="conditions.kinds"):
        SVDRecipe.from_dict({"model": "a", "post": "b", "conditions": {"kinds": ["rotate"]}})


def test_a_missing_model_fails_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    assert main(["run", str(RECIPE), "--model", str(tmp_path / "nope"), "--post", str(tmp_path / "nope"),
                 "--out", str(out), "--quiet"]) == 2
    assert not out.exists()


@pytest.mark.slow
def test_the_shipped_recipe_runs_as_is_on_the_tiny_pair(pair, tmp_path):
    out = tmp_path / "asis"
    assert main(["run", str(RECIPE), "--model", str(pair / "base"), "--post", str(pair / "post"), "--out", str(out),
                 "--quiet"]) == 0
    rows = ResultStore(out).rows()
    assert len(rows) == 11 and rows[-1]["condition"] == "base"
    assert {"rwedit_blimp/acc", "rwedit_wikitext/word_perplexity", "rwedit_hh_preference/acc"} <= set(rows[0])
    assert "## Findings" in (out / "report.md").read_text() and (out / "report.html").exists()
    assert json.loads((out / "run.json").read_text())["config"]["experiment"] == "svd-structure"


# ----------------------------------------------------------------------------- nulls


def test_post_row_holds_the_null_and_the_structure_verdicts_follow_from_it(finished, pair):
    """The post row's null: 8 seeds per kind (the default), its draws the means of matrices/post_null.csv; one
    matrix's draws recomputed straight from the checkpoints; the tiny pair's update is Gaussian (post = base +
    0.05·noise), so every HC structure claim is indistinguishable from a random update of the same norm."""
    from rwedit.probes.svd import NULL_STATS, hc_claims, null_draws, svd_structure

    out, _ = finished
    post = next(r for r in ResultStore(out).rows() if r["condition"] == "post")
    assert post["null_seeds"] == list(range(8))
    per = pd.read_csv(out / "matrices" / "post_null.csv")
    assert len(per) == 14 * 2 * 8 and set(per["null"]) == {"gaussian", "rotation"}
    draws = null_draws(per.to_dict("records"))
    for kind in ("gaussian", "rotation"):
        for stat in NULL_STATS:
            assert post["null"][kind][stat] == pytest.approx(draws[kind][stat], rel=1e-9), (kind, stat)
    from safetensors.torch import load_file

    key = "model.layers.1.self_attn.o_proj.weight"
    wb, wp = (load_file(str(pair / name / "model.safetensors"))[key].float() for name in ("base", "post"))
    direct = svd_structure(wb, wp, r=min(64, *wb.shape), null_seeds=range(8), null_key="1.o")
    mine = per[(per["layer"] == 1) & (per["role"] == "o")]
    assert mine["consistency"].tolist() == pytest.approx([x["consistency"] for x in direct.null], rel=1e-9)
    st = pd.read_csv(out / "structure.csv")
    assert list(st["answer"]) == ["no"] * 4, st[["stat", "found"]]
    again = pd.DataFrame(hc_claims(post, post["null"]))
    assert list(st["found"]) == list(again["found"])
    assert st["gaussian_z"].tolist() == pytest.approx(again["gaussian_z"].tolist(), rel=1e-9)
    md = (out / "report.md").read_text()
    findings = md[md.index("## Findings"):md.index("### Details")]
    c = st.iloc[2]  # consistency: observed beside both nulls in the findings table
    assert (f"| the update base → post: {c['claim']} | **{c['found']}** | consistency " in findings
            and "gaussian " in findings and "rotation " in findings)


def test_a_kept_constructions_same_norm_random_control(pair):
    """conditions.null_seeds: one null_<kind>_s<k> condition per seed after each kept construction, built as
    W_post + a seeded Gaussian ΔW with the construction's ‖W_cond − W_post‖_F (re-derived here)."""
    from rwedit.checkpoints import Checkpoint, TensorReader
    from rwedit.editor.svd_edits import matrix_seed
    from rwedit.models import load_model_and_tokenizer

    d = small_recipe(pair, kinds=("sv_replacement", "swap", "disrupt_left_random"))
    d["conditions"]["null_seeds"] = [4, 5]
    recipe = SVDRecipe.from_dict(d)
    assert [n for n, _, _ in recipe.condition_list()] == [
        "post", "sv_replacement", "null_sv_replacement_s4", "null_sv_replacement_s5", "swap", "null_swap_s4",
        "null_swap_s5", "disrupt_left_random_s1", "base"]
    for bad in ({"conditions": {**d["conditions"], "null_seeds": [1]}}, {"probe": {**d["probe"], "null_seeds": 1}}):
        with pytest.raises(ValueError, match="null_seeds"):  # one draw has no spread
            SVDRecipe.from_dict({**d, **bad})
    post_ckpt = Checkpoint.open(pair / "post")
    model, _ = load_model_and_tokenizer(post_ckpt)
    snap = WeightSnapshot(model, sx.targets(recipe, post_ckpt.layout))
    base = TensorReader(Checkpoint.open(pair / "base"))
    W_post = snap.original(1, "down").float()
    W_sv = sx.SVDCondition(recipe, "sv_replacement", None, base, snap, with_probe=False)._build(1, "down", W_post)
    W_null = sx.SVDCondition(recipe, "null_sv_replacement", 5, base, snap, with_probe=False)._build(1, "down", W_post)
    g = torch.randn(W_post.shape, generator=torch.Generator().manual_seed(matrix_seed(5, 1, "down",
                                                                                       "null_sv_replacement")))
    want = W_post + g * float(torch.linalg.norm((W_sv - W_post).double()) / torch.linalg.norm(g.double()))
    assert torch.allclose(W_null, want, atol=1e-6)
    assert torch.linalg.norm(W_null - W_post) == pytest.approx(float(torch.linalg.norm(W_sv - W_post)), rel=1e-5)


def test_a_keep_verdict_stands_only_beyond_its_same_norm_random_control():
    from rwedit.evals.svd_report import summary, verdicts
    from scipy import stats

    def null(i, acc, shift):
        return {"condition": f"null_sv_replacement_s{i}", "kind": "null_sv_replacement", "seed": i, "n_matrices": 4,
                "t/acc": acc, "t/acc_stderr": 0.02, "pref_margin": 1.0 + shift, "pref_margin_stderr": 0.5,
                "pref_margin_shift_vs_post": shift, "pref_margin_shift_vs_post_stderr": 0.05}

    rows = _synthetic_rows()
    rows = rows[:2] + [null(1, 0.79, -0.5), null(2, 0.80, -0.6), null(3, 0.78, -0.55)] + rows[2:]
    ver = {(v["metric"], v["kind"]): v for v in verdicts(summary(rows, ["t/acc", "pref_margin"]), keep_margin=0.5)}
    # t/acc: sv_replacement keeps the score (shift -0.01), but so do its random controls (-0.01, 0, -0.02)
    acc = ver[("t/acc", "sv_replacement")]
    assert acc["vs_null"] == "within" and acc["answer"] == "no: indistinguishable from a random update of the same norm"
    # pref_margin: controls lose -0.55 ± 0.05; one more seed within -0.55 ± t_2·0.05·√(4/3); sv_replacement -0.1
    pm = ver[("pref_margin", "sv_replacement")]
    half = stats.t.ppf(0.975, 2) * 0.05 * (4 / 3) ** 0.5
    assert (pm["null_low"], pm["null_high"]) == (pytest.approx(-0.55 - half), pytest.approx(-0.55 + half))
    assert pm["vs_null"] == "beyond" and pm["answer"] == "yes" and pm["null_z"] == pytest.approx(9.0)
    assert "vs_null" not in ver[("t/acc", "reparam")]  # no control of its own: judged as before
