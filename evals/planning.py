"""What a run will need, stage by stage, from its recipe and its checkpoints' headers, before any weights load:
each kind's ``plan`` hook returns a :class:`KindPlan` of these pieces; ``rwedit plan`` (:mod:`rwedit.apps.plan`)
adds what every run shares (checkpoint and data checks, scoring, disk) and prints the whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: resident memory of a Python process with torch and transformers imported, before any tensor: 230-330 MiB
#: measured on CPU with torch 2.13 (``benchmarks/results/pair_pass.json`` records 330 MiB at the pass's start)
RUNTIME_BYTES = 300 * 2**20
#: rough sizes of what a run writes besides tensors: a condition's adapter folder (config, card, metadata),
#: its result row and lm-eval output per item, a probe row, the plots
ADAPTER_FILES_BYTES, ROW_BYTES, LMEVAL_ITEM_BYTES = 16 << 10, 4 << 10, 4 << 10
PROBE_ROW_BYTES, PLOTS_BYTES = 300, 4 << 20


@dataclass
class Stage:
    """One stage of a run: what it does, where it runs, the memory it needs at its peak (on that device), the
    forward tokens it runs."""

    name: str
    what: str
    memory_bytes: int
    tokens: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class DataRef:
    """A data source a recipe names (``key``), read as ``texts`` or preference ``pairs`` (of the line range
    ``heldout``) the way the run reads it."""

    key: str
    source: str
    kind: str  # texts or pairs
    field: str | None = None
    heldout: range | None = None


@dataclass(frozen=True)
class PlanContext:
    """What the planner gives a kind's hook: the opened base (and post) checkpoints, the device the model
    stages run on, the process's own memory there (0 on an accelerator) and the loaded model's size."""

    base: Any  # rwedit.checkpoints.Checkpoint
    post: Any  # a Checkpoint, a LoraPost or None
    device: str
    host_bytes: int
    model_bytes: int

    def model_stage(self, name: str, what: str, extra_bytes: int = 0, tokens: int = 0) -> Stage:
        """A stage that runs the loaded model on the recipe's device, with ``extra_bytes`` beside it."""
        return Stage(name, what, self.host_bytes + self.model_bytes + extra_bytes, tokens, self.device)


@dataclass
class KindPlan:
    """A kind's own part of a plan: its stages before scoring, its conditions beside the base (None: known
    only when the run prepares them), what it checked, the data it reads, what it writes and caches. An
    application gives the folder it writes (its own stages check their checkpoints as they run)."""

    stages: list[Stage] = field(default_factory=list)
    conditions: list[str] | None = None
    checked: list[str] = field(default_factory=list)
    data: list[DataRef] = field(default_factory=list)
    output_bytes: int = 0
    cache_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    folder: Path | None = None


def stats_bytes(layout, layers=None, roles=None) -> int:
    """Bytes of the float64 second moments ``E[a a^T]`` of the inputs of ``roles`` at ``layers`` (one per input
    group: q/k/v share one, gate/up one), in memory and in the cache."""
    from rwedit.architectures import INPUT_GROUP

    roles = [r for r in (roles or layout.roles()) if r != "unembed"]
    total = 0
    for layer in (range(layout.n_layers) if layers is None else layers):
        groups = {}
        for r in roles:
            groups.setdefault(INPUT_GROUP[r], layout.view(layer, r).d_in)
        total += sum(d * d * 8 for d in groups.values())
    return total


def pair_pass_bytes(base, post=None, threads: int | None = None) -> int:
    """Peak resident memory of the streaming pass over the pair (:func:`rwedit.stream.stream_pair`): the runtime
    plus, per worker thread, a float32 work block and a stored-dtype read block for base and post (an adapter
    post's buffers too; its blocks are factored) — no tensor is held whole."""
    import torch

    from rwedit.checkpoints import largest_role_tensor
    from rwedit.stream import BLOCK_BYTES

    numel, itemsize = largest_role_tensor(base)
    threads = threads or torch.get_num_threads()
    per_block = min(BLOCK_BYTES // 4, numel)  # float32 elements of a block (at most the tensor)
    return RUNTIME_BYTES + threads * 2 * per_block * (4 + itemsize)


__all__ = ["ADAPTER_FILES_BYTES", "DataRef", "KindPlan", "LMEVAL_ITEM_BYTES", "PLOTS_BYTES", "PROBE_ROW_BYTES",
           "PlanContext", "ROW_BYTES", "RUNTIME_BYTES", "Stage", "pair_pass_bytes", "stats_bytes"]
