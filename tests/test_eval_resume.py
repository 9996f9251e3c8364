"""`rwedit eval` is the ``eval`` kind of the one runner: rows stored as scored, an interrupted eval resumed
with --resume scoring only the rest, the rows equal to an uninterrupted run's."""

from __future__ import annotations

import json

import pytest

from conftest import WIKITEXT, assert_same_rows
from rwedit.cli import main
from rwedit.editor.pipeline import run_edit
from rwedit.editor.spec import EditSpec
from rwedit.runtime import using
from tiny_models import save_pair


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, wiki_tokenizer):
    """A tiny base and three adapters of `rwedit edit` (principal, two random controls)."""
    root = save_pair(tmp_path_factory.mktemp("eval-models"), wiki_tokenizer, seed=5)
    spec = EditSpec.from_dict({
        "model": str(root / "base"), "post": str(root / "post"),
        "calibration": {"data": str(WIKITEXT), "tokens": 512, "seq_len": 64},
        "edit": {"layers": [1], "role": "q", "v": "principal[0]", "b": "delta"}, "alpha": [2.0],
        "controls": {"random": 2, "lowvar": 0, "write": None}, "seed": 0})
    with using(progress=False, cache_dir=str(root / "cache")):
        out = run_edit(spec, tmp_path_factory.mktemp("eval-edit") / "e")
    return root / "base", out / "adapters"


def _argv(base, adapters, out, *extra):
    return ["eval", "--model", str(base), "--adapters", str(adapters), "--tasks", "rwedit_blimp", "--limit", "3",
            "--items", "3", "--out", str(out), "--quiet", *extra]


def _rows(out):
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def test_an_interrupted_eval_resumes_scoring_only_the_rest(adapters, tmp_path, monkeypatch, capsys):
    base, folder = adapters
    assert main(_argv(base, folder, tmp_path / "plain")) == 0
    plain = _rows(tmp_path / "plain")
    names = [r["condition"] for r in plain]
    assert names == ["base", "principal0_a2", "random_s1_a2", "random_s2_a2"]
    assert (tmp_path / "plain" / "raw" / "lmeval" / "principal0_a2.json").exists()

    from rwedit.evals.lmeval import LMEvalScorer, current_condition

    real, scored = LMEvalScorer.score, []

    def fails_on_the_second_adapter(self, *a, **k):
        name = current_condition(self.model)
        if name == names[2]:
            raise RuntimeError("killed")
        scored.append(name)
        return real(self, *a, **k)

    monkeypatch.setattr(LMEvalScorer, "score", fails_on_the_second_adapter)
    out = tmp_path / "cut"
    assert main(_argv(base, folder, out)) == 1  # an unexpected failure: exit 1, the rows so far kept
    assert [r["condition"] for r in _rows(out)] == names[:2] and scored == names[:2]
    assert main(_argv(base, folder, out)) == 2  # without --resume an earlier run is refused, not replaced
    assert "--resume" in capsys.readouterr().err

    monkeypatch.setattr(LMEvalScorer, "score", lambda self, *a, **k: (scored.append(current_condition(self.model)),
                                                                    real(self, *a, **k))[1])
    scored.clear()
    assert main(_argv(base, folder, out, "--resume")) == 0
    assert scored == names[2:]  # only what was missing
    drop = ("seconds",)
    assert_same_rows([{k: v for k, v in r.items() if k not in drop} for r in _rows(out)],
                     [{k: v for k, v in r.items() if k not in drop} for r in plain])
    assert main(_argv(base, folder, out, "--limit", "4")) == 2  # another setting: another run, refused
    assert "different recipe" in capsys.readouterr().err


def test_eval_without_out_prints_each_row_and_keeps_nothing(adapters, tmp_path, monkeypatch, capsys):
    base, folder = adapters
    monkeypatch.chdir(tmp_path)
    argv = _argv(base, folder / "principal0_a2", "x")
    argv = argv[:argv.index("--out")] + argv[argv.index("--out") + 2:]
    assert main(argv) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [r["condition"] for r in rows] == ["base", "principal0_a2"] and "rwedit_blimp/acc" in rows[1]
    assert list(tmp_path.iterdir()) == []
    assert main(argv + ["--resume"]) == 2 and "--resume needs --out" in capsys.readouterr().err
    from rwedit.evals.core import run_recipe  # the same run from Python: the rows as a DataFrame, no folder

    res = run_recipe({"experiment": "eval", "model": str(base), "adapters": str(folder / "principal0_a2"),
                      "eval": {"tasks": ["rwedit_blimp"], "limit": 3}, "direct": {"pairs": 3}})
    assert res.folder is None and res.rows["condition"].tolist() == ["base", "principal0_a2"]
    assert res.rows["rwedit_blimp/acc"].tolist() == pytest.approx([r["rwedit_blimp/acc"] for r in rows])
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_a_stored_eval(adapters, tmp_path):
    base, folder = adapters
    out = tmp_path / "o"
    assert main(_argv(base, folder / "principal0_a2", out)) == 0
    assert main(_argv(base, folder / "principal0_a2", out, "--limit", "2", "--overwrite")) == 0
    assert json.loads((out / "run.json").read_text())["config"]["eval"]["limit"] == 2


def test_overwrite_replaces_only_an_rwedit_folder_and_not_with_resume(adapters, tmp_path, capsys):
    """A folder of something else is never replaced (with --overwrite it says what it would delete); a stored
    eval is replaced whole by --overwrite; --overwrite with --resume is refused."""
    base, folder = adapters
    out = tmp_path / "o"
    out.mkdir()
    (out / "earlier.txt").write_text("not an eval")
    assert main(_argv(base, folder / "principal0_a2", out)) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(_argv(base, folder / "principal0_a2", out, "--overwrite")) == 2
    assert "not written by rwedit" in capsys.readouterr().err and (out / "earlier.txt").exists()
    (out / "earlier.txt").unlink()
    assert main(_argv(base, folder / "principal0_a2", out)) == 0 and len(_rows(out)) == 2  # an eval stored
    assert main(_argv(base, folder / "principal0_a2", out, "--overwrite", "--resume")) == 2
    (out / "note.txt").write_text("beside the stored eval")
    assert main(_argv(base, folder / "principal0_a2", out, "--overwrite")) == 0
    assert not (out / "note.txt").exists() and len(_rows(out)) == 2
