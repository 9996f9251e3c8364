"""The experiment runner end to end through the command line, in a subprocess: a real ``kill -9`` in the
middle of scoring resumes to the rows of an uninterrupted run without rescoring anything, and the
shipped control-experiment recipe runs as it is on a tiny pair.  Slow: ``python -m pytest -m slow``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from rwedit.evals.direct import DirectSettings
from conftest import WIKITEXT, assert_same_rows
from tiny_models import save_pair

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CONTROL_RECIPE = REPO / "recipes" / "control-experiment.yaml"
TINY = dict(max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)


#: the environment of conftest (offline) with one torch thread unless told otherwise: on a small shared CPU two
#: threads per process oversubscribe the cores and make these runs about twice as slow
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def rwedit(*args, cwd, **kw) -> subprocess.CompletedProcess:
    """``python -m rwedit ARGS`` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "rwedit", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, **kw)


def complete_lines(path: Path) -> bytes:
    """The bytes of results.jsonl up to its last newline (a line cut short by the kill is not a row)."""
    data = path.read_bytes() if path.exists() else b""
    return data[: data.rfind(b"\n") + 1]


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in complete_lines(path).decode().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory, wiki_tokenizer):
    return save_pair(tmp_path_factory.mktemp("slow-models"), wiki_tokenizer, seed=3, **TINY)


def test_kill_9_mid_run_then_resume_gives_the_rows_of_an_uninterrupted_run(small_pair, tmp_path):
    # two doses x (principal + 3 random + lowvar + write) + base = 13 conditions, each scored for long
    # enough (lm-eval on 16 items, 16 direct pairs) that the kill lands between rows, not after the last
    recipe = {
        "name": "tiny-kill",
        "edit": {"model": str(small_pair / "base"), "post": str(small_pair / "post"),
                 "calibration": {"data": str(WIKITEXT), "tokens": 512, "seq_len": 64},
                 "edit": {"layers": [1], "role": "q", "v": "principal[0]", "b": "delta"},
                 "alpha": [2.0, 4.0], "controls": {"random": 3, "lowvar": 1, "write": "o"}},
        "eval": {"tasks": ["rwedit_hh_preference"], "limit": 16, "batch_size": 4},
        "direct": {"pairs": 16, "texts": 4, "seq_len": 32, "max_len": 128},
        "probe": {"ks": [1, 4], "null_seeds": 2},
        "export": ["principal0_a2"],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cache = tmp_path / "cache"

    # the uninterrupted reference
    t = time.perf_counter()
    ref = rwedit("run", path, "--out", tmp_path / "ref", "--cache-dir", cache, "--quiet", cwd=tmp_path, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    want = rows_of(tmp_path / "ref" / "results.jsonl")
    assert len(want) == 13 and (tmp_path / "ref" / "report.md").exists()
    print(f"uninterrupted run: {time.perf_counter() - t:.1f} s")

    # the same run, killed with SIGKILL once at least two rows are stored
    out = tmp_path / "cut"
    results = out / "results.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "rwedit", "run", str(path), "--out", str(out),
                             "--cache-dir", str(cache), "--quiet"], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while len(rows_of(results)) < 2:
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before 2 rows: {proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no 2 rows after 600 s")
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the group of the process this test started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    before = complete_lines(results)
    n_before = len(rows_of(results))
    assert 2 <= n_before < len(want), f"the kill came after {n_before} of {len(want)} rows"
    assert not (out / "report.md").exists()
    print(f"killed after {n_before} rows ({results.stat().st_size - len(before)} bytes of a cut-off line)")

    # without --resume the interrupted folder is refused, clearly, and left as it was
    again = rwedit("run", path, "--out", out, "--cache-dir", cache, "--quiet", cwd=tmp_path, timeout=600)
    assert again.returncode == 2, (again.returncode, again.stderr[-3000:])
    assert "--resume" in again.stderr and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert complete_lines(results) == before

    # --resume scores only what is missing
    res = rwedit("run", path, "--out", out, "--resume", "--cache-dir", cache, "--quiet", cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    after = results.read_bytes()
    assert after.startswith(before), "a row stored before the kill was rewritten"
    got = rows_of(results)
    assert after == complete_lines(results)  # no cut-off line left behind
    assert_same_rows(got, want)
    # the stored rows kept their own timings: nothing was rescored (a rescored row would be appended again
    # and show up as a duplicate above, or rewrite the prefix)
    assert got[:n_before] == [json.loads(line) for line in before.decode().splitlines()]
    assert (out / "report.md").exists() and (out / "edit/adapters/principal0_a2/rwedit.json").exists()
    card = json.loads((out / "edit/adapters/principal0_a2/rwedit.json").read_text())
    p = next(r for r in got if r["condition"] == "principal0_a2")
    assert card["metrics"]["pref_margin_shift"] == pytest.approx(p["pref_margin_shift"])


@pytest.fixture(scope="module")
def wide_tokenizer(wiki_texts):
    """An 8192-token BPE on the calibration text: WikiText and hh-rlhf come out in ~half the tokens of the
    512-token one, which is what the 25 conditions x 3 tasks x 200 items of the recipe cost."""
    from rwedit.data import train_bpe_tokenizer

    return train_bpe_tokenizer(wiki_texts, vocab_size=8192)


def test_the_control_experiment_recipe_runs_as_it_is_on_a_tiny_pair(wide_tokenizer, tmp_path):
    from rwedit.data import read_pairs
    from rwedit.bundled import HH_HELDOUT, HH_RLHF

    recipe = yaml.safe_load(CONTROL_RECIPE.read_text())
    # the recipe's layers: indices (the pair needs a layer past the largest) or fractions of the depth (0.5:
    # the middle layer, which any depth has; 3 layers give it neighbours)
    n_layers = max([x + 1 for x in recipe["edit"]["edit"]["layers"] if isinstance(x, int) and x >= 0] + [3])
    # Positions: the longest sequence the recipe asks for (calibration, direct metrics), and room for the
    # longest hh-rlhf answer lm-eval scores (it refuses a continuation longer than the model's context),
    # rounded up to a power of two and no more: lm-eval's rolling WikiText windows are that long, and
    # attention over long windows is most of this test's time.
    direct = {**asdict(DirectSettings()), **recipe["direct"]}
    pairs = read_pairs(HH_RLHF, indices=HH_HELDOUT)[: recipe["eval"]["limit"]]
    longest = max(len(wide_tokenizer(x)["input_ids"]) for p in pairs for x in (p.chosen, p.rejected))
    need = max(recipe["edit"]["calibration"]["seq_len"], direct["seq_len"], direct["max_len"], longest + 1)
    n_pos = 1 << (need - 1).bit_length()
    # narrower than the default tiny llama (hidden 16, 2 heads, 1 kv head): 25 conditions x 600 items is long
    root = save_pair(tmp_path / "models", wide_tokenizer, seed=3, num_hidden_layers=n_layers, hidden_size=16,
                     num_attention_heads=2, num_key_value_heads=1, intermediate_size=24,
                     **{**TINY, "max_position_embeddings": n_pos})
    out = tmp_path / "run"
    t = time.perf_counter()
    r = rwedit("run", CONTROL_RECIPE, "--model", root / "base", "--post", root / "post", "--out", out,
               "--cache-dir", tmp_path / "cache", "--quiet", cwd=tmp_path, timeout=4 * 3600)
    print(f"control-experiment on the tiny pair ({n_pos} positions): {time.perf_counter() - t:.1f} s")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{out}/report.md" in r.stdout
    rows = rows_of(out / "results.jsonl")
    n_alpha, controls = len(recipe["edit"]["alpha"]), recipe["edit"]["controls"]
    per_alpha = 1 + controls["random"] + controls["lowvar"] + (1 if controls.get("write") else 0)
    assert [r["condition"] for r in rows][0] == "base" and len(rows) == 1 + n_alpha * per_alpha
    assert len({r["condition"] for r in rows}) == len(rows)
    for task in recipe["eval"]["tasks"]:
        assert any(k.startswith(f"{task}/") for k in rows[0]), (task, sorted(rows[0]))
    report = (out / "report.md").read_text()
    assert report.strip() and recipe["primary"] in report
    for f in ("headline.csv", "verdicts.csv", "probe/rsf.csv", "edit/edits.json"):
        assert (out / f).exists(), f
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["edit"]["model"] == str(root / "base")  # --model/--post replaced the recipe's Hub ids
    assert run["config"]["edit"]["post"] == str(root / "post")
    for name in recipe["export"]:
        folder = out / "edit" / "adapters" / name
        for f in ("adapter_config.json", "adapter_model.safetensors", "README.md", "rwedit.json"):
            assert (folder / f).exists(), folder / f
        card = json.loads((folder / "rwedit.json").read_text())
        row = next(r for r in rows if r["condition"] == name)
        assert card["metrics"][recipe["primary"]] == pytest.approx(row[recipe["primary"]])
