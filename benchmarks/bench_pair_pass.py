#!/usr/bin/env python
"""Benchmark one streaming pass over a ~1.1B-parameter checkpoint pair, against plain I/O and naive loading.

What it measures, and why
-------------------------
rwedit's promise is that a pass over two checkpoints (base and post-trained) costs about what reading
their bytes costs, and holds O(largest tensor) in memory instead of two models.  This script checks
that promise on a synthetic pair with TinyLlama shapes (hidden 2048, 22 layers, 32 heads / 4 KV heads,
intermediate 5632, vocab 32000, untied embeddings, bf16; ~1.1B parameters, ~2.2 GB per checkpoint),
and times these steps, each in a fresh subprocess so that its peak RSS is its own:

  (a) read   - read every byte of both checkpoints' ``*.safetensors`` files with plain buffered reads,
               discarding the data: the I/O floor of any pass;
  (b) rwedit - ``delta_norms(CheckpointPair(base, post))``: the row-block pass over every (layer, role),
               unembed included, computing ||ΔW||_F in float32;
  (w) whole  - the whole-tensor path (``iter_roles``), the implementation the row-block pass replaced;
  (f) floor  - every stored element of both checkpoints converted to float32 (memory-mapped files, 64K-element
               chunks by a TorchScript loop, the fastest conversion measured; one single-threaded worker per
               core, each tensor's pages dropped once converted, as a pass within the RSS target must), no
               subtraction or sums: what any float32 pass costs beyond the read (its ratio to (a) is the floor
               under (b)/(a));
  (c) naive  - ``LlamaForCausalLM.from_pretrained`` of both models (bf16), then the same norms as
               ||post.float() - base.float()||_F over the same parameters.

(b) and (c) both report the number of roles and the sum of squared norms; they must agree (to 1e-4
relative) or the script exits non-zero.  Step (a) is run once, untimed, before the timed steps so that
all three are compared with a warm page cache.  Wall times are of the work only (imports are done before the clock starts);
peak RSS is the child's own high-water mark ``VmHWM`` (so it includes the interpreter and its imports,
reported separately as "RSS at start"; ``ru_maxrss`` is recorded too but is not used, because Linux
carries the parent's peak into a child's ``ru_maxrss`` across fork+exec), and a sampling thread splits the peak into anonymous memory (tensors)
and file-backed pages (memory-mapped checkpoint files, which the kernel can drop under pressure).

The synthetic pair is built once into a cache folder (default ``benchmarks/.cache/llama-1.1b-pair``)
tensor by tensor, seeded, with the tensor names of a ``LlamaForCausalLM`` state dict; base shards are
~1 GB and post shards ~0.8 GB so the two shardings differ.  A marker file written last says a build is
complete; an incomplete or differently configured cache is rebuilt.

Results are printed as a table and written to ``benchmarks/results/pair_pass.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from _common import write_results
from _common import emit, measured
from _common import run_child as _run_child

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = HERE / ".cache" / "llama-1.1b-pair"
DEFAULT_RESULTS = HERE / "results" / "pair_pass.json"
MARKER = "BUILD_COMPLETE.json"
CHILD_TAG = "@@BENCH_RESULT@@ "
RSS_TARGET_MB = 600.0  # 0.6 GB (it was 1.5 GB before the row-block pass)
TIME_FACTOR_TARGET = 1.5  # (b) should be within 1.5x of (a)
REL_TOL = 1e-4

#: TinyLlama-1.1B shapes; the fingerprint of a build (a cache built with other values is rebuilt).
SPEC = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
LAYER_ROLE_PARAMS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)


# --- building the synthetic pair -------------------------------------------------------------


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(**SPEC, dtype="bfloat16")


def expected_names(n_layers: int) -> list[str]:
    """The state-dict names of a LlamaForCausalLM, written out by hand (checked against the model)."""
    names = ["model.embed_tokens.weight"]
    for i in range(n_layers):
        names += [f"model.layers.{i}.{p}.weight" for p in LAYER_ROLE_PARAMS]
        names += [f"model.layers.{i}.input_layernorm.weight", f"model.layers.{i}.post_attention_layernorm.weight"]
    return names + ["model.norm.weight", "lm_head.weight"]


def tensor_specs(config) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, in state-dict order, taken from a meta-device LlamaForCausalLM."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    specs = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    want = expected_names(config.num_hidden_layers)
    if sorted(k for k, _ in specs) != sorted(want):
        raise SystemExit(f"LlamaForCausalLM state dict names differ from the expected ones: "
                         f"{sorted(set(k for k, _ in specs) ^ set(want))[:8]}")
    return specs


def plan_shards(specs, shard_bytes: int, itemsize: int = 2) -> list[list[str]]:
    """Group tensors, in order, into shards of at most ``shard_bytes`` (a bigger tensor gets its own)."""
    shards, cur, size = [], [], 0
    for name, shape in specs:
        n = itemsize
        for s in shape:
            n *= s
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += n
    if cur:
        shards.append(cur)
    return shards


def _fingerprint(seed: int, base_shard_gb: float, post_shard_gb: float, delta_scale: float) -> dict:
    return dict(spec=SPEC, seed=seed, base_shard_gb=base_shard_gb, post_shard_gb=post_shard_gb,
                delta_scale=delta_scale, dtype="bfloat16")


def cache_is_complete(cache: Path, fingerprint: dict) -> bool:
    marker = cache / MARKER
    if not marker.exists():
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


class _ShardWriter:
    """Accumulates one checkpoint's tensors and writes each planned shard once it is full."""

    def __init__(self, folder: Path, plan: list[list[str]]):
        self.folder, self.plan = folder, plan
        self.file_of = {n: f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors"
                        for i, names in enumerate(plan) for n in names}
        self.pending: dict[str, object] = {}
        self.next_shard = 0
        self.total_size = 0

    def add(self, name: str, tensor) -> None:
        from safetensors.torch import save_file

        self.pending[name] = tensor
        self.total_size += tensor.numel() * tensor.element_size()
        names = self.plan[self.next_shard]
        if all(n in self.pending for n in names):
            shard = {n: self.pending.pop(n) for n in names}
            save_file(shard, str(self.folder / self.file_of[names[0]]), metadata={"format": "pt"})
            self.next_shard += 1

    def finish(self) -> None:
        assert not self.pending and self.next_shard == len(self.plan), "unwritten tensors left"
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.file_of.items()))}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def build_pair(cache: Path, seed: int, base_shard_gb: float, post_shard_gb: float, delta_scale: float,
               force: bool = False) -> tuple[Path, Path]:
    """Build (or reuse) the synthetic pair; returns (base_dir, post_dir)."""
    base_dir, post_dir = cache / "base", cache / "post"
    fp = _fingerprint(seed, base_shard_gb, post_shard_gb, delta_scale)
    if not force and cache_is_complete(cache, fp):
        print(f"reusing synthetic pair in {cache}")
        return base_dir, post_dir

    import torch
    from tqdm import tqdm

    print(f"building synthetic pair in {cache} (seed {seed}) ...")
    if cache.exists():
        shutil.rmtree(cache)
    base_dir.mkdir(parents=True)
    post_dir.mkdir(parents=True)
    config = llama_config()
    config.save_pretrained(base_dir)
    config.save_pretrained(post_dir)
    specs = tensor_specs(config)
    writers = {
        "base": _ShardWriter(base_dir, plan_shards(specs, int(base_shard_gb * 1e9))),
        "post": _ShardWriter(post_dir, plan_shards(specs, int(post_shard_gb * 1e9))),
    }
    n_params = sum(torch.Size(s).numel() for _, s in specs)
    g = torch.Generator()
    t0 = time.perf_counter()
    with tqdm(total=n_params, unit="param", unit_scale=True, desc="generating", file=sys.stdout) as bar:
        for i, (name, shape) in enumerate(specs):
            g.manual_seed(seed * 1_000_003 + i)  # per-tensor seed: any one tensor is reproducible alone
            if name.endswith("norm.weight"):
                base32 = torch.ones(shape)
            else:
                base32 = torch.randn(shape, generator=g).mul_(0.02)
            base = base32.to(torch.bfloat16)
            del base32
            post32 = torch.randn(shape, generator=g).mul_(delta_scale).add_(base.float())
            post = post32.to(torch.bfloat16)
            del post32
            writers["base"].add(name, base)
            writers["post"].add(name, post)
            del base, post
            bar.update(torch.Size(shape).numel())
    for w in writers.values():
        w.finish()
    marker = dict(fingerprint=fp, n_params=n_params, n_tensors=len(specs), build_s=round(time.perf_counter() - t0, 1),
                  base_shards=len(writers["base"].plan), post_shards=len(writers["post"].plan))
    (cache / MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # written last: the build is complete
    print(f"built {n_params / 1e9:.3f}B parameters, {len(specs)} tensors, "
          f"{marker['base_shards']} base / {marker['post_shards']} post shards in {marker['build_s']} s")
    return base_dir, post_dir


def checkpoint_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


# --- the measured steps (each runs in its own child process) ----------------------------------


def step_read(base: Path, post: Path, chunk_mb: int = 8) -> dict:
    """(a) Read every byte of both checkpoints' safetensors files, discarding the data."""
    buf = bytearray(chunk_mb << 20)
    view = memoryview(buf)
    total = 0
    for folder in (base, post):
        for f in checkpoint_files(folder):
            with open(f, "rb", buffering=0) as fh:
                while n := fh.readinto(view):
                    total += n
    return dict(bytes=total)


def _convert_chunks(t, buf, chunk: int) -> int:
    """Every element of the flat tensor ``t`` converted into ``buf``, ``chunk`` elements at a time."""
    n = t.numel()
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        buf[:e - s].copy_(t[s:e])
    return n


def step_convert(base: Path, post: Path, chunk_elems: int = 1 << 16) -> dict:
    """(f) The floor of any float32 pass: every stored element of both checkpoints converted to float32 (each file
    memory-mapped, its tensors converted in 64K-element chunks into one cache-sized buffer by a TorchScript loop,
    on one single-threaded worker per core, as the pass runs), no subtraction and no sums. The fastest conversion
    measured: the same in plain Python takes 0.67-0.79 s on the 1.1B pair (1M-element chunks; 64K ones 0.80 s:
    the workers' op starts wait on the GIL), compiled 0.58-0.63 s."""
    import mmap
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated in torch 2.13, and still the fastest loop
        loop = torch.jit.script(_convert_chunks)
    jobs = []
    for folder in (base, post):
        for f in checkpoint_files(folder):
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
                m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a read-only map: nothing writes to it
                data = torch.frombuffer(m, dtype=torch.uint8)
            jobs += [(m, data, 8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1])
                     for k, v in header.items() if k != "__metadata__"]

    def convert(job) -> int:
        torch.set_num_threads(1)
        m, data, a, b = job
        t = data[a:b].view(torch.bfloat16)
        loop(t, torch.empty(min(chunk_elems, t.numel())), chunk_elems)
        p = a // mmap.PAGESIZE * mmap.PAGESIZE  # drop the tensor's pages, as a pass within the RSS target must
        m.madvise(mmap.MADV_DONTNEED, p, b - p)
        return b - a

    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        total = sum(pool.map(convert, jobs))
    return dict(bytes=total)


def sumsq_f32(t) -> float:
    """‖t‖² of a float32 tensor as float64 sums of float32 dots over 1M-element chunks: one float32 reduction
    over a 65M-element tensor is off by 1e-4 (dot) to 1e-2 (vector_norm) relative, more than the cross-check's
    tolerance."""
    import torch

    return sum(float(torch.dot(c, c)) for c in t.reshape(-1).split(1 << 20))


def step_rwedit(base: Path, post: Path) -> dict:
    """(b) Streaming pair pass with rwedit: ``delta_norms`` (row blocks) — ||W_base||, ||W_post||, ||ΔW||_F in
    float32 for every (layer, role)."""
    from rwedit.checkpoints import CheckpointPair
    from rwedit.probes.norms import delta_norms

    pair = CheckpointPair(base, post)
    rows = delta_norms(pair)
    return dict(roles=len(rows), sumsq=sum(r.delta_norm ** 2 for r in rows),
                bytes=pair.base.nbytes() + pair.post.nbytes())


def step_whole(base: Path, post: Path) -> dict:
    """(w) The whole-tensor path (``iter_roles``: each tensor converted whole to float32, then subtracted): the
    implementation the row-block pass replaced, kept as the reference."""
    import torch
    from rwedit.checkpoints import CheckpointPair

    pair = CheckpointPair(base, post)
    n_roles, sumsq = 0, 0.0
    for rp in pair.iter_roles(dtype=torch.float32):
        sumsq += sumsq_f32(rp.delta)
        n_roles += 1
    return dict(roles=n_roles, sumsq=sumsq, bytes=pair.base.nbytes() + pair.post.nbytes())


def naive_role_params(n_layers: int) -> list[str]:
    return [f"model.layers.{i}.{p}.weight" for i in range(n_layers) for p in LAYER_ROLE_PARAMS] + ["lm_head.weight"]


def step_naive(base: Path, post: Path) -> dict:
    """(c) Load both models with from_pretrained (bf16) and take the same norms over their parameters."""
    import torch
    from transformers import LlamaForCausalLM

    mb = LlamaForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    mp = LlamaForCausalLM.from_pretrained(post, dtype=torch.bfloat16)
    pb, pp = dict(mb.named_parameters()), dict(mp.named_parameters())
    n_roles, sumsq = 0, 0.0
    with torch.no_grad():
        for name in naive_role_params(mb.config.num_hidden_layers):
            sumsq += sumsq_f32(pp[name].float() - pb[name].float())
            n_roles += 1
    return dict(roles=n_roles, sumsq=sumsq)


STEPS = {"read": step_read, "convert": step_convert, "rwedit": step_rwedit, "whole": step_whole,
         "naive": step_naive}
#: Modules each step needs, imported before its clock starts (each step imports only what it uses).
STEP_IMPORTS = {
    "read": [],
    "convert": ["torch"],
    "rwedit": ["torch", "rwedit.checkpoints", "rwedit.probes.norms", "transformers.models.llama.configuration_llama"],
    "whole": ["torch", "rwedit.checkpoints", "transformers.models.llama.configuration_llama"],
    "naive": ["torch", "transformers.models.llama.modeling_llama"],
}
STEP_LABELS = {"read": "(a) read bytes", "convert": "(f) read + float32", "rwedit": "(b) rwedit pair pass", "whole": "(w) whole-tensor pass",
               "naive": "(c) naive from_pretrained"}


def child_main(step: str, base: Path, post: Path, profile: Path | None) -> None:
    """Run one step in this (fresh) process and print its figures as one tagged JSON line."""
    for mod in STEP_IMPORTS[step]:  # imports (seconds, mostly transformers' lazy modules) are not timed
        importlib.import_module(mod)

    def work() -> dict:
        if profile is not None:
            import cProfile

            prof = cProfile.Profile()
            res = prof.runcall(STEPS[step], base, post)
            prof.dump_stats(str(profile))
            return res
        return STEPS[step](base, post)

    out, m = measured(work)
    out.update(
        step=step,
        wall_s=m["wall_s"],
        # user+system CPU of all this process's threads: less sensitive than wall time to other
        # processes competing for the cores (it can exceed wall time when torch uses several threads)
        cpu_s=m["cpu_s"],
        # VmHWM is this process's own high-water mark (its mm is new at exec).  ru_maxrss is kept for
        # reference only: Linux folds the *parent's* peak into a child's ru_maxrss at exec (the child
        # is forked/vforked from the parent's mm), so it is never below the driver's own peak.
        peak_rss_mb=m["vmhwm_kb"] / 1024,
        ru_maxrss_mb=m["ru_maxrss_kb"] / 1024,
        rss_start_mb=m["rss_start_kb"] / 1024,
        sampled_peak_anon_mb=m["peak_anon_kb"] / 1024,
        sampled_peak_file_mb=m["peak_file_kb"] / 1024,
    )
    emit(CHILD_TAG, out)


def run_child(step: str, base: Path, post: Path, profile: Path | None = None) -> dict:
    """Run ``step`` in a fresh interpreter; return the figures it reports.

    Also measures how much CPU *other* processes used meanwhile (machine busy time minus the
    child's own), as a number of cores kept busy: other work on the machine inflates wall times.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", step, "--base", str(base), "--post", str(post)]
    if profile is not None:
        cmd += ["--child-profile", str(profile)]
    out, info = _run_child(cmd, CHILD_TAG, step)
    out["process_wall_s"] = info["process_wall_s"]
    out["other_procs_cores"] = info["other_procs_cores"]
    return out


# --- driver ----------------------------------------------------------------------------------


def best_of(runs: list[dict]) -> dict:
    """The fastest run's figures, with the largest peak RSS over all runs (memory is not luck)."""
    best = dict(min(runs, key=lambda r: r["wall_s"]))
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    best["all_wall_s"] = [round(r["wall_s"], 3) for r in runs]
    best["all_cpu_s"] = [round(r["cpu_s"], 3) for r in runs]
    best["all_other_procs_cores"] = [round(r["other_procs_cores"], 2) for r in runs]
    return best


def print_table(res: dict, rows: list[str]) -> None:
    hdr = f"{'step':<28}{'wall s':>9}{'cpu s':>8}{'peak RSS MB':>13}{'RSS start MB':>14}{'anon MB':>9}{'file MB':>9}{'GB/s':>7}{'others':>8}"
    print(hdr)
    print("-" * len(hdr))
    nbytes = res["checkpoint_bytes"]
    for k in rows:
        r = res["steps"][k]
        print(f"{STEP_LABELS[k]:<28}{r['wall_s']:>9.2f}{r['cpu_s']:>8.2f}{r['peak_rss_mb']:>13.0f}{r['rss_start_mb']:>14.0f}"
              f"{r['sampled_peak_anon_mb']:>9.0f}{r['sampled_peak_file_mb']:>9.0f}{nbytes / r['wall_s'] / 1e9:>7.2f}{r['other_procs_cores']:>8.2f}")
    print("(cpu: user+sys of the step's process; anon/file: sampled peaks of RssAnon / RssFile, where file =\n"
          " pages of memory-mapped checkpoint files, counted in RSS but reclaimable; GB/s = both checkpoints' bytes / wall;\n"
          " others = cores kept busy by other processes during the step: above ~0.2, its wall time is inflated)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See the module docstring for what is measured and why.")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder of the synthetic pair (default: %(default)s)")
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON output (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default: %(default)s)")
    ap.add_argument("--base-shard-gb", type=float, default=1.0, help="base shard size in GB (default: %(default)s)")
    ap.add_argument("--post-shard-gb", type=float, default=0.8, help="post shard size in GB (default: %(default)s)")
    ap.add_argument("--delta-scale", type=float, default=1e-3, help="std of post - base (default: %(default)s)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the synthetic pair even if the cache is complete")
    ap.add_argument("--build-only", action="store_true", help="build (or check) the cache, measure nothing")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per step; the fastest is reported (default: %(default)s)")
    ap.add_argument("--skip-naive", action="store_true", help="skip step (c) (no cross-check then)")
    ap.add_argument("--profile", type=Path, default=None, metavar="FILE.prof",
                    help="also run step (b) once more under cProfile and write the stats to FILE.prof")
    ap.add_argument("--child", choices=sorted(STEPS), help=argparse.SUPPRESS)
    ap.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--post", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-profile", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        child_main(args.child, args.base, args.post, args.child_profile)
        return 0

    base, post = build_pair(args.cache, args.seed, args.base_shard_gb, args.post_shard_gb, args.delta_scale,
                            force=args.rebuild)
    if args.build_only:
        return 0

    import torch

    nbytes = sum(f.stat().st_size for d in (base, post) for f in checkpoint_files(d))
    print(f"checkpoint bytes: {nbytes / 1e9:.2f} GB in {len(checkpoint_files(base))} + {len(checkpoint_files(post))} shards")
    print("warming the page cache: one untimed run of step (a) ...", flush=True)
    warm = run_child("read", base, post)
    print(f"  warm-up read took {warm['wall_s']:.2f} s ({nbytes / warm['wall_s'] / 1e9:.2f} GB/s); all timed steps below run warm")

    load_before = os.getloadavg()
    order = ["read", "convert", "rwedit", "whole"] + ([] if args.skip_naive else ["naive"])
    runs: dict[str, list[dict]] = {k: [] for k in order}
    for rep in range(args.repeats):
        for k in order:
            print(f"  run {rep + 1}/{args.repeats}: {STEP_LABELS[k]} ...", flush=True)
            runs[k].append(run_child(k, base, post))
    steps = {k: best_of(v) for k, v in runs.items()}

    a, b = steps["read"], steps["rwedit"]
    ratios = {"b_over_a_time": b["wall_s"] / a["wall_s"], "b_over_a_cpu": b["cpu_s"] / a["cpu_s"],
              "b_over_whole_time": b["wall_s"] / steps["whole"]["wall_s"],
              "b_over_f_time": b["wall_s"] / steps["convert"]["wall_s"],
              "f_over_a_time": steps["convert"]["wall_s"] / a["wall_s"],
              "b_over_whole_rss": b["peak_rss_mb"] / steps["whole"]["peak_rss_mb"]}
    checks = {
        "b_peak_rss_mb": b["peak_rss_mb"],
        "rss_target_mb": RSS_TARGET_MB,
        "b_rss_within_target": b["peak_rss_mb"] <= RSS_TARGET_MB,
        "b_anon_peak_within_target": b["sampled_peak_anon_mb"] <= RSS_TARGET_MB,
        "time_factor_target": TIME_FACTOR_TARGET,
        "b_within_time_factor_of_a": b["wall_s"] <= TIME_FACTOR_TARGET * a["wall_s"],
    }
    ok = True
    if "naive" in steps:
        c = steps["naive"]
        ratios["b_over_c_time"] = b["wall_s"] / c["wall_s"]
        ratios["b_over_c_cpu"] = b["cpu_s"] / c["cpu_s"]
        ratios["b_over_c_rss"] = b["peak_rss_mb"] / c["peak_rss_mb"]
        rel = abs(b["sumsq"] - c["sumsq"]) / max(abs(c["sumsq"]), 1e-300)
        checks.update(roles_b=b["roles"], roles_c=c["roles"], sumsq_b=b["sumsq"], sumsq_c=c["sumsq"],
                      sumsq_rel_diff=rel, cross_check_ok=(b["roles"] == c["roles"] and rel <= REL_TOL))
        ok = checks["cross_check_ok"]

    res = dict(
        machine=dict(nproc=os.cpu_count(), nproc_usable=len(os.sched_getaffinity(0)), torch=torch.__version__,
                     torch_threads=torch.get_num_threads(), python=platform.python_version(),
                     platform=platform.platform(),
                     # other processes share these cores; a high load average makes the timings noisy
                     loadavg_before=load_before, loadavg_after=os.getloadavg()),
        checkpoint_bytes=nbytes,
        cache=str(args.cache),
        page_cache="warm (one untimed read of all files before the timed steps)",
        warmup_read_s=warm["wall_s"],
        repeats=args.repeats,
        steps=steps,
        ratios=ratios,
        checks=checks,
    )
    try:
        import safetensors
        import transformers

        res["machine"].update(transformers=transformers.__version__, safetensors=safetensors.__version__)
    except ImportError:
        pass

    if args.profile is not None:
        print(f"profiling step (b) under cProfile -> {args.profile} ...", flush=True)
        prof = run_child("rwedit", base, post, profile=args.profile)
        res["profiled_rwedit_wall_s"] = prof["wall_s"]
        import pstats

        pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(15)

    print()
    print_table(res, order)
    print()
    print(f"b/a time: {ratios['b_over_a_time']:.2f}x wall, {ratios['b_over_a_cpu']:.2f}x cpu  "
          f"((b) within {TIME_FACTOR_TARGET}x of (a): {'yes' if checks['b_within_time_factor_of_a'] else 'NO'})")
    if "b_over_c_time" in ratios:
        print(f"b/c time: {ratios['b_over_c_time']:.2f}x wall, {ratios['b_over_c_cpu']:.2f}x cpu   "
              f"b/c peak RSS: {ratios['b_over_c_rss']:.2f}x")
    busy = {k: r["other_procs_cores"] for k, r in steps.items() if r["other_procs_cores"] > 0.2}
    if busy:
        print(f"note: other processes kept {', '.join(f'{v:.1f}' for v in busy.values())} cores busy during "
              f"{', '.join(busy)} (of {res['machine']['nproc_usable']}): those wall times are inflated; compare cpu s")
    print(f"(b) peak RSS {b['peak_rss_mb']:.0f} MB vs target {RSS_TARGET_MB:.0f} MB: "
          f"{'within' if checks['b_rss_within_target'] else 'OVER'}"
          f"  (anonymous part {b['sampled_peak_anon_mb']:.0f} MB: "
          f"{'within' if checks['b_anon_peak_within_target'] else 'OVER'})")
    if "naive" in steps:
        print(f"cross-check: roles {b['roles']} vs {steps['naive']['roles']}, sum ||ΔW||² "
              f"{b['sumsq']:.6e} vs {steps['naive']['sumsq']:.6e} (rel diff {checks['sumsq_rel_diff']:.1e}): "
              f"{'OK' if ok else 'MISMATCH'}")

    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_results(args.results, res)
    print(f"wrote {args.results}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
