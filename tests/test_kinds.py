"""One protocol for every experiment kind: applications take a typed options config and honour resume."""

from __future__ import annotations

import pytest

from rwedit.errors import ConfigError, ExperimentError


def test_application_kinds_take_typed_options_and_honour_resume(tmp_path):
    import rwedit.apps  # noqa: F401  (registers the applications' kinds)
    from rwedit.apps.kinds import OrganismOptions, QuickstartOptions
    from rwedit.evals.core import experiment_kind, run_recipe

    organism, quickstart = experiment_kind("organism"), experiment_kind("quickstart")
    assert organism.options is OrganismOptions and quickstart.options is QuickstartOptions
    with pytest.raises(ConfigError, match="takes no model, post"):
        organism.run_options({"model": "a", "post": "b", "reduced": True})
    assert quickstart.run_options({"model": "a", "post": None}) == QuickstartOptions(model="a")
    assert quickstart.run_options(None) == QuickstartOptions()
    with pytest.raises(ConfigError, match="reduced: expected true or false"):  # checked as every config is
        organism.run_options({"reduced": "yes"})
    (tmp_path / "qs").mkdir()
    (tmp_path / "qs" / "report.md").write_text("an earlier run")
    with pytest.raises(ExperimentError, match="--resume"):  # refused before any stage runs
        run_recipe("quickstart", tmp_path / "qs")
    with pytest.raises(ConfigError, match="takes no sft"):
        run_recipe("organism", tmp_path / "org", overrides={"sft": "x"})


def test_every_kind_states_its_own_plan_and_the_planner_reads_no_recipe_internals(tmp_path, wiki_tokenizer):
    """Each registered kind has a plan hook; the planner asks it (the SVD kind lists its conditions, the eval
    kind one per adapter folder, an application its folder) and reads recipes through typed fields only."""
    from pathlib import Path

    import rwedit.apps  # noqa: F401
    import rwedit.apps.plan as plan_module
    from rwedit.apps.plan import plan_recipe
    from rwedit.evals.core import experiment_kinds
    from tiny_models import save_pair

    assert all(k.plan is not None for k in experiment_kinds())
    text = Path(plan_module.__file__).read_text()
    for banned in ("getattr(recipe", "getattr(spec", "_STORED_DTYPES", "._where", "._shapes", "_looks_like_path",
                   "412"):
        assert banned not in text, banned
    root = save_pair(tmp_path / "m", wiki_tokenizer, seed=3)
    direct = {"pairs": 4, "texts": 2, "seq_len": 32, "max_len": 64}
    svd = plan_recipe({"experiment": "svd-structure", "model": str(root / "base"), "post": str(root / "post"),
                       "eval": None, "direct": direct, "conditions": {"kinds": ["reparam", "disrupt_left_random"],
                                                                      "seeds": [1, 2]}}, out=tmp_path / "svd")
    assert svd.conditions == ["post", "reparam", "disrupt_left_random_s1", "disrupt_left_random_s2"]
    assert [s.name for s in svd.stages] == ["scoring"] and "5 conditions" in svd.stages[0].what
    ev = plan_recipe({"experiment": "eval", "model": str(root / "base"), "eval": None, "direct": direct},
                     out=tmp_path / "ev")
    assert ev.conditions == [] and "1 conditions" in ev.stages[0].what
    qs = plan_recipe("quickstart")
    assert qs.kind == "quickstart" and qs.folder == Path("runs/quickstart") and not qs.stages
