#!/usr/bin/env python
"""Run every benchmark and write one table: ``benchmarks/results/summary.md`` (and ``summary.json``).

Usage::

    python benchmarks/run_all.py            # every benchmark, the quickstart cold (organism rebuilt) and warm
    python benchmarks/run_all.py --quick    # smaller settings, no cold quickstart (minutes, not an hour)
    python benchmarks/run_all.py --only pair_pass,grid

Each benchmark is its own script (run here as a fresh process) and measures its figure as a ratio against
a baseline taken in the same run; this script only runs them, reads their JSON results and tabulates
figure, target, value and whether it is met, with the machine, the load average before and after each
benchmark and the date. A benchmark that ran while the 1-minute load average was above the core count
is marked *loaded* in the table: its figure is not a clean one. A benchmark that fails is a row saying so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from _common import write_results  # this folder is on sys.path: run_all.py runs as a script

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROOT = HERE.parent


@dataclass
class Figure:
    figure: str
    value: float | None
    target: str = ""
    met: bool | None = None
    unit: str = "x"


@dataclass
class Bench:
    """One benchmark script: its arguments (full and quick), the JSON it writes, and the figures read from it."""

    name: str
    script: str
    args: list[str]
    quick_args: list[str]
    results: str
    figures: Callable[[dict], list[Figure]]
    timeout_s: int = 3600


BENCHES: dict[str, Bench] = {}


def register(bench: Bench) -> Bench:
    BENCHES[bench.name] = bench
    return bench


def _at(d: dict, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _le(value, target) -> bool | None:
    return None if value is None else value <= target


def _ge(value, target) -> bool | None:
    return None if value is None else value >= target


#: the target proposed where a row's own sits below its arithmetic floor (#28's grid, the pair pass): within this
#: much of the floor
FLOOR_TARGET = 1.25


def _pair_pass(r: dict) -> list[Figure]:
    b_a = _at(r, "ratios", "b_over_a_time")
    rss = _at(r, "checks", "b_peak_rss_mb")
    b_f, f_a = _at(r, "ratios", "b_over_f_time"), _at(r, "ratios", "f_over_a_time")
    floor = "" if f_a is None else (f" (floor: the read and one float32 conversion of every element, the fastest "
                                    f"conversion measured (a compiled loop of cache-sized chunks) on 2 workers = "
                                    f"{f_a:.2f}×; proposed target ≤ {FLOOR_TARGET} × the floor)")
    out = [Figure(f"pair pass (‖ΔW‖ of every role) / warm read of all bytes{floor}", b_a, "≤ 1.5", _le(b_a, 1.5))]
    if b_f is not None:
        out.append(Figure("pair pass / its floor (read + float32 conversion)", b_f, f"≤ {FLOOR_TARGET} (proposed)",
                          _le(b_f, FLOOR_TARGET)))
    return out + [
            Figure("pair pass peak RSS", rss, "≤ 600", _le(rss, 600), "MB"),
            Figure("row-block pass / whole-tensor pass (wall)", _at(r, "ratios", "b_over_whole_time"), "< 1",
                   _le(_at(r, "ratios", "b_over_whole_time"), 1.0))]




def _probes(r: dict) -> list[Figure]:
    out = []
    labels = {"grid": "RSF grid (k 1,4,16,64; the default null: auto, sketched at 1.1B) / bare pass",
              "grid_exact_only": "RSF grid with the exact null / bare pass",
              "grid_seeds_only": "RSF grid with 8 seeded nulls instead / bare pass"}
    f = _at(r, "floor")
    if f:  # the target sits below what the grid's own arithmetic costs here: say so in the row
        eig = f" + the prediction subspace's eigensolve {f['prediction_eig_s']:.1f} s" if "prediction_eig_s" in f else ""
        labels["grid"] += (f" (floor: the bare pass + the grid's {f['macs'] / 1e9:.0f} G multiply-adds at this machine's "
                           f"measured {f['gemm_macs_per_s'] / 1e9:.0f} G/s{eig} = {f['floor_over_bare']:.1f}×; proposed "
                           f"target ≤ {FLOOR_TARGET} × the floor = {FLOOR_TARGET * f['floor_over_bare']:.1f}×)")
    for key, label in labels.items():
        v = _at(r, "null_variants", key)
        if v:
            out.append(Figure(label, v.get("over_bare"), "≤ 2" if key == "grid" else "info",
                              _le(v.get("over_bare"), 2.0) if key == "grid" else None))
    if f:
        out.append(Figure("RSF grid (the default null) / its arithmetic floor", f["grid_over_floor"],
                          f"≤ {FLOOR_TARGET} (proposed)", _le(f["grid_over_floor"], FLOOR_TARGET)))
    e = _at(r, "sketch_error")
    if e and e.get("matrices_sides"):
        share = e["within_bound"] / e["matrices_sides"]
        out.append(Figure("RSF grid: sketched null sd within its stated 95 % bound of the exact (share of matrix sides; "
                          f"largest error / bound {e['max_error_over_bound']:.2f})", share, "≥ 0.95", share >= 0.95,
                          "share"))
    a = _at(r, "acts")
    if a:
        from bench_probes import acts_ceiling

        bound = acts_ceiling(a["macs_per_token"])
        for dtype, ratio in a["ratio"].items():
            share = ratio / bound
            out.append(Figure(f"activation hooks ({dtype}) tokens/s over bare, as a share of the FLOP ceiling "
                              f"{bound:.2f}", share, "≥ 0.9", _ge(share, 0.9)))
    s = _at(r, "svd")
    if s:
        decaying = [m for m in s.get("matrices", []) if m.get("decaying_spectrum")]
        big = [m for m in decaying if tuple(m.get("shape", ())) == (2048, 5632)]
        if big:
            speed = min(m["speedup"] for m in big)
            out.append(Figure("SVD probe top-64 vs full SVD on 2048 × 5632 (speed-up)", speed, "≥ 10", _ge(speed, 10)))
        if decaying:
            worst = max(m["max_error_over_bound"] for m in decaying)
            out.append(Figure("SVD probe: largest metric error / stated bound, decaying spectra", worst, "≤ 1",
                              worst <= 1, "share"))
    return out


def _scoring(r: dict) -> list[Figure]:
    b_a, c_b = _at(r, "ratios", "b_over_a"), _at(r, "ratios", "c_over_b")
    return [Figure("scoring: 12 conditions in one experiment / 12 bare lm-eval passes", b_a, "≤ 1.1", _le(b_a, 1.1)),
            Figure("scoring: a fresh process per condition / one experiment", c_b, "≥ 3", _ge(c_b, 3))]


def _adapters(r: dict) -> list[Figure]:
    return [Figure("adapter switch / one 512-token forward", r.get("switch_over_forward"), "info", None),
            Figure("building 12 adapters / loading the model", r.get("build_over_load"), "info", None)]


def _sources(r: dict) -> list[Figure]:
    lo = _at(r, "ratios", "lora_over_full_wall")
    two = _at(r, "ratios", "two_in_one_pass_over_two_separate_wall")
    full, floor = _at(r, "ratios", "two_full_in_one_pass_over_two_separate_wall"), _at(r, "ratios", "two_full_floor")
    lora_floor = _at(r, "ratios", "full_lora_floor")
    out = [Figure("RSF grid of a LoRA post / of a full post checkpoint", lo, "≤ 0.5", _le(lo, 0.5)),
           Figure("a full post and a LoRA post in one pass / two separate passes" + (
               f" (floor: 1 − the base-only work / two passes = {lora_floor:.2f}×)" if lora_floor else ""), two,
               "≤ 0.6", _le(two, 0.6)),
           Figure("two full posts in one pass / two separate passes", full, "≤ 0.6", _le(full, 0.6)),
           Figure("the same, its floor: 1 − the base-only work (prediction spectrum, base stream) / two passes",
                  floor, "info", None)]
    # one pass saves at most one pass's base-only work: the 0.6 sits below that floor where the base is cheap
    for what, x, fl in (("a full and a LoRA post", two, lora_floor), ("two full posts", full, floor)):
        if x is not None and fl:
            out.append(Figure(f"{what} in one pass / its floor", x / fl, f"≤ {FLOOR_TARGET} (proposed)",
                              _le(x / fl, FLOOR_TARGET)))
    return out


def _shards(r: dict) -> list[Figure]:
    two, two1 = _at(r, "ratios", "two_over_one"), _at(r, "ratios", "two_1t_over_one_1t")
    best = _at(r, "ratios", "best_like_for_like")
    size = (f"{_at(r, 'settings', 'conditions')}-condition grid, {max(_at(r, 'settings', 'limits', default=[0]))} "
            f"items each, scoring {(r.get('sizes') or [{}])[-1].get('scoring_share', 0):.0%} of a process")
    out = [Figure(f"{size}: two shard processes / one process (wall, like for like: the better of default threads "
                  f"and one thread each)", best, "≤ 0.6", _le(best, 0.6)),
           Figure("the same, default threads (2 x 2 threads on 2 cores)", two, "info", None),
           Figure("the same, one thread per process", two1, "info", None),
           Figure("two shards of one thread each / one process of default threads (what splitting a run on "
                  "this machine gains)", _at(r, "ratios", "two_1t_over_one"), "info", None)]
    for key, c in (r.get("crossover") or {}).items():
        out.append(Figure(f"{key}: items per condition from which two processes beat one (measured; else —)",
                          c.get("limit_below_1"), "info", None, "n"))
        out.append(Figure(f"{key}: items per condition from which the ratio is <= 0.6 (extrapolated from the largest)",
                          c.get("limit_needed_for_target"), "info", None, "n"))
    return out


def _study(r: dict) -> list[Figure]:
    f, size = r.get("figures") or {}, "2 layers, quick settings" if r.get("quick") else "Qwen2.5-0.5B shapes, laptop settings"
    label = f"whole study (rwedit run control-experiment, {size}) / the sum of its stages' irreducible costs"
    if f.get("statistics_floor"):  # forward passes alone leave out the statistics' own arithmetic: state it
        st = f["statistics_floor"]
        label += (f" (forward passes, one read; the activation statistics add a aᵀ products {st['hooks_s']:.0f} s and "
                  f"decompositions {st['decompositions_s']:.0f} s at this machine's measured rates: with them the "
                  f"floor is {f['floor_with_statistics_s'] / f['irreducible_s']:.2f}× the forward passes')")
    rss_floor = (1 + f["statistics_floor"]["accumulator_bytes"] / (4 * r["n_params"])
                 if f.get("statistics_floor") and r.get("n_params") else None)
    out = [Figure(label, f.get("run_over_irreducible"), "≤ 1.5", _le(f.get("run_over_irreducible"), 1.5)),
           *([Figure("whole study / the floor with the statistics' products and decompositions", f["run_over_floor"],
                     "≤ 1.5 (proposed)", _le(f["run_over_floor"], 1.5))] if f.get("run_over_floor") else []),
           Figure("whole study peak RSS / the model's float32 size" + (
                  f" (floor: the model and the probe statistics' float64 sums, one pass over the tokens holding every "
                  f"layer's upper triangle: {rss_floor:.2f}×; proposed target ≤ {FLOOR_TARGET} × the floor)"
                  if rss_floor else ""), f.get("peak_rss_over_fp32"), "≤ 2", _le(f.get("peak_rss_over_fp32"), 2.0)),
           *([Figure("whole study peak RSS / its floor", f["peak_rss_over_fp32"] / rss_floor,
                     f"≤ {FLOOR_TARGET} (proposed)", _le(f["peak_rss_over_fp32"] / rss_floor, FLOOR_TARGET))]
             if rss_floor and f.get("peak_rss_over_fp32") else []),
           Figure("rwedit plan's stage estimates: the worst |estimate / measured - 1|", f.get("plan_error"), "≤ 0.25",
                  _le(f.get("plan_error"), 0.25), "share")]
    stages = f.get("stages") or {}
    run = stages.get("run", {}).get("wall_s") or 1
    for name, s in stages.items():  # where the time goes (an outer stage includes its `stage: part` ones)
        x = f", {s['over_irreducible']:.1f}x its irreducible" if s.get("over_irreducible") else ""
        plan = f", plan {s['plan_over_measured']:.2f}x" if s.get("plan_over_measured") else ""
        if name != "run":
            out.append(Figure(f"study stage {name}: wall ({s['wall_s'] / run:.0%} of the run{x}{plan})", s["wall_s"],
                              "info", None, "s"))
    return out


def _placement(r: dict) -> list[Figure]:
    return [Figure(f"activation collection, model split CPU + disk offload / held whole (tokens/s, batch {b})",
                   v.get("split_over_whole"), "info (printed)", None) for b, v in (r.get("by_batch_size") or {}).items()]


register(Bench("pair_pass", "bench_pair_pass.py", ["--repeats", "2"], ["--skip-naive"], "pair_pass.json", _pair_pass))
register(Bench("probes", "bench_probes.py", ["--profile", "never", "--no-alternatives"],
               ["--profile", "never", "--no-alternatives", "--layers", "0,1,2,3", "--repeats", "1"],
               "probes.json", _probes))
register(Bench("adapters", "bench_adapters.py", [], [], "adapters.json", _adapters))
register(Bench("scoring", "bench_scoring.py", [], ["--limit", "5"], "scoring.json", _scoring))
register(Bench("sources", "bench_sources.py", [], [], "sources.json", _sources))
register(Bench("shards", "bench_shards.py", ["--limit", "10,40,160,320"], ["--limit", "10"], "shards.json", _shards))
register(Bench("placement", "bench_placement.py", [], ["--repeat", "1", "--batch-sizes", "8"], "placement.json", _placement))
register(Bench("study", "bench_study.py", [], ["--quick"], "study.json", _study, timeout_s=4 * 3600))


def _quickstart(quick: bool) -> tuple[list[Figure], dict]:
    """``rwedit quickstart`` warm (organism cached) and, unless quick, cold (organism built into a fresh root)."""
    out, raw = [], {}
    runs = [("warm", None)] + ([] if quick else [("cold", Path(tempfile.mkdtemp(prefix="rwedit-cold-")))])
    for label, root in runs:
        folder = Path(tempfile.mkdtemp(prefix="rwedit-qs-"))
        cmd = [sys.executable, "-m", "rwedit", "quickstart", "--out", str(folder / "out"), "--quiet"]
        if root is not None:
            cmd += ["--organism-root", str(root / "organism"), "--cache-dir", str(root / "cache")]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        raw[label] = dict(wall_s=wall, rc=p.returncode, tail=(p.stdout + p.stderr)[-2000:])
        target, met = ("≤ 900 s (CI budget share)", wall <= 900) if label == "cold" else ("≤ 180 s", wall <= 180)
        out.append(Figure(f"quickstart {label}", wall if p.returncode == 0 else None, target,
                          met if p.returncode == 0 else False, "s"))
        shutil.rmtree(folder, ignore_errors=True)
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    return out, raw


def _plan(quick: bool) -> tuple[list[Figure], dict]:
    """``rwedit plan`` of the control recipe on the 1.1B header pair (``header_pair.py --preset llama-1.1b``: real
    headers, sparse shards; ``bench_scoring``'s BPE tokenizer): the whole command's wall time, imports and its rate
    probe included, and the plan's own time in-process."""
    root = HERE / ".cache" / "llama-1.1b-headers"
    if not (root / "post" / "config.json").exists():
        tok = HERE / ".cache" / "bpe-32000"
        subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from bench_scoring import "
                        f"ensure_tokenizer; ensure_tokenizer(Path({str(tok)!r}))"], cwd=HERE, check=True)
        subprocess.run([sys.executable, str(HERE / "header_pair.py"), str(root), "--preset", "llama-1.1b",
                        "--tokenizer", str(tok)], check=True)
    args = ["plan", str(ROOT / "recipes" / "control-experiment.yaml"), "--base", str(root / "base"), "--post",
            str(root / "post"), "--out", str(root / "run")]
    walls = []
    env = {**os.environ, "RWEDIT_CACHE": tempfile.mkdtemp(prefix="rwedit-plan-")}  # run 1 measures the rates
    for _ in range(3):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "rwedit", *args], cwd=ROOT, capture_output=True, text=True, env=env)
        walls.append(time.perf_counter() - t0)
    shutil.rmtree(env["RWEDIT_CACHE"], ignore_errors=True)
    code = ("import sys, time; from rwedit.apps.plan import plan_recipe; "
            f"plan_recipe({str(ROOT / 'recipes' / 'control-experiment.yaml')!r}, "
            f"{{'model': {str(root / 'base')!r}, 'post': {str(root / 'post')!r}}}, out={str(root / 'run')!r}); "
            "t = time.perf_counter(); "
            f"plan_recipe({str(ROOT / 'recipes' / 'control-experiment.yaml')!r}, "
            f"{{'model': {str(root / 'base')!r}, 'post': {str(root / 'post')!r}}}, out={str(root / 'run')!r}); "
            "print(time.perf_counter() - t)")
    q = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    inproc = float(q.stdout.strip().splitlines()[-1]) if q.returncode == 0 and q.stdout.strip() else None
    ok = p.returncode == 0
    return [Figure("rwedit plan on the 1.1B pair, whole command (imports included; the machine's rates cached by an "
                   "earlier plan)", min(walls[1:]) if ok else None, "≤ 2 s", ok and min(walls[1:]) <= 2, "s"),
            Figure("rwedit plan on the 1.1B pair, the first on a machine (imports torch and measures its rates)",
                   walls[0] if ok else None, "info", None, "s"),
            Figure("rwedit plan on the 1.1B pair, the plan itself (imported, second call)", inproc, "≤ 2 s",
                   _le(inproc, 2.0), "s")], dict(walls=walls, rc=p.returncode, tail=(p.stdout + p.stderr)[-1500:])


#: benchmarks that are a function here, not a script (name -> function(quick) -> (figures, raw))
BUILTIN = {"plan": _plan, "quickstart": _quickstart}


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), usable_cores=len(os.sched_getaffinity(0)),
                torch=torch.__version__, torch_threads=torch.get_num_threads(), python=platform.python_version(),
                platform=platform.platform())


def settle(cores: int, most_s: float = 120.0) -> None:
    """Wait (at most ``most_s``) for the 1-minute load average to fall below the core count: the previous
    benchmark's own threads keep it near the core count for a minute after it ends."""
    t0 = time.perf_counter()
    while os.getloadavg()[0] > cores - 0.5 and time.perf_counter() - t0 < most_s:
        time.sleep(5)


def run_bench(b: Bench, quick: bool) -> dict:
    settle(len(os.sched_getaffinity(0)))
    before = os.getloadavg()
    t0 = time.perf_counter()
    cmd = [sys.executable, str(HERE / b.script), *(b.quick_args if quick else b.args)]
    print(f"== {b.name}: {' '.join(cmd[1:])}", flush=True)
    try:
        p = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=b.timeout_s)
        rc, tail = p.returncode, (p.stdout + p.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        rc, tail = None, f"timed out after {b.timeout_s} s"
    wall = time.perf_counter() - t0
    after = os.getloadavg()
    figures: list[Figure] = []
    if rc == 0:
        try:
            figures = b.figures(json.loads((RESULTS / b.results).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            figures = [Figure(f"{b.name}: results unreadable ({type(e).__name__}: {e})", None, met=False)]
    else:
        figures = [Figure(f"{b.name}: benchmark failed (exit {rc})", None, met=False)]
        print(tail, file=sys.stderr)
    return dict(name=b.name, date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), wall_s=wall,
                rc=rc, load_before=before, load_after=after,
                figures=[asdict(f) for f in figures])


def fmt(v, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "s":
        return f"{v:.1f} s"
    if unit == "MB":
        return f"{v:.0f} MB"
    if unit == "share":
        return f"{v:.2f}"
    if unit == "n":
        return f"{v:.0f}"
    if v and abs(v) < 0.01:
        return f"{v:.1e}×"
    return f"{v:.2f}×" if abs(v) < 100 else f"{v:.0f}×"


def write_summary(runs: list[dict], mach: dict, quick: bool, date: str) -> Path:
    cores = mach["usable_cores"]
    lines = ["# Benchmark summary", "",
             f"Date: {date}. Machine: {mach['cpu']}, {cores} usable cores, torch {mach['torch']} "
             f"({mach['torch_threads']} intra-op threads; the row-block pair pass runs one worker per thread, each "
             f"single-threaded), Python {mach['python']}, {mach['platform']}. Mode: {'quick' if quick else 'full'}.",
             "", "Every figure is a ratio against a baseline measured in the same run (see each script's docstring). "
             "*loaded*: the 1-minute load average was above the core count when that benchmark started (other "
             "work on the machine), so its figure is not a clean one; the load after it includes its own threads.", "",
             "| benchmark | figure | target | value | met | load before → after | clean | run |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        loaded = r["load_before"][0] > cores  # others' load: the benchmark's own threads raise "after"
        load = f"{r['load_before'][0]:.2f} → {r['load_after'][0]:.2f}"
        for f in r["figures"]:
            met = "—" if f["met"] is None else ("yes" if f["met"] else "**no**")
            lines.append(f"| {r['name']} | {f['figure']} | {f['target']} | {fmt(f['value'], f['unit'])} | {met} | "
                         f"{load} | {'*loaded*' if loaded else 'yes'} | {r.get('date', date)} |")
    lines += ["", "Raw results: the JSON files beside this one (`summary.json` holds this table's data).", ""]
    path = RESULTS / "summary.md"
    path.write_text("\n".join(lines))
    write_results(RESULTS / "summary.json", dict(date=date, machine=mach, quick=quick, runs=runs))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller settings and no cold quickstart")
    ap.add_argument("--only", default=None,  # the other benchmarks' rows of the last summary are kept
                    help="comma list of benchmarks to run: pair_pass, probes, adapters, scoring, sources, shards, study, "
                         "placement, plan, quickstart (default: all)")
    args = ap.parse_args(argv)
    names = [*BENCHES, *BUILTIN] if args.only is None else args.only.split(",")
    unknown = [n for n in names if n not in BENCHES and n not in BUILTIN]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {', '.join([*BENCHES, *BUILTIN])}")
    mach = machine()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = []
    previous = RESULTS / "summary.json"
    if args.only is not None and previous.exists():  # rerun some: the others' rows stay, with their own dates
        last = json.loads(previous.read_text())
        runs = [{"date": last.get("date"), **r} for r in last.get("runs", []) if r["name"] not in names]
    for name in names:
        if name in BUILTIN:
            print(f"== {name}", flush=True)
            settle(len(os.sched_getaffinity(0)))
            before, t0 = os.getloadavg(), time.perf_counter()
            figs, raw = BUILTIN[name](args.quick)
            runs.append(dict(name=name, date=date, wall_s=time.perf_counter() - t0, rc=0, load_before=before,
                             load_after=os.getloadavg(), figures=[asdict(f) for f in figs], raw=raw))
        else:
            runs.append(run_bench(BENCHES[name], args.quick))
        path = write_summary(runs, mach, args.quick, date)  # after each: an interrupted run keeps what it measured
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
