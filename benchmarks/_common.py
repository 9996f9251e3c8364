"""Plumbing shared by the benchmark scripts (not a benchmark itself).

- memory: ``status_kb`` (a field of ``/proc/self/status``) and ``RssSampler`` (peaks of RssAnon /
  RssFile sampled by a thread);
- child processes: a step runs in a fresh interpreter (so that its peak RSS and its imports are its
  own) and reports one tagged JSON line on stdout: ``measured`` (the child side: wall, CPU and memory
  of one call), ``emit`` / ``run_child`` (the two ends of the tagged line), ``busy_cpu_s`` (machine-wide
  busy CPU, to tell how much other processes competed with a step);
- models: ``build_llama_100m`` (the ~100M-parameter random Llama pair of ``bench_adapters.py`` and
  ``bench_scoring.py``) and the 12-condition edit spec the two of them share.

Import it from a script in this folder (the script's folder is on ``sys.path``): ``import _common``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import tempfile
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
LLAMA_100M_CACHE = HERE / ".cache" / "llama-100m"


# --- memory ----------------------------------------------------------------------------------


def status_kb(field_name: str) -> int:
    """A field of /proc/self/status in kB (0 if absent)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """Samples RssAnon / RssFile of this process every ``interval_s``, keeping the peaks (and peak total)."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak_anon = self.peak_file = self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        anon, fil = status_kb("RssAnon"), status_kb("RssFile")
        self.peak_anon, self.peak_file = max(self.peak_anon, anon), max(self.peak_file, fil)
        self.peak_total = max(self.peak_total, anon + fil)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "RssSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# --- child processes -------------------------------------------------------------------------


def measured(fn: Callable[[], Any], interval_s: float = 0.005) -> tuple[Any, dict]:
    """Call ``fn()`` and return ``(its result, figures)``; figures (kB and seconds): ``wall_s``; ``cpu_s``
    (user+system of all this process's threads: less sensitive than wall time to other processes, and
    it can exceed wall time when torch uses several threads); ``rss_start_kb`` (VmRSS before the call);
    ``vmhwm_kb`` (this process's own high-water mark: its mm is new at exec); ``ru_maxrss_kb`` (kept for
    reference only: Linux folds the *parent's* peak into a child's ru_maxrss at exec); ``peak_anon_kb``,
    ``peak_file_kb`` (sampled peaks of RssAnon, i.e. tensors, and RssFile, i.e. memory-mapped files)."""
    from rwedit.runtime import using  # rwedit's progress bars off inside a measurement

    rss_start = status_kb("VmRSS")
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    with RssSampler(interval_s) as sampler, using(progress=False):
        t0 = time.perf_counter()
        out = fn()
        wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    return out, dict(
        wall_s=wall,
        cpu_s=(ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        rss_start_kb=rss_start,
        vmhwm_kb=status_kb("VmHWM"),
        ru_maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,  # kB on Linux
        peak_anon_kb=sampler.peak_anon,
        peak_file_kb=sampler.peak_file,
    )


REPO = Path(__file__).resolve().parents[1]


def write_results(path: str | Path, obj: dict) -> None:
    """Write a results file with the machine's folders written portably (the repository's relative to its
    root, the home folder as ~, the temporary folder as $TMPDIR): results are committed, and a machine's own
    paths mean nothing on a reader's clone."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    for machine, portable in ((str(REPO) + "/", ""), (os.path.expanduser("~") + "/", "~/"),
                              (tempfile.gettempdir() + "/", "$TMPDIR/")):
        text = text.replace(machine, portable)
    Path(path).write_text(text)


def add_child_options(ap, steps) -> None:
    """The hidden ``--child STEP --child-args JSON`` options a benchmark re-runs itself with (:func:`child_cmd`)."""
    import argparse

    ap.add_argument("--child", choices=sorted(steps), help=argparse.SUPPRESS)
    ap.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)


def child_cmd(script: str | Path, step: str, params: dict) -> list[str]:
    """The command that runs ``step`` of the benchmark ``script`` in a fresh interpreter (see :func:`run_child`)."""
    return [sys.executable, str(Path(script).resolve()), "--child", step, "--child-args", json.dumps(params)]


def emit(tag: str, obj: dict) -> None:
    """The child's report: one line ``tag + JSON`` on stdout."""
    print(tag + json.dumps(obj), flush=True)


def busy_cpu_s() -> float:
    """CPU seconds spent busy by the whole machine since boot (all cores, from /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_child(cmd: list[str], tag: str, step: str, *, pass_stderr: bool = False,
              echo_prefix: str | None = None) -> tuple[dict, dict]:
    """Run ``cmd`` (a fresh interpreter) and return ``(the last tagged JSON it printed, process figures)``.

    stdout is captured; stderr too unless ``pass_stderr`` (then it goes straight to the terminal).
    With ``echo_prefix``, the child's untagged stdout lines are printed with that prefix.  On failure
    the captured output is written to stderr and SystemExit names the step.  Process figures:
    ``process_wall_s`` (spawn to exit: imports included), ``process_cpu_s`` (the child's user+system
    CPU seconds, spawn to exit) and ``other_procs_cores`` (CPU used by *other* processes meanwhile,
    machine busy time minus the child's own, as a number of busy cores: other work on the machine
    inflates wall times)."""
    ru0, busy0 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_s()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if pass_stderr else subprocess.PIPE, text=True)
    process_wall = time.perf_counter() - t0
    ru1, busy1 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_s()
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    lines = proc.stdout.splitlines()
    if echo_prefix is not None:
        for ln in lines:
            if not ln.startswith(tag):
                print(echo_prefix + ln)
    tagged = [ln for ln in lines if ln.startswith(tag)]
    if proc.returncode != 0 or not tagged:
        if not pass_stderr:
            sys.stderr.write(proc.stdout + (proc.stderr or ""))
        if proc.returncode != 0:
            raise SystemExit(f"step {step!r} failed (exit {proc.returncode})")
        raise SystemExit(f"step {step!r} reported no result")
    info = dict(process_wall_s=process_wall, process_cpu_s=own,
                other_procs_cores=max(0.0, (busy1 - busy0) - own) / process_wall)
    return json.loads(tagged[-1][len(tag):]), info


# --- the ~100M Llama pair and its 12 conditions ------------------------------------------------


def build_llama_100m(cache: Path = LLAMA_100M_CACHE) -> None:
    """A ~100M Llama (hidden 768, 12 layers, MLP 2048, vocab 32000; 134M parameters with the untied
    embeddings) in ``cache/base`` and a perturbed copy (+1e-3 Gaussian noise) in ``cache/post``, once."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (cache / "done").exists():
        return
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                      intermediate_size=2048, vocab_size=32000, max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(cache / "base")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    model.save_pretrained(cache / "post")
    (cache / "done").write_text("ok")


def llama_100m_edit_spec(cache: Path = LLAMA_100M_CACHE):
    """The EditSpec of 12 conditions: principal[0] of layer 6's q (b: the observed delta) at α ∈ {1, 2},
    with 3 random, 1 low-variance and 1 write-pathway (o) control at each α."""
    from rwedit.editor.spec import EditSpec

    return EditSpec.from_dict({
        "model": str(cache / "base"), "post": str(cache / "post"),
        "calibration": {"data": "unused: token ids are given directly", "tokens": 8192, "seq_len": 256},
        "edit": {"layers": [6], "role": "q", "v": "principal[0]", "b": "delta"},
        "alpha": [1.0, 2.0], "controls": {"random": 3, "lowvar": 1, "write": "o"},
    })


def llama_100m_stats(model, cache: Path = LLAMA_100M_CACHE):
    """Activation statistics of layer 6's q and o inputs over 32 x 256 random token ids (cached under
    ``cache/stats``): the benchmarks time the machinery, not a result."""
    import torch
    from rwedit.probes.activations import StatsSettings, cached_activation_stats

    ids = torch.randint(3, 32000, (32, 256), generator=torch.Generator().manual_seed(0))
    settings = StatsSettings(roles=("q", "o"), layers=(6,), seq_len=256)
    return cached_activation_stats(model, ids, settings, cache_dir=cache / "stats", progress=False)
