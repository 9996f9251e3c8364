"""Adapter benchmark (issue: editor): on a ~100M-parameter Llama-shaped model,

(1) switching among 12 named rank-1 adapters with ``set_adapter`` vs one forward pass of a 512-token
    batch (target: switch ≤ 5 % of the forward), and
(2) building the 12 adapters (edit + controls, closed form ``b: delta``) from cached activation
    statistics vs loading the model once with ``from_pretrained`` (target: build < load).

Both ratios are measured in the same run. The model is random (built offline from a config) and
the activation statistics come from random token ids: the benchmark times the machinery, not a
result. Usage: ``python benchmarks/bench_adapters.py [--cache benchmarks/.cache/llama-100m]``.
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

import torch

from _common import write_results
from _common import LLAMA_100M_CACHE, build_llama_100m, llama_100m_edit_spec, llama_100m_stats

ROOT = Path(__file__).resolve().parent


def timed(fn, repeat: int = 1) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=LLAMA_100M_CACHE)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "adapters.json")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    from rwedit.editor.adapters import attach_conditions
    from rwedit.editor.edits import build_conditions

    build_llama_100m(args.cache)
    base = str(args.cache / "base")
    load_s = timed(lambda: AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), repeat=3)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    n_params = sum(p.numel() for p in model.parameters())

    spec = llama_100m_edit_spec(args.cache)
    stats = llama_100m_stats(model, args.cache)
    stats = llama_100m_stats(model, args.cache)
    assert stats.meta["cache"]["hit"], "statistics should come from the cache"

    t = time.perf_counter()
    conditions = build_conditions(spec, model, None, stats)
    peft_model = attach_conditions(model, conditions)
    build_s = time.perf_counter() - t
    names = [c.name for c in conditions]
    assert len(names) == 12, names

    batch = torch.randint(3, 32000, (1, 512), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        peft_model(batch)  # warm-up
        fwd = timed(lambda: peft_model(batch), repeat=5)
    switch = []
    for _ in range(20):
        for n in names:
            t = time.perf_counter()
            peft_model.set_adapter(n)
            switch.append(time.perf_counter() - t)
    fwd_med, sw_med, load_med = statistics.median(fwd), statistics.median(switch), statistics.median(load_s)
    res = {
        "model_params": n_params, "adapters": len(names), "torch": torch.__version__, "nproc": os.cpu_count(),
        "machine": platform.machine(),
        "forward_512_tokens_s": fwd_med, "set_adapter_s": sw_med, "switch_over_forward": sw_med / fwd_med,
        "build_12_adapters_s": build_s, "load_model_s": load_med, "build_over_load": build_s / load_med,
    }
    print(f"model: {n_params / 1e6:.1f} M parameters, {len(names)} named rank-1 adapters")
    print(f"{'forward, 1 x 512 tokens (median of 5)':<44} {fwd_med * 1e3:10.2f} ms")
    print(f"{'set_adapter (median of 240 switches)':<44} {sw_med * 1e3:10.4f} ms")
    print(f"{'  ratio switch / forward (target <= 0.05)':<44} {sw_med / fwd_med:10.5f}")
    print(f"{'build 12 adapters from cached stats':<44} {build_s:10.3f} s")
    print(f"{'from_pretrained (median of 3)':<44} {load_med:10.3f} s")
    print(f"{'  ratio build / load (target < 1)':<44} {build_s / load_med:10.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_results(args.out, res)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
