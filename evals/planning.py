"""What a run will need, stage by stage, from its recipe and its checkpoints' headers, before any weights load:
each kind's ``plan`` hook returns a :class:`KindPlan` of these pieces; ``rwedit plan`` (:mod:`rwedit.apps.plan`)
adds what every run shares (checkpoint and data checks, scoring, disk) and prints the whole. A stage's work
(forward tokens, other float32 and float64 FLOPs, bytes read) becomes time at :class:`Rates` measured on this
machine at the model's shapes by a probe of ~0.2 s (:func:`measure_rates`), or at a stated rate."""

from __future__ import annotations

import dataclasses
import math
import time
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


#: time of a symmetric eigendecomposition with vectors (LAPACK syevd, float64) of an n x n matrix, in n^3 FLOPs
#: at the measured float64 product rate: its tridiagonal reduction is memory-bound, so the ratio moves with the
#: machine and its load (11 at n 896 on 2 idle Xeon cores; 40-150 on loaded ones for n 1024-4864); the least
#: certain number of the plan
EIGH_N3 = 20.0
#: the same for the statistics' decompositions at d >= KEPT_MIN_D, which compute only the kept eigenvectors (one
#: memory-bound tridiagonal reduction, the two end ranges, their back-transform; `rwedit.probes.subspaces`): at n
#: 4864 on 2 idle Xeon cores 8.9 and 8.5 in two runs of bench_study (6.4 and 6.1 s each at float64 products of
#: 159 and 168 GFLOP/s, 2026-12-07), 12-20 on loaded ones
KEPT_N3 = 8.7
#: share of the measured float32 product rate a forward pass runs at (attention, norms, activations and the
#: unembedding's softmax besides the layer products): for the bare 0.5B model at 8 x 256 tokens on 2 idle Xeon
#: cores 0.75, 0.63 and 0.79 in three runs of bench_study (230, 203 and 292 tokens/s of 1.01 GFLOP at 309, 324 and
#: 375 GFLOP/s, 2026-12-07): the machine's forward rate moves more than the product the plan measures
FORWARD_EFFICIENCY = 0.75
#: the same for lm-eval's scoring (its per-request work, the log-softmax over the vocabulary, padding within a
#: batch): 0.68 in the last of those runs (80.6k tokens in 320 s); the direct metrics run at FORWARD_EFFICIENCY (0.76)
SCORING_EFFICIENCY = 0.65
#: bytes/s at which a statistics cache entry is written and checksummed (its d x d matrices made from the kept
#: triangles, written, read back for sha256): 4.5 GB in 17.8 s at the 0.5B study's shapes on this project's
#: 2-core machine's virtio disk (2026-12-07); a disk's write rate is not measured by the plan, and differs
CACHE_WRITE_BYTES_S = 250e6
#: seconds a matrix of the streamed grid's work besides its products, the read and the prediction subspace's
#: eigendecomposition (the caller's rows, nulls and side plans, each worker's start on a tensor, first calls): what
#: a fresh process's grid leaves over those at the measured rates, 0.014 s at the 0.5B study's 169 matrices (4.7-4.9
#: s; priced at 0.93x) and 0.009 s at the 1.1B pair's 155 (5.9 s; since its deltas are formed in chunks and its
#: sides' bases made in one piece, 0.002-0.005 s of 5.1-5.9 s, priced at 1.16-1.34x) on 2 idle Xeon cores (2026-12-07)
GRID_MATRIX_S = 0.011
#: share of a aᵀ the statistics compute: its upper block triangle, (B + 1) / 2B of it for the B = 16 column blocks of
#: `rwedit.probes.activations` (not imported here: `rwedit plan` stays light; a test holds the two together)
TRIANGLE_SHARE = 17 / 32


@dataclass(frozen=True)
class Rates:
    """What a plan converts work into time at: float32 and float64 matrix-product FLOP/s and the rate at which
    stored weights are read and converted to float32 (bytes/s), and how they were found."""

    flops32: float
    flops64: float
    read_bytes_s: float
    how: str

    @classmethod
    def stated(cls, flops_per_s: float) -> "Rates":
        """A stated float32 rate (float64 at half of it, weights read at 1 GB/s)."""
        return cls(flops_per_s, flops_per_s / 2, 1e9, f"{flops_per_s / 1e9:.0f} GFLOP/s as stated")


def measure_rates(layout, device: str = "cpu", budget_s: float = 0.1, cache: Path | None = None) -> Rates:
    """The rates of this machine at the model's shapes, measured in about ``budget_s`` (after one warm-up call
    each; the fastest call, the one least disturbed by other processes): a float32 product of a batch of 512
    tokens with the model's MLP matrix (d x d_ff, at most 1024 x 2048: a forward pass runs at about this rate on
    CPU), a float64 Gram ``Xᵀ X`` of 512 tokens (the activation statistics), and a bfloat16 -> float32 copy of
    8 MiB (reading stored weights from the page cache). ``device``: cpu or cuda[:N]; elsewhere half a TFLOP/s
    is stated. ``cache``: a JSON file of rates measured before, by host, device, threads, torch version and
    shapes; rates found there are used as they were measured (torch is not imported: ~1.3 s of CPU), new ones
    are added to it."""
    if not (device == "cpu" or device.startswith("cuda")):
        return Rates.stated(5e11)
    d, f = min(layout.dims.hidden, 1024), min(layout.dims.intermediate, 2048)
    if cache is None:
        return _measure_rates(d, f, device, budget_s)
    import importlib.metadata
    import json
    import platform

    from rwedit.lazy import torch_threads
    from rwedit.outputs import make_folder, write_json

    key = f"{platform.node()} {device} {torch_threads()} threads torch {importlib.metadata.version('torch')} {d}x{f}"
    try:
        known = dict(json.loads(Path(cache).read_text()))
        return Rates(**{**known[key], "how": f"{known[key]['how']}, cached in {cache}: delete it to measure again"})
    except KeyError:  # not measured here yet: measured and added
        pass
    except (OSError, ValueError, TypeError):  # no cache yet, or one not written by this: measured and written anew
        known = {}
    rates = _measure_rates(d, f, device, budget_s)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        write_json(make_folder(Path(cache).parent) / Path(cache).name,
                   {**known, key: {**dataclasses.asdict(rates), "how": f"{rates.how} on {when}"}})
    except OSError:  # a cache that cannot be written: the next plan measures again
        pass
    return rates


def _measure_rates(d: int, f: int, device: str, budget_s: float) -> Rates:
    """:func:`measure_rates` itself, at a d x f float32 product."""
    import torch

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def rate(fn, work: float, share: float) -> float:
        fn()  # warm-up: first-call allocation and kernel choice
        best, t_end = math.inf, time.perf_counter() + budget_s * share
        while best == math.inf or (time.perf_counter() < t_end):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best = min(best, time.perf_counter() - t0)
        return work / best

    with torch.no_grad():
        x, w = torch.full((512, d), 0.5, device=dev), torch.full((d, f), 0.25, device=dev)
        f32 = rate(lambda: x @ w, 2 * 512 * d * f, 0.6)
        x64 = torch.full((512, d), 0.5, device=dev, dtype=torch.float64)
        f64 = rate(lambda: x64.T @ x64, 2 * x64.shape[0] * x64.shape[1] ** 2, 0.2)
        src = torch.full((4 << 20,), 0.5, device=dev, dtype=torch.bfloat16)
        read = rate(lambda: src.to(torch.float32), src.numel() * 2, 0.2)
    return Rates(f32, f64, read, f"measured here ({device}, {torch.get_num_threads()} threads)")


def forward_flops(layout, seq_len: int = 256, logits: bool = True) -> float:
    """FLOPs of one token's forward pass: every layer matrix and the unembedding (2 per weight; ``logits=False``:
    a pass run for its hooks, which computes no logits, :func:`rwedit.models.hooks_pass`), and attention over
    ``seq_len`` positions (scores and values)."""
    d = layout.dims
    weights = sum(v.d_in * v.d_out for v in layout.views([r for r in layout.roles() if r != "unembed"]))
    return 2.0 * (weights + logits * d.vocab * d.hidden) + 4.0 * d.n_layers * d.n_heads * d.head_dim * seq_len


def kept_token_flops(layout, tokens: int, logits: int) -> float:
    """FLOPs per token of passes over ``tokens`` whose unembedding computes ``logits`` positions alone (a scorer's
    continuations, ``logits_to_keep``): every token through the body, those positions through the unembedding."""
    body = forward_flops(layout, logits=False)
    return body + (forward_flops(layout) - body) * logits / max(tokens, 1)


@dataclass
class Stage:
    """One stage of a run: what it does, where it runs, the memory it needs at its peak (on that device), the
    forward tokens it runs (``parts``: of each scorer), other float32 and float64 FLOPs, bytes of weights read."""

    name: str
    what: str
    memory_bytes: int
    tokens: int = 0
    device: str = "cpu"
    flops: float = 0.0
    flops64: float = 0.0
    read_bytes: int = 0
    parts: dict[str, int] = field(default_factory=dict)
    efficiency: float = FORWARD_EFFICIENCY  # share of the float32 rate its forward tokens run at
    part_efficiency: dict[str, float] = field(default_factory=dict)  # a part's own, where not the stage's
    token_flops: float | None = None  # FLOPs per forward token, where not the whole pass's (hook passes: no logits)
    part_token_flops: dict[str, float] = field(default_factory=dict)  # a part's own, where not the stage's
    cache_bytes: int = 0  # what it writes into the cache (at CACHE_WRITE_BYTES_S)
    overhead_s: float = 0.0  # seconds of its work that no rate prices (the grid's per-matrix work)

    def seconds(self, rates: Rates, token_flops: float, part: str | None = None) -> float:
        """The stage's time at ``rates``: its forward tokens at ``token_flops`` each (unless the stage states its
        own) and :attr:`efficiency` of the float32 rate (each part's at its own, where it has one), and its other
        work; ``part``: that part's forward tokens alone."""
        token_flops = self.token_flops or token_flops
        if part is not None:
            return (self.parts[part] * self.part_token_flops.get(part, token_flops)
                    / (rates.flops32 * self.part_efficiency.get(part, self.efficiency)))
        forward = sum(self.seconds(rates, token_flops, p) for p in self.parts) if self.parts else \
            self.tokens * token_flops / (rates.flops32 * self.efficiency)
        return (forward + self.flops / rates.flops32 + self.flops64 / rates.flops64
                + self.read_bytes / rates.read_bytes_s + self.cache_bytes / CACHE_WRITE_BYTES_S + self.overhead_s)


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


def stats_work(layout, tokens: int, layers=None, roles=None) -> tuple[float, float]:
    """(float32, float64) FLOPs of the activation statistics of ``roles`` at ``layers`` over ``tokens``: each input
    group's ``Xᵀ X`` per token (its upper block triangle, :data:`TRIANGLE_SHARE`, in float32 products over token
    blocks) and its float64 eigendecomposition once (:data:`EIGH_N3`; from ``KEPT_MIN_D`` on, the kept
    eigenvectors alone: :data:`KEPT_N3`)."""
    from rwedit.architectures import INPUT_GROUP

    roles = [r for r in (roles or layout.roles()) if r != "unembed"]
    f32 = f64 = 0.0
    for layer in (range(layout.n_layers) if layers is None else layers):
        groups = {INPUT_GROUP[r]: layout.view(layer, r).d_in for r in roles}
        f32 += sum(TRIANGLE_SHARE * 2.0 * tokens * d * d for d in groups.values())
        f64 += sum(eig_flops(d) for d in groups.values())
    return f32, f64


def eig_flops(d: int, keep: int = 0) -> float:
    """Time of one float64 eigendecomposition of a d x d matrix in float64 FLOPs: n³ × :data:`KEPT_N3` where the
    kept-vectors solver runs (:func:`rwedit.probes.subspaces.kept_solver`), else
    n³ × :data:`EIGH_N3`."""
    from rwedit.probes.subspaces import kept_solver

    return (KEPT_N3 if kept_solver(d, keep) else EIGH_N3) * d ** 3


def stats_stage(ctx: "PlanContext", name: str, what: str, tokens: int, layers=None, roles=None) -> Stage:
    """The stage collecting activation statistics over ``tokens`` (hook passes, no logits), the memory it holds
    (each input's float64 upper block triangle, and one full matrix at a time as it is decomposed and written),
    its products and decompositions (:func:`stats_work`), and writing and checksumming the cache entry of
    ``stage.cache_bytes`` (:func:`stats_bytes`, at :data:`CACHE_WRITE_BYTES_S`)."""
    layout = ctx.base.layout
    full = stats_bytes(layout, layers, roles)
    widest = max((layout.view(l, r).d_in for l in (range(layout.n_layers) if layers is None else layers)
                  for r in (roles or layout.roles()) if r != "unembed"), default=0)
    stage = ctx.model_stage(name, what, int(TRIANGLE_SHARE * full) + 3 * widest ** 2 * 8, tokens)
    stage.flops, stage.flops64 = stats_work(layout, tokens, layers, roles)
    stage.token_flops, stage.cache_bytes = forward_flops(layout, logits=False), full
    return stage


def grid_stage(ctx: "PlanContext", settings, activations: bool) -> Stage:
    """The streamed RSF grid of the pair (``settings``: its GridSettings; ``activations``: with activation
    subspaces): the pass's memory, both checkpoints read once, the grid's multiply-adds as it does them
    (:func:`rwedit.probes.grid.grid_macs`, at the measured product rates: the 1.1B grid's products run at the
    plan's measured rate) with the prediction subspace's eigendecomposition, and :data:`GRID_MATRIX_S` a matrix.
    An adapter post's grid multiplies its factors, less than this prices."""
    from rwedit.checkpoints import is_adapter, largest_role_tensor
    from rwedit.probes.grid import grid_macs

    layout = ctx.base.layout
    f32, f64 = grid_macs(layout, settings, activations)
    eig = eig_flops(layout.dims.hidden, max(settings.ks))
    return Stage("probe: RSF grid", "post - base streamed tensor by tensor" + (" (adapter factors)" if is_adapter(
        ctx.post) else ""), pair_pass_bytes(ctx.base, ctx.post) + largest_role_tensor(ctx.base)[0] * 8,
        flops=2 * f32, flops64=2 * f64 + eig, read_bytes=ctx.base.nbytes() + ctx.post.nbytes(),
        overhead_s=GRID_MATRIX_S * len(layout.views(settings.roles, settings.layers)))


def logits_batch(tokens: int, batch_size: int, vocab: int, budget: int | None) -> int:
    """The batch size at which inputs of ``tokens`` keep their logits and log-softmax (float32, ``vocab`` wide)
    within ``budget`` bytes (None: ``batch_size``), at least 1: how rwedit's lm-eval model splits its batches."""
    if budget is None:
        return batch_size
    return max(1, min(batch_size, budget // (max(tokens, 1) * 8 * vocab)))


def logits_groups(lengths: list[int], batch_size: int, vocab: int, budget: int | None) -> dict[int, list[int]]:
    """The positions of ``lengths`` by the batch size each allows (:func:`logits_batch`), in first-seen order: the
    groups rwedit's lm-eval model scores apart, each with its own batch size."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(logits_batch(n, batch_size, vocab, budget), []).append(i)
    return groups


def logits_batches(lengths: list[int], conts: list[int], batch_size: int, vocab: int,
                   budget: int | None) -> list[tuple[list[int], int]]:
    """The batches rwedit's lm-eval model scores (each group of :func:`logits_groups`, longest first, in its batch
    size), each with the positions whose logits its forward computes: from the batch's earliest continuation
    start (inputs of ``lengths``, the last ``conts`` of each its continuation) to its padded end."""
    out = []
    for size, idx in logits_groups(lengths, batch_size, vocab, budget).items():
        idx = sorted(idx, key=lambda i: -lengths[i])
        for j in range(0, len(idx), size):
            batch = idx[j:j + size]
            out.append((batch, max(lengths[i] for i in batch) - min(lengths[i] - conts[i] for i in batch)))
    return out


def padded_tokens(lengths: list[int], batch_size: int, sort: bool = False, vocab: int = 0,
                  budget: int | None = None) -> int:
    """Tokens a batched pass computes over sequences of ``lengths``: each batch padded to its longest (lm-eval
    sorts by length first; with a logits ``budget``, sequences are grouped by :func:`logits_groups` first)."""
    if budget is not None:
        return sum(padded_tokens([lengths[i] for i in idx], b, sort)
                   for b, idx in logits_groups(lengths, batch_size, vocab, budget).items())
    xs = sorted(lengths, reverse=True) if sort else list(lengths)
    return sum(len(xs[i:i + batch_size]) * max(xs[i:i + batch_size]) for i in range(0, len(xs), batch_size))


def token_lengths(folder: Path, texts: list[str], sample: int = 64) -> list[int]:
    """Token counts of ``texts``: their characters at the tokens per character of an evenly spaced ``sample`` of
    them, tokenised by the checkpoint's ``tokenizer.json`` (the fast tokenizer alone, no special tokens; without
    one, 4 characters a token)."""
    path = Path(folder) / "tokenizer.json"
    if not texts:
        return []
    per_char = 0.25
    if path.exists():
        from tokenizers import Tokenizer

        some = texts[:: max(1, len(texts) // sample)]
        n = sum(len(e.ids) for e in Tokenizer.from_file(str(path)).encode_batch(some, add_special_tokens=False))
        per_char = n / max(1, sum(map(len, some)))
    return [max(1, round(len(t) * per_char)) for t in texts]


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
    plus, per worker thread, for base and post a float32 work block and the mapped pages of the rows converted
    since their last release (up to :data:`~rwedit.stream.RELEASE_BYTES` and a block of the stored tensor; an
    adapter post's work block too, its blocks factored) — no tensor is held whole."""
    from rwedit.checkpoints import largest_role_tensor
    from rwedit.lazy import torch_threads
    from rwedit.stream import BLOCK_BYTES, RELEASE_BYTES

    numel, itemsize = largest_role_tensor(base)
    threads = threads or torch_threads()
    per_block = min(BLOCK_BYTES // 4, numel)  # float32 elements of a block (at most the tensor)
    mapped = min(RELEASE_BYTES + per_block * itemsize, numel * itemsize)
    return RUNTIME_BYTES + threads * 2 * (per_block * 4 + mapped)


__all__ = ["ADAPTER_FILES_BYTES", "CACHE_WRITE_BYTES_S", "DataRef", "EIGH_N3", "FORWARD_EFFICIENCY", "GRID_MATRIX_S", "KEPT_N3",
           "SCORING_EFFICIENCY", "TRIANGLE_SHARE", "KindPlan", "eig_flops", "LMEVAL_ITEM_BYTES", "PLOTS_BYTES", "PROBE_ROW_BYTES",
           "PlanContext", "ROW_BYTES", "RUNTIME_BYTES", "Rates", "Stage", "forward_flops", "grid_stage", "kept_token_flops",
           "logits_batch", "logits_batches", "logits_groups", "measure_rates", "pair_pass_bytes", "padded_tokens",
           "stats_bytes", "stats_stage", "stats_work", "token_lengths"]
