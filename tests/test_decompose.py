"""The decomposition experiment (``experiment: decompose``): its parts summed on the weights are the observed
update exactly (adapters and weight writes, every layout, a LoRA post), and its verdicts find a planted
behaviour-carrying subspace and say "no" to an update that prefers none."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import HH_RLHF, WIKITEXT
from rwedit.architectures import get_weight, model_layout
from rwedit.bundled import HH_HELDOUT
from rwedit.stats import paired_ratio
from tiny_models import save_pair, tiny_model

DIRECT = {"pairs": 48, "texts": 2, "seq_len": 32, "max_len": 64}
CALIB = {"data": str(WIKITEXT), "tokens": 4096, "seq_len": 64}


def recipe(root, post="post", **parts) -> dict:
    return {"experiment": "decompose", "model": str(root / "base"), "post": str(root / post), "calibration": CALIB,
            "parts": {"ks": [2, 4], "random": 2, "ranks": [1, 64], **parts}, "eval": None, "direct": DIRECT}


def test_paired_ratio_matches_a_bootstrap_of_the_same_items():
    g = np.random.default_rng(0)
    den = 1.0 + g.normal(size=400)
    num = 0.3 * den + 0.5 * g.normal(size=400)
    iv = paired_ratio(num, den)
    boot = [num[i].mean() / den[i].mean() for i in g.integers(0, 400, size=(4000, 400))]
    assert iv.estimate == pytest.approx(num.mean() / den.mean())
    assert iv.se == pytest.approx(np.std(boot), rel=0.1)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "phi3", "lora"])  # plain; Conv1D + fused QKV; fused
def test_parts_summed_on_the_weights_are_the_observed_update(tmp_path, wiki_tokenizer, model_type):  # qkv, gate_up
    """Every k: the principal adapter (B·A read off PEFT's own delta) plus the complement written in place is
    ΔW on every cell (1e-6); the top-r adapter at full rank and the full write are ΔW; the shares are norms of
    those deltas; every write is undone bit for bit. A LoRA post's ΔW is its scale·B·A."""
    from peft import LoraConfig, get_peft_model

    from rwedit.evals.core import load_recipe
    from rwedit.evals.decompose import _prepare

    kw = dict(vocab_size=len(wiki_tokenizer), max_position_embeddings=256, pad_token_id=0)
    mt = "llama" if model_type == "lora" else model_type
    base, post = tiny_model(mt, **kw), tiny_model(mt, **kw)
    post.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in post.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    save_pair(tmp_path, wiki_tokenizer, models=(base, post))
    name = "post"
    if model_type == "lora":  # a LoRA adapter over the base as the post side (ΔW of rank 3 on q, k, o, down)
        cfg = LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj", "k_proj", "o_proj", "down_proj"],
                         init_lora_weights=False)
        get_peft_model(copy.deepcopy(base), cfg).save_pretrained(tmp_path / "lora")
        name = "lora"
    _, rec = load_recipe(recipe(tmp_path, name, units="all", random=1))
    prep = _prepare(rec, tmp_path / "run")
    model = prep.model
    bare = model.base_model.model
    before = {n: p.detach().clone() for n, p in bare.named_parameters() if "lora_" not in n}
    want = {}
    for view in model_layout(bare).views(None):
        if view.role == "unembed":
            continue
        d = get_weight(post, view.layer, view.role).double() - get_weight(base, view.layer, view.role).double()
        if model_type == "lora":
            from rwedit.checkpoints import LoraPost
            from rwedit.checkpoints import Checkpoint

            lr = LoraPost.open(tmp_path / "lora", Checkpoint.open(tmp_path / "base")).role_delta(view)
            d = torch.zeros_like(d) if lr is None else lr.dense()
        if d.any():
            want[(view.layer, view.role)] = d
    conds = {c.name: c for c in prep.conditions}
    assert sorted(c for c in conds if c != "base") == sorted(
        ["full", "complement_k2", "complement_k4", "svd_r1", "svd_r64", "principal_k2", "principal_k4",
         "random_k2_s1", "random_k4_s1", "randnorm_k2_s1", "randnorm_k4_s1"])
    layout = model_layout(bare)

    def adapter_delta(name, cell):
        view = layout.view(*cell)
        lora = bare.get_submodule(view.module)
        return view.extract(lora.get_delta_weight(name).detach()).double()

    def written(name):
        with conds[name].intervention.applied(model):
            return {c: get_weight(bare, *c).double() - get_weight(base, *c).double() for c in want}

    total = sum(float(d.square().sum()) for d in want.values())
    for k in (2, 4):
        comp = written(f"complement_k{k}")
        for cell, d in want.items():
            assert (adapter_delta(f"principal_k{k}", cell) + comp[cell] - d).abs().max() < 1e-6, (k, cell)
        share = sum(float(adapter_delta(f"principal_k{k}", c).square().sum()) for c in want) / total
        assert conds[f"principal_k{k}"].info["share"] == pytest.approx(share, rel=1e-5)
        assert conds[f"complement_k{k}"].info["share"] == pytest.approx(1 - share, rel=1e-5, abs=1e-9)
        for c in want:  # norm-matched: each cell's random part has the principal part's norm
            assert adapter_delta(f"randnorm_k{k}_s1", c).norm() == pytest.approx(
                float(adapter_delta(f"principal_k{k}", c).norm()), rel=1e-5)
    full = written("full")
    for cell, d in want.items():
        assert (full[cell] - d).abs().max() < 1e-6 and (adapter_delta("svd_r64", cell) - d).abs().max() < 1e-6
    assert conds["svd_r64"].info["share"] == pytest.approx(1.0) and conds["full"].info["share"] == 1.0
    assert all(torch.equal(p, before[n]) for n, p in bare.named_parameters() if "lora_" not in n)
    assert sorted(p.name for p in (tmp_path / "run" / "adapters").iterdir() if p.is_dir()) == sorted(
        n for n in conds if n not in ("base", "full") and not n.startswith("complement"))


# ----------------------------------------------------------------------------- planted updates


def _margin_gradients(model, tok, cells, n_pairs):
    """G = ∂ mean margin / ∂W of each cell over the scorer's held-out pairs (d_out × d_in): the linear
    response of the behaviour to an update, ⟨G, ΔW⟩."""
    from rwedit.data import read_pairs
    from rwedit.scoring import encode_pairs, response_logprob

    pairs = read_pairs(HH_RLHF, limit=n_pairs, indices=HH_HELDOUT)
    layout = model_layout(model)
    params = {c: model.get_parameter(layout.view(*c).param) for c in cells}
    model.zero_grad()
    for p in params.values():
        p.requires_grad_(True)
    for i in range(0, len(pairs), 8):
        chunk = pairs[i: i + 8]
        prompts = [p.prompt for p in chunk]
        m = (response_logprob(model, encode_pairs(tok, prompts, [p.chosen for p in chunk], DIRECT["max_len"]))
             - response_logprob(model, encode_pairs(tok, prompts, [p.rejected for p in chunk], DIRECT["max_len"])))
        (m.sum() / len(pairs)).backward()
    return {c: p.grad.detach().double().clone() for c, p in params.items()}


def _activation_basis(model, tok, cell, k):
    """A_k of a cell's input, re-derived here: top-k eigenvectors of E[a aᵀ] over the calibration tokens."""
    from rwedit.data import pack_tokens, read_texts

    ids = pack_tokens(tok, read_texts(CALIB["data"]), CALIB["seq_len"], CALIB["tokens"])
    acc = []
    module = model.get_submodule(model_layout(model).view(*cell).module)
    h = module.register_forward_pre_hook(lambda m, a: acc.append(a[0].detach().reshape(-1, a[0].shape[-1]).double()))
    with torch.no_grad():
        for i in range(0, len(ids), 8):
            model(input_ids=ids[i: i + 8])
    h.remove()
    a = torch.cat(acc)
    return torch.linalg.eigh(a.T @ a)[1].flip(1)[:, :k]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, wiki_tokenizer):
    """Two planted pairs on one tiny base, each with an update on q of layer 0 (read side) and o of layer 1
    (write side) scaled to the same linear shift of the margin, ⟨G, ΔW⟩ = 1.5 nats:
    - ``known``: ΔW = c·G·A Aᵀ (read) and c·P Pᵀ·G (write): the behaviour-carrying update lies in A_4 / P_4;
    - ``none``: ΔW = c·G⁻ᵀ, so that ⟨G, ΔW·S Sᵀ⟩ = ⟨G, S Sᵀ·ΔW⟩ = c·k for every k-subspace S: to first order every
      subspace of the same k carries the same share of the shift; no subspace is preferred."""
    from rwedit.evals.core import run_recipe

    tok, k, target, n_pairs = wiki_tokenizer, 4, 1.5, 96
    base = tiny_model("llama", vocab_size=len(tok), max_position_embeddings=256, pad_token_id=0)
    read, write = (0, "q"), (1, "o")
    G = _margin_gradients(base, tok, [read, write], n_pairs)
    A = _activation_basis(base, tok, read, k)
    P = torch.linalg.svd(base.lm_head.weight.detach().double(), full_matrices=False)[2][:k].T
    plants = {"known": {read: G[read] @ A @ A.T, write: P @ P.T @ G[write]},
              "none": {c: torch.linalg.inv(G[c]).T for c in (read, write)}}
    out = {}
    for name, deltas in plants.items():
        post = copy.deepcopy(base)
        for cell, d in deltas.items():
            d = d * (target / float((G[cell] * d).sum()))
            w = post.get_parameter(model_layout(post).view(*cell).param)
            with torch.no_grad():
                w.add_(d.to(w.dtype))
        root = save_pair(tmp_path_factory.mktemp(name), tok, models=(base, post))
        rec = recipe(root, ks=[k], random=4, ranks=[1, 4, 32])
        rec["direct"], rec["verdicts"] = {**DIRECT, "pairs": n_pairs}, {"margin": 0.2, "keep": 0.8}
        out[name] = run_recipe(rec, root / "run").folder
    return out


def _verdicts(folder) -> dict:
    import pandas as pd

    v = pd.read_csv(folder / "verdicts.csv")
    return {row["claim"]: row for _, row in v.iterrows()}


def test_a_planted_behaviour_subspace_is_found(planted):
    """The update lies in A_4 (read) and P_4 (write): the principal part keeps the whole shift, random parts of
    the same k little, pooled over both sides; the complement keeps nothing."""
    import pandas as pd

    v = _verdicts(planted["known"])
    for claim in ("principal > random", "principal > norm-matched random"):
        assert v[claim]["answer"] == "yes", (claim, v[claim]["effect"], v[claim]["ci_low"])
    # all of ΔW lies in the principal part: it keeps exactly its share (1) of the shift, no more
    assert v["principal keeps more than its norm share"]["answer"] == "no"
    assert abs(v["principal keeps more than its norm share"]["effect"]) < 1e-4
    parts = pd.read_csv(planted["known"] / "parts.csv").set_index("condition")
    for unit in ("read", "write"):
        assert parts.loc[f"{unit}_principal_k4", "share"] == pytest.approx(1.0)
        assert parts.loc[f"{unit}_principal_k4", "retained"] == pytest.approx(1.0, abs=1e-4)  # the same weights
        assert abs(parts.loc[f"{unit}_complement_k4", "retained"]) < 1e-4
    text = (planted["known"] / "report.md").read_text()
    assert text.index("## Findings") < text.index("## Parts") and (planted["known"] / "report.html").exists()


def test_an_update_with_no_preferred_subspace_gets_no(planted):
    """ΔW = c·G⁻ᵀ: every 4-subspace keeps 4/32 of the shift to first order, so the principal part does not keep
    more than random parts of the same k: "no" (its interval lies below the margin, 0.2 of the shift)."""
    import pandas as pd

    v = _verdicts(planted["none"])["principal > random"]
    assert v["answer"] == "no" and abs(v["effect"]) < 0.1, (v["effect"], v["ci_high"])
    parts = pd.read_csv(planted["none"] / "parts.csv").set_index("condition")
    for unit in ("read", "write"):  # the first-order share 4/32 lies within each principal part's 95% interval
        assert parts.loc[f"{unit}_principal_k4", "retained_ci_low"] < 4 / 32 < parts.loc[f"{unit}_principal_k4",
                                                                                          "retained_ci_high"]


def test_the_smallest_top_r_that_keeps_the_behaviour_is_exported_with_its_card(planted):
    """The known update has rank 4 per cell: top-4 keeps the shift, top-1 not; the r = 4 adapter's card carries
    the measured retained fraction."""
    import json

    folder = planted["known"]
    text = (folder / "report.md").read_text()
    for unit in ("read", "write"):
        info = json.loads((folder / "adapters" / f"{unit}_svd_r4" / "rwedit.json").read_text())
        assert info["metrics"]["retained_fraction"]["value"] == pytest.approx(1.0, abs=1e-4)
        assert "retained_fraction" in (folder / "adapters" / f"{unit}_svd_r4" / "README.md").read_text()
        assert "metrics" not in json.loads((folder / "adapters" / f"{unit}_svd_r1" / "rwedit.json").read_text())
        assert f"exported: adapters/{unit}_svd_r4" in text


def test_the_shipped_recipe_parses_and_bad_recipes_are_refused(tmp_path, wiki_tokenizer):
    from rwedit.errors import ConfigError
    from rwedit.evals.core import load_recipe, run_recipe

    kind, rec = load_recipe("decompose")
    assert kind.name == "decompose" and rec.parts.units == "side" and kind.plan is not None
    root = save_pair(tmp_path / "m", wiki_tokenizer, seed=3)
    bad = recipe(root, ks=[32])
    with pytest.raises(ConfigError, match="not below the read side"):
        run_recipe(bad, tmp_path / "run")
    with pytest.raises(ConfigError, match="give `calibration:`"):
        run_recipe({**recipe(root), "calibration": None}, tmp_path / "run")
    with pytest.raises(ConfigError, match="units"):
        load_recipe({**recipe(root), "parts": {"units": "heads"}})
    assert not (tmp_path / "run").exists()



def test_an_interrupted_run_resumes_to_the_same_rows_and_the_plan_lists_its_parts(tmp_path, wiki_tokenizer):
    """Stopped after 3 conditions and resumed (the parts rebuilt, the adapters written once): the rows of an
    uninterrupted run; `rwedit plan` names every unit's parts before any weights load."""
    from conftest import assert_same_rows
    from rwedit.apps.plan import plan_recipe
    from rwedit.evals.core import run_recipe
    from rwedit.evals.store import ResultStore

    root = save_pair(tmp_path / "m", wiki_tokenizer, seed=3, max_position_embeddings=256, pad_token_id=0)
    rec = recipe(root, ks=[2], random=1, ranks=[1], units="layer")
    rec["direct"] = {**DIRECT, "pairs": 8}
    names = ["full", "principal_k2", "random_k2_s1", "randnorm_k2_s1", "complement_k2", "svd_r1"]
    plan = plan_recipe(rec, out=tmp_path / "plan")
    assert plan.conditions == [f"L{l}_{n}" for l in (0, 1) for n in names]
    assert "statistics" in [s.name for s in plan.stages]
    whole = run_recipe(rec, tmp_path / "whole").folder
    stopped = run_recipe(rec, tmp_path / "cut", stop_after=3)
    assert stopped.report is None and len(ResultStore(tmp_path / "cut").rows()) == 3
    run_recipe(rec, tmp_path / "cut", resume=True)
    assert_same_rows(ResultStore(tmp_path / "cut").rows(), ResultStore(whole).rows())
    assert (tmp_path / "cut" / "report.md").exists()
