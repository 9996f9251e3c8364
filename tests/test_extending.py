"""The "Extending rwedit" recipes of docs/extending.md, executed as written: a new architecture, a new
condition type and a new experiment kind, each added in one place from outside the package, work end to end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from rwedit.architectures import get_weight, model_layout, unregister_architecture
from rwedit.evals import core
from rwedit.editor import interventions
from rwedit.evals.store import ResultStore
from tiny_models import save_pair, tiny_model

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def page_block(name: str) -> str:
    """The python block right after ``<!-- extending:NAME -->`` in docs/extending.md."""
    m = re.search(rf"<!-- extending:{name} -->\s*```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    assert m, f"docs/extending.md has no extending:{name} block"
    return m.group(1)


@pytest.fixture(scope="module")
def ns():
    """The page's three blocks executed in one namespace (as a user's module would); registrations undone."""
    namespace: dict = {}
    for name in ("architecture", "intervention", "experiment"):
        exec(compile(page_block(name), f"docs/extending.md:extending:{name}", "exec"), namespace)
    yield namespace
    unregister_architecture("my_llama")
    interventions._INTERVENTIONS.pop("scale_matrix")
    core._KINDS.pop("ablation")


def test_a_new_architecture_gets_every_role_view(ns):
    model = tiny_model("llama")
    ref = {(v.layer, v.role): get_weight(model, v.layer, v.role) for v in model_layout(model).views()}
    model.config.model_type = "my_llama"
    layout = model_layout(model)
    assert layout.spec.name == "my_llama"
    for v in layout.views():
        assert torch.equal(get_weight(model, v.layer, v.role), ref[(v.layer, v.role)]), (v.layer, v.role)


def test_a_new_intervention_is_registered_applied_and_undone_exactly(ns):
    assert interventions.intervention_kinds()["scale_matrix"] is ns["ScaleMatrix"]
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    W = get_weight(model, 1, "o")
    with ns["ScaleMatrix"](1, "o", 0.5).applied(model):
        torch.testing.assert_close(get_weight(model, 1, "o"), 0.5 * W, rtol=0, atol=0)
        assert torch.equal(get_weight(model, 0, "o"), before["model.layers.0.self_attn.o_proj.weight"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_a_new_experiment_kind_runs_resumes_and_reports(ns, tmp_path, wiki_tokenizer):
    root = save_pair(tmp_path / "models", wiki_tokenizer, max_position_embeddings=1024, pad_token_id=0,
                     bos_token_id=1, eos_token_id=2)
    recipe = {"experiment": "ablation", "model": str(root / "base"), "layers": [0, 1], "eval": None,
              "direct": {"pairs": 4, "texts": 2, "seq_len": 32, "max_len": 128}}
    out = tmp_path / "run"
    first = core.run_recipe(recipe, out, stop_after=2)
    assert first.report is None and len(ResultStore(out).rows()) == 2
    res = core.run_recipe(recipe, out, resume=True)
    rows = ResultStore(out).rows()
    assert [r["condition"] for r in rows] == ["base", "zero_o0", "zero_o1"]
    assert res.report == out / "ablation.csv" and res.report.exists()
    assert rows[0]["ce_shift"] == pytest.approx(0, abs=1e-6)  # the base row is the reference
    assert all(abs(r["ce_shift"]) > 1e-4 for r in rows[1:])  # zeroing a matrix changes the loss
    assert core.stored_kind(out).name == "ablation" and core.write_report(out) == out / "ablation.csv"
    assert res.rows["condition"].tolist() == [r["condition"] for r in rows]  # what a notebook gets back
    assert res.tables["ablation"]["ce_shift"].tolist() == pytest.approx([r["ce_shift"] for r in rows])
    with pytest.raises(Exception, match="unknown key"):
        core.run_recipe({**recipe, "layer": [0]}, tmp_path / "bad")


def test_a_run_without_out_returns_its_tables_and_keeps_no_folder(ns, tmp_path, wiki_tokenizer, monkeypatch):
    import tempfile

    root = save_pair(tmp_path / "models", wiki_tokenizer, max_position_embeddings=1024, pad_token_id=0,
                     bos_token_id=1, eos_token_id=2)
    recipe = {"experiment": "ablation", "model": str(root / "base"), "layers": [1], "eval": None,
              "direct": {"pairs": 4, "texts": 2, "seq_len": 32, "max_len": 128}}
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path)
    res = core.run_recipe(recipe)
    assert res.folder is None and res.report is None and res.verdicts.empty  # the ablation draws no verdicts
    assert res.rows["condition"].tolist() == ["base", "zero_o1"] and abs(res.rows["ce_shift"][1]) > 1e-4
    assert res.tables["ablation"]["condition"].tolist() == ["base", "zero_o1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "tmp"]  # no runs/ablation
    assert list((tmp_path / "tmp").iterdir()) == []  # its working folder removed
    with pytest.raises(Exception, match="--resume needs --out"):
        core.run_recipe(recipe, resume=True)
