#!/usr/bin/env python
"""Benchmark the sources of a pair: a LoRA adapter as the post side, and several fine-tunes of one base.

On the synthetic ~1.1B bf16 Llama pair of ``bench_pair_pass.py`` (built there, reused here):

1. **LoRA as post** — a rank-16 adapter on every linear of every layer (q k v o up gate down; random
   factors, written as PEFT's ``adapter_model.safetensors`` with its ``adapter_config.json``). The RSF grid
   (k 1, 4, 16, 64; exact null; prediction and random subspaces) of (base, adapter) against the same grid
   of (base, full post checkpoint) — the cost of probing a merged model of the same size. Target: ≤ 0.5×
   the wall time; peak memory about one tensor plus the adapter.
2. **Many fine-tunes of one base** — the grid of two posts (the full post and the adapter) in one pass
   (``rsf_grid_posts``: the base read once per tensor for both) against two separate pair passes.

Each step runs in a fresh interpreter (its own peak RSS); every figure is a ratio against a baseline measured
in the same run, and the load average before and after is printed. Results: ``benchmarks/results/sources.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import write_results
from _common import emit, measured
from _common import add_child_options, child_cmd
from _common import run_child as _run_child

HERE = Path(__file__).resolve().parent
PAIR = HERE / ".cache" / "llama-1.1b-pair"
ADAPTER = HERE / ".cache" / "llama-1.1b-lora16"
RESULTS = HERE / "results" / "sources.json"
TAG = "@@BENCH_SOURCES@@ "
RANK = 16


def build_adapter(base: Path, out: Path, rank: int = RANK) -> Path:
    """A PEFT-format LoRA adapter (random factors, every linear of every layer) for the synthetic base."""
    import torch
    from safetensors.torch import save_file

    from rwedit.checkpoints import Checkpoint

    if (out / "adapter_model.safetensors").exists():
        return out
    ckpt = Checkpoint.open(base)
    g = torch.Generator().manual_seed(0)
    tensors, modules = {}, set()
    for view in ckpt.layout.views([r for r in ckpt.layout.roles() if r != "unembed"]):
        d_out, d_in = ckpt.shape(view.param)
        name = view.module
        modules.add(name.rsplit(".", 1)[-1])
        tensors[f"base_model.model.{name}.lora_A.weight"] = (torch.randn(rank, d_in, generator=g) / d_in ** 0.5).to(torch.bfloat16)
        tensors[f"base_model.model.{name}.lora_B.weight"] = (torch.randn(d_out, rank, generator=g) * 1e-3).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": rank,
                                                         "target_modules": sorted(modules), "fan_in_fan_out": False}))
    return out


def step_grid(p: dict) -> dict:
    """The RSF grid of (base, each post), in one pass over the base when there are several posts."""
    from rwedit.checkpoints import Checkpoint, CheckpointPair
    from rwedit.probes.grid import GridSettings, rsf_grid_posts

    settings = GridSettings(subspaces=("prediction", "random"))
    base = Checkpoint.open(p["base"])
    posts = {Path(x).name: CheckpointPair(base, x).post for x in p["posts"]}
    rows, figures = measured(lambda: sum(1 for _ in rsf_grid_posts(base, posts, None, settings)))
    return {"rows": rows, **figures}


STEPS = {"grid": step_grid}


def run_child(step: str, params: dict) -> dict:
    cmd = child_cmd(__file__, step, params)
    out, proc = _run_child(cmd, TAG, step)
    return {**out, "process": proc}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_child_options(ap, STEPS)
    args = ap.parse_args(argv)
    if args.child:
        emit(TAG, STEPS[args.child](json.loads(args.child_args)))
        return 0
    sys.path.insert(0, str(HERE))
    import bench_pair_pass as bpp

    base, post = bpp.build_pair(PAIR, 0, 1.0, 0.8, 1e-3)
    adapter = build_adapter(base, ADAPTER)
    res = {"machine": {"nproc": os.cpu_count(), "loadavg_start": os.getloadavg()}, "rank": RANK,
           "date": time.strftime("%Y-%m-%d %H:%M")}
    print("grid of (base, full post) ...", flush=True)
    res["full_post"] = run_child("grid", {"base": str(base), "posts": [str(post)]})
    print("grid of (base, LoRA adapter) ...", flush=True)
    res["lora_post"] = run_child("grid", {"base": str(base), "posts": [str(adapter)]})
    print("grid of two posts against the base in one pass ...", flush=True)
    res["two_posts_one_pass"] = run_child("grid", {"base": str(base), "posts": [str(post), str(adapter)]})
    res["machine"]["loadavg_end"] = os.getloadavg()
    f, lo, two = res["full_post"], res["lora_post"], res["two_posts_one_pass"]
    res["ratios"] = {
        "lora_over_full_wall": lo["wall_s"] / f["wall_s"],
        "lora_peak_anon_mb": lo["peak_anon_kb"] / 1024, "full_peak_anon_mb": f["peak_anon_kb"] / 1024,
        "two_in_one_pass_over_two_separate_wall": two["wall_s"] / (f["wall_s"] + lo["wall_s"]),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_results(RESULTS, res)
    r = res["ratios"]
    print(f"\nLoRA (rank {RANK}, every linear) as post: {lo['wall_s']:.1f} s vs full post {f['wall_s']:.1f} s = "
          f"{r['lora_over_full_wall']:.2f}x (target <= 0.5x: {'met' if r['lora_over_full_wall'] <= 0.5 else 'NOT met'}); "
          f"peak anon {r['lora_peak_anon_mb']:.0f} MB vs {r['full_peak_anon_mb']:.0f} MB")
    print(f"two posts in one pass: {two['wall_s']:.1f} s vs two separate passes {f['wall_s'] + lo['wall_s']:.1f} s = "
          f"{r['two_in_one_pass_over_two_separate_wall']:.2f}x")
    print(f"load average before {res['machine']['loadavg_start']}, after {res['machine']['loadavg_end']} "
          f"({os.cpu_count()} cores); wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
