#!/usr/bin/env python
"""A header-only Llama checkpoint pair of any size, for ``rwedit plan`` at scale: real safetensors headers and
index, shard files of their full length made sparse (no disk used, no tensor readable as anything but
zeros). ``plan`` reads headers only, so it sees exactly what it would see of the real model.

    python benchmarks/header_pair.py OUT --preset llama-70b      # OUT/base, OUT/post (~140 GB each, sparse)
    python -m rwedit plan recipes/quickstart.yaml --base OUT/base --post OUT/post

The tokenizer is copied from a folder you name (``--tokenizer``; default: the model organism's, whose ids
fit any vocabulary of 32000 or more).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import sys
from pathlib import Path

PRESETS = {
    # TinyLlama-1.1B's shapes (GQA 4 KV heads), bf16, untied: the synthetic pair of bench_pair_pass.py
    "llama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                       num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
    # Llama-2-70B's shapes (GQA 8 KV heads), bf16, untied
    "llama-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                      num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096),
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
}


def tensors(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, f, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * (c["hidden_size"] // c["num_attention_heads"])
    out = [("model.embed_tokens.weight", (c["vocab_size"], h))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                (p + "mlp.down_proj.weight", (h, f))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (c["vocab_size"], h))]


def write_checkpoint(folder: Path, config: dict, shard_bytes: float, tokenizer: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", torch_dtype="bfloat16", rms_norm_eps=1e-5,
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, **config)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    shards, cur, size = [], [], 0
    for name, shape in tensors(config):
        n = 2 * math.prod(shape)  # bf16 bytes
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape, n))
        size += n
    shards.append(cur)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        header, off = {}, 0
        for name, shape, n in shard:
            header[name] = dict(dtype="BF16", shape=list(shape), data_offsets=[off, off + n])
            weight_map[name] = fname
            off += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / fname, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)) + raw)
            fh.truncate(8 + len(raw) + off)  # sparse: the data reads as zeros and takes no disk
        total += off
    (folder / "model.safetensors.index.json").write_text(json.dumps(dict(metadata=dict(total_size=total),
                                                                         weight_map=weight_map), indent=1))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (tokenizer / f).exists():
            shutil.copy(tokenizer / f, folder / f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="llama-70b")
    ap.add_argument("--shard-gb", type=float, default=10.0)
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="folder with tokenizer.json (default: the model organism's, when built)")
    args = ap.parse_args(argv)
    tok = args.tokenizer
    if tok is None:
        found = sorted(Path.home().glob(".cache/rwedit/organism/*/pretrained/tokenizer.json"))
        if not found:
            ap.error("no --tokenizer given and no model organism built (rwedit organism)")
        tok = found[0].parent
    for side in ("base", "post"):
        write_checkpoint(args.out / side, PRESETS[args.preset], args.shard_gb * 1e9, tok)
    print(f"wrote {args.out}/base and {args.out}/post ({args.preset}, sparse)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
