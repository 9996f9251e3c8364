#!/usr/bin/env python
"""Benchmark lm-eval scoring of 12 conditions in one experiment against bare passes and the naive way.

Usage::

    python benchmarks/bench_scoring.py                     # rwedit_blimp, --limit 10, 12 conditions
    python benchmarks/bench_scoring.py --task rwedit_hh_preference --limit 10 --conditions 6

Target (issue #5): on a ~100M-parameter model and one offline task, scoring 12 conditions in one
experiment (one model load, adapter switching) takes <= 1.2x the sum of 12 bare lm-eval passes, and
>= 3x less wall time than the naive way (a fresh process and model load per condition).

What it measures, and why
-------------------------
The model is the random ~100M Llama pair of ``bench_adapters.py`` (134M parameters with its untied
embeddings, float32, built offline into ``benchmarks/.cache/llama-100m``); a byte-level BPE tokenizer
trained on the bundled WikiText-2 validation text is saved into its folder (the random model needs
token ids below its vocabulary size, and HFLM must be given the tokenizer: without one it looks
the model's name up on the Hub).  The 12 conditions are the adapters of ``bench_adapters.py`` (a
rank-1 edit of layer 6's q at two α with random, low-variance and write-pathway controls), saved
once as named PEFT adapter folders.  The scores of a random model mean nothing: the benchmark times
the machinery.  Imports are in neither (a) nor (b):

  (a) bare   - the base model (no PEFT) and its tokenizer, a ``TaskManager`` and an ``HFLM``, built
               untimed; then 12 ``simple_evaluate`` passes on the task, each timed; (a) is their sum;
  (b) rwedit - one experiment, everything timed from the model load on: ``load_model_and_tokenizer``,
               ``load_adapter_folder`` (the 12 named adapters onto the one model), ``LMEvalScorer``
               (its own TaskManager and HFLM), then ``scorer.run(name)`` for each condition (adapters
               switched in place); (b) is the total, setup included;
  (c) naive  - 12 fresh interpreters, one per condition, each importing torch/transformers/peft/
               lm_eval, loading the model with ``from_pretrained``, its adapter with
               ``PeftModel.from_pretrained``, the tokenizer, a ``TaskManager`` with the task folder, an
               ``HFLM``, and running the same ``simple_evaluate``; (c) is the sum of the processes'
               wall times, spawn to exit.

The three are interleaved by condition, so that changes in the load other processes put on the
machine hit all three alike: one fresh process holds (a)'s bare model and (b)'s experiment (after
(b)'s setup it scores condition i with (a) then (b), then waits), and between conditions the driver
runs (c)'s fresh process for condition i.  (b)'s scorer builds its own TaskManager (none is cached in
that process).

All passes use the same ``simple_evaluate`` arguments (the ones ``LMEvalScorer.run`` uses, samples
logged, no response cache).  Cross-checks: every condition's per-request log-likelihoods in (b)
equal those of (c) (the adapter switched in place scores like the adapter loaded alone), and differ
from the base model's in (a) (the adapter is active).  Other processes share this machine's cores;
each step records how many cores other processes kept busy meanwhile and its CPU seconds, which are
less sensitive to that than wall time.  Results go to ``benchmarks/results/scoring.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from _common import write_results
from _common import (LLAMA_100M_CACHE, build_llama_100m, busy_cpu_s, emit, llama_100m_edit_spec, llama_100m_stats,
                     measured)
from _common import add_child_options, child_cmd
from _common import run_child as _run_child

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results" / "scoring.json"
CHILD_TAG = "@@BENCH_SCORING@@ "
STEP_TAG = "@@BENCH_SCORING_STEP@@ "  # progress of the (a)+(b) process, which waits for the driver before each condition
B_OVER_A_TARGET = 1.2  # the experiment within 1.2x of the bare passes
C_OVER_B_TARGET = 3.0  # the naive way at least 3x slower than the experiment
LL_TOL = 1e-4  # |log-likelihood (b) - (c)| allowed (float32 forward passes, same batches)
TOKENIZER_VOCAB = 32000
HEAVY_IMPORTS = ["torch", "transformers", "peft", "lm_eval", "lm_eval.models.huggingface", "rwedit.evals.lmeval",
                 "rwedit.editor.adapters", "rwedit.models", "transformers.models.llama.modeling_llama"]


# --- setup: model, tokenizer, adapters --------------------------------------------------------


def ensure_tokenizer(base: Path) -> dict:
    """A byte-level BPE tokenizer (asked for 32000 tokens, the model's vocabulary) trained on the bundled
    WikiText-2 validation text, saved into the model folder once."""
    from transformers import AutoTokenizer

    if not (base / "tokenizer.json").exists():
        from rwedit.data import read_texts, train_bpe_tokenizer

        t0 = time.perf_counter()
        tok = train_bpe_tokenizer(read_texts("bundled:wikitext-2/valid.txt.gz"), vocab_size=TOKENIZER_VOCAB)
        tok.save_pretrained(str(base))
        print(f"  trained a BPE tokenizer ({len(tok)} tokens) in {time.perf_counter() - t0:.1f} s -> {base}")
    tok = AutoTokenizer.from_pretrained(str(base))
    return dict(source="byte-level BPE trained on bundled:wikitext-2/valid.txt.gz (rwedit.data.train_bpe_tokenizer)",
                vocab=len(tok), requested_vocab=TOKENIZER_VOCAB, bos=tok.bos_token_id, eos=tok.eos_token_id,
                pad=tok.pad_token_id)


def ensure_adapters(cache: Path) -> list[str]:
    """The 12 conditions of bench_adapters.py, saved once as named adapter folders under cache/adapters."""
    folder = cache / "adapters"
    if (folder / "names.json").exists():
        return json.loads((folder / "names.json").read_text())
    import torch
    from transformers import AutoModelForCausalLM

    from rwedit.editor.adapters import attach_conditions
    from rwedit.editor.edits import build_conditions

    model = AutoModelForCausalLM.from_pretrained(str(cache / "base"), dtype=torch.float32).eval()
    stats = llama_100m_stats(model, cache)
    conditions = build_conditions(llama_100m_edit_spec(cache), model, None, stats)
    peft_model = attach_conditions(model, conditions)
    names = [c.name for c in conditions]
    peft_model.save_pretrained(str(folder), selected_adapters=names)
    (folder / "names.json").write_text(json.dumps(names))  # written last: the folder is complete
    return names


def step_setup(p: dict) -> dict:
    cache = Path(p["cache"])
    t0 = time.perf_counter()
    build_llama_100m(cache)
    tok = ensure_tokenizer(cache / "base")
    names = ensure_adapters(cache)
    from rwedit.evals.bundled_tasks import task_path

    tasks = str(task_path())
    import torch
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(cache / "base"))
    h, L, i, v = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    n_params = 2 * v * h + L * (4 * h * h + 3 * h * i + 2 * h) + h
    return dict(names=names, tokenizer=tok, task_dir=tasks, n_params=n_params, setup_s=time.perf_counter() - t0,
                eval_kwargs=eval_kwargs(p["task"], p["limit"], p["batch_size"]),
                model=dict(type=cfg.model_type, hidden=h, layers=L, intermediate=i, vocab=v,
                           dtype="float32", torch_threads=torch.get_num_threads()))


# --- the measured steps -----------------------------------------------------------------------


def eval_kwargs(task: str, limit: int, batch_size: int) -> dict:
    """simple_evaluate arguments besides model/tasks/task_manager: exactly those of LMEvalScorer.run (computed
    once in the setup step and handed to every pass)."""
    from rwedit.evals.lmeval import EvalSettings

    s = EvalSettings(tasks=(task,), limit=limit, batch_size=batch_size)
    return dict(limit=s.limit, num_fewshot=s.num_fewshot, bootstrap_iters=s.bootstrap_iters, log_samples=True,
                use_cache=None, cache_requests=False, verbosity="ERROR")


def _summary(out: dict, task: str) -> dict:
    """acc and the per-request log-likelihoods (in doc order) of one simple_evaluate output."""
    from rwedit.evals.lmeval import flatten_results

    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    lls = [float(r[0]) for s in samples for r in s["filtered_resps"]]
    flat = flatten_results(out["results"])
    return dict(metrics={k: v for k, v in flat.items() if not k.endswith("_stderr")}, lls=lls, docs=len(samples))


def _cpu_s() -> float:
    """CPU seconds of this process and its waited-for children (lm-eval runs ``pip list`` in a subprocess
    for its environment report on every simple_evaluate)."""
    import resource

    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def step_ab(p: dict) -> dict:
    """(a) and (b) in one process, their passes interleaved (a pass of (a), then one of (b), ...) so that
    changes in the load other processes put on the machine hit both alike; before each condition it waits
    for a line on stdin (meanwhile the driver runs that condition's naive process, which then sees the
    same load too).

    (a): the base model (no PEFT) with its own TaskManager and HFLM, built untimed; each bare
    simple_evaluate timed.  (b): timed from the model load on: load_model_and_tokenizer,
    load_adapter_folder, LMEvalScorer (which builds its own TaskManager: none is cached in this process
    yet), then scorer.run(name) for each condition."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rwedit.checkpoints import Checkpoint
    from rwedit.editor.adapters import load_adapter_folder
    from rwedit.evals.lmeval import EvalSettings, LMEvalScorer
    from rwedit.models import load_model_and_tokenizer

    # (a)'s untimed setup
    t0 = time.perf_counter()
    bare_model = AutoModelForCausalLM.from_pretrained(p["base"], dtype=torch.float32).eval()
    bare_tok = AutoTokenizer.from_pretrained(p["base"])
    t1 = time.perf_counter()
    bare_tm = TaskManager(include_path=p["task_dir"])
    t2 = time.perf_counter()
    bare_lm = HFLM(pretrained=bare_model, tokenizer=bare_tok, batch_size=p["batch_size"])
    a_setup = dict(load_model_tokenizer=time.perf_counter() - t0 - (t2 - t1), task_manager=t2 - t1)

    # (b)'s setup, timed
    c0, t0 = _cpu_s(), time.perf_counter()
    model, tok = load_model_and_tokenizer(Checkpoint.open(p["base"]))
    t1 = time.perf_counter()
    peft_model = load_adapter_folder(model, p["adapters"], p["names"])
    t2 = time.perf_counter()
    settings = EvalSettings(tasks=(p["task"],), limit=p["limit"], batch_size=p["batch_size"])
    scorer = LMEvalScorer(peft_model, tok, settings)
    t3 = time.perf_counter()
    b_setup = dict(load_model_tokenizer=t1 - t0, load_adapter_folder=t2 - t1, scorer_task_manager_hflm=t3 - t2)
    b_setup_cpu = _cpu_s() - c0

    emit(STEP_TAG, dict(ready=True))
    a_pass, a_cpu, b_pass, b_cpu, summaries, base = [], [], [], [], {}, None
    for i, name in enumerate(p["names"]):
        if not sys.stdin.readline():  # the driver says when (it runs a naive process in between)
            raise SystemExit("driver closed stdin before every condition was scored")
        c0, t0 = _cpu_s(), time.perf_counter()
        with torch.no_grad():
            out = simple_evaluate(model=bare_lm, tasks=[p["task"]], task_manager=bare_tm, **p["eval_kwargs"])
        a_pass.append(time.perf_counter() - t0)
        a_cpu.append(_cpu_s() - c0)
        base = base or _summary(out, p["task"])
        c0, t0 = _cpu_s(), time.perf_counter()
        out = scorer.run(name, log_samples=True)
        b_pass.append(time.perf_counter() - t0)
        b_cpu.append(_cpu_s() - c0)
        summaries[name] = _summary(out, p["task"])
        emit(STEP_TAG, dict(i=i, a_pass_s=a_pass[-1], b_pass_s=b_pass[-1], cpu_s=a_cpu[-1] + b_cpu[-1]))
    return dict(
        a=dict(sum_s=sum(a_pass), pass_s=a_pass, pass_cpu_s=a_cpu, cpu_s=sum(a_cpu), untimed_setup_s=a_setup, base=base),
        b=dict(total_s=sum(b_setup.values()) + sum(b_pass), setup_s=b_setup, scoring_s=sum(b_pass), pass_s=b_pass,
               pass_cpu_s=b_cpu, cpu_s=b_setup_cpu + sum(b_cpu), setup_cpu_s=b_setup_cpu, conditions=summaries))


def naive_main(p: dict) -> None:
    """(c) One condition the naive way, in this fresh interpreter: everything from the imports on."""
    t0 = time.perf_counter()
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t1 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(p["base"], dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(Path(p["adapters"]) / p["name"])).eval()
    tok = AutoTokenizer.from_pretrained(p["base"])
    t2 = time.perf_counter()
    tm = TaskManager(include_path=p["task_dir"])
    t3 = time.perf_counter()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=p["batch_size"])
    t4 = time.perf_counter()
    with torch.no_grad():
        out = simple_evaluate(model=lm, tasks=[p["task"]], task_manager=tm, **p["eval_kwargs"])
    t5 = time.perf_counter()
    emit(CHILD_TAG, dict(in_process_s=t5 - t0, imports_s=t1 - t0, load_model_adapter_tokenizer_s=t2 - t1,
                         task_manager_s=t3 - t2, hflm_s=t4 - t3, eval_s=t5 - t4, summary=_summary(out, p["task"])))


STEPS = {"setup": step_setup, "ab": step_ab}


def child_main(step: str, p: dict) -> None:
    if step == "naive":  # nothing imported before its clock: the import is part of the naive way
        naive_main(p)
        return
    import importlib

    for mod in HEAVY_IMPORTS:  # imports are not part of (a) or (b)
        importlib.import_module(mod)
    load0 = os.getloadavg()
    out, m = measured(lambda: STEPS[step](p), interval_s=0.05)
    out["process"] = dict(wall_s=m["wall_s"], cpu_s=m["cpu_s"], peak_rss_mb=m["vmhwm_kb"] / 1024,
                          loadavg_before=load0, loadavg_after=os.getloadavg())
    emit(CHILD_TAG, out)


def run_child(step: str, p: dict) -> dict:
    cmd = child_cmd(__file__, step, p)
    out, info = _run_child(cmd, CHILD_TAG, step, pass_stderr=True, echo_prefix="    | ")
    out["process_info"] = info  # process_wall_s (spawn to exit), other_procs_cores
    return out


def run_interleaved(p: dict, names: list[str]) -> tuple[dict, list[dict]]:
    """(a)+(b) in one child that waits before each condition, and (c)'s naive child for that condition run
    in between: condition i's bare pass, experiment pass and naive process run back to back."""
    import subprocess

    cmd = child_cmd(__file__, "ab", p)
    t_start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def read_tagged(tag: str) -> dict:
        for line in proc.stdout:
            if line.startswith(tag):
                return json.loads(line[len(tag):])
            if not line.startswith((STEP_TAG, CHILD_TAG)):
                print("    | " + line, end="")
        raise SystemExit(f"step 'ab' ended without its report (exit {proc.wait()})")

    read_tagged(STEP_TAG)  # setup done
    c_runs, pairs = [], []
    for i, name in enumerate(names):
        busy0, t0 = busy_cpu_s(), time.perf_counter()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        pair = read_tagged(STEP_TAG)
        wall = time.perf_counter() - t0
        pair["other_procs_cores"] = max(0.0, busy_cpu_s() - busy0 - pair["cpu_s"]) / wall
        pairs.append(pair)
        r = run_child("naive", dict(p, name=name))
        c_runs.append(dict(r, name=name))
        print(f"  {i + 1}/{len(names)} {name}: (a) {pair['a_pass_s']:.1f} s, (b) {pair['b_pass_s']:.1f} s, "
              f"(c) {r['process_info']['process_wall_s']:.1f} s (its simple_evaluate {r['eval_s']:.1f} s)", flush=True)
    proc.stdin.close()
    ab = read_tagged(CHILD_TAG)
    if proc.wait() != 0:
        raise SystemExit(f"step 'ab' failed (exit {proc.returncode})")
    ab["process_info"] = dict(process_wall_s=time.perf_counter() - t_start, pairs=pairs)
    return ab, c_runs


def _max_abs_diff(x: list[float], y: list[float]) -> float:
    if len(x) != len(y):
        return float("inf")
    return max((abs(a - b) for a, b in zip(x, y)), default=0.0)


# --- driver ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module docstring for what is measured and why.")
    ap.add_argument("--task", default="rwedit_blimp", help="bundled offline lm-eval task (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=10, help="items of the task per pass (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=8, help="HFLM batch size (default: %(default)s)")
    ap.add_argument("--conditions", type=int, default=12, help="conditions scored, <= 12 (default: %(default)s)")
    ap.add_argument("--cache", type=Path, default=LLAMA_100M_CACHE, help="model pair folder (default: %(default)s)")
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON output (default: %(default)s)")
    add_child_options(ap, [*STEPS, "naive"])
    args = ap.parse_args(argv)

    if args.child:
        child_main(args.child, json.loads(args.child_args))
        return 0
    if not 1 <= args.conditions <= 12:
        ap.error("--conditions must be between 1 and 12")

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    print(f"setup: model pair, tokenizer, 12 adapters, task folder in {args.cache} ...", flush=True)
    setup = run_child("setup", dict(cache=str(args.cache), task=args.task,
                                    limit=args.limit, batch_size=args.batch_size))
    names = setup["names"][: args.conditions]
    n = len(names)
    common = dict(base=str(args.cache / "base"), adapters=str(args.cache / "adapters"), task=args.task,
                  limit=args.limit, batch_size=args.batch_size, task_dir=setup["task_dir"],
                  eval_kwargs=setup["eval_kwargs"])
    print(f"  {setup['n_params'] / 1e6:.0f}M parameters, tokenizer {setup['tokenizer']['vocab']} tokens, "
          f"conditions: {', '.join(names)}", flush=True)

    print(f"(a), (b), (c) interleaved by condition ({args.task}, limit {args.limit}): one process holds (a)'s bare "
          f"model and (b)'s experiment (one load, {n} adapters, LMEvalScorer); (c) one fresh process per condition ...",
          flush=True)
    ab, c_runs = run_interleaved(dict(common, names=names), names)
    a, b = ab["a"], ab["b"]
    print(f"  (a) sum {a['sum_s']:.1f} s; (b) total {b['total_s']:.1f} s (setup {sum(b['setup_s'].values()):.1f} s, "
          f"scoring {b['scoring_s']:.1f} s)", flush=True)
    c_total = sum(r["process_info"]["process_wall_s"] for r in c_runs)
    c_cpu = sum(r["process_info"]["process_cpu_s"] for r in c_runs)
    print(f"  sum of process wall times {c_total:.1f} s", flush=True)

    # cross-checks
    ll_b_vs_c = {r["name"]: _max_abs_diff(b["conditions"][r["name"]]["lls"], r["summary"]["lls"]) for r in c_runs}
    ll_b_vs_base = {nm: _max_abs_diff(b["conditions"][nm]["lls"], a["base"]["lls"]) for nm in names}
    checks = dict(ll_tol=LL_TOL, max_abs_ll_diff_experiment_vs_naive=max(ll_b_vs_c.values()),
                  experiment_equals_naive=all(v <= LL_TOL for v in ll_b_vs_c.values()),
                  min_max_abs_ll_diff_condition_vs_base=min(ll_b_vs_base.values()),
                  every_condition_differs_from_base=all(v > LL_TOL for v in ll_b_vs_base.values()),
                  requests_per_pass=len(a["base"]["lls"]), docs_per_pass=a["base"]["docs"])
    ok = checks["experiment_equals_naive"] and checks["every_condition_differs_from_base"]

    a_s, b_s = a["sum_s"], b["total_s"]
    naive_fixed = [r["process_info"]["process_wall_s"] - r["eval_s"] for r in c_runs]
    ratios = dict(
        b_over_a=b_s / a_s, b_over_a_target=B_OVER_A_TARGET, b_over_a_met=b_s / a_s <= B_OVER_A_TARGET,
        c_over_b=c_total / b_s, c_over_b_target=C_OVER_B_TARGET, c_over_b_met=c_total / b_s >= C_OVER_B_TARGET,
        b_scoring_only_over_a=b["scoring_s"] / a_s,
        b_over_a_cpu=b["cpu_s"] / a["cpu_s"], c_over_b_cpu=c_cpu / b["cpu_s"],
    )
    # the same ratios from median pass times (n x median instead of the sum): less sensitive to the few
    # passes that other processes slowed down most
    med_a = n * statistics.median(a["pass_s"])
    med_b = sum(b["setup_s"].values()) + n * statistics.median(b["pass_s"])
    med_c = n * statistics.median(r["process_info"]["process_wall_s"] for r in c_runs)
    ratios.update(b_over_a_from_medians=med_b / med_a, c_over_b_from_medians=med_c / med_b)
    # where the targets hold: with a bare pass of s seconds, per-condition naive fixed cost F and the
    # experiment's fixed setup S, b ~ S + n s and c ~ n (F + s); b/a <= 1.2 needs s >= S / (0.2 n), c/b >= 3
    # needs s <= (n F - 3 S) / (2 n)
    s_pass = statistics.median(a["pass_s"])
    S, F = sum(b["setup_s"].values()), statistics.median(naive_fixed)
    model = dict(bare_pass_median_s=s_pass, experiment_setup_s=S, naive_fixed_per_condition_median_s=F,
                 b_over_a_met_when_pass_s_at_least=S / ((B_OVER_A_TARGET - 1) * n),
                 c_over_b_met_when_pass_s_at_most=(n * F - C_OVER_B_TARGET * S) / ((C_OVER_B_TARGET - 1) * n))

    import torch
    import lm_eval
    import peft
    import transformers

    others = {"a_and_b_mean": statistics.mean(q["other_procs_cores"] for q in ab["process_info"]["pairs"]),
              "c_mean": statistics.mean(r["process_info"]["other_procs_cores"] for r in c_runs)}
    res = dict(
        machine=dict(nproc=os.cpu_count(), nproc_usable=len(os.sched_getaffinity(0)), python=platform.python_version(),
                     platform=platform.platform(), torch=torch.__version__, torch_threads=setup["model"]["torch_threads"],
                     transformers=transformers.__version__, peft=peft.__version__, lm_eval=lm_eval.__version__,
                     loadavg_start=load_start, loadavg_end=os.getloadavg(),
                     shared_cpu="other agents' processes (tests, experiments) shared these 2 cores during the run: "
                                "other_procs_cores is the number of cores they kept busy during each step on average "
                                "(above ~0.2 wall times are inflated); CPU seconds are less sensitive to it",
                     other_procs_cores=others),
        settings=dict(task=args.task, limit=args.limit, batch_size=args.batch_size, conditions=n, names=names,
                      eval_kwargs=setup["eval_kwargs"], device="cpu", dtype="float32",
                      order="by condition: (a)'s pass and (b)'s pass in the one (a)+(b) process, then (c)'s fresh process for "
                            "that condition; (b)'s setup runs first, before any pass"),
        model=dict(setup["model"], n_params=setup["n_params"], cache=str(args.cache), tokenizer=setup["tokenizer"]),
        a_bare=dict({k: v for k, v in a.items() if k != "base"}, base_metrics=a["base"]["metrics"]),
        b_experiment=dict({k: v for k, v in b.items() if k != "conditions"},
                          metrics={k: v["metrics"] for k, v in b["conditions"].items()}),
        a_b_process=dict(ab["process"], **ab["process_info"]),
        c_naive=dict(total_s=c_total, cpu_s=c_cpu,
                     runs=[dict(name=r["name"], **r["process_info"],
                                **{k: r[k] for k in ("in_process_s", "imports_s", "load_model_adapter_tokenizer_s",
                                                     "task_manager_s", "hflm_s", "eval_s")},
                                metrics=r["summary"]["metrics"]) for r in c_runs]),
        ratios=ratios, break_even=model, checks=checks, total_s=time.perf_counter() - t_start,
    )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_results(args.results, res)

    w = 52
    print()
    print(f"model {setup['n_params'] / 1e6:.0f}M params, task {args.task} limit {args.limit} "
          f"({checks['requests_per_pass']} requests a pass), batch {args.batch_size}, {n} conditions")
    print(f"{'(a) sum of ' + str(n) + ' bare lm-eval passes':<{w}}{a_s:>9.1f} s")
    print(f"{'(b) one experiment (load, adapters, scorer, ' + str(n) + ' runs)':<{w}}{b_s:>9.1f} s"
          f"   (setup {S:.1f} s, scoring {b['scoring_s']:.1f} s)")
    print(f"{'(c) naive: ' + str(n) + ' fresh processes':<{w}}{c_total:>9.1f} s"
          f"   (fixed cost a process, median {F:.1f} s: imports, loads, TaskManager)")
    print(f"b/a = {ratios['b_over_a']:.2f}  (target <= {B_OVER_A_TARGET}: {'met' if ratios['b_over_a_met'] else 'NOT met'};"
          f" scoring alone {ratios['b_scoring_only_over_a']:.2f}; CPU seconds {ratios['b_over_a_cpu']:.2f})")
    print(f"c/b = {ratios['c_over_b']:.2f}  (target >= {C_OVER_B_TARGET}: {'met' if ratios['c_over_b_met'] else 'NOT met'};"
          f" CPU seconds {ratios['c_over_b_cpu']:.2f})")
    print(f"from n x median times instead of sums: b/a = {ratios['b_over_a_from_medians']:.2f}, "
          f"c/b = {ratios['c_over_b_from_medians']:.2f}")
    print(f"from these figures: b/a <= {B_OVER_A_TARGET} needs a bare pass >= "
          f"{model['b_over_a_met_when_pass_s_at_least']:.1f} s, c/b >= {C_OVER_B_TARGET} needs one <= "
          f"{model['c_over_b_met_when_pass_s_at_most']:.1f} s (measured: median {s_pass:.1f} s)")
    print(f"cross-check: log-likelihoods experiment vs naive max |diff| {checks['max_abs_ll_diff_experiment_vs_naive']:.1e}"
          f" ({'OK' if checks['experiment_equals_naive'] else 'MISMATCH'}); every condition differs from the base: "
          f"{'yes' if checks['every_condition_differs_from_base'] else 'NO'} "
          f"(smallest max |diff| {checks['min_max_abs_ll_diff_condition_vs_base']:.1e})")
    busy = {k: v for k, v in others.items() if v > 0.2}
    if busy:
        print("note: other processes kept " + ", ".join(f"{v:.1f} cores busy during {k}" for k, v in busy.items())
              + f" (of {res['machine']['nproc_usable']}): wall times are inflated")
    print(f"total {res['total_s'] / 60:.1f} min; wrote {args.results}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
