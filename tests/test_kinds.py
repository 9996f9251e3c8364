"""One protocol for every experiment kind: applications take a typed options dataclass and honour resume."""

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
    (tmp_path / "qs").mkdir()
    (tmp_path / "qs" / "report.md").write_text("an earlier run")
    with pytest.raises(ExperimentError, match="--resume"):  # refused before any stage runs
        run_recipe("quickstart", tmp_path / "qs", progress=False)
    with pytest.raises(ConfigError, match="takes no sft"):
        run_recipe("organism", tmp_path / "org", overrides={"sft": "x"})
