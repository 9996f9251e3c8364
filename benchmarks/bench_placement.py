"""Placement benchmark (issue #17, one model across devices): activation collection with the model split
between the CPU and disk offload (an explicit device map: the second half of the layers on ``disk``) vs the
model held whole on the CPU, in tokens/s, with the ratio, the load average and the core count.

The model is a random ~30M-parameter Llama (hidden 512, 8 layers, MLP 1376, vocab 8000) built offline once
under ``benchmarks/.cache/placement``; the tokens are random ids. Offloaded weights are read back from the
checkpoint's safetensors on every forward (accelerate's hooks), so the split run pays that read (from the
page cache once warm) and the hook overhead once per forward pass: larger batches amortise it, so each
batch size of ``--batch-sizes`` is timed. The statistics of both runs are compared (max |difference|).
Usage: ``python benchmarks/bench_placement.py [--tokens 2048] [--repeat 2] [--batch-sizes 4,16]``; writes
``benchmarks/results/placement.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from _common import write_results

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache" / "placement"
LAYERS = 8


def build_model(cache: Path) -> Path:
    """The random Llama saved once in ``cache/model`` (safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = cache / "model"
    if (cache / "done").exists():
        return folder
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=512, num_hidden_layers=LAYERS, num_attention_heads=8, num_key_value_heads=8,
                      intermediate_size=1376, vocab_size=8000, max_position_embeddings=512)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    from tokenizers import Tokenizer, models

    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                            unk_token="<unk>").save_pretrained(folder)
    (cache / "done").write_text("ok")
    return folder


def split_map() -> dict[str, str]:
    """Embeddings, the first half of the layers, the final norm and the head on the CPU; the rest on disk."""
    m = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    m.update({f"model.layers.{i}": "cpu" if i < LAYERS // 2 else "disk" for i in range(LAYERS)})
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2048, help="calibration tokens per run (seq_len 128)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each placement; the fastest counts")
    ap.add_argument("--batch-sizes", type=lambda t: [int(x) for x in t.split(",")], default=[4, 16],
                    help="sequences per forward pass, comma list (an offloaded layer is read once per pass)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "placement.json")
    args = ap.parse_args()

    from rwedit.checkpoints import Checkpoint
    from rwedit.models import Placement, load_model_and_tokenizer
    from rwedit.probes.activations import StatsSettings, collect_activation_stats

    ckpt = Checkpoint.open(build_model(CACHE))
    seq_len = 128
    ids = torch.randint(3, 8000, (max(1, args.tokens // seq_len), seq_len), generator=torch.Generator().manual_seed(0))
    load_before = os.getloadavg()
    results, reference, n_params, diff = {}, {}, 0, 0.0
    with tempfile.TemporaryDirectory() as offload:
        placements = {"whole": None, "split": Placement(device_map=split_map(), offload_folder=offload)}
        for name, placement in placements.items():
            model, _ = load_model_and_tokenizer(ckpt, placement=placement)
            n_params = n_params or sum(p.numel() for p in model.parameters())
            for batch in args.batch_sizes:
                settings = StatsSettings(roles=("q", "o", "up", "down"), seq_len=seq_len, batch_size=batch)
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    stats = collect_activation_stats(model, ids, settings, progress=False)
                    times.append(time.perf_counter() - t)
                results[(name, batch)] = ids.numel() / min(times)
                if name == "whole":
                    reference[batch] = stats
                else:  # the same batches summed in the same order: the statistics should be identical
                    ref = reference[batch]
                    diff = max(diff, *(float((stats.sums[k] - ref.sums[k]).abs().max()) for k in stats.sums))
            del model
    out = {
        "model_params": n_params,
        "layers_on_disk": LAYERS - LAYERS // 2,
        "layers": LAYERS,
        "tokens": ids.numel(),
        "seq_len": seq_len,
        "accumulation": "float64",
        "by_batch_size": {str(b): {"whole_tokens_per_s": results[("whole", b)],
                                   "split_tokens_per_s": results[("split", b)],
                                   "split_over_whole": results[("split", b)] / results[("whole", b)]}
                          for b in args.batch_sizes},
        "max_abs_stats_difference": diff,
        "loadavg_1m_before_after": [load_before[0], os.getloadavg()[0]],
        "nproc": os.cpu_count(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_results(args.out, out)
    print(f"activation collection, {ids.numel()} tokens, {LAYERS - LAYERS // 2}/{LAYERS} layers on disk "
          f"({n_params / 1e6:.0f}M parameters):")
    for b, r in out["by_batch_size"].items():
        print(f"  batch {b:>3} x {seq_len}: whole {r['whole_tokens_per_s']:7.0f} tokens/s, split (CPU + disk offload) "
              f"{r['split_tokens_per_s']:7.0f} tokens/s, ratio {r['split_over_whole']:.3f}")
    print(f"  statistics differ by {diff:.3g} at most; load average {out['loadavg_1m_before_after'][0]:.2f} -> "
          f"{out['loadavg_1m_before_after'][1]:.2f} on {out['nproc']} cores; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
