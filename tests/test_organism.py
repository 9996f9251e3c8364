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

from rwedit.organism import (AlignSettings, OrganismConfig, OrganismError, PretrainSettings, build_organism,
                             check_aligned, graded_config, left_truncate_prompt, preference_dataset,
                             preference_metrics, reduced)


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    """The reduced organism of the quickstart's --reduced path: pretrained, aligned (λ=1), SFT (λ=0)."""
    root = tmp_path_factory.mktemp("organisms")
    return build_organism(reduced(), root, progress=False)


def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


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
    trainer = DPOTrainer(model=policy, args=graded_config(cfg, lam, tmp_path, progress=False), train_dataset=data,
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
    with pytest.raises(OrganismError, match="unknown organism.align keys"):
        OrganismConfig.from_dict({"align": {"stepz": 3}})
    with pytest.raises(OrganismError, match="max_prompt_tokens"):
        OrganismConfig.from_dict({"align": {"max_prompt_tokens": 200, "max_length": 128}})
    with pytest.raises(OrganismError, match="lambdas"):
        OrganismConfig.from_dict({"align": {"lambdas": [0.0, 1.5]}})


def test_shipped_organism_recipe_is_the_default_config():
    from importlib.resources import files

    assert OrganismConfig.from_yaml(files("rwedit.recipes") / "organism.yaml") == OrganismConfig()


def test_quickstart_end_to_end_on_the_reduced_organism(organism, tmp_path):
    """probe → edit → eval → report: every stage's files exist and the first screen reports each claim."""
    from importlib.resources import files

    from rwedit.evals.store import ResultStore
    from rwedit.quickstart import QuickstartRecipe, run_quickstart

    recipe = QuickstartRecipe.from_yaml(files("rwedit.recipes") / "quickstart.yaml")
    exp = dict(recipe.experiment)
    exp["edit"] = {**exp["edit"], "alpha": [2.0], "controls": {"random": 2, "lowvar": 1, "write": "o"},
                   "calibration": {**exp["edit"]["calibration"], "tokens": 2048, "seq_len": 64}}
    exp["eval"] = {**exp["eval"], "limit": 4}
    exp["direct"] = {"pairs": 8, "texts": 4, "seq_len": 64, "max_len": 96}
    exp["export"] = ["principal0_a2"]
    recipe = replace(recipe, experiment=exp, probe=replace(recipe.probe, tokens=2048, seq_len=64, ks=(1, 4),
                                                            null_seeds=2))
    out = tmp_path / "qs"
    report = run_quickstart(recipe, out, progress=False, cache_dir=tmp_path / "cache",
                            organism_root=organism.root.parent, use_reduced=True)
    text = report.read_text()
    first = text.split("## The organism")[0]
    for claim in ("read side of q, k", "write side of o, down", "prediction subspace", "RW causal test",
                  "HC (base → aligned)", "Spikedness"):
        assert claim in first, claim
    rows = ResultStore(out / "experiment").rows()
    assert [r["kind"] for r in rows] == ["base", "principal", "random", "random", "lowvar", "write"]
    card = json.loads((out / "experiment/edit/adapters/principal0_a2/rwedit.json").read_text())
    assert card["metrics"]["pref_margin_shift"] == pytest.approx(rows[1]["pref_margin_shift"])
    for f in ("probe_aligned/rsf.csv", "probe_sft/rsf.csv", "svd_aligned/svd.csv", "training/trajectory.png",
              "training/trajectory_pretrain.csv", "experiment/report.md", "quickstart.json"):
        assert (out / f).exists(), f
    # the claim numbers in the report are the probe's own headline numbers
    import pandas as pd

    h = pd.read_csv(out / "probe_aligned/headline.csv")
    sel = h[h["role"].isin(["q", "k"]) & (h["side"] == "read") & (h["subspace"] == "activation") & (h["k"] == 4)]
    assert f"RSF {sel['rsf_mean'].mean():.3g}" in first
    # a rerun into the same folder reuses everything (no new rows, same report head)
    run_quickstart(recipe, out, progress=False, cache_dir=tmp_path / "cache", organism_root=organism.root.parent,
                   use_reduced=True)
    assert len(ResultStore(out / "experiment").rows()) == len(rows)


def test_graded_grid_and_trajectories_against_a_direct_projection(organism, tmp_path):
    """--graded: a third λ is trained from the same pretrained checkpoint (the cached stages are reused), and
    the RSF-vs-λ rows and the pretraining trajectory rows equal ‖P_kᵀ ΔW‖²/‖ΔW‖² / (k/d) computed here with
    the pretrained unembedding's top right singular vectors."""
    from safetensors.torch import load_file

    from rwedit.probes.pipeline import CalibrationSettings
    from rwedit.probes.grid import GridSettings
    from rwedit.quickstart import training_side
    import pandas as pd

    mtime = (organism.aligned / "model.safetensors").stat().st_mtime_ns
    org = build_organism(reduced(), organism.root.parent, progress=False, lambdas=(0.0, 0.5, 1.0))
    assert org.root == organism.root and (org.aligned / "model.safetensors").stat().st_mtime_ns == mtime
    calib = CalibrationSettings("bundled:wikitext-2/valid.txt.gz", tokens=2048, seq_len=64)
    training_side(org, tmp_path, calib, GridSettings(), tmp_path / "cache", progress=False)
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
    from rwedit.quickstart import findings

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
