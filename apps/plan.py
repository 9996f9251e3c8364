"""``rwedit plan RECIPE``: everything that can be known about a run before any weights are loaded.

The recipe is parsed and checked as ``rwedit run`` would (every key, the names it refers to, ``export:``
entries), its checkpoints are opened from their headers only and checked against their configs and each
other (architecture, layer counts, every tensor's shape, stored dtypes, shards named by the index, tokenizer
files and vocabularies), the data files it names are opened at their first records, and the output folder's
and the statistics cache's disks are compared with what the run will write. Each stage gets a memory and
compute estimate from the tensor sizes in the headers and the recipe's device. What ``plan`` can know fails
here, not after the first hour; no tensor is read.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rwedit.errors import CheckpointError, CheckpointMismatchError, DataError, DataNotFoundError, ExperimentError

#: resident memory of a Python process with torch and transformers imported, before any tensor: 230-330 MiB
#: measured on CPU with torch 2.13 (``benchmarks/results/pair_pass.json`` records 330 MiB at the pass's start)
RUNTIME_BYTES = 300 * 2**20
#: files AutoTokenizer can build a tokenizer from; a run loads one with the base model
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
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

    def lines(self, flops_per_s: float = 1e11) -> list[str]:
        """The plan as text; compute is converted to time at ``flops_per_s`` (default 100 GFLOP/s, about two
        CPU cores; a GPU is 100-1000x that), stated as such."""
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
        out.append("stages (peak memory on the device; forward tokens -> compute at 2 x params FLOPs per token):")
        total = 0.0
        for st in self.stages:
            secs = st.tokens * 2 * self.params / flops_per_s
            total += secs
            out.append(f"  {st.name:<24} {st.memory_bytes / 2**30:8.2f} GiB {st.device:<5} {st.tokens:>12,} tokens  "
                       f"~{secs / 60:.1f} min  {st.what}")
        out.append(f"estimated compute: ~{total / 60:.1f} min at {flops_per_s / 1e9:.0f} GFLOP/s (forward passes only)")
        if self.free_disk_bytes is not None:
            out.append(f"disk: the run writes ~{_gib(self.output_bytes)} into {self.folder} "
                       f"({_gib(self.free_disk_bytes)} free there)")
        if self.cache_bytes:
            out.append(f"      activation statistics: ~{_gib(self.cache_bytes)} into {self.cache_dir} unless cached "
                       f"({_gib(self.cache_free_bytes or 0)} free there)")
        return out + [f"note: {n}" for n in self.notes]


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


# --- checks from headers ---------------------------------------------------------------------


def _stored_itemsize(name: str) -> int | None:
    """Bytes per element of a stored float dtype (``F32``, ``BF16`` ... as the headers name them); None for
    a dtype that is not a float (quantized or integer weights)."""
    from rwedit.checkpoints import _STORED_DTYPES

    t = _STORED_DTYPES.get(name)
    return None if t is None else t.itemsize


def check_checkpoint(ckpt, needs_tokenizer: bool = True) -> None:
    """One checkpoint's headers against its config and index: every role tensor is there with the shape the
    config implies and a float dtype, every tensor the index names is in the shard it names, and the folder
    holds a tokenizer (where the run loads one from it: the base) whose ids fit the embedding. Nothing is read
    but headers and tokenizer files."""
    from rwedit.errors import ConfigError

    index = ckpt.path / "model.safetensors.index.json"
    if ckpt.format == "safetensors" and index.exists():  # the shards themselves were checked when it was opened
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        lost = [(k, f) for k, f in weight_map.items() if ckpt._where.get(k) is None or ckpt._where[k].name != f]
        if lost:
            k, f = lost[0]
            raise CheckpointError(f"{index}: {len(lost)} tensor(s) the index names are not in the shard it names, e.g. "
                                  f"{k!r} in {f}; the download is incomplete or the shards are of another save: "
                                  f"download the checkpoint again")
    for view in ckpt.layout.views():
        try:
            view.check_stored(ckpt.shape(view.param), where=f"{ckpt.source}: ")
        except ConfigError as e:
            raise CheckpointMismatchError(f"{e}; the checkpoint does not match its own config.json") from None
        dtype = ckpt.dtype(view.param)
        if _stored_itemsize(dtype) is None:
            raise CheckpointError(f"{ckpt.source}: {view.param} is stored as {dtype}, not a float dtype (a quantized "
                                  f"checkpoint?); rwedit reads float weights (F32, BF16, F16): dequantize it and save "
                                  f"it with save_pretrained first")
    check_tokenizer(ckpt, needs_tokenizer)


def check_tokenizer(ckpt, required: bool = True) -> None:
    """The folder ships tokenizer files (``required``: a run loads the tokenizer with the base model) and,
    where the vocabulary can be read from them, its largest id has a row in the embedding."""
    if not any((ckpt.path / f).exists() for f in TOKENIZER_FILES):
        if not required:
            return
        raise CheckpointError(f"{ckpt.source}: no tokenizer files in {ckpt.path} (looked for "
                              f"{', '.join(TOKENIZER_FILES)}); a run loads the tokenizer with the model: save one "
                              f"there with tokenizer.save_pretrained(folder)")
    vocab = ckpt.tokenizer_vocab()
    ids = set(vocab.values()) if vocab else set()
    added = ckpt.path / "tokenizer.json"
    if added.exists():
        ids |= {int(t["id"]) for t in json.loads(added.read_text()).get("added_tokens") or [] if "id" in t}
    rows = ckpt.shape(ckpt.layout.view(None, "unembed").param)[0]
    if ids and max(ids) >= rows:
        raise CheckpointMismatchError(
            f"{ckpt.source}: the tokenizer has ids up to {max(ids)}, but the embedding has {rows} rows; it is the "
            f"tokenizer of another vocabulary (or the embedding was not resized after tokens were added)")


def check_pair_headers(base, post) -> None:
    """Base and post from their headers: the pair checks (architecture, layer counts, each role's shape and
    stored dtype, tokenizers) and the shape of every other tensor both store (norms, embeddings)."""
    from rwedit.checkpoints import CheckpointPair, LoraPost

    CheckpointPair(base, post)
    if isinstance(post, LoraPost):
        return
    check_checkpoint(post, needs_tokenizer=False)  # the run loads the base's tokenizer only
    for name in base.keys():
        sb, sp = base._shapes[name], post._shapes.get(name)
        if sp is not None and sb != sp:
            raise CheckpointMismatchError(f"shapes differ at {name}: base {base.source!r} {sb}, post {post.source!r} "
                                          f"{sp}; the two are not one model before and after post-training")


def check_data(recipe) -> list[str]:
    """Open each data file the recipe names at its first records, with the reader the run will use (so a
    missing file or a wrong format fails now); returns the keys checked. A ``datasets`` Hub name is left to the
    run."""
    from rwedit.bundled import resolve
    from rwedit.data import _looks_like_path, read_pairs, read_texts

    def pairs(heldout: range | None = None):
        def read(path):
            got = read_pairs(path, limit=2, indices=heldout)
            if heldout is not None and len(got) < 2:
                raise DataError(f"{path}: the held-out lines {heldout.start}..{heldout.stop - 1} hold {len(got)} "
                                f"pair(s); the direct metrics need at least 2")
        return read

    def texts(field: str | None = None):
        return lambda path: read_texts(path, field=field, limit=1)

    spec, direct = getattr(recipe, "edit", None), getattr(recipe, "direct", None)
    named = []  # (key, source, reader of a local file)
    if getattr(spec, "calibration", None) is not None:
        named.append(("edit.calibration.data", spec.calibration.data, texts(spec.calibration.field)))
    target = getattr(spec, "edit", None)
    if getattr(target, "b", None) == "gradient" and target.data:
        named.append(("edit.edit.data", target.data, pairs() if target.objective == "preference" else texts()))
    if direct is not None:
        named.append(("direct.text_data", direct.text_data, texts()))
        named.append(("direct.pairs_data", direct.pairs_data,
                      pairs(None if direct.pairs_heldout is None else range(*direct.pairs_heldout))))
    checked = []
    for key, source, read in named:
        path = Path(str(resolve(source))).expanduser()
        if not path.exists():
            if not _looks_like_path(str(source)):
                continue  # a datasets Hub name: loaded (or refused) by the run
            raise DataNotFoundError(f"{key}: {source}: no such file or folder (relative paths in a recipe are read "
                                    f"next to the recipe file)")
        if path.is_file():  # a folder saved by datasets is loaded by the run
            try:
                read(path)
            except DataError as e:
                raise type(e)(f"{key}: {e}") from None
        checked.append(key)
    return checked


# --- estimates -------------------------------------------------------------------------------


def largest_role_tensor(ckpt) -> tuple[int, int]:
    """(elements, stored bytes per element) of the largest stored tensor a role lives in (a fused tensor is
    read whole)."""
    return max((math.prod(ckpt.shape(v.param)), _stored_itemsize(ckpt.dtype(v.param)) or 4)
               for v in ckpt.layout.views())


def pair_pass_bytes(base, post=None, threads: int | None = None) -> int:
    """Peak resident memory of the streaming pass over the pair (``rwedit.checkpoints.stream_pair``): the
    runtime plus, per worker thread, a float32 work block and a stored-dtype read block for base and post —
    no tensor is held whole. An adapter post is not streamed: its densified delta (two float32 copies of the
    largest role tensor) is the peak."""
    import torch

    from rwedit.checkpoints import BLOCK_BYTES, LoraPost

    numel, itemsize = largest_role_tensor(base)
    if isinstance(post, LoraPost):
        return RUNTIME_BYTES + 2 * numel * 4
    threads = threads or torch.get_num_threads()
    per_block = min(BLOCK_BYTES // 4, numel)  # float32 elements of a block (at most the tensor)
    return RUNTIME_BYTES + threads * 2 * per_block * (4 + itemsize)


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


def _free(path: Path) -> int:
    return shutil.disk_usage(_existing(path)).free


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
        free = _free(Path(folders[0]))
        if n > free:
            raise ExperimentError(f"not enough disk: the run writes ~{_gib(n)} into {' and '.join(folders)}, whose "
                                  f"disk has {_gib(free)} free; free space there, or give --out (or --cache-dir for "
                                  f"activation statistics) on another disk")


def plan_recipe(source, overrides: dict | None = None, sets=(), out: str | Path | None = None,
                cache_dir: str | Path | None = None) -> Plan:
    """The :class:`Plan` of a recipe (path, shipped name or mapping) without loading any weights; raises (an
    :class:`~rwedit.errors.RweditError` naming it) what would make the run fail."""
    from rwedit.checkpoints import Checkpoint, open_post
    from rwedit.evals.core import load_recipe
    from rwedit.models import check_device
    from rwedit.probes.activations import default_cache_dir

    kind, recipe = load_recipe(source, overrides, sets)  # importing rwedit.apps registered its kinds
    if kind.run is not None:  # an application: its recipe is checked, nothing more known
        folder = Path(out or getattr(recipe, "out", None) or Path("runs") / getattr(recipe, "name", kind.name))
        return Plan(kind.name, getattr(recipe, "name", kind.name), folder, {}, 0, None)
    folder = recipe.folder(out)
    check_device(getattr(recipe, "device", "cpu"))
    sources = recipe.check_sources() or {}  # the kind's own checks: edit against the model, export names, pair
    base = getattr(recipe, "base_checkpoint", None)  # opened once by check_sources where the kind keeps it
    spec = getattr(recipe, "edit", None)
    if base is None:
        base = Checkpoint.open(getattr(recipe, "model", None) or getattr(spec, "model", None))
    check_checkpoint(base)
    checked = ["the recipe's keys and names", "base: config, index, every role tensor's shape and dtype, tokenizer"]
    post_ref = getattr(recipe, "post", None) or getattr(spec, "post", None)
    post = None
    if post_ref:
        post = open_post(post_ref, base)
        check_pair_headers(base, post)
        checked.append("post against base: architecture, layers, every tensor's shape, dtypes, tokenizers")
    if spec is not None and hasattr(spec, "resolved"):
        checked.append("the edit's layers, roles and windows; export: names")
    data = check_data(recipe)
    if data:
        checked.append("data: " + ", ".join(data))

    counts = base.element_counts()
    params = sum(counts)
    layout, dims = base.layout, base.layout.dims
    device = getattr(recipe, "device", "cpu")
    placement = getattr(recipe, "placement", None)
    dtype = getattr(placement, "dtype", None) or "float32"  # models load in float32 unless placement says
    model_bytes = params * getattr(torch, dtype).itemsize
    if getattr(placement, "device_map", None) is not None:
        device = "auto"  # a device map splits the model: per device, a plan cannot know before placement
    vocab = layout.view(None, "unembed").shape[0]
    stages: list[Stage] = []
    conditions = None
    cache = Path(cache_dir or default_cache_dir())
    cache_bytes = 0
    output_bytes = PLOTS_BYTES
    notes = []
    host = RUNTIME_BYTES if device == "cpu" else 0  # the process itself, where a stage runs on the host
    if device != "cpu":
        notes.append(f"device {device}: the model stages' memory is on the accelerator (the host holds the "
                     f"runtime, ~{_gib(RUNTIME_BYTES)}, and the accelerator's context besides)"
                     + ("; accelerate's device_map splits it over the GPUs and the CPU, a split plan cannot know "
                        "before placement" if device == "auto" else ""))
    if spec is not None and hasattr(spec, "resolved"):
        spec = spec.resolved(layout.n_layers)
        conditions = spec.condition_names()
        probe = getattr(recipe, "probe", None)
        if post is not None and probe is not None and probe.enabled:
            if spec.calibration is not None:
                n = stats_bytes(layout)
                cache_bytes += n
                stages.append(Stage("probe: statistics", f"E[a a^T] of every read input at {layout.n_layers} layers, "
                                    f"float64 (cached)", host + model_bytes + n, spec.calibration.tokens,
                                    device))
            adapter = "kind" in sources.get("post", {})  # source_info marks an adapter post
            stages.append(Stage("probe: RSF grid", "post - base streamed tensor by tensor"
                                + (" (adapter factors)" if adapter else ""),
                                pair_pass_bytes(base, post) + largest_role_tensor(base)[0] * 8, 0, "cpu"))
            n_views = len(layout.views())
            output_bytes += n_views * 2 * 3 * len(probe.ks) * PROBE_ROW_BYTES
        if spec.calibration is not None:
            roles = [spec.edit.role] + ([spec.controls.write] if spec.controls.write else [])
            n = stats_bytes(layout, spec.edit.layers, roles)
            cache_bytes += n
            stages.append(Stage("edit: statistics", f"E[a a^T] of the {' and '.join(roles)} input at "
                                f"{len(spec.edit.layers)} layer(s), float64 (cached)",
                                host + model_bytes + n, spec.calibration.tokens, device))
        if spec.edit.b == "gradient":
            stages.append(Stage("edit: gradient", f"-G v over {spec.edit.data_limit} items (one backward each)",
                                host + 2 * model_bytes, 3 * spec.edit.data_limit * spec.edit.max_len, device))
        view = layout.view(spec.edit.layers[0], spec.edit.role)
        per_edit = (view.d_in + view.d_out) * 4 + ADAPTER_FILES_BYTES
        output_bytes += len(conditions or []) * len(spec.edit.layers) * per_edit
    n_cond = (len(conditions) + 1) if conditions is not None else 1
    per_cond, batch_tokens = 0, 0
    direct = getattr(recipe, "direct", None)
    if direct is not None:
        pairs = 412 if direct.pairs == "all" else direct.pairs
        per_cond += 2 * pairs * direct.max_len + direct.texts * direct.seq_len
        batch_tokens = direct.batch_size * max(direct.max_len, direct.seq_len)
    ev = getattr(recipe, "eval", None)
    if ev is not None:
        items = len(ev.tasks) * (ev.limit or 500)
        per_cond += items * 2 * 256  # rough: two continuations of ~256 tokens per item
        batch_tokens = max(batch_tokens, ev.batch_size * (ev.max_length or 256))
        output_bytes += n_cond * items * LMEVAL_ITEM_BYTES
    output_bytes += n_cond * ROW_BYTES
    # the model, the adapters' factors, and one batch's logits with their log-softmax (float32)
    what = (f"{n_cond} conditions (adapters switched in place on one loaded model)" if conditions is not None else
            f"per condition: the {kind.name} kind lists its conditions when the run prepares them")
    stages.append(Stage("scoring", what,
                        host + model_bytes + n_cond * 2 * dims.hidden * 4 + batch_tokens * vocab * 4 * 2,
                        n_cond * per_cond, device))

    free = _free(folder)
    cache_free = _free(cache) if cache_bytes else None
    check_disk({folder: output_bytes, cache: cache_bytes})
    for dev in dict.fromkeys(s.device for s in stages):
        avail = device_memory(dev)
        over = [s.name for s in stages if s.device == dev and avail is not None and s.memory_bytes > avail]
        if over:
            notes.append(f"stage(s) {', '.join(over)} need more memory than {dev} has free now ({_gib(avail)})")
    return Plan(kind.name, recipe.name, folder, sources, params, conditions, stages, free, output_bytes,
                cache_bytes, cache, cache_free, checked, notes, recipe)


__all__ = ["Plan", "Stage", "check_checkpoint", "check_data", "check_disk", "check_pair_headers", "check_tokenizer",
           "device_memory", "largest_role_tensor", "pair_pass_bytes", "plan_recipe", "stats_bytes"]
