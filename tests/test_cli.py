"""The command line answers, and its delta table matches a direct computation."""

from __future__ import annotations

import csv
import subprocess
import sys

import torch

from rwedit.architectures import get_weight
from rwedit.cli import main
from tiny_models import tiny_model


def test_help_answers_as_an_installed_console_script():
    out = subprocess.run([sys.executable, "-m", "rwedit", "--help"], capture_output=True, text=True, check=True)
    assert "deltas" in out.stdout and "archs" in out.stdout


def test_archs_lists_every_registered_architecture(capsys):
    assert main(["archs"]) == 0
    out = capsys.readouterr().out
    for name in ("gpt2", "gpt_neox", "llama", "phi3", "gemma2", "qkv_per_head"):
        assert name in out


def test_deltas_csv_matches_direct_norms(tmp_path, capsys):
    base = tiny_model("phi3")
    post = tiny_model("phi3", seed=1)
    base.save_pretrained(tmp_path / "b")
    post.save_pretrained(tmp_path / "p")
    assert main(["deltas", "--base", str(tmp_path / "b"), "--post", str(tmp_path / "p"),
                 "--out", str(tmp_path / "d.csv"), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "d.csv")))
    assert len(rows) == 2 * 7 + 1
    for r in rows:
        layer = int(r["layer"]) if r["layer"] else None
        want = torch.linalg.norm(get_weight(post, layer, r["role"]) - get_weight(base, layer, r["role"]))
        assert abs(float(r["delta_norm"]) - float(want)) < 1e-4 * float(want)


def test_errors_are_one_clear_line_not_a_traceback(tmp_path, capsys):
    assert main(["deltas", "--base", str(tmp_path / "missing"), "--post", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "does not exist" in err and "Traceback" not in err
