"""The model organism: deterministic builds, an aligned model that measurably prefers held-out chosen
responses, the graded objective's loss checked against a direct computation, and the quickstart's whole
path (probe → edit → eval → report) on the reduced organism."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rwedit.apps.organism import (OrganismConfig, build_organism, check_aligned, graded_config, left_truncate_prompt,
                                  preference_dataset, preference_metrics, reduced)
from rwedit.errors import ConfigError, OrganismError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The reduced organism of the quickstart's --reduced path (pretrained, aligned λ=1, SFT λ=0), built with
    progress on, and what the build printed (stdout + stderr)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("organisms")
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        org = build_organism(reduced(), root, progress=True)
    return org, text.getvalue()


@pytest.fixture(scope="module")
def organism(built):
    return built[0]


def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_the_build_prints_its_stage_lines_and_one_bar_per_training_run(built):
    """What a newcomer watches: the stage lines and one finished bar (steps, loss) per training run, not the
    trainers' log dicts nor the libraries' own bars (tokenising, reference log-probs, loading, saving)."""
    _, text = built
    lines = screen(text)
    bars = [line for line in lines if "step/s" in line]
    assert [b.split(":")[0] for b in bars] == ["CE pretraining", "graded objective λ=0 (SFT control)",
                                              "graded objective λ=1 (preference alignment)"]
    assert all("100%" in b and "loss=" in b for b in bars)
    for chatter in ("{'loss'", "{'train_runtime'", "Loading weights", "Writing model shards", "Tokenizing",
                    "reference log probs", "Flattening", "Warning"):
        assert chatter not in text, chatter
    assert len(lines) == len(bars) + sum(line.startswith("[organism] ") for line in lines) <= 12


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tmp_path):
    tiny = reduced()
    tiny = replace(tiny, pretrain=replace(tiny.pretrain, steps=6, tokens=8_000, trajectory_every=3),
                   align=replace(tiny.align, steps=3, pairs=24), eval=replace(tiny.eval, pairs=8, texts=4))
    a = build_organism(tiny, tmp_path / "a", progress=False, lambdas=(1.0,))
    b = build_organism(tiny, tmp_path / "b", progress=False, lambdas=(1.0,))
    c = build_organism(replace(tiny, seed=1), tmp_path / "c", progress=False, lambdas=(1.0,))
    for stage in ("pretrained", "aligned"):
        ta, tb, tc = (_tensors(getattr(o, stage)) for o in (a, b, c))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (stage, k)
        assert any(not torch.equal(ta[k], tc[k]) for k in ta), stage
    # a second build with the same settings reuses every stage (cache by recipe hash)
    mtime = (a.aligned / "model.safetensors").stat().st_mtime_ns
    again = build_organism(tiny, tmp_path / "a", progress=False, lambdas=(1.0,))
    assert again.root == a.root and (a.aligned / "model.safetensors").stat().st_mtime_ns == mtime


def test_aligned_organism_prefers_heldout_chosen_more_than_pretrained(organism):
    rep = organism.report()
    pre, al, sft = (rep["models"][k] for k in ("pretrained", "lambda_1", "lambda_0"))
    check_aligned(rep)  # paired held-out margin shift: 95% interval above 0
    assert al["margin_shift"] - 1.96 * al["margin_shift_stderr"] > 0
    # implicit-reward accuracy (DPO's own preference accuracy against the pretrained reference) above chance
    assert al["implicit_reward_acc"] - 1.96 * al["implicit_reward_acc_stderr"] > 0.5
    assert al["n_pairs"] == 96 and "pref_acc_norm" in pre and "implicit_reward_acc" not in pre
    # pretraining learned the text; held-out pairs never entered training
    pt = rep["pretrain"]
    assert pt["heldout_ce"][0] < pt["heldout_ce_init"][0] - 0.5
    st = json.loads((organism.aligned / "stage.json").read_text())
    assert st["pairs"] == st["pairs_after_trl"] == 320 and st["prompts_cut_from_left"] > 0
    assert sft["stage"]["lambda"] == 0.0


def test_preference_metrics_against_numpy():
    rng = np.random.default_rng(0)
    c, r, rc, rr = (rng.normal(size=50) for _ in range(4))
    nc, nr = rng.integers(1, 30, 50).astype(float), rng.integers(1, 30, 50).astype(float)
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    m = preference_metrics({"chosen": t(c), "rejected": t(r), "n_chosen": t(nc), "n_rejected": t(nr)},
                           {"chosen": t(rc), "rejected": t(rr), "n_chosen": t(nc), "n_rejected": t(nr)})
    shift = (c - r) - (rc - rr)
    assert m["pref_acc"] == pytest.approx(np.mean(c > r))
    assert m["pref_acc_norm"] == pytest.approx(np.mean(c / nc > r / nr))
    assert m["implicit_reward_acc"] == pytest.approx(np.mean(shift > 0))
    assert m["margin_shift"] == pytest.approx(shift.mean())
    assert m["margin_shift_stderr"] == pytest.approx(shift.std(ddof=1) / math.sqrt(50))


def test_left_truncation_keeps_the_end_of_the_prompt(organism):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(organism.pretrained)
    prompt = "\n\nHuman: " + "tell me more about the weather " * 40 + "\n\nAssistant:"
    cut, was_cut = left_truncate_prompt(tok, prompt, 20)
    assert was_cut and prompt.endswith(cut) and cut.endswith("\n\nAssistant:")
    assert len(tok(cut, add_special_tokens=False)["input_ids"]) <= 21
    assert left_truncate_prompt(tok, "short", 20) == ("short", False)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_graded_objective_loss_equals_direct_computation(organism, lam, tmp_path):
    """TRL's combined loss on one batch vs λ·(−log σ(β·Δ)) + (1 − λ)·CE(chosen tokens), computed here with
    plain torch from the batch's token ids and a separately loaded frozen reference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    cfg = replace(reduced(), align=replace(reduced().align, pairs=16, batch_size=4))
    tok = AutoTokenizer.from_pretrained(organism.pretrained)
    policy = AutoModelForCausalLM.from_pretrained(organism.pretrained)  # as in training: the reference is the
    ref = AutoModelForCausalLM.from_pretrained(organism.pretrained).eval()  # model TRL is given (precomputed)
    data, _ = preference_dataset(cfg, tok)
    trainer = DPOTrainer(model=policy, args=graded_config(cfg, lam, tmp_path), train_dataset=data,
                         processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    policy = trainer.model  # then move the policy away from the reference: the aligned weights
    policy.load_state_dict(AutoModelForCausalLM.from_pretrained(organism.aligned).state_dict())
    policy.eval()
    with torch.no_grad():
        loss = float(trainer.compute_loss(policy, batch))

        def logps(model):
            ids, att, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].double()
            lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            mask = comp[:, 1:].double()
            return lp, mask

        lp, mask = logps(policy)
        rlp, _ = logps(ref)
        seq, rseq = (lp * mask).sum(-1), (rlp * mask).sum(-1)
        n = seq.shape[0] // 2
        # TRL's precomputed reference (float32, other batches) agrees with ours to float32 accumulation error
        # (aligned vs pretrained differ by nats here; under TRL's default bf16 autocast they do not agree to
        # 1e-3); the loss uses TRL's values so that only the formula is tested
        assert torch.allclose(batch["ref_chosen_logps"].double(), rseq[:n], atol=1e-3)
        assert torch.allclose(batch["ref_rejected_logps"].double(), rseq[n:], atol=1e-3)
        rc, rr = batch["ref_chosen_logps"].double(), batch["ref_rejected_logps"].double()
        delta = (seq[:n] - rc) - (seq[n:] - rr)
        pref = float(-F.logsigmoid(cfg.align.beta * delta).mean())
        ce = float(-(lp[:n] * mask[:n]).sum() / mask[:n].sum())
    assert (seq[:n] - rseq[:n]).abs().max() > 0.5  # the policy really differs from the reference
    assert loss == pytest.approx(lam * pref + (1 - lam) * ce, rel=1e-5)
    assert abs(pref - ce) > 1e-2  # the two objectives differ on this batch, so the check can tell them apart


def test_bad_settings_are_refused_with_what_to_change():
    with pytest.raises(ConfigError, match=r"align\.stepz: unknown key \(did you mean `steps`\?\)"):
        OrganismConfig.from_dict({"align": {"stepz": 3}})
    with pytest.raises(ConfigError, match=r"model\.hidden: expected an integer"):
        OrganismConfig.from_dict({"model": {"hidden": "wide"}})
    with pytest.raises(OrganismError, match="max_prompt_tokens"):
        OrganismConfig.from_dict({"align": {"max_prompt_tokens": 200, "max_length": 128}})
    with pytest.raises(OrganismError, match="lambdas"):
        OrganismConfig.from_dict({"align": {"lambdas": [0.0, 1.5]}})
    with pytest.raises(OrganismError, match="lambdas"):  # the dataclass itself refuses, not only the parser
        replace(reduced(), align=replace(reduced().align, lambdas=(2.0,)))
    with pytest.raises(OrganismError, match="not an organism recipe"):
        OrganismConfig.from_dict({"experiment": "quickstart", "organism": {}})


def test_shipped_organism_recipe_is_the_default_config():
    from importlib.resources import files

    assert OrganismConfig.from_yaml(files("rwedit.recipes") / "organism.yaml") == OrganismConfig()
    # the recipe's shape (experiment: organism beside the organism: section) also parses from a mapping
    assert OrganismConfig.from_dict({"experiment": "organism", "organism": {"seed": 3}}) == replace(
        OrganismConfig(), seed=3)


def test_cache_keys_are_pinned_and_follow_the_data_not_its_path(tmp_path):
    """Every cached stage lives under ``cfg.key(...)``. The data enter by content (sha256 of the file), so the
    key is the same for a bundled name, the installed absolute path and a copy elsewhere (another clone
    reuses the cache), and changes when a byte of the data does. Pinned: a change here silently rebuilds
    (or, worse, mixes up) every cached organism."""
    import shutil

    from rwedit.bundled import WIKITEXT_VALID

    def portable(cfg):
        return replace(cfg, pretrain_text=("bundled:wikitext-2/valid.txt.gz",),
                       pairs_data="bundled:hh-rlhf/harmless-base-test.jsonl.gz",
                       heldout_text="bundled:wikitext-2/test.txt.gz")

    assert OrganismConfig().key("pretrain", "align", "eval") == "1c2a668cfd2b20dd"
    assert OrganismConfig().key() == "0578baeed8f8784a"
    assert reduced().key("pretrain", "align", "eval") == "51a4b4aa83616593"
    assert reduced().key() == "022cc1fb97b12c9d"
    for cfg in (OrganismConfig(), reduced()):
        assert portable(cfg).key("pretrain", "align") == cfg.key("pretrain", "align")
    copy = tmp_path / "valid.txt.gz"
    shutil.copy(WIKITEXT_VALID, copy)
    assert replace(reduced(), pretrain_text=(str(copy),)).key("pretrain") == reduced().key("pretrain")
    with open(copy, "ab") as f:
        f.write(b"\0")
    assert replace(reduced(), pretrain_text=(str(copy),)).key("pretrain") != reduced().key("pretrain")


def test_quickstart_recipe_special_cases(tmp_path):
    """`organism:` is a path (relative to the recipe) or an inline mapping; the control experiment stays a
    plain mapping that needs an `edit:` section; `experiment:` names the kind."""
    import yaml

    from rwedit.apps.quickstart import QuickstartRecipe

    (tmp_path / "org.yaml").write_text(yaml.safe_dump({"experiment": "organism", "organism": {"seed": 5}}))
    ctl = {"alpha": [1.0], "edit": {"layers": [0], "role": "q", "v": "random", "b": "given", "b_given": [1.0]},
           "controls": {"random": 1, "lowvar": 0, "write": None}}
    body = {"experiment": "quickstart", "organism": "org.yaml", "control_experiment": {"edit": ctl}}
    (tmp_path / "qs.yaml").write_text(yaml.safe_dump(body))
    r = QuickstartRecipe.from_yaml(tmp_path / "qs.yaml")
    assert r.organism.seed == 5 and r.base_dir == str(tmp_path)
    assert r.control_experiment == {"name": "quickstart", "edit": ctl}
    inline = QuickstartRecipe.from_dict({**body, "organism": {"align": {"steps": 7}}})
    assert inline.organism.align.steps == 7
    with pytest.raises(ConfigError, match="experiment: expected a string"):  # the control experiment has its own key
        QuickstartRecipe.from_dict({"organism": {}, "experiment": {"edit": ctl}, "control_experiment": {"edit": ctl}})
    with pytest.raises(ConfigError, match=r"control_experiment\.edit\.edit\.lay: unknown key"):  # checked when read
        QuickstartRecipe.from_dict({**body, "control_experiment": {"edit": {**ctl, "edit": {**ctl["edit"], "lay": 1}}}},
                                   base_dir=tmp_path)
    with pytest.raises(ConfigError, match="needs an `edit:` section"):
        QuickstartRecipe.from_dict({"organism": {}, "control_experiment": {"eval": {}}})
    with pytest.raises(ConfigError, match="not a quickstart recipe"):
        QuickstartRecipe.from_dict({**body, "experiment": "organism"}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"probe\.null_seed: unknown key \(did you mean `null_seeds`\?\)"):
        QuickstartRecipe.from_dict({**body, "probe": {"null_seed": 2}}, base_dir=tmp_path)
    # `decompose:` is a decompose recipe without model/post, checked when read; {} (the default): no stage
    assert r.decompose == {} and r.decompose_recipe("m", "p") is None
    dec = QuickstartRecipe.from_dict({**body, "name": "qs", "decompose": {"parts": {"ks": [2]}, "eval": None}},
                                     base_dir=tmp_path)
    assert dec.decompose == {"experiment": "decompose", "name": "qs-decompose", "parts": {"ks": [2]}, "eval": None}
    got = dec.decompose_recipe("m", "p")
    assert (got.model, got.post, got.parts.ks, got.eval) == ("m", "p", (2,), None)
    with pytest.raises(ConfigError, match=r"decompose\.parts\.kss: unknown key \(did you mean `ks`\?\)"):
        QuickstartRecipe.from_dict({**body, "decompose": {"parts": {"kss": [2]}}}, base_dir=tmp_path)


def test_the_apps_register_their_experiment_kinds():
    from importlib.resources import files

    from rwedit.apps.quickstart import QuickstartRecipe
    from rwedit.evals.core import experiment_kind, load_recipe

    recipes = files("rwedit.recipes")
    kind, cfg = load_recipe(recipes / "organism.yaml")
    assert kind is experiment_kind("organism") and cfg == OrganismConfig() and kind.report is None
    kind, rec = load_recipe(recipes / "quickstart.yaml")
    assert kind is experiment_kind("quickstart") and isinstance(rec, QuickstartRecipe) and kind.report is None
    assert load_recipe(reduced())[0] is experiment_kind("organism")


def test_rwedit_run_of_an_organism_recipe_reuses_the_built_organism(organism):
    """The registered `organism` kind: build (here: reuse every stage), check the alignment, report the table
    and the folders."""
    import rwedit.apps  # noqa: F401  (registers the kinds)
    from rwedit.evals.core import run_recipe

    mtime = (organism.aligned / "model.safetensors").stat().st_mtime_ns
    res = run_recipe({"experiment": "organism", "organism": reduced().to_dict()}, organism.root.parent)
    assert res.folder == organism.root and res.report is None
    assert (organism.aligned / "model.safetensors").stat().st_mtime_ns == mtime
    assert any(line.startswith("| aligned (DPO, λ=1)") for line in res.lines)
    assert f"aligned:    {organism.aligned}" in res.lines


def screen(text: str) -> list[str]:
    """The lines a terminal keeps of ``text``: one per newline (``wc -l``), each as its last redraw (a bar
    redraws itself after a carriage return)."""
    return [line.split("\r")[-1] for line in text.rstrip("\n").split("\n")]


def _quickstart(*args: str) -> tuple[int, str]:
    """``rwedit quickstart ARGS`` in a new process from a folder outside any git repository; (exit code, what
    it printed on stdout and stderr together, carriage returns kept)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as cwd:
        p = subprocess.run([sys.executable, "-m", "rwedit", "quickstart", *args], cwd=cwd, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    return p.returncode, p.stdout.decode()


def test_quickstart_end_to_end_on_the_reduced_organism(organism, tmp_path):
    """probe → edit → eval → report on the reduced organism, with the shipped recipe's layers (fractions of the
    depth: 0 and 1 of its 2 layers) and smaller data: every stage's files exist and the first screen reports
    each claim. (`--reduced` as shipped, through the command line, is the slow test below.)"""
    from importlib.resources import files

    import pandas as pd

    from rwedit.evals.store import ResultStore
    from rwedit.apps.quickstart import QuickstartRecipe, QuickstartResult, run_quickstart

    recipe = QuickstartRecipe.from_yaml(files("rwedit.recipes") / "quickstart.yaml")
    exp = dict(recipe.control_experiment)
    assert exp["edit"]["edit"]["per_layer"] and exp["edit"]["edit"]["v"] == "principal[0..3]"  # replicate units
    exp["edit"] = {**exp["edit"], "alpha": [2.0], "controls": {"random": 2, "lowvar": 1, "write": "o"},
                   "edit": {**exp["edit"]["edit"], "v": "principal[0..1]"},
                   "calibration": {**exp["edit"]["calibration"], "tokens": 2048, "seq_len": 64}}
    exp["eval"] = {**exp["eval"], "limit": 4}
    exp["direct"] = {"pairs": 8, "texts": 4, "seq_len": 64, "max_len": 96}
    exp["export"] = ["L1_principal0_a2"]
    dec = {**recipe.decompose, "direct": {"pairs": 8, "texts": 4, "seq_len": 64, "max_len": 96},
           "parts": {**recipe.decompose["parts"], "ranks": [4]}}
    recipe = replace(recipe, control_experiment=exp, decompose=dec,
                     probe=replace(recipe.probe, tokens=2048, seq_len=64, ks=(1, 4), null_seeds=2))
    out = tmp_path / "qs"
    result = run_quickstart(recipe, out, organism_root=organism.root.parent, use_reduced=True)
    assert isinstance(result, QuickstartResult) and result.report == out / "report.md"
    text = result.report.read_text()
    first = text.split("## The organism")[0]
    assert result.findings and all(line in first for line in result.findings)
    assert "## Causal control experiment" in text and "### Headline: pref_margin_shift" in text
    for claim in ("read side of q, k", "write side of o, down", "prediction subspace", "RW causal test",
                  "HC (base → aligned)", "Spikedness", "Specific to the objective", "W_base themselves"):
        assert claim in first, claim
    assert [c.strip() for c in result.findings[0].split("|")[1:-1]] == [
        "claim", "vs the null", "specific to the objective", "holds on all seeds", "numbers"]
    frame = pd.read_csv(out / "findings.csv")
    assert set(frame["scope"]) == {"seed", "pooled"} and (frame[frame["scope"] == "seed"]["seed"] == 0).all()
    assert frame[frame["scope"] == "pooled"]["low"].isna().all()  # one seed: no interval over seeds
    rows = ResultStore(out / "experiment").rows()
    controls = ["random", "random", "lowvar", "write"]  # each matched in norm and again in KL (effect.match: both)
    norm = [r["kind"] for r in rows if r.get("match", "norm") == "norm"]
    assert norm == ["base"] + 2 * (["principal"] * 2 + controls)
    assert [r["kind"] for r in rows if r.get("match") == "kl"] == 2 * controls
    # the decomposition of the observed update: its rows, the report's opening line and the table's rows
    dec_rows = ResultStore(out / "decompose").rows()
    parts = ["full", "principal", "random", "random", "randnorm", "randnorm", "complement", "svd"]
    assert [r["kind"] for r in dec_rows] == ["base"] + 2 * parts
    assert {r["unit"] for r in dec_rows[1:]} == {"read", "write"}
    assert text.split("\n")[2].startswith("**At the observed dose, which part of alignment's update carries") and (
        text.split("\n")[2] == result.opening)
    for side in ("read side (q, k)", "write side (o, down)"):
        # the table opens with the decomposition's rows: three per side (an undetectable side's inconclusive)
        assert side in result.opening and any(f"Observed dose, {side}" in line for line in result.findings[2:8])
    card = json.loads((out / "experiment/edit/adapters/L1_principal0_a2/rwedit.json").read_text())
    exported = next(r for r in rows if r["condition"] == "L1_principal0_a2")
    assert card["metrics"]["pref_margin_shift"] == pytest.approx(exported["pref_margin_shift"])
    assert "paired test over 8 items, pooled over 4 replicate units" in first
    for f in ("probe_aligned/rsf.csv", "probe_sft/rsf.csv", "svd_aligned/svd.csv", "training/trajectory.png",
              "rsf_controls.csv", "findings.csv", "decompose/report.md", "decompose/parts.csv",
              "experiment/forest.png", "experiment/units.csv",
              "training/trajectory_pretrain.csv", "experiment/report.md", "quickstart.json"):
        assert (out / f).exists(), f
    # the claim numbers in the report are the probe's own headline numbers
    h = pd.read_csv(out / "probe_aligned/headline.csv")
    sel = h[h["role"].isin(["q", "k"]) & (h["side"] == "read") & (h["subspace"] == "activation") & (h["k"] == 4)]
    assert f"RSF {sel['rsf_mean'].mean():.3g}" in first
    # the headline cells' direction cards: in report.md as text, in report.html as cards; the page opens clean
    assert "## What the headline directions are" in text and "layer 0 q · activation #0" in text
    assert "layer 1 down · delta_left #0" in text and "promotes:" in text
    from browser import open_page

    met = open_page(out / "report.html", tmp_path)
    assert met["console_errors"] == [] and met["broken"] == [] and met["first_table_top"] < 800, met
    assert (out / "report.html").read_text().count('class="card"') >= 5
    # a rerun into the same folder reuses everything (no new rows, same report head)
    run_quickstart(recipe, out, organism_root=organism.root.parent, use_reduced=True)
    assert len(ResultStore(out / "experiment").rows()) == len(rows)
    assert len(ResultStore(out / "decompose").rows()) == len(dec_rows)




def test_the_observed_dose_line_and_rows_read_the_decomposition(organism, tmp_path):
    """The shipped recipe's decomposition of the reduced organism's update on every held-out pair (enough for the
    write side's shift to be detectable): the opening line and the findings rows give each side's retained
    fractions as re-derived from the stored per-item margins (numpy), and a side whose full shift is not
    detectable is said to be so, with no verdict."""
    from importlib.resources import files

    from rwedit.apps.quickstart import QuickstartRecipe
    from rwedit.apps.quickstart.report import DECOMPOSE_DIR, decomposition_findings, observed_dose_line
    from rwedit.evals.core import run_recipe
    from rwedit.evals.store import ResultStore

    recipe = QuickstartRecipe.from_yaml(files("rwedit.recipes") / "quickstart.yaml")
    dec = {**recipe.decompose, "calibration": {**recipe.decompose["calibration"], "tokens": 4096, "seq_len": 64},
           "direct": {**recipe.decompose["direct"], "pairs": "all", "texts": 4, "seq_len": 64}}
    rec = replace(recipe, decompose=dec).decompose_recipe(str(organism.pretrained), str(organism.aligned))
    run_recipe(rec, tmp_path / DECOMPOSE_DIR)
    rows = {r["condition"]: r for r in ResultStore(tmp_path / DECOMPOSE_DIR).rows()}
    line, found, tested = observed_dose_line(tmp_path), decomposition_findings(tmp_path), []
    assert line.startswith("**At the observed dose") and line == observed_dose_line(tmp_path)  # read twice: same
    for side, roles in (("read", "q, k"), ("write", "o, down")):
        full = np.asarray(rows[f"{side}_full"]["pref_margin_shift_items"])
        mine = [f for f in found if f.claim.startswith(f"Observed dose, {side} side ({roles})")]
        z = full.mean() / (full.std(ddof=1) / math.sqrt(len(full)))
        sub = "A" if side == "read" else "P"
        claims = [f"{sub}_4's part keeps ≥ 0.1 more than norm-matched random parts",
                  f"{sub}_4's part keeps ≥ 0.1 more than its share of ‖ΔW‖²",
                  "the update's top-r singular directions keep ≥ 0.8 of the shift"]
        if abs(z) < 1.96:  # not detectable (its 95% interval holds 0): said so, under the same claims (so that
            # seeds pool), no verdict, no value, one report line
            assert [f.claim.split(": ", 1)[1] for f in mine] == claims and not any(f.values for f in mine)
            assert all(f.found.startswith("inconclusive: the full update's shift is not") for f in mine)
            assert [bool(f.line) for f in mine] == [True, False, False]
            assert f"{side} side ({roles}): its full update does not shift" in line
            continue
        prin = rows[f"{side}_principal_k4"]
        r = np.asarray(prin["pref_margin_shift_items"]).mean() / full.mean()  # the retained fraction, re-derived
        head = f"{side} side ({roles}), full shift {full.mean():+.3g} nats: {sub}_4's part keeps {r:.2g} ["
        assert head in line and f"with {prin['share']:.0%} of ‖ΔW‖²" in line, line
        assert [f.claim.split(": ", 1)[1] for f in mine] == claims
        assert all(f.specific == "—" for f in mine) and mine[0].found in ("yes", "no", "inconclusive")
        assert dict(mine[0].values)["R"].estimate == pytest.approx(r)
        tested.append(side)
    assert tested  # the write side's shift is detectable on 412 pairs (seed 0 of the reduced organism)


@pytest.mark.slow
def test_quickstart_reduced_end_to_end_and_what_it_prints(organism, tmp_path):
    """`rwedit quickstart --reduced` as shipped: exit 0, the stage lines and rwedit's own bars ending in the
    findings table and the report's opening line, under 45 lines besides the table, with no trainer dicts,
    lm-eval, transformers or git chatter; `--quiet` rerun into the same folder reuses everything and prints the
    table and the opening line alone."""
    from rwedit.evals.store import ResultStore

    out = tmp_path / "qs"
    common = ("--reduced", "--out", str(out), "--organism-root", str(organism.root.parent),
              "--cache-dir", str(tmp_path / "cache"))
    code, text = _quickstart(*common)
    assert code == 0, text
    lines = screen(text)
    for chatter in ("{'loss'", "fatal:", "Loading weights", "loglikelihood", "Tokenizing", "direct: pairs",
                    "Warning", "lm_eval", "pretrained` model kwarg"):
        assert chatter not in text, chatter
    assert [x for x in lines if x.startswith("[quickstart] stage")][-1] == "[quickstart] stage 6/6: report"
    assert lines[-1] == f"report: {out / 'report.md'}" and lines[-3].startswith("**At the observed dose")
    table = lines[lines.index("") + 1:-4]
    # header, rule, a row per claim: the decomposition's two sides (one row each: neither side's full shift is
    # detectable on --reduced's 48 pairs), 6 RW probe rows, 3 causal controls x 2 matchings, HC's four per pair
    assert table[0].startswith("| claim") and len(table) == 2 + 2 + 6 + 6 + 8, table
    assert len(lines) - len(table) < 45, text
    first = (out / "report.md").read_text().split("## The organism")[0]
    assert all(line in first for line in table) and lines[-3] in first
    rows = ResultStore(out / "experiment").rows()
    controls = 2 * ["random"] + ["lowvar", "write"]  # per layer: principal[0..3], 2 random, lowvar, write; KL copies
    assert [r["kind"] for r in rows] == ["base"] + 2 * (4 * ["principal"] + controls) + 2 * controls
    assert len(ResultStore(out / "decompose").rows()) == 1 + 2 * 9  # base, 9 parts per side
    assert sorted({r["layers"][0] for r in rows[1:]}) == [0, 1]  # layers 0.3, 0.7 of the 2-layer organism
    assert "paired test over 48 items, pooled over 8 replicate units" in first  # --reduced caps the pairs at 48

    code, quiet = _quickstart(*common, "--quiet")  # a rerun into the same folder reuses everything
    assert code == 0 and len(screen(quiet)) <= len(table) + 6, quiet  # the table, the opening line, the report's
    assert screen(quiet)[-1] == lines[-1] and all(line in quiet for line in table)
    assert len(ResultStore(out / "experiment").rows()) == len(rows)


def test_a_recipe_that_does_not_fit_the_organism_fails_before_anything_is_trained(tmp_path, monkeypatch):
    """Every stage's settings are checked against the model the organism's settings describe before it is
    built: a layer, an export name or a window that does not fit fails at once, naming the recipe key and
    what to change; nothing is trained or written. The shipped recipe fits both organisms."""
    from importlib.resources import files

    import rwedit.apps.quickstart.run as run_module
    from rwedit.apps.organism import planned_model
    from rwedit.apps.quickstart import QuickstartRecipe, run_quickstart
    from rwedit.apps.quickstart.recipe import reduced as reduced_recipe
    from rwedit.errors import RweditError

    def no_training(*args, **kwargs):
        raise AssertionError("the organism was built before the recipe was checked")

    monkeypatch.setattr(run_module, "build_organism", no_training)
    shipped = files("rwedit.recipes") / "quickstart.yaml"
    recipe = QuickstartRecipe.from_yaml(shipped)
    recipe.check_fits(planned_model(recipe.organism))  # fits the 4-layer organism
    reduced_recipe(recipe).check_fits(planned_model(reduced()))  # and --reduced's 2-layer one
    cases = [(False, "control_experiment.edit.edit.layers=[1,4]", "control_experiment.edit.edit.layers",
              "layers 0..3"),
             (True, "control_experiment.edit.edit.layers=[1,2]", "control_experiment.edit.edit.layers", "layers 0..1"),
             (False, "control_experiment.export=[L7_principal0_a8]", "control_experiment.export", "L7_principal0_a8"),
             (False, "control_experiment.direct.max_len=4096", "control_experiment.direct.max_len", "2048"),
             (False, "probe.seq_len=4096", "probe.seq_len", "2048"),
             (False, "control_experiment.edit.edit.v=principal[0..200]", "control_experiment.edit.edit.v", "d = 192"),
             (False, "decompose.parts.ks=[200]", "decompose.parts.ks", "d = 192"),
             (True, "decompose.matrices.layers=[3]", "decompose.matrices.layers", "0..1"),
             (False, "decompose.direct.max_len=4096", "decompose.direct.max_len", "2048")]
    for use_reduced, setting, key, detail in cases:
        bad = QuickstartRecipe.from_yaml(shipped, sets=[setting])
        with pytest.raises(RweditError) as err:
            run_quickstart(bad, tmp_path / "out", organism_root=tmp_path / "organisms", use_reduced=use_reduced)
        msg = str(err.value)
        assert msg.startswith(key) and detail in msg and "the organism (organism.model:" in msg, msg
        assert f"--set {key}=" in msg and "nothing was trained or written" in msg, msg
    assert not (tmp_path / "out").exists() and not (tmp_path / "organisms").exists()
    with pytest.raises(ConfigError, match="--seeds 2 replicates the organism: it needs the organism"):
        run_quickstart(replace(recipe, seeds=2), tmp_path / "out", model="base", post="post")
    with pytest.raises(ConfigError, match="seeds: 0 organisms; give at least 1"):
        replace(recipe, seeds=0)
    assert not (tmp_path / "out").exists()


def test_graded_grid_and_trajectories_against_a_direct_projection(organism, tmp_path):
    """--graded: a third λ is trained from the same pretrained checkpoint (the cached stages are reused), and
    the RSF-vs-λ rows and the pretraining trajectory rows equal ‖P_kᵀ ΔW‖²/‖ΔW‖² / (k/d) computed here with
    the pretrained unembedding's top right singular vectors."""
    from safetensors.torch import load_file

    from rwedit.probes.pipeline import CalibrationSettings
    from rwedit.apps.quickstart import training_side
    import pandas as pd

    mtime = (organism.aligned / "model.safetensors").stat().st_mtime_ns
    org = build_organism(reduced(), organism.root.parent, progress=False, lambdas=(0.0, 0.5, 1.0))
    assert org.root == organism.root and (org.aligned / "model.safetensors").stat().st_mtime_ns == mtime
    calib = CalibrationSettings("bundled:wikitext-2/valid.txt.gz", tokens=2048, seq_len=64)
    training_side(org, tmp_path, calib)
    graded = pd.read_csv(tmp_path / "training/graded_rsf.csv")
    assert sorted(set(graded["lambda"])) == [0.0, 0.5, 1.0]
    assert (tmp_path / "training/graded_rsf.png").stat().st_size > 0
    assert (tmp_path / "training/trajectory.png").stat().st_size > 0

    pre = load_file(str(org.pretrained / "model.safetensors"))
    P = torch.linalg.svd(pre["lm_head.weight"].double(), full_matrices=False).Vh[:4].T  # d x 4

    def rsf(dW):
        dW = dW.double()
        return float((P.T @ dW).pow(2).sum() / dW.pow(2).sum()) / (4 / dW.shape[0])

    half = load_file(str(org.lam_dir(0.5) / "model.safetensors"))
    name = "model.layers.1.self_attn.o_proj.weight"
    row = graded[(graded["lambda"] == 0.5) & (graded["layer"] == 1) & (graded["role"] == "o") &
                 (graded["side"] == "write") & (graded["subspace"] == "prediction") & (graded["k"] == 4)]
    assert len(row) == 1 and row["rsf"].iloc[0] == pytest.approx(rsf(half[name] - pre[name]), rel=1e-5)

    # the report's graded line carries the mean over layers of these rows
    from rwedit.apps.quickstart import findings

    line = next(x for x in findings(tmp_path) if "Graded objective" in x)
    w = graded[graded["role"].isin(["o", "down"]) & (graded["side"] == "write") &
               (graded["subspace"] == "prediction") & (graded["k"] == 4) & (graded["lambda"] == 0.5)]["rsf"]
    assert f"λ=0.5: {w.mean():.3g}" in line.split("write-side RSF λ")[1]

    snaps = torch.load(org.pretrained / "trajectory_snapshots.pt")
    traj = pd.read_csv(tmp_path / "training/trajectory_pretrain.csv")
    step = max(snaps)
    row = traj[(traj["step"] == step) & (traj["layer"] == 0) & (traj["role"] == "down") & (traj["side"] == "write")
               & (traj["subspace"] == "prediction") & (traj["k"] == 4)]
    assert len(row) == 1
    assert row["rsf"].iloc[0] == pytest.approx(rsf(snaps[step][(0, "down")] - snaps[0][(0, "down")]), rel=1e-5)


# --- specificity of the RW claims (#30.2) and claims pooled over seeds (#29.3) ----------------------------------


def _spiked(d: int, seed: int = 0):
    """A second moment with a spiked spectrum (eigenvalues 1/i², random eigenvectors) and its Spectrum."""
    from rwedit.probes.subspaces import eig_subspace

    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    lam = 1.0 / torch.arange(1, d + 1, dtype=torch.float64) ** 2
    C = Q @ torch.diag(lam) @ Q.T
    return C, eig_subspace(C), torch.linalg.cholesky(C + 1e-12 * torch.eye(d, dtype=torch.float64)).T


def _np_rsf(dW, basis) -> float:
    """‖ΔW B‖²/‖ΔW‖² over k/d, in numpy: the read side's RSF written out."""
    dW, B = np.asarray(dW, dtype=np.float64), np.asarray(basis, dtype=np.float64)
    return float((dW @ B).__pow__(2).sum() / (dW ** 2).sum()) / (B.shape[1] / B.shape[0])


def test_an_update_concentrated_only_by_the_activation_spectrum_is_not_specific():
    """The random gradient-shaped update's expected RSF (top-k share / (k/d)) matches a Monte Carlo of
    ΔW = G·C^½ (E[ΔWᵀΔW] ∝ C); such an update gets "not specific" against it and against W_base (built the same
    way), though far above the random-subspace null; an update planted in A_k beats every control; an isotropic
    Gaussian ΔW is "yes" for an isotropy claim and "not specific" for a concentration claim; the paired interval
    is the t interval of the differences over matrices."""
    import pandas as pd
    from scipy import stats as st

    from rwedit.apps.quickstart.specificity import BASE_LABEL, SPECTRUM_LABEL, compare, specific_word, spectrum_rsf

    d, d_out, k = 48, 256, 4
    _, spec, root = _spiked(d)
    A = spec.top(k)
    expected = spectrum_rsf(spec, k)
    lam = spec.eigenvalues
    assert expected == pytest.approx(float(lam[:k].sum() / lam.sum()) * d / k)
    g = torch.Generator().manual_seed(1)
    draws = [_np_rsf(torch.randn(d_out, d, generator=g, dtype=torch.float64) @ root, A) for _ in range(200)]
    assert np.mean(draws) == pytest.approx(expected, rel=0.03) and expected > 5  # far above the null's 1

    index = pd.MultiIndex.from_tuples([(layer, role) for layer in range(4) for role in ("q", "k")],
                                      names=["layer", "role"])

    def series(make):
        return pd.Series([_np_rsf(make(), A) for _ in index], index=index)

    def shaped():
        return torch.randn(d_out, d, generator=g, dtype=torch.float64) @ root

    def planted():
        return torch.randn(d_out, k, generator=g, dtype=torch.float64) @ A.T + \
            0.01 * torch.randn(d_out, d, generator=g, dtype=torch.float64)

    def isotropic():
        return torch.randn(d_out, d, generator=g, dtype=torch.float64)

    controls = {BASE_LABEL: series(shaped), SPECTRUM_LABEL: pd.Series(expected, index=index)}
    by_spectrum = series(shaped)
    comps = compare(by_spectrum, controls, "concentrated")
    assert by_spectrum.min() > 3 and [c.answer for c in comps] != ["yes", "yes"]
    assert specific_word(comps, "concentrated").startswith("not specific: no more than")
    diff = (by_spectrum - controls[BASE_LABEL]).to_numpy()
    half = st.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
    assert (comps[0].diff.estimate, comps[0].diff.low, comps[0].diff.high) == pytest.approx(
        (diff.mean(), diff.mean() - half, diff.mean() + half))
    assert comps[0].diff.n == 8 and comps[1].control.estimate == pytest.approx(expected)

    in_A = compare(series(planted), controls, "concentrated")
    assert [c.answer for c in in_A] == ["yes", "yes"] and specific_word(in_A, "concentrated") == "yes"
    iso = series(isotropic)
    assert specific_word(compare(iso, controls, "isotropic"), "isotropic") == "yes"
    assert specific_word(compare(iso, controls, "concentrated"), "concentrated").startswith("not specific")


def test_rsf_controls_against_a_direct_computation(organism, tmp_path):
    """``rsf_controls`` on the organism's pretrained weights: W_base's RSF and the random gradient-shaped update's
    expected RSF, against the q input's second moment collected here with a forward hook over the same calibration
    tokens (read side) and the unembedding's right singular vectors (write side), in numpy."""
    from safetensors.torch import load_file

    from rwedit.apps.quickstart.report import CLAIM_CELLS
    from rwedit.apps.quickstart.specificity import rsf_controls
    from rwedit.checkpoints import Checkpoint
    from rwedit.probes.pipeline import CalibrationSettings, calibration_pass

    calib = CalibrationSettings("bundled:wikitext-2/valid.txt.gz", tokens=2048, seq_len=64)
    df = rsf_controls(str(organism.pretrained), calib, (1, 4, 64), CLAIM_CELLS)
    assert set(zip(df["role"], df["side"], df["subspace"])) == {("q", "read", "activation"),
                                                                ("k", "read", "activation"),
                                                                ("o", "write", "prediction"),
                                                                ("down", "write", "prediction")}
    assert sorted(set(df["k"])) == [1, 4]  # k = 64 is not below d = 32 of the reduced organism
    W = load_file(str(organism.pretrained / "model.safetensors"))
    model, _, ids = calibration_pass(Checkpoint.open(organism.pretrained), calib)
    seen = []
    h = model.model.layers[1].self_attn.q_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        model(ids)
    h.remove()
    x = torch.cat(seen).reshape(-1, seen[0].shape[-1]).double().numpy()
    lam, vec = np.linalg.eigh(x.T @ x)
    lam, vec = lam[::-1], vec[:, ::-1]
    row = df[(df["layer"] == 1) & (df["role"] == "q") & (df["k"] == 4)].iloc[0]
    assert row["base_rsf"] == pytest.approx(_np_rsf(W["model.layers.1.self_attn.q_proj.weight"], vec[:, :4]),
                                            rel=1e-4)
    assert row["spectrum_rsf"] == pytest.approx(lam[:4].sum() / lam.sum() * 32 / 4, rel=1e-4)
    U = W["lm_head.weight"].double().numpy()
    s, V = np.linalg.svd(U, full_matrices=False)[1:]
    row = df[(df["layer"] == 0) & (df["role"] == "down") & (df["k"] == 4)].iloc[0]
    assert row["base_rsf"] == pytest.approx(_np_rsf(W["model.layers.0.mlp.down_proj.weight"].T, V[:4].T), rel=1e-4)
    assert row["spectrum_rsf"] == pytest.approx((s[:4] ** 2).sum() / (s ** 2).sum() * 32 / 4, rel=1e-4)


def test_findings_pooled_over_seeds_against_scipy(tmp_path):
    """Per-seed rows kept as they are; each value pooled as the mean over seeds with a t interval on n − 1
    degrees of freedom (scipy); verdicts counted over seeds; the table says whether each claim holds on all of
    them; the CSV loads back as written."""
    import pandas as pd
    from scipy import stats as st

    from rwedit.apps.quickstart.replicate import findings_frame, holds, per_seed_table, pooled_table, write_findings
    from rwedit.apps.quickstart.report import Finding
    from rwedit.stats import interval, over_members

    rsf = {0: [8.4, 9.1], 1: [8.35, 7.0], 2: [8.31, 9.9]}
    causal = {0: "yes", 1: "inconclusive", 2: "inconclusive"}
    found = {s: [Finding("line", "RW: read side", "yes", "n", "not specific: no more than SFT",
                         (("RSF", over_members(v)), ("RSF − SFT", interval(v[0] - v[1], 0.3)))),
                 Finding("line", "RW causal", causal[s], "n", "—", (("effect at α=8", interval(0.1 + s / 50, 0.05)),)),
                 Finding("line", "measured only", "concentrated", "n"),
                 # a claim answerable on one seed only (the others' full shift not detectable): no interval
                 Finding("line", "one seed", *(("no", "n", "—", (("R", interval(0.03, 0.1)),)) if s == 0 else
                                              ("inconclusive: not detectable", "m")))] for s, v in rsf.items()}
    frame = write_findings(tmp_path, found)
    back = pd.read_csv(tmp_path / "findings.csv")
    assert len(back) == len(frame) and list(back.columns) == list(frame.columns)
    seed_rows = frame[frame["scope"] == "seed"]
    assert len(seed_rows) == 3 * 5 and set(seed_rows["seed"]) == {0, 1, 2}
    pooled = frame[frame["scope"] == "pooled"].set_index(["claim", "quantity"])
    x = np.array([np.mean(v) for v in rsf.values()])
    half = st.t.ppf(0.975, 2) * x.std(ddof=1) / math.sqrt(3)
    r = pooled.loc[("RW: read side", "RSF")]
    assert (r["estimate"], r["low"], r["high"], r["n"]) == pytest.approx((x.mean(), x.mean() - half,
                                                                          x.mean() + half, 3))
    assert r["null_holds"] == 3 and r["specific_holds"] == 0 and r["null"] == "yes (3/3)"
    c = pooled.loc[("RW causal", "effect at α=8")]
    assert c["null_holds"] == 1 and c["null"] == "inconclusive (2/3), yes (1/3)"
    assert c["estimate"] == pytest.approx(0.12)
    assert pd.isna(pooled.loc[("measured only", "")]["null_holds"])
    table = pooled_table(frame)
    row = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table[2:]}
    assert row["RW: read side"][2] == "yes" and row["RW causal"][2] == "no (1 of 3)"
    assert row["measured only"][2] == "same on all" and "(t over 3 seeds)" in row["RW: read side"][3]
    assert row["measured only"][3] == "seed 0: n; seed 1: n; seed 2: n"  # nothing to pool: each seed's numbers
    assert "RSF of" not in row["RW: read side"][3] and f"{x.mean():.3g}" in row["RW: read side"][3]
    assert row["one seed"][0] == "inconclusive: not detectable (2/3), no (1/3)" and row["one seed"][2] == "no (0 of 3)"
    assert row["one seed"][3] == "R 0.03 (one seed has a value: no interval)"
    assert [c.strip() for c in per_seed_table(frame)[0].split("|")[2:5]] == ["seed 0", "seed 1", "seed 2"]
    one = findings_frame({0: found[0]})  # one seed: the pooled rows carry no interval
    assert one[one["scope"] == "pooled"]["low"].isna().all()
    assert [holds(w) for w in ("yes", "yes, yes", "yes, inconclusive", "no: the reverse", "not specific: x, y",
                               "measured", "—", "concentrated")] == [True, True, False, False, False, None, None, None]


@pytest.mark.slow
def test_quickstart_over_two_seeds(organism, tmp_path):
    """`seeds: 2`: every stage on the seed-0 organism (reused) and a seed-1 organism (built) into seed_0/ and
    seed_1/, the organisms' weights differ, and the pooled report, table and findings.csv hold every claim of
    both seeds with the pooled numbers equal to the mean of the seeds' own; `rwedit organism --seeds 2` lists
    both. (About 40 s on 2 idle cores: the second organism and two quickstarts.)"""
    import pandas as pd

    from rwedit.apps.quickstart import QuickstartRecipe, run_quickstart

    recipe = _tiny_quickstart(QuickstartRecipe, tmp_path)
    out = tmp_path / "qs"
    result = run_quickstart(replace(recipe, seeds=2), out, organism_root=organism.root.parent, use_reduced=True)
    assert result.report == out / "report.md" and result.findings[0].startswith("| claim")
    models = [json.loads((out / f"seed_{s}/quickstart.json").read_text())["models"]["model"] for s in (0, 1)]
    assert models[0] == str(organism.pretrained) and models[1] != models[0]
    assert not torch.equal(_tensors(organism.pretrained)["lm_head.weight"],
                           _tensors(organism.root.parent / models[1].split("/")[-2] / "pretrained")["lm_head.weight"])
    frame = pd.read_csv(out / "findings.csv")
    for s in (0, 1):
        own = pd.read_csv(out / f"seed_{s}/findings.csv")
        mine = frame[(frame["scope"] == "seed") & (frame["seed"] == s)].reset_index(drop=True)
        assert list(own[own["scope"] == "seed"]["claim"]) == list(mine["claim"])
    read = frame[(frame["claim"].str.startswith("RW: alignment concentrates")) & (frame["quantity"] == "RSF")]
    per = read[read["scope"] == "seed"]["estimate"]
    assert len(per) == 2 and read[read["scope"] == "pooled"]["estimate"].iloc[0] == pytest.approx(per.mean())
    text = result.report.read_text()
    assert "pooled over 2 independently seeded organisms" in text and "seed_1/report.md" in text
    assert all(line in text for line in result.findings)
    assert "RW causal" in text and "specific to the objective" in result.findings[0]
    # `rwedit organism --seeds 2` reuses both organisms and lists each
    from rwedit.apps.kinds import OrganismOptions, run_organism_kind

    res = run_organism_kind(OrganismConfig(), overrides=OrganismOptions(
        reduced=True, seeds=2, organism_root=organism.root.parent))
    assert res.folder == organism.root.parent and "## seed 1" in res.lines
    assert f"pretrained: {organism.pretrained}" in res.lines and f"pretrained: {models[1]}" in res.lines


def _tiny_quickstart(recipe_cls, tmp_path):
    """The shipped quickstart recipe with the control experiment and the probe cut to seconds."""
    from importlib.resources import files

    recipe = recipe_cls.from_yaml(files("rwedit.recipes") / "quickstart.yaml")
    exp = dict(recipe.control_experiment)
    exp["edit"] = {**exp["edit"], "alpha": [2.0], "controls": {"random": 2, "lowvar": 0, "write": None},
                   "edit": {**exp["edit"]["edit"], "v": "principal[0..0]"},
                   "calibration": {**exp["edit"]["calibration"], "tokens": 2048, "seq_len": 64}}
    exp["eval"] = {**exp["eval"], "tasks": ["rwedit_hh_preference"], "limit": 4}
    exp["direct"] = {"pairs": 8, "texts": 4, "seq_len": 64, "max_len": 96}
    exp["export"] = []
    return replace(recipe, control_experiment=exp,
                   probe=replace(recipe.probe, tokens=2048, seq_len=64, ks=(1, 4), null_seeds=0))
