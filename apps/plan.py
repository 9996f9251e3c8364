"""``rwedit plan RECIPE``: everything that can be known about a run before any weights are loaded.

The recipe is parsed and checked as ``rwedit run`` would (every key, the names it refers to, ``export:``
entries), its checkpoints are opened from their headers only and checked against their configs and each
other (architecture, layer counts, every tensor's shape, stored dtypes, shards named by the index, tokenizer
files and vocabularies), the data files it names are opened at their first records, and the output folder's
and the statistics cache's disks are compared with what the run will write. Each stage gets a memory and
compute estimate from the tensor sizes in the headers and the recipe's device. What ``plan`` can know fails
here, not after the first hour; no tensor is read. Each kind states its own stages (its ``plan`` hook,
:mod:`rwedit.evals.planning`); this module adds what every run shares and prints the whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rwedit.errors import DataError, DataNotFoundError, ExperimentError
from rwedit.outputs import free_bytes, readable_bytes
from rwedit.runtime import cache_root
from rwedit.evals.planning import (LMEVAL_ITEM_BYTES, PLOTS_BYTES, ROW_BYTES, RUNTIME_BYTES, SCORING_EFFICIENCY,
                                   DataRef, KindPlan, PlanContext, Rates, Stage, forward_flops, kept_token_flops,
                                   logits_batch, logits_batches, measure_rates, padded_tokens, token_lengths)


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
    output_bytes: int = 0  # what the run writes into its folder
    cache_bytes: int = 0  # activation statistics it writes into the cache (reused when cached)
    cache_dir: Path | None = None
    cache_free_bytes: int | None = None
    checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what plan cannot know, or an estimate above what is free
    recipe: Any = field(default=None, repr=False)  # the parsed recipe, its checkpoints opened (run reuses it)
    token_flops: float = 0.0  # FLOPs of one forward token
    _rates: Rates | None = field(default=None, repr=False)

    def rates(self, flops_per_s: float | None = None, cached: bool = True) -> Rates:
        """The rates the estimates use: ``flops_per_s`` as stated, else measured here once (~0.2 s and torch's
        import, on the device of the model stages; see :func:`~rwedit.evals.planning.measure_rates`) and kept
        in ``$RWEDIT_CACHE/rates.json`` for the next plan on this machine (``cached=False``: measured anew)."""
        if flops_per_s is not None:
            return Rates.stated(flops_per_s)
        if self._rates is None:
            device = next((s.device for s in self.stages if s.tokens), "cpu")
            self._rates = measure_rates(self.recipe.base_checkpoint.layout, device,
                                        cache=cache_root() / "rates.json" if cached else None)
        return self._rates

    def estimates(self, flops_per_s: float | None = None) -> dict[str, float]:
        """Seconds of each stage, and of each part of one (``stage: part``, e.g. ``scoring: direct``)."""
        out: dict[str, float] = {}
        rates = self.rates(flops_per_s) if self.stages else None
        for st in self.stages:
            out[st.name] = st.seconds(rates, self.token_flops)
            out.update({f"{st.name}: {p}": st.seconds(rates, self.token_flops, p) for p in st.parts})
        return out

    def lines(self, flops_per_s: float | None = None) -> list[str]:
        """The plan as text; work is converted to time at ``flops_per_s`` if given, else at the rates measured
        here (:meth:`rates`), stated as such."""
        out = [f"plan: {self.kind} recipe {self.name!r} -> {self.folder}"]
        if not self.stages:  # an application: its own stages open their checkpoints as they run
            return out + [f"checked: the recipe's keys and names; the {self.kind} application opens and checks its "
                          f"checkpoints stage by stage when it runs"]
        out.append("checked (headers only, no tensor read):")
        out += [f"  - {c}" for c in self.checked]
        out.append("sources:")
        for side, s in self.sources.items():
            out.append(f"  {side}: {s.get('ref')} ({'commit ' + s['commit'][:12] if s.get('commit') else 'fingerprint ' + str(s.get('fingerprint'))})")
        out.append(f"  model: {self.params / 1e6:.1f} M parameters")
        if self.conditions is not None:
            out.append(f"  conditions: {len(self.conditions)} + base ({', '.join(self.conditions[:6])}"
                       f"{', ...' if len(self.conditions) > 6 else ''})")
        rates, est = self.rates(flops_per_s), self.estimates(flops_per_s)
        out.append(f"stages (peak memory on the device; forward tokens at {self.token_flops / 1e9:.2f} GFLOP each, "
                   f"other compute and weight reads):")
        for st in self.stages:
            parts = ", ".join(f"{p} ~{est[f'{st.name}: {p}'] / 60:.1f} min" for p in st.parts)
            out.append(f"  {st.name:<24} {readable_bytes(st.memory_bytes):>10} {st.device:<5} {st.tokens:>12,} tokens  "
                       f"~{est[st.name] / 60:.1f} min  {st.what}" + (f" ({parts})" if parts else ""))
        out.append(f"estimated time: ~{sum(est[s.name] for s in self.stages) / 60:.1f} min at {rates.flops32 / 1e9:.0f} "
                   f"GFLOP/s float32, {rates.flops64 / 1e9:.0f} float64, weights read at "
                   f"{rates.read_bytes_s / 1e9:.1f} GB/s ({rates.how}); model loads, reports and plots besides")
        if self.free_disk_bytes is not None:
            out.append(f"disk: the run writes ~{readable_bytes(self.output_bytes)} into {self.folder} "
                       f"({readable_bytes(self.free_disk_bytes)} free there)")
        if self.cache_bytes:
            out.append(f"      activation statistics: ~{readable_bytes(self.cache_bytes)} into {self.cache_dir} unless cached "
                       f"({readable_bytes(self.cache_free_bytes or 0)} free there)")
        return out + [f"note: {n}" for n in self.notes]


def check_data(refs: list[DataRef]) -> list[str]:
    """Open each data file of ``refs`` at its first records, with the reader the run will use (so a missing
    file or a wrong format fails now); returns the keys checked. A ``datasets`` Hub name is left to the run."""
    from rwedit.bundled import resolve
    from rwedit.data import looks_like_path, read_pairs, read_texts

    checked = []
    for ref in refs:
        path = Path(str(resolve(ref.source))).expanduser()
        if not path.exists():
            if not looks_like_path(str(ref.source)):
                continue  # a datasets Hub name: loaded (or refused) by the run
            raise DataNotFoundError(f"{ref.key}: {ref.source}: no such file or folder (relative paths in a recipe "
                                    f"are read next to the recipe file)")
        if path.is_file():  # a folder saved by datasets is loaded by the run
            try:
                if ref.kind == "pairs":
                    got = read_pairs(path, limit=2, indices=ref.heldout)
                    if ref.heldout is not None and len(got) < 2:
                        raise DataError(f"{path}: the held-out lines {ref.heldout.start}..{ref.heldout.stop - 1} hold "
                                        f"{len(got)} pair(s); the direct metrics need at least 2")
                else:
                    read_texts(path, field=ref.field, limit=1)
            except DataError as e:
                raise type(e)(f"{ref.key}: {e}") from None
        checked.append(ref.key)
    return checked


# --- estimates -------------------------------------------------------------------------------


def device_memory(device: str) -> int | None:
    """Memory free now where a stage runs: the host's MemAvailable (Linux) for cpu, the CUDA device's free
    memory for cuda[:N]; None where it cannot be known before placement (auto, another device)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device).index or 0)[0]
    if device != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (where a folder not made yet will be)."""
    return path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))


def check_disk(writes: dict[Path, int]) -> None:
    """Each disk has room for what the run writes to the folders on it (``{folder: bytes}``; folders on one
    disk add up)."""
    need: dict[int, list] = {}
    for where, n in writes.items():
        if n:
            entry = need.setdefault(os.stat(_existing(where)).st_dev, [0, []])
            entry[0] += n
            entry[1].append(str(where))
    for n, folders in need.values():
        free = free_bytes(Path(folders[0]))
        if n > free:
            raise ExperimentError(f"not enough disk: the run writes ~{readable_bytes(n)} into {' and '.join(folders)}, whose "
                                  f"disk has {readable_bytes(free)} free; free space there, or give --out (or --cache-dir for "
                                  f"activation statistics) on another disk")


def direct_refs(direct) -> list[DataRef]:
    """The data files of the direct metrics (``direct:`` of any recipe)."""
    heldout = None if direct.pairs_heldout is None else range(*direct.pairs_heldout)
    return [DataRef("direct.text_data", direct.text_data, "texts"),
            DataRef("direct.pairs_data", direct.pairs_data, "pairs", heldout=heldout)]


def scoring_stage(recipe, ctx: PlanContext, conditions: list[str] | None, kind: str) -> tuple[Stage, int]:
    """The stage every store-based run ends with: each condition (and the base) scored by the direct metrics
    and lm-eval on one loaded model; with the bytes it writes (rows, lm-eval's output)."""
    from rwedit.data import read_pairs
    from rwedit.evals.bundled_tasks import request_texts
    from rwedit.models import context_window
    from rwedit.scoring import first_scored, fitted_lengths

    n_cond = (len(conditions) + 1) if conditions is not None else 1
    batch_tokens, output, parts, part_flops = 0, n_cond * ROW_BYTES, {}, {}
    direct, ev = recipe.direct, recipe.eval
    layout = ctx.base.layout
    vocab = layout.view(None, "unembed").shape[0]
    budget = ev.logits_mb * 2**20 if ev is not None and ev.logits_mb is not None else None  # lm-eval's batches
    pairs, requests = [], {}  # the texts the scorers will read, counted with the base's tokenizer at once
    if direct is not None:
        pairs = read_pairs(direct.pairs_data, limit=None if direct.pairs == "all" else direct.pairs,
                           indices=None if direct.pairs_heldout is None else range(*direct.pairs_heldout))
        batch_tokens = max(n * logits_batch(n, direct.batch_size, vocab, None if direct.logits_mb is None else
                                            direct.logits_mb * 2**20) for n in (direct.max_len, direct.seq_len))
    if ev is not None:
        requests = {t: request_texts(t, ev.limit) for t in ev.tasks}
        batch_tokens = max(batch_tokens, ev.batch_size * (ev.max_length or 256) if budget is None else
                           budget // (8 * vocab))
        output += n_cond * len(ev.tasks) * (ev.limit or 500) * LMEVAL_ITEM_BYTES
    texts = [t for p in pairs for t in (p.prompt, p.chosen, p.rejected)]
    texts += [t for reqs, _ in filter(None, requests.values()) for r in reqs for t in r]
    lengths = iter(token_lengths(ctx.base.path, texts))
    if direct is not None:  # prompt (after BOS) and response, cut at max_len; chosen and rejected batched apart
        p_len = [(1 + next(lengths), next(lengths), next(lengths)) for _ in pairs]
        per = kept = direct.texts * direct.seq_len  # the held-out texts: every position's logits
        for side in (1, 2):
            items = [fitted_lengths(x[0], x[side], direct.max_len) for x in p_len]
            per += padded_tokens([p + r for p, r in items], direct.batch_size)
            for i in range(0, len(items), direct.batch_size):  # logits from the batch's first response on
                batch = items[i:i + direct.batch_size]
                kept += len(batch) * (max(p + r for p, r in batch) - first_scored([p for p, _ in batch]))
        parts["direct"] = (n_cond + 1) * per  # the base's reference values first
        part_flops["direct"] = kept_token_flops(layout, per, kept)
    if ev is not None:  # lm-eval sorts its requests by length and pads each batch; rolling ones are windowed
        window, per, kept = ev.max_length or context_window(ctx.base.config) or 2048, 0, 0
        for task, got in requests.items():
            if got is None:  # a task rwedit does not ship: two continuations of ~256 tokens per item, all scored
                unknown = (ev.limit or 500) * 2 * 256
                per, kept = per + unknown, kept + unknown
                continue
            reqs, rolling = got
            cc = [(next(lengths), next(lengths)) for _ in reqs]  # context, continuation
            if rolling:  # each window is a continuation of its own
                n = [w for c, x in cc for w in [window] * ((c + x) // window) + [(c + x) % window] if w]
                conts = n
            else:
                n, conts = [min(c + x, window) for c, x in cc], [min(x, window) for _, x in cc]
            per += padded_tokens(n, ev.batch_size, sort=True, vocab=vocab, budget=budget)
            # the logits of each batch's continuations alone (rwedit's lm-eval model), else of every position
            kept += (sum(len(b) * k for b, k in logits_batches(n, conts, ev.batch_size, vocab, budget))
                     if budget is not None else padded_tokens(n, ev.batch_size, sort=True))
        parts["lmeval"] = n_cond * per
        part_flops["lmeval"] = kept_token_flops(layout, per, kept)
    what = (f"{n_cond} conditions (adapters switched in place on one loaded model)" if conditions is not None else
            f"per condition: the {kind} kind lists its conditions when the run prepares them")
    # the model, the adapters' factors, and one batch's logits with their log-softmax (float32)
    extra = n_cond * 2 * layout.dims.hidden * 4 + batch_tokens * vocab * 4 * 2
    stage = ctx.model_stage("scoring", what, extra, sum(parts.values()))
    stage.parts, stage.part_efficiency = parts, {"lmeval": SCORING_EFFICIENCY}  # direct: a forward pass's
    stage.part_token_flops = part_flops
    return stage, output


def plan_recipe(source, overrides: dict | None = None, sets=(), out: str | Path | None = None,
                cache_dir: str | Path | None = None) -> Plan:
    """The :class:`Plan` of a recipe (path, shipped name or mapping) without loading any weights; raises (an
    :class:`~rwedit.errors.RweditError` naming it) what would make the run fail."""
    from rwedit.checkpoints import DTYPE_BYTES, check_headers, check_pair_headers, open_post
    from rwedit.evals.core import ExperimentRecipe, load_recipe
    from rwedit.evals.lmeval import check_backend
    from rwedit.evals.store import Shard
    from rwedit.models import check_device
    from rwedit.probes.activations import default_cache_dir

    kind, recipe = load_recipe(source, overrides, sets)  # importing rwedit.apps registered its kinds
    if not isinstance(recipe, ExperimentRecipe):  # an application: its stages check their checkpoints as they run
        own = kind.plan(recipe, None) if kind.plan is not None else KindPlan()
        return Plan(kind.name, kind.name, Path(out or own.folder or Path("runs") / kind.name), {}, 0, None,
                    notes=own.notes)
    folder = recipe.folder(out)
    check_device(recipe.device)
    Shard.from_env()  # a launcher's sharding variables that make no share fail here, not after the first stage
    sources = recipe.check_sources() or {}  # the kind's own checks: edit against the model, export names, pair
    base = recipe.base_checkpoint  # opened once: the run loads the one checked here
    check_headers(base)
    recipe.placement.check(recipe.device, base.config)
    checked = ["the recipe's keys and names", "base: config, index, every role tensor's shape and dtype, tokenizer"]
    if isinstance(recipe.placement.device_map, dict):
        checked.append("placement: the device map's modules against the model's")
    if recipe.eval is not None:
        check_backend(recipe.eval, base.config)
        checked.append(f"eval: backend {recipe.eval.backend!r}" + (" and its model_args" if recipe.eval.model_args else ""))
    post = None
    if recipe.post_source:
        post = open_post(recipe.post_source, base)
        check_pair_headers(base, post)
        checked.append("post against base: architecture, layers, every tensor's shape, dtypes, tokenizers")

    params = sum(base.element_counts())
    device, placement = recipe.device, recipe.placement
    if placement.device_map is not None:
        device = "auto"  # a device map splits the model: per device, a plan cannot know before placement
    model_bytes = params * DTYPE_BYTES[placement.dtype or "float32"]  # float32 unless placement says
    ctx = PlanContext(base, post, device, RUNTIME_BYTES if device == "cpu" else 0, model_bytes)
    own: KindPlan = kind.plan(recipe, ctx) if kind.plan is not None else KindPlan()
    checked += own.checked
    data = check_data(own.data + (direct_refs(recipe.direct) if recipe.direct is not None else []))
    if data:
        checked.append("data: " + ", ".join(data))
    notes = []
    if device != "cpu":
        notes.append(f"device {device}: the model stages' memory is on the accelerator (the host holds the "
                     f"runtime, ~{readable_bytes(RUNTIME_BYTES)}, and the accelerator's context besides)"
                     + ("; accelerate's device_map splits it over the GPUs and the CPU, a split plan cannot know "
                        "before placement" if device == "auto" else ""))
    scoring, scoring_bytes = scoring_stage(recipe, ctx, own.conditions, kind.name)
    stages = own.stages + [scoring]
    output_bytes = PLOTS_BYTES + own.output_bytes + scoring_bytes
    cache = Path(cache_dir or default_cache_dir())
    free = free_bytes(folder)
    cache_free = free_bytes(cache) if own.cache_bytes else None
    check_disk({folder: output_bytes, cache: own.cache_bytes})
    for dev in dict.fromkeys(s.device for s in stages):
        avail = device_memory(dev)
        over = [s.name for s in stages if s.device == dev and avail is not None and s.memory_bytes > avail]
        if over:
            notes.append(f"stage(s) {', '.join(over)} need more memory than {dev} has free now ({readable_bytes(avail)})")
    return Plan(kind.name, recipe.name, folder, sources, params, own.conditions, stages, free, output_bytes,
                own.cache_bytes, cache, cache_free, checked, own.notes + notes, recipe, forward_flops(base.layout))


__all__ = ["Plan", "check_data", "check_disk", "device_memory", "direct_refs", "plan_recipe", "scoring_stage"]
