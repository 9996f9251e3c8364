"""From a spec to adapter folders: matched norms, reproducible seeds, closed forms, clear errors."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from rwedit.architectures import add_delta, get_weight
from rwedit.editor.export import push_to_hub, refresh_card
from rwedit.editor.pipeline import compare_generation, run_edit
from rwedit.editor.spec import EditSpec
from rwedit.errors import ExportError, SpecError
from rwedit.cli import main
from conftest import HH_RLHF, WIKITEXT
from tiny_models import save_pair, tiny_model, tiny_pair


@pytest.fixture(scope="module")
def models(tmp_path_factory, wiki_tokenizer):
    base, post = tiny_pair(wiki_tokenizer, seed=7)
    root = save_pair(tmp_path_factory.mktemp("edit-models"), wiki_tokenizer, models=(base, post))
    return root, base, post


def _spec(root, **edit):
    e = dict(layers=[1], role="q", v="principal[0]", b="gradient", objective="preference", data=str(HH_RLHF),
             data_limit=6, max_len=64)
    e.update(edit)
    return EditSpec.from_dict({
        "model": str(root / "base"), "post": str(root / "post"),
        "calibration": {"data": str(WIKITEXT), "tokens": 1024, "seq_len": 64},
        "edit": e, "alpha": [1.0, -2.0], "controls": {"random": 3, "lowvar": 1, "write": "o"}, "seed": 0,
    })


def _factors(folder):
    sd = load_file(folder / "adapter_model.safetensors")
    A = next(v for k, v in sd.items() if "lora_A" in k)
    B = next(v for k, v in sd.items() if "lora_B" in k)
    return A.double(), B.double()


def test_edit_folder_has_matched_controls_cards_and_loadable_adapters(models, tmp_path, wiki_tokenizer):
    root, base, post = models
    out = run_edit(_spec(root), tmp_path / "e")
    info = json.loads((out / "edits.json").read_text())
    kinds = [c["kind"] for c in info["conditions"]]
    assert len(kinds) == 2 * (1 + 3 + 1 + 1)
    assert kinds.count("random") == 6 and kinds.count("write") == 2 and kinds.count("principal") == 2
    for c in info["conditions"]:
        folder = out / "adapters" / c["name"]
        A, B = _factors(folder)
        assert math.isclose(float(A.norm() * B.norm()), abs(c["alpha"]), rel_tol=1e-6)  # ||ΔW||_F = |alpha|
        card = (folder / "README.md").read_text()
        assert card.startswith("---\nlibrary_name: peft") and c["name"] in card
        meta = json.loads((folder / "rwedit.json").read_text())
        assert meta["activation_stats"]["n_tokens"] == 1024 and meta["rwedit_version"]
    principal = next(c for c in info["conditions"] if c["kind"] == "principal")
    assert principal["edits"][0]["v_eigenvalue"] > 0
    lowvar = next(c for c in info["conditions"] if c["kind"] == "lowvar")
    assert lowvar["edits"][0]["v_eigenvalue"] < principal["edits"][0]["v_eigenvalue"]
    # the principal direction is the top of the activation subspace: its read-side RSF at k=1 is d/1
    assert math.isclose(principal["edits"][0]["rsf_read_activation_k1"], 32.0, rel_tol=1e-6)
    # the saved adapter equals W + alpha b v^T applied by hand (b, v read back from the adapter factors)
    name = principal["name"]
    A, B = _factors(out / "adapters" / name)
    ref = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    ref.load_state_dict(base.state_dict())
    add_delta(ref, 1, "q", (B @ A).float())
    ids = torch.randint(3, 500, (2, 12))
    peft_model = PeftModel.from_pretrained(base, str(out / "adapters" / name)).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, ref(ids).logits, atol=2e-5, rtol=2e-5)
    peft_model.unload()


def test_random_controls_are_reproducible_and_differ_across_seeds(models, tmp_path):
    root, *_ = models
    spec = replace(_spec(root), alpha=(1.0,))
    a = run_edit(spec, tmp_path / "a")
    b = run_edit(spec, tmp_path / "b")
    names = [c["name"] for c in json.loads((a / "edits.json").read_text())["conditions"] if c["kind"] == "random"]
    assert len(names) == 3
    for n in names:
        assert (a / "adapters" / n / "adapter_model.safetensors").read_bytes() == \
               (b / "adapters" / n / "adapter_model.safetensors").read_bytes()
    vs = [_factors(a / "adapters" / n)[0] for n in names]
    assert all(float((vs[i] @ vs[j].T).abs()) < 0.99 for i in range(3) for j in range(i + 1, 3))


def test_delta_rule_restricts_the_observed_delta(models, tmp_path):
    root, base, post = models
    spec = replace(_spec(root, b="delta"), alpha=(2.0,))
    out = run_edit(spec, tmp_path / "d")
    info = json.loads((out / "edits.json").read_text())
    dW = (get_weight(post, 1, "q") - get_weight(base, 1, "q")).double()
    for c in info["conditions"]:
        A, B = _factors(out / "adapters" / c["name"])
        if c["kind"] == "write":  # b = top prediction direction u, v ∝ ΔW_o^T u
            dWo = (get_weight(post, 1, "o") - get_weight(base, 1, "o")).double()
            u = B[:, 0] / 2.0
            want = dWo.T @ u
            torch.testing.assert_close(A[0], want / want.norm(), atol=1e-6, rtol=0)
            continue
        v = A[0]
        want = dW @ v
        torch.testing.assert_close(B[:, 0] / 2.0, want / want.norm(), atol=1e-6, rtol=0)


def test_replicate_units_are_one_condition_per_layer_and_direction(models, tmp_path):
    """principal[0..2] on layers 0 and 1 with per_layer: six principal units, each with its own controls at
    its layer; the principal directions are orthogonal with falling eigenvalues, and each b is the observed
    delta of its own layer along its own v (recomputed from the two models' weights)."""
    root, base, post = models
    spec = replace(_spec(root, b="delta", v="principal[0..2]", layers=[0, 1], per_layer=True), alpha=(2.0,))
    out = run_edit(spec, tmp_path / "u")
    conds = json.loads((out / "edits.json").read_text())["conditions"]
    assert [c["name"] for c in conds] == spec.condition_names()
    assert [c["name"] for c in conds if c["kind"] == "principal"] == \
        [f"L{l}_principal{i}_a2" for l in (0, 1) for i in range(3)]
    assert sum(c["kind"] == "random" for c in conds) == 2 * 3 and sum(c["kind"] == "write" for c in conds) == 2
    for layer in (0, 1):
        mine = [c for c in conds if c["name"].startswith(f"L{layer}_")]
        assert len(mine) == 3 + 3 + 1 + 1 and all([e["layer"] for e in c["edits"]] == [layer] for c in mine)
        principal = [c for c in mine if c["kind"] == "principal"]
        vs = torch.stack([_factors(out / "adapters" / c["name"])[0][0] for c in principal])
        torch.testing.assert_close(vs @ vs.T, torch.eye(3, dtype=vs.dtype), atol=1e-6, rtol=0)
        lams = [c["edits"][0]["v_eigenvalue"] for c in principal]
        assert lams == sorted(lams, reverse=True) and lams[2] > 0
        dW = (get_weight(post, layer, "q") - get_weight(base, layer, "q")).double()
        for c in mine:
            if c["kind"] != "write":
                A, B = _factors(out / "adapters" / c["name"])
                want = dW @ A[0]
                torch.testing.assert_close(B[:, 0] / 2.0, want / want.norm(), atol=1e-6, rtol=0)


def test_doses_relative_to_the_observed_update_and_their_yardsticks(models, tmp_path):
    """alpha_rel_observed: on each layer α = r · ‖ΔW_obs v‖ (v: the principal direction), so with b: delta the
    edit at r = 1 is exactly the observed update along v, ΔW_obs v vᵀ, and at r = −3 minus three times it; every
    control of the layer has the same ‖ΔW‖_F. Each edit records ‖W‖_F of its matrix and ‖ΔW_obs v‖; the
    row's α/‖W‖_F and α/‖ΔW_obs v‖ follow. All recomputed here from the two models' state dicts."""
    from rwedit.evals.experiment import _edit_probe_metrics

    root, base, post = models
    spec = replace(_spec(root, b="delta", layers=[0, 1]), alpha=(), alpha_rel_observed=(1.0, -3.0))
    out = run_edit(spec, tmp_path / "r")
    conds = json.loads((out / "edits.json").read_text())["conditions"]
    assert [c["name"] for c in conds] == spec.condition_names() and conds[0]["name"] == "principal0_r1"
    sb, sp = base.state_dict(), post.state_dict()

    def weight(sd, layer, role):
        return sd[f"model.layers.{layer}.self_attn.{role}_proj.weight"].double()

    dW = {l: weight(sp, l, "q") - weight(sb, l, "q") for l in (0, 1)}

    def factors(name, layer):  # the adapter's (v, α b) on one layer's module
        sd = load_file(out / "adapters" / name / "adapter_model.safetensors")
        A, B = (next(v for k, v in sd.items() if f"layers.{layer}." in k and part in k).double()
                for part in ("lora_A", "lora_B"))
        return A[0], B[:, 0]

    for c in conds:
        r = c["dose"]
        assert c["dose_unit"] == "observed" and r in (1.0, -3.0)
        principal = next(p["name"] for p in conds if p["kind"] == "principal" and p["dose"] == r)
        obs = {l: float((dW[l] @ factors(principal, l)[0]).norm()) for l in (0, 1)}
        for e in c["edits"]:
            l, role = e["layer"], e["role"]
            assert e["norm"] == pytest.approx(abs(r) * obs[l], rel=1e-6)  # matched norm on each layer
            assert e["w_norm"] == pytest.approx(float(weight(sb, l, role).norm()), rel=1e-6)
            assert e["observed_ref"] == pytest.approx(obs[l], rel=1e-6)
        m = _edit_probe_metrics(c)
        assert m["alpha_rel_observed"] == pytest.approx(abs(r), rel=1e-6)
        w = math.hypot(*(float(weight(sb, l, c["edits"][0]["role"]).norm()) for l in (0, 1)))
        assert m["alpha_rel_w"] == pytest.approx(abs(r) * math.hypot(obs[0], obs[1]) / w, rel=1e-6)
        if c["kind"] == "principal":  # the edit at r is r × the observed update along v, layer by layer
            for l in (0, 1):
                v, b = factors(c["name"], l)
                torch.testing.assert_close(torch.outer(b, v), r * dW[l] @ torch.outer(v, v), atol=1e-6, rtol=0)
    with pytest.raises(SpecError, match="alpha_rel_observed needs `post:`"):
        replace(spec, post=None, edit=replace(spec.edit, b="gradient"))
    with pytest.raises(SpecError, match="give at least one dose"):
        replace(spec, alpha_rel_observed=())


@pytest.mark.parametrize("v,match", [("principal[3..1]", "range 3..1 is empty"), ("principal[0..]", "principal")])
def test_bad_replicate_ranges_are_refused(models, v, match):
    root, *_ = models
    with pytest.raises(SpecError, match=match):
        _spec(root, v=v).edit.directions()


@pytest.mark.parametrize("change,match", [
    (dict(role="gate_proj"), "edit.role"),
    (dict(role="unembed"), "unembedding"),
    (dict(v="principal[99]"), r"principal\[99\].*only d = 32"),
    (dict(v="top"), "edit.v"),
])
def test_bad_specs_fail_clearly_and_write_nothing(models, tmp_path, change, match):
    root, *_ = models
    with pytest.raises(SpecError, match=match):
        run_edit(_spec(root, **change), tmp_path / "x")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.partial-*"))


def test_other_bad_inputs(models, tmp_path):
    root, *_ = models
    with pytest.raises(SpecError, match="non-zero"):
        replace(_spec(root), alpha=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        run_edit(_spec(root, layers=[7]), tmp_path / "y")
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "old.txt").write_text("an earlier run")
    with pytest.raises(FileExistsError, match="already exists"):
        run_edit(_spec(root), tmp_path / "exists")
    gpt2 = tiny_model("gpt2")
    gpt2.save_pretrained(tmp_path / "gpt2")
    spec = EditSpec.from_dict({"model": str(tmp_path / "gpt2"), "alpha": 1.0,
                               "edit": {"layers": [0], "role": "gate", "v": "random", "b": "given",
                                        "b_given": [1.0] * 48},
                               "controls": {"random": 1, "lowvar": 0, "write": None}})
    from rwedit.editor.edits import build_conditions
    with pytest.raises(SpecError, match="no 'gate' role"):
        build_conditions(spec, gpt2)


def test_export_push_offline_fails_and_leaves_the_folder(models, tmp_path, monkeypatch):
    root, *_ = models
    out = run_edit(replace(_spec(root), alpha=(1.0,)), tmp_path / "e")
    folder = out / "adapters" / "principal0_a1"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "README.md"}
    refresh_card(folder, {"preference_acc": {"value": 0.61, "stderr": 0.02}})
    assert "| preference_acc | 0.61 | 0.02 |" in (folder / "README.md").read_text()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_test_token")
    with pytest.raises(ExportError, match="Nothing was uploaded; the local folder .* is complete") as e:
        push_to_hub(folder, "someone/some-edit")
    assert "hf_secret_test_token" not in str(e.value)
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "README.md"}
    assert before.keys() <= after.keys() and all(after[k] == v for k, v in before.items() if k != "rwedit.json")
    assert not any("hf_secret" in p.read_text(errors="ignore") for p in folder.iterdir())
    assert main(["export", str(folder), "--push-to-hub", "someone/some-edit"]) == 2


def test_apply_shows_base_and_edited_generations(models, tmp_path, capsys):
    root, *_ = models
    out = run_edit(replace(_spec(root), alpha=(25.0,)), tmp_path / "e")
    res = compare_generation(out / "adapters" / "principal0_a25", None, "The history of", max_new_tokens=8)
    assert set(res) == {"prompt", "base", "edited"} and res["base"] != res["edited"]


def test_example_recipe_runs_as_is_with_a_local_model(tmp_path, wiki_tokenizer, capsys):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "edit-example.yaml"
    model = tiny_model("gpt_neox", vocab_size=len(wiki_tokenizer), num_hidden_layers=5, max_position_embeddings=256)
    model.save_pretrained(tmp_path / "m")
    wiki_tokenizer.save_pretrained(tmp_path / "m")
    rc = main(["edit", "--spec", str(recipe), "--model", str(tmp_path / "m"), "--out", str(tmp_path / "out"),
               "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "wrote 24 adapters" in out and "principal0_a1" in out and "write_o_a4" in out


def test_adapter_of_a_hub_base_names_it_loads_from_anywhere_and_has_a_parsable_card(tmp_path, monkeypatch,
                                                                                     wiki_tokenizer):
    """A base given as a Hub id (a local Hub cache laid out in tmp_path): the adapter records the id and the
    exact commit, AutoPeftModelForCausalLM loads base + adapter from another folder and gives W + ΔW by hand,
    and the card parses with ModelCard.load with the metadata and, after export --metrics, the model-index."""
    import huggingface_hub
    from huggingface_hub import ModelCard
    from peft import AutoPeftModelForCausalLM

    base, post = tiny_pair(wiki_tokenizer, seed=7)
    hub = tmp_path / "hub"
    commits = {"base": "a" * 40, "post": "b" * 40}
    for name, m in (("base", base), ("post", post)):
        repo = hub / f"models--org--tiny-{name}"
        m.save_pretrained(repo / "snapshots" / commits[name])
        wiki_tokenizer.save_pretrained(repo / "snapshots" / commits[name])
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commits[name])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    spec = EditSpec.from_dict({
        "model": "org/tiny-base", "post": "org/tiny-post@main",
        "calibration": {"data": str(WIKITEXT), "tokens": 1024, "seq_len": 64},
        "edit": {"layers": [1], "role": "q", "v": "principal[0]", "b": "delta"}, "alpha": [1.5],
        "controls": {"random": 1, "lowvar": 0, "write": None}})
    out = run_edit(spec, tmp_path / "e")
    folder = out / "adapters" / "principal0_a1p5"
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "org/tiny-base" and cfg["revision"] == commits["base"]
    assert json.loads((folder / "rwedit.json").read_text())["base"] == {
        "name_or_path": "org/tiny-base", "revision": commits["base"], "hub": True}
    assert not (out / "adapters" / "README.md").exists()  # no stray PEFT boilerplate card above the adapters
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(folder)).eval()
    A, B = _factors(folder)
    ref = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    ref.load_state_dict(base.state_dict())
    add_delta(ref, 1, "q", (B @ A).float())
    ids = torch.randint(3, 500, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, ref(ids).logits, atol=2e-5, rtol=2e-5)
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "org/tiny-base" and card.data.base_model_relation == "adapter"
    assert card.data.library_name == "peft" and "rwedit" in card.data.tags and card.data.pipeline_tag == "text-generation"
    (tmp_path / "m.json").write_text(json.dumps({"pref_margin_shift": {"value": 0.123456, "stderr": 0.0456},
                                                  "delta_norm": 1.5}))
    assert main(["export", str(folder), "--metrics", str(tmp_path / "m.json")]) == 0
    card = ModelCard.load(folder / "README.md")
    (res,) = card.data.eval_results  # delta_norm has no dataset: it stays in the card's table only
    assert (res.metric_type, res.metric_value, res.metric_args) == ("pref_margin_shift", 0.1235, {"stderr": 0.046})
    assert res.dataset_type == "Anthropic/hh-rlhf" and "| delta_norm | 1.5 |" in card.text


def test_eval_scores_one_adapter_into_a_folder_that_export_puts_on_its_card(models, tmp_path, capsys):
    """`rwedit eval --adapters ONE_ADAPTER --out FOLDER` writes results.jsonl (base + that adapter);
    `rwedit export ADAPTER --metrics FOLDER` takes the adapter's row, each metric with its stderr."""
    from huggingface_hub import ModelCard

    root, *_ = models
    out = run_edit(replace(_spec(root), alpha=(3.0,)), tmp_path / "e")
    adapter = out / "adapters" / "principal0_a3"
    assert main(["eval", "--model", str(root / "base"), "--adapters", str(adapter), "--tasks", "rwedit_blimp",
                 "--limit", "3", "--items", "3", "--out", str(tmp_path / "scores"), "--quiet"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "scores" / "results.jsonl").read_text().splitlines()]
    assert [r["condition"] for r in rows] == ["base", "principal0_a3"] and rows[1]["n_pairs"] == 3
    assert main(["export", str(adapter), "--metrics", str(tmp_path / "scores")]) == 0
    info = json.loads((adapter / "rwedit.json").read_text())
    assert info["metrics"]["pref_margin_shift"] == {"value": rows[1]["pref_margin_shift"],
                                                    "stderr": rows[1]["pref_margin_shift_stderr"]}
    assert "alpha" not in info["metrics"] and not any(k.endswith("_items") for k in info["metrics"])
    card = ModelCard.load(adapter / "README.md")
    assert any(r.metric_type == "rwedit_blimp/acc" for r in card.data.eval_results)
    assert main(["export", str(out / "adapters" / "random_s1_a3"), "--metrics", str(tmp_path / "scores")]) == 2
    assert "no row for 'random_s1_a3'" in capsys.readouterr().err
