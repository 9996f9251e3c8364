"""``rwedit plan RECIPE``: everything that can be known about a run before any weights are loaded.

The recipe is parsed and checked as ``rwedit run`` would (every key, the names it refers to), its checkpoints
are opened from their headers only and checked against each other (architecture, shapes, layer counts,
dtypes, tokenizers) and against the edit (layers, roles, sizes, windows), the output folder's disk is
looked at, and each stage gets a memory and compute estimate from the tensor sizes in the headers. What
``plan`` can know fails here, not after the first hour.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rwedit.checkpoints import Checkpoint

@dataclass
class Stage:
    """One stage of a run: what it does, the memory it needs at its peak, the forward tokens it runs."""

    name: str
    what: str
    memory_bytes: int
    tokens: int = 0


@dataclass
class Plan:
    """What a run will do and need, from the recipe and the checkpoints' headers alone."""

    kind: str
    name: str
    folder: Path
    sources: dict
    params: int
    conditions: list[str] | None
    stages: list[Stage] = field(default_factory=list)
    free_disk_bytes: int | None = None

    def lines(self, flops_per_s: float = 1e11) -> list[str]:
        """The plan as text; compute is converted to time at ``flops_per_s`` (default 100 GFLOP/s, about two
        CPU cores; a GPU is 100-1000x that), stated as such."""
        out = [f"plan: {self.kind} recipe {self.name!r} -> {self.folder}"]
        if not self.stages:  # an application: its own stages open their checkpoints as they run
            return out + [f"checked: the recipe's keys and names; the {self.kind} application opens and checks its "
                          f"checkpoints stage by stage when it runs"]
        out.append("checked: the recipe's keys and names, the checkpoints (headers only), the pair, the edit "
                   "against the model")
        for side, s in self.sources.items():
            out.append(f"  {side}: {s.get('ref')} ({'commit ' + s['commit'][:12] if s.get('commit') else 'fingerprint ' + str(s.get('fingerprint'))})")
        out.append(f"  model: {self.params / 1e6:.1f} M parameters")
        if self.conditions is not None:
            out.append(f"  conditions: {len(self.conditions)} + base ({', '.join(self.conditions[:6])}"
                       f"{', ...' if len(self.conditions) > 6 else ''})")
        out.append("stages (peak memory; forward tokens -> compute at 2 x params FLOPs per token):")
        total = 0.0
        for st in self.stages:
            secs = st.tokens * 2 * self.params / flops_per_s
            total += secs
            out.append(f"  {st.name:<22} {st.memory_bytes / 2**30:8.2f} GiB  {st.tokens:>12,} tokens  ~{secs / 60:.1f} min  {st.what}")
        out.append(f"estimated compute: ~{total / 60:.1f} min at {flops_per_s / 1e9:.0f} GFLOP/s (forward passes only)")
        if self.free_disk_bytes is not None:
            out.append(f"free disk where the results go: {self.free_disk_bytes / 2**30:.1f} GiB")
        return out


def plan_recipe(source, overrides: dict | None = None, sets=(), out: str | Path | None = None) -> Plan:
    """The :class:`Plan` of a recipe (path, shipped name or mapping) without loading any weights."""
    from rwedit.evals.core import load_recipe

    kind, recipe = load_recipe(source, overrides, sets)
    if kind.run is not None:  # an application (organism, quickstart): its recipe is checked, nothing more known
        folder = Path(out or getattr(recipe, "out", None) or Path("runs") / getattr(recipe, "name", kind.name))
        return Plan(kind.name, getattr(recipe, "name", kind.name), folder, {}, 0, None)
    folder = recipe.folder(out)
    sources = recipe.check_sources() or {}
    base = getattr(recipe, "base_checkpoint", None)  # opened once by check_sources where the kind keeps it
    if base is None:
        base = Checkpoint.open(getattr(recipe, "model", None) or getattr(getattr(recipe, "edit", None), "model", None))
    counts = base.element_counts()
    params, largest = sum(counts), max(counts)
    dims = base.layout.dims
    model_bytes = params * getattr(torch, getattr(recipe, "dtype", "float32")).itemsize
    stages: list[Stage] = []
    conditions = None
    spec = getattr(recipe, "edit", None)
    if spec is not None and hasattr(spec, "resolved"):
        spec = spec.resolved(base.layout.n_layers)
        conditions = spec.condition_names()
        post = getattr(recipe, "post", None) or spec.post
        if post and getattr(recipe, "probe", None) is not None and recipe.probe.enabled:
            adapter = "kind" in sources.get("post", {})  # source_info marks an adapter post
            what = "RSF grid of post - base, streamed tensor by tensor" + (" (adapter factors)" if adapter else "")
            stages.append(Stage("probe", what, 3 * largest * 4))
        if spec.calibration is not None:
            d = max(dims.hidden, getattr(dims, "intermediate", 0) or 0)
            n = len(spec.edit.layers)
            stages.append(Stage("activation statistics", f"E[a a^T] of the {spec.edit.role} input at {n} layer(s), float64 (cached)",
                                model_bytes + n * d * d * 8, spec.calibration.tokens))
        if spec.edit.b == "gradient":
            stages.append(Stage("gradient closed form", f"-G v over {spec.edit.data_limit} items (one backward each)",
                                2 * model_bytes, 3 * spec.edit.data_limit * spec.edit.max_len))
    n_cond = (len(conditions) + 1) if conditions is not None else 1
    per_cond = 0
    direct = getattr(recipe, "direct", None)
    if direct is not None:
        pairs = 412 if direct.pairs == "all" else direct.pairs
        per_cond += 2 * pairs * direct.max_len + direct.texts * direct.seq_len
    ev = getattr(recipe, "eval", None)
    if ev is not None:
        per_cond += len(ev.tasks) * (ev.limit or 500) * 2 * 256  # rough: two continuations of ~256 tokens per item
    stages.append(Stage("scoring", f"{n_cond} conditions (adapters switched in place on one loaded model)",
                        model_bytes + (n_cond * 2 * dims.hidden * 4), n_cond * per_cond))
    target = folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("."))
    return Plan(kind.name, recipe.name, folder, sources, params, conditions, stages,
                shutil.disk_usage(target).free)


__all__ = ["Plan", "Stage", "plan_recipe"]
