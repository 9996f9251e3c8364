"""No command writes over what it was given: an --out that is, holds or lies inside an input is refused with or
without --overwrite (inputs unchanged byte for byte); --overwrite replaces only a folder rwedit wrote; a
symlinked --out is written through, the link kept."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from rwedit.cli import main
from rwedit.errors import OutputExistsError
from rwedit.outputs import MARKER, atomic_folder, check_output_folder, input_clash


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (or the file itself) with its SHA-256: the inputs, byte for byte."""
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# --- the rule itself -----------------------------------------------------------------------------------


def test_clash_is_named_for_an_input_itself_its_parent_and_a_folder_inside_it(tmp_path):
    model = tmp_path / "models" / "base"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert "is an input" in input_clash(model, [model])
    assert "holds an input" in input_clash(tmp_path / "models", [model])
    assert "lies inside an input" in input_clash(model / "out", [model])
    assert "holds an input" in input_clash(tmp_path, [model / "config.json"])  # a data file's folder
    assert input_clash(tmp_path / "elsewhere", [model]) is None
    assert input_clash(tmp_path / "models" / "base2", [model]) is None  # a sibling whose name starts the same
    assert input_clash(model, ["EleutherAI/pythia-160m", None, ""]) is None  # Hub ids and absent inputs


def test_a_symlink_to_an_input_is_the_input(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.txt").write_text("x")
    os.symlink(tmp_path / "data", tmp_path / "link")
    assert "is an input" in input_clash(tmp_path / "link", [tmp_path / "data"])
    with pytest.raises(OutputExistsError, match="never writes over its inputs"):
        check_output_folder(tmp_path / "link", overwrite=True, inputs=[tmp_path / "data"])


def test_overwrite_replaces_only_a_folder_rwedit_wrote(tmp_path):
    mine = tmp_path / "mine"
    with atomic_folder(mine) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (mine / MARKER).exists()
    with atomic_folder(mine, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in mine.iterdir()) == [MARKER, "b.txt"]

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    for i in range(7):
        (theirs / f"f{i}.bin").write_bytes(b"precious")
    before = digest(theirs)
    with pytest.raises(OutputExistsError, match=r"not written by rwedit.*delete 7 file\(s\).*and 2 more"):
        with atomic_folder(theirs, overwrite=True):
            raise AssertionError("never reached: refused before any work")
    assert digest(theirs) == before


def test_a_symlinked_out_is_written_through_and_the_link_kept(tmp_path):
    real = tmp_path / "real"
    with atomic_folder(real) as tmp:
        (tmp / "a.txt").write_text("first")
    os.symlink(real, tmp_path / "link")
    with atomic_folder(tmp_path / "link", overwrite=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert (tmp_path / "link").is_symlink() and os.readlink(tmp_path / "link") == str(real)
    assert (real / "b.txt").read_text() == "second" and not (real / "a.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # nothing renamed aside


# --- commands, given their own inputs as --out -------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, wiki_tokenizer):
    from tiny_models import save_pair

    ws = tmp_path_factory.mktemp("inputs")
    save_pair(ws / "m", wiki_tokenizer)
    (ws / "calib").mkdir()
    (ws / "calib" / "text.txt").write_text("The cat sat on the mat. " * 400)
    spec = {"model": str(ws / "m" / "base"), "alpha": [1.0],
            "edit": {"layers": [1], "role": "q", "v": "principal", "b": "given", "b_given": [0.5] * 32},
            "calibration": {"data": str(ws / "calib" / "text.txt"), "tokens": 256, "seq_len": 32},
            "controls": {"random": 1, "lowvar": 0, "write": None}}
    (ws / "spec.yaml").write_text(yaml.safe_dump(spec))
    (ws / "recipe.yaml").write_text(yaml.safe_dump({
        "name": "protected", "edit": {**spec, "post": str(ws / "m" / "post")},
        "eval": {"tasks": ["rwedit_hh_preference"], "limit": 2}, "direct": {"pairs": 4, "texts": 2, "seq_len": 32,
                                                                           "max_len": 64}}))
    (ws / "run").mkdir()
    (ws / "run" / "results.jsonl").write_text('{"condition": "base"}\n')
    return ws


CASES = {  # command -> (argv before --out, the inputs an --out may not touch, relative to the workspace)
    "edit": (lambda ws: ["edit", "--spec", str(ws / "spec.yaml")], ["m/base", "calib", "m", "m/base/sub"]),
    "export-results": (lambda ws: ["export-results", str(ws / "run")], ["run", "run/sub"]),
    "probe": (lambda ws: ["probe", "--base", str(ws / "m/base"), "--post", str(ws / "m/post"), "--calib",
                          str(ws / "calib/text.txt")], ["m/base", "m/post", "calib", "m", "m/post/sub"]),
    "probe-series": (lambda ws: ["probe", "--base", str(ws / "m/base"), "--series",
                                 f"{ws / 'm/post'},{ws / 'm/base'}"], ["m/post", "m", "m/post/members"]),
    "deltas": (lambda ws: ["deltas", "--base", str(ws / "m/base"), "--post", str(ws / "m/post")], ["m/base", "m/post"]),
    "svd": (lambda ws: ["svd", "--base", str(ws / "m/base"), "--post", str(ws / "m/post")], ["m/post", "m"]),
    "eval": (lambda ws: ["eval", "--model", str(ws / "m/base"), "--limit", "2"], ["m/base", "m", "m/base/scores"]),
    "run": (lambda ws: ["run", str(ws / "recipe.yaml")], ["m/base", "m/post", "calib", "m/base/run"]),
}


@pytest.mark.parametrize("command,overwrite", [(c, o) for c in sorted(CASES) for o in (False, True)
                                               if not (o and c == "run")])  # run has --resume, never --overwrite
def test_no_command_writes_over_its_inputs(workspace, command, overwrite, capsys):
    argv, outs = CASES[command]
    before = digest(workspace)
    for rel in outs:
        code = main([*argv(workspace), "--out", str(workspace / rel), *(["--overwrite"] if overwrite else [])])
        err = capsys.readouterr().err
        assert code == 2 and "never writes over its inputs" in err, (command, rel, err)
    assert digest(workspace) == before


@pytest.mark.parametrize("name", ["../../..", "/abs/path", "a/b", "..", "~evil", "a\\b"])
def test_a_recipe_name_is_a_name_never_a_path(name, tmp_path, monkeypatch, capsys):
    """`name:` names the default folder runs/NAME: a name that would write outside runs/ is refused before any
    work, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"experiment": "svd-structure", "name": name, "model": "nowhere/base",
                                      "post": "nowhere/post"}))
    assert main(["run", str(recipe)]) == 2
    assert "a name, not a path" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]
