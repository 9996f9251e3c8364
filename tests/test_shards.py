"""Sharded experiment grids: two shard processes started together give, merged, exactly the rows of the
unsharded run; a shard cut short (a real ``kill -9`` in the slow test) resumes on its own to its rows; a
second writer of one shard's store and a shard of another recipe are refused; shares are disjoint and cover
the plan; launchers' variables name the share; the report names a missing or incomplete shard and a
condition two shards stored."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rwedit.cli import main
from rwedit.errors import ConfigError, ExperimentError, StoreLockedError
from rwedit.evals.core import run_recipe, shard_problems, write_report
from rwedit.evals.store import ResultStore, Shard
from rwedit.runtime import using
from conftest import WIKITEXT, assert_same_rows
from tiny_models import save_pair

#: a fresh interpreter inherits this process's environment (PYTHONPATH, offline flags), one torch thread each
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
for _launcher in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
    ENV.pop(_launcher, None)
#: `rwedit run` in a fresh interpreter whose direct scorer sleeps 0.4 s per condition (so a kill lands mid-run)
SLOW_RUN = ("import sys, time; from rwedit.evals.direct import DirectScorer; real = DirectScorer.score; "
            "DirectScorer.score = lambda self, *a: (time.sleep(0.4), real(self, *a))[1]; "
            "from rwedit.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def grid(tmp_path_factory, wiki_tokenizer):
    """A tiny pair, a 7-condition recipe (base, principal, 3 random, low-variance, write; direct metrics only)
    as YAML, a shared statistics cache, and the rows of its unsharded run."""
    root = tmp_path_factory.mktemp("shards")
    save_pair(root / "m", wiki_tokenizer, seed=3, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
              eos_token_id=2)
    recipe = {
        "name": "tiny-shards",
        "edit": {"model": str(root / "m" / "base"), "post": str(root / "m" / "post"),
                 "calibration": {"data": str(WIKITEXT), "tokens": 512, "seq_len": 64},
                 "edit": {"layers": [1], "role": "q", "v": "principal[0]", "b": "delta"},
                 "alpha": [2.0], "controls": {"random": 3, "lowvar": 1, "write": "o"}},
        "eval": None,
        "direct": {"pairs": 4, "texts": 2, "seq_len": 32, "max_len": 128},
        "probe": {"enabled": False},
        "export": ["principal0_a2"],
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    other = {**recipe, "edit": {**recipe["edit"], "alpha": [3.0]}, "export": []}
    (root / "other.yaml").write_text(yaml.safe_dump(other))
    with using(cache_dir=str(root / "cache")):  # shared with the command lines below
        ref = run_recipe(root / "recipe.yaml", root / "ref").folder
    return {"root": root, "recipe": root / "recipe.yaml", "other": root / "other.yaml", "cache": root / "cache",
            "want": ResultStore(ref).rows()}


def rows_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


# ----------------------------------------------------------------------------- without models


def test_shares_are_disjoint_deterministic_and_cover_the_plan():
    names = [f"c{i}" for i in range(11)]
    for n in (1, 2, 3, 5, 11, 13):
        shares = [Shard(i, n).take(names) for i in range(n)]
        assert sorted(sum(shares, [])) == sorted(names)  # every condition once
        assert all(s == Shard(i, n).take(list(names)) for i, s in enumerate(shares))  # the same on every call
        assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced
    assert Shard(1, 3).take(names) == ["c1", "c4", "c7", "c10"]
    assert Shard.parse(" 1 / 4 ") == Shard(1, 4) and Shard.from_name("1-of-4") == Shard(1, 4)
    assert Shard.from_name("4-of-4") is None and Shard.from_name("x") is None
    for bad in ("2/2", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError, match="0 to N-1|I/N"):
            Shard.parse(bad)


def test_launcher_variables_name_the_share():
    assert Shard.from_env({}) is None and Shard.from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert Shard.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Shard(3, 4)  # torchrun / accelerate
    # a SLURM array --array=1-4 (ids from 1) and --array=0-6:2 (a step)
    assert Shard.from_env({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"}) \
        == Shard(2, 4)
    assert Shard.from_env({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2",
                           "SLURM_ARRAY_TASK_COUNT": "4"}) == Shard(2, 4)
    # array task 1 of 3 running torchrun with 2 ranks: shares 2 and 3 of 6
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3", "WORLD_SIZE": "2"}
    assert [Shard.from_env({**env, "RANK": r}) for r in "01"] == [Shard(2, 6), Shard(3, 6)]
    with pytest.raises(ConfigError, match="RANK is not set"):
        Shard.from_env({"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="outside 0..N-1"):
        Shard.from_env({"RANK": "2", "WORLD_SIZE": "2"})


def _fake_shard(root: Path, shard: Shard, rows: list[dict], plan: list[str], config=None) -> None:
    """A shard's store written by hand (run.json as begin + plan write it)."""
    from rwedit.evals.store import config_hash

    config = config or {"experiment": "control", "x": 1}
    folder = root / "shards" / shard.name
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "config_hash": config_hash(config), "config": config, "started": "2026-01-01T00:00:00",
        "shard": {"index": shard.index, "count": shard.count}, "conditions": shard.take(plan),
        "all_conditions": plan}))
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_merged_view_orders_by_plan_names_a_duplicate_and_the_missing_shard(tmp_path):
    plan = ["base", "a", "b", "c", "d"]
    _fake_shard(tmp_path, Shard(0, 3), [{"condition": "c"}, {"condition": "base"}], plan)  # written out of order
    _fake_shard(tmp_path, Shard(1, 3), [{"condition": "a"}], plan)
    store = ResultStore(tmp_path)
    assert store.sharded and [r["condition"] for r in store.rows()] == ["base", "a", "c"]
    assert store.meta()["conditions"] == plan and store.missing() == ["b", "d"]
    problems = shard_problems(tmp_path)
    assert len(problems) == 2
    assert "shard 1/3 is incomplete: 1 of 2" in problems[0] and "(d)" in problems[0] and "--shard 1/3 --resume" in problems[0]
    assert "shard 2/3 is missing" in problems[1] and "(b)" in problems[1]
    with open(tmp_path / "shards" / "1-of-3" / "results.jsonl", "a") as f:  # a row copied from another shard
        f.write(json.dumps({"condition": "base"}) + "\n")
    with pytest.raises(ExperimentError, match=r"'base' is stored by two shards .*0-of-3/results.jsonl line 2 and "
                                              r".*1-of-3/results.jsonl line 2"):
        store.rows()
    with pytest.raises(ExperimentError, match="sharded run"):
        store.append({"condition": "x"})


# ----------------------------------------------------------------------------- real runs


def test_two_shard_processes_started_together_merge_to_the_unsharded_rows(grid, tmp_path, capsys):
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "rwedit", "run", str(grid["recipe"]), "--out", str(out), "--cache-dir",
           str(grid["cache"]), "--quiet"]
    procs = [subprocess.Popen(cmd, env={**ENV, "RANK": str(r), "WORLD_SIZE": "2"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]  # as torchrun starts them
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, se[-3000:]
    assert sum("wrote" in so and "merged 2 shards" in so for so, _ in outs) == 1  # the last one wrote the report
    assert sum("the report waits for the other shards" in so for so, _ in outs) <= 1
    shares = [[r["condition"] for r in ResultStore(out, Shard(i, 2)).rows()] for i in (0, 1)]
    want = [r["condition"] for r in grid["want"]]
    assert sorted(shares[0] + shares[1]) == sorted(want) and shares == [Shard(i, 2).take(want) for i in (0, 1)]
    assert not (out / "results.jsonl").exists() and (out / "edit" / "edits.json").exists()  # prepared once
    assert_same_rows(ResultStore(out).rows(), grid["want"])
    assert ResultStore(out).frame()["condition"].tolist() == want

    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "Unfinished" not in report and "principal" in report
    capsys.readouterr()
    one = out / "shards" / "0-of-2"  # one shard's folder on its own: its report says it is a share (#27.4)
    assert main(["report", str(one)]) == 0
    err = capsys.readouterr().err
    assert f"note: {one} is shard 0/2 of the sharded run in {out}" in err and f"`rwedit report {out}`" in err
    assert (one / "report.md").read_text().startswith(f"> **One share of a sharded run.** {one} is shard 0/2")
    card = json.loads((out / "edit" / "adapters" / "principal0_a2" / "rwedit.json").read_text())  # export: merged
    assert card["metrics"]["pref_margin_shift"] == pytest.approx(
        next(r for r in grid["want"] if r["condition"] == "principal0_a2")["pref_margin_shift"])
    from rwedit.apps.results import export_results

    ds = export_results(out, tmp_path / "ds")
    rows = [json.loads(x) for x in (ds / "data" / "rows.jsonl").read_text().splitlines()]
    assert [r["condition"] for r in rows] == want and not list((ds / "data").glob("shards*"))

    # shard 1 cut short as kill -9 leaves it (its first row, then half a line): it resumes on its own
    results = out / "shards" / "1-of-2" / "results.jsonl"
    first = results.read_text().splitlines()[0]
    results.write_text(first + "\n" + '{"condition": "random_s3_a2", "pref_mar')
    (out / "report.md").unlink()
    problems = shard_problems(out)
    assert len(problems) == 1 and "shard 1/2 is incomplete: 2 of 3" in problems[0], problems
    from rwedit.errors import ExportError

    with pytest.raises(ExportError, match="shard 1/2 is incomplete"):  # never published as if whole
        export_results(out, tmp_path / "ds-partial")
    marked = export_results(out, tmp_path / "ds-partial", allow_partial=True)
    assert (marked / "README.md").read_text().split("---", 2)[2].lstrip().startswith("**Partial results")
    done = run_recipe(grid["recipe"], out, resume=True, shard="1/2")
    assert done.report == out / "report.md" and shard_problems(out) == []
    assert results.read_text().splitlines()[0] == first  # the kept row is not rescored
    assert_same_rows(ResultStore(out).rows(), grid["want"])


@pytest.mark.slow
def test_killed_shard_resumes_on_its_own_and_a_second_writer_is_refused(grid, tmp_path):
    out = tmp_path / "kill"
    want = [r["condition"] for r in grid["want"]]
    results = out / "shards" / "1-of-2" / "results.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, "run", str(grid["recipe"]), "--out", str(out),
                             "--cache-dir", str(grid["cache"]), "--quiet", "--shard", "1/2"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while rows_in(results) < 1:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no row after 300 s"
            time.sleep(0.01)
        with pytest.raises(StoreLockedError, match=rf"1-of-2 is being written by another rwedit process \(pid {proc.pid}"):
            run_recipe(grid["recipe"], out, resume=True, shard="1/2")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    kept = [r["condition"] for r in ResultStore(out, Shard(1, 2)).rows()]
    share = Shard(1, 2).take(want)
    assert 1 <= len(kept) < len(share), f"the kill came after {len(kept)} of {len(share)} rows"
    problems = shard_problems(out)  # shard 0 never started, shard 1 was cut short
    assert "shard 0/2 is missing" in problems[0] and "shard 1/2 is incomplete" in problems[1]
    with pytest.raises(ExperimentError, match=r"no base row[\s\S]*shard 0/2 is missing"):
        write_report(out)  # the base row belongs to shard 0: the report cannot be drawn, and says why
    assert main(["report", str(out)]) == 2

    done = run_recipe(grid["recipe"], out, resume=True, shard="1/2")
    assert done.report is None and any("shard 0/2 is missing" in line for line in done.lines)
    assert [r["condition"] for r in ResultStore(out, Shard(1, 2)).rows()] == share  # kept rows, then the rest
    last = run_recipe(grid["recipe"], out, shard=Shard(0, 2))
    assert last.report == out / "report.md" and shard_problems(out) == []
    assert_same_rows(ResultStore(out).rows(), grid["want"])


def test_a_second_writer_of_a_shard_is_refused(grid, tmp_path):
    out = tmp_path / "held"
    with ResultStore(out, Shard(1, 2)).locked():  # what a running shard process holds for its whole run
        with pytest.raises(StoreLockedError, match=rf"1-of-2 is being written by another rwedit process \(pid {os.getpid()}"):
            run_recipe(grid["recipe"], out, resume=True, shard="1/2")
    assert not (out / "shards" / "1-of-2" / "results.jsonl").exists()


def _begun(recipe_path: Path, out: Path, shard: Shard) -> None:
    """A shard that has begun (its run.json), as `run --shard` writes it before any work."""
    from rwedit.evals.core import load_recipe

    ResultStore(out, shard).begin(load_recipe(recipe_path)[1].config(), resume=False)


def test_a_shard_of_another_recipe_or_split_is_refused(grid, tmp_path, capsys):
    out = tmp_path / "mixed"
    _begun(grid["recipe"], out, Shard(0, 2))
    with pytest.raises(ExperimentError, match=r"0-of-2 holds a run of a different recipe .*changed: edit\.alpha"):
        run_recipe(grid["other"], out, shard="1/2")
    assert not (out / "shards" / "1-of-2").exists()
    with pytest.raises(ExperimentError, match="split 2 ways .*--shard I/2"):
        run_recipe(grid["recipe"], out, shard="1/3")
    with pytest.raises(ExperimentError, match="holds a sharded run"):
        run_recipe(grid["recipe"], out, resume=True)
    # a shard of the other recipe run elsewhere and copied in: the merge refuses it by name
    elsewhere = tmp_path / "elsewhere"
    _begun(grid["other"], elsewhere, Shard(1, 2))
    shutil.copytree(elsewhere / "shards" / "1-of-2", out / "shards" / "1-of-2")
    with pytest.raises(ExperimentError, match=r"1-of-2 holds a run of a different recipe"):
        ResultStore(out).rows()
    assert main(["report", str(out)]) == 2
    assert "different recipe" in capsys.readouterr().err
