"""Recipes that fit any model: layers relative to depth resolve per model, `--set` overrides any key and
lands in the recorded recipe, and a recipe that cannot fit fails before any work."""

from __future__ import annotations

import json

import pytest
import yaml

from rwedit.cli import main
from rwedit.config import apply_sets
from rwedit.editor.spec import resolve_layer
from rwedit.errors import ConfigError, SpecError
from rwedit.evals.store import ResultStore
from conftest import WIKITEXT
from tiny_models import save_pair


@pytest.mark.parametrize("given,n,want", [
    (0, 4, 0), (3, 4, 3), (-1, 4, 3), (-4, 4, 0), (0.5, 4, 2), (0.5, 5, 2), (0.5, 24, 12), (0.0, 7, 0),
    (1.0, 7, 6), (0.25, 9, 2), ("mid", 5, 2), ("first", 5, 0), ("last", 5, 4), ("MID", 12, 6)])
def test_relative_layers_resolve_to_the_index_a_researcher_means(given, n, want):
    assert resolve_layer(given, n) == want


@pytest.mark.parametrize("given,match", [(1.5, r"fraction of the depth lies in \[0, 1\]"), (-0.5, "fraction"),
                                         ("middle-ish", "one of first, mid"), (4, "layers 0..3"), (-5, "layers 0..3")])
def test_layers_that_cannot_resolve_are_refused(given, match):
    with pytest.raises(SpecError, match=match):
        resolve_layer(given, 4)


def test_sets_override_nested_keys_as_yaml_values_and_leave_the_input_alone():
    raw = {"edit": {"edit": {"layers": [1]}}, "eval": {"limit": 100}}
    out = apply_sets(raw, ["edit.edit.layers=[0.5, -1]", "eval.limit=50", "direct.pairs=all", "eval.tasks=null"])
    assert out == {"edit": {"edit": {"layers": [0.5, -1]}}, "eval": {"limit": 50, "tasks": None},
                   "direct": {"pairs": "all"}}
    assert raw["eval"]["limit"] == 100
    for bad, match in (("eval.limit", "KEY=VALUE"), ("eval..limit=3", "KEY=VALUE"),
                       ("eval.limit.x=3", "is a value, not a section"), ("eval.limit=[1", "not valid YAML")):
        with pytest.raises(ConfigError, match=match):
            apply_sets(raw, [bad])


def _recipe(root) -> dict:
    return {
        "name": "relative",
        "edit": {"model": str(root / "base"), "post": str(root / "post"),
                 "calibration": {"data": str(WIKITEXT), "tokens": 512, "seq_len": 64},
                 "edit": {"layers": ["mid", -1], "per_layer": True, "role": "q", "v": "principal[0]", "b": "delta"},
                 "alpha": [2.0], "controls": {"random": 1, "lowvar": 0, "write": None}},
        "eval": None, "probe": {"enabled": False},
        "direct": {"pairs": 4, "texts": 2, "seq_len": 32, "max_len": 128},
    }


@pytest.mark.parametrize("depth,layers", [(3, [1, 2]), (5, [2, 4])])
def test_one_recipe_with_relative_layers_runs_on_models_of_different_depth(tmp_path, monkeypatch, wiki_tokenizer,
                                                                           depth, layers):
    """The same recipe file on a 3-layer and a 5-layer model: `mid` and `-1` land on each model's own
    layers; --set overrides (a nested key and a list) are in the recorded recipe and take effect."""
    root = save_pair(tmp_path / "m", wiki_tokenizer, seed=3, num_hidden_layers=depth, max_position_embeddings=1024,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2)
    recipe = tmp_path / "relative.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(root)))
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--quiet", "--set", "direct.pairs=3",
                 "--set", "edit.alpha=[1.5]"]) == 0
    rows = ResultStore(out).rows()
    edits = [r for r in rows if r["condition"] != "base"]
    assert sorted({r["layers"][0] for r in edits}) == layers
    assert sorted(r["condition"] for r in edits) == sorted(f"L{l}_{k}_a1p5" for l in layers
                                                         for k in ("principal0", "random_s1"))
    assert all(r["alpha"] == 1.5 and r["n_pairs"] == 3 for r in rows if r["condition"] != "base")
    config = json.loads((out / "run.json").read_text())["config"]
    assert config["direct"]["pairs"] == 3 and config["edit"]["alpha"] == [1.5]
    assert config["edit"]["edit"]["layers"] == ["mid", -1]  # the recipe as written; its run says where it landed
    summary = json.loads((out / "edit" / "edits.json").read_text())
    assert summary["layers_given"] == ["mid", -1] and summary["spec"]["edit"]["layers"] == layers


def test_a_recipe_that_cannot_fit_fails_before_any_work(tmp_path, wiki_tokenizer, capsys):
    root = save_pair(tmp_path / "m", wiki_tokenizer, seed=3, num_hidden_layers=2, max_position_embeddings=1024)
    recipe = tmp_path / "r.yaml"
    d = _recipe(root)
    d["edit"]["edit"]["layers"] = [5]
    recipe.write_text(yaml.safe_dump(d))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "layers 0..1" in capsys.readouterr().err and not (tmp_path / "run").exists()
    d["edit"]["edit"]["layers"] = ["mid", "last"]  # both land on layer 1 of a 2-layer model
    recipe.write_text(yaml.safe_dump(d))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "two name the same layer" in capsys.readouterr().err and not (tmp_path / "run").exists()
    # an export entry that names no condition of the resolved spec is refused before the run, too
    d["edit"]["edit"]["layers"] = ["mid"]
    d["export"] = ["L0_principal0_a2"]
    recipe.write_text(yaml.safe_dump(d))
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "did you mean 'L1_principal0_a2'" in capsys.readouterr().err and not (tmp_path / "run").exists()

