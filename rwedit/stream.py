"""One pass over a checkpoint pair: every role's ΔW = post − base fed, block by block, to consumers.

The base is read in row blocks of its stored tensors; each post is a block source (its ``delta_form``): a
checkpoint gives its stored row blocks minus the base's, an adapter the same block in factor form
(:class:`~rwedit.lowrank.LowRankDelta`), so a consumer (:class:`BlockSink`) is written once for both."""

from __future__ import annotations

import math
import mmap
import threading
import warnings
from collections import deque
from itertools import islice
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

from rwedit.lazy import as_dtype, torch

from rwedit.architectures import RoleView
from rwedit.checkpoints import _STORED_DTYPES, Checkpoint, TensorReader
from rwedit.errors import CheckpointError
from rwedit.lowrank import LowRankDelta

#: float32 bytes of one row block: large enough that per-block costs (Python, serialised by the GIL across
#: workers; each torch op's start) vanish, small enough to stay a few blocks per worker. Measured on the 1.1B
#: pair's norms pass, 2 workers: 1 MiB 1.36 s, 2 MiB 1.12 s, 4 MiB 1.02 s, 8 MiB 0.93 s, 16 MiB 0.95 s (a sink
#: keeps its float32 sums shorter than a block where their rounding shows: :attr:`Norms.SUM_ELEMS`)
BLOCK_BYTES = 8 << 20
#: a worker drops the mapped pages it has converted every this many bytes of a tensor (and at its end): each drop
#: is a system call that flushes the other cores' address translations, so not every block. Measured on the 1.1B
#: pair's norms pass: 4 MiB 1.16 s, 32 MiB 1.08 s, whole tensors 1.10 s (peak RSS 290, 330, 500 MB)
RELEASE_BYTES = 32 << 20
#: elements of one chunk of a sums-only pass (:class:`SumsSink`): converted, subtracted and multiplied while in the
#: core's 2 MiB cache. One thread, 2^21-element blocks from memory, per element: convert 0.25 ns, subtract 0.31,
#: 2 x 2 Gram 0.33; in 2^16-element chunks 0.11, 0.11, 0.14
CHUNK_ELEMS = 1 << 16
#: products one float32 sum takes before it is added in float64: sums of 2^21 moved the 1.1B pair's ‖ΔW‖² by 1.4e-4
SUM_ELEMS = 1 << 20


def explain_non_finite(ckpts: Sequence, view: RoleView) -> None:
    """Raise :class:`NonFiniteWeightError` naming ``view``'s stored tensor in the first checkpoint of ``ckpts``
    with a NaN/Inf (adapters, checked when opened, are skipped); return when none has one (a sum overflowed)."""
    for c in ckpts:
        if getattr(c, "delta_form", None) == "stored":
            TensorReader(c).read(c.find(view.param), dtype=None)


class BlockSink(Protocol):
    """Consumes a role's delta block by block: ``add(axis, index, delta, base)``, ``delta = ΔW[index, :]`` (axis 0)
    or ``ΔW[:, index]`` (axis 1), dense or a :class:`~rwedit.lowrank.LowRankDelta`, ``base`` the same block of
    W_base; the tensors are reused after the call (a sink keeps results, never them). A sink whose class sets
    ``reads_base = False`` never reads ``base``: where no sink of a tensor does, the stream passes None and forms
    each ΔW chunk by chunk without converting the base block whole (:func:`_chunk_delta_loop`)."""

    def add(self, axis: int, index: slice | torch.Tensor, delta: torch.Tensor | LowRankDelta,
            base: torch.Tensor | None) -> None: ...


class SumsSink(BlockSink, Protocol):
    """A sink that may need only sums of products of each block's elements: where ``sums_only``, the stream
    feeds it ``add_sums(bb, bd, dd)`` (⟨base, base⟩, ⟨base, ΔW⟩, ⟨ΔW, ΔW⟩) in place of the blocks, formed chunk
    by chunk from the stored rows (:data:`CHUNK_ELEMS`) so that no block is converted whole."""

    sums_only: bool

    def add_sums(self, bb: float, bd: float, dd: float) -> None: ...


class _BlockFiles:
    """One checkpoint's stored row blocks, read in place from a read-only memory map of each file (no copy into a
    buffer: the conversion reads the page cache directly) and released from the process once converted, so that
    resident memory stays a few blocks (thread-safe); a pickle checkpoint is held one tensor at a time and sliced."""

    def __init__(self, ckpt: Checkpoint, stack: ExitStack):
        self.ckpt, self._maps, self._whole = ckpt, {}, None
        self._lock = threading.Lock()
        stack.callback(self._maps.clear)  # the maps close once no block view holds them

    def _map(self, f: Path) -> tuple[mmap.mmap, torch.Tensor]:
        with self._lock:
            if f not in self._maps:
                with open(f, "rb") as fh:
                    m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                with warnings.catch_warnings():  # read-only on purpose: the pass only ever reads the views
                    warnings.filterwarnings("ignore", "The given buffer is not writable")
                    self._maps[f] = (m, torch.frombuffer(m, dtype=torch.uint8))
            return self._maps[f]

    @property
    def positioned(self) -> bool:
        return self.ckpt.format == "safetensors"

    def tensor(self, name: str) -> tuple[torch.Tensor, Callable[[int, int], None]]:
        """Stored tensor ``name`` (stored dtype) as a view of its file's pages, and ``release(r0, r1)``, which drops
        the pages of rows r0..r1 from this process once converted (they stay in the page cache). A pickle
        checkpoint's tensor is loaded whole (one at a time) and releases nothing."""
        shape, dtype = self.ckpt._shapes[name], _STORED_DTYPES.get(self.ckpt._dtypes[name])
        if not self.positioned or dtype is None:
            with self._lock:
                if self._whole is None or self._whole[0] != name:
                    self._whole = None
                    self._whole = (name, TensorReader(self.ckpt, check_finite=False).read(name, dtype=None))
                return self._whole[1], lambda r0, r1: None
        m, data = self._map(self.ckpt._where[name])
        start, row = self.ckpt.data_offset(name), math.prod(shape[1:]) * (torch.finfo(dtype).bits // 8)
        if start + shape[0] * row > len(m):  # a page past the end of the file would kill the process (SIGBUS)
            raise CheckpointError(f"{self.ckpt._where[name]}: tensor {name!r} ends early (the file is "
                                  f"truncated): download or copy it again")

        def release(r0: int, r1: int) -> None:
            if r1 > r0 and hasattr(mmap, "MADV_DONTNEED"):
                a = (start + r0 * row) // mmap.PAGESIZE * mmap.PAGESIZE  # a shared page refaults if needed
                m.madvise(mmap.MADV_DONTNEED, a, start + r1 * row - a)

        return data[start:start + shape[0] * row].view(dtype).view(shape), release


class _StoredRows:
    """A checkpoint post: its stored row blocks minus the base's (shared by a fused tensor's roles)."""

    def __init__(self, ckpt: Checkpoint, stack: ExitStack):
        self.ckpt, self.files = ckpt, _BlockFiles(ckpt, stack)

    def stored(self, param: str) -> str:
        return self.ckpt.find(param)

    def role(self, view: RoleView, delta: torch.Tensor, r0: int, axis: int, index) -> torch.Tensor:
        return view.block(delta, r0)[2]


class _FactoredRows:
    """An adapter post: each role's ΔW = scale·B·A in factor form (zero where it does not reach), cut to the
    base block's rows or columns; nothing is read."""

    files = None  # nothing stored is read

    def __init__(self, post, stack: ExitStack):
        self.post = post

    def stored(self, param: str) -> None:
        return None

    def role(self, view: RoleView, delta, r0: int, axis: int, index) -> LowRankDelta:
        return (self.post.role_delta(view) or LowRankDelta.zero(view.shape)).block(axis, index)


#: the block source of each kind of post (its ``delta_form``)
BLOCK_SOURCES = {"stored": _StoredRows, "factored": _FactoredRows}


def stream_pair(base: Checkpoint, posts: Sequence, views: Sequence[RoleView],
                sinks: Callable[[RoleView], Sequence[BlockSink]], *, dtype: torch.dtype | str = "float32",
                block_bytes: int = BLOCK_BYTES, check_finite: bool = True, threads: int | None = None
                ) -> Iterator[tuple[RoleView, Sequence[BlockSink]]]:
    """Stream every view's ΔW = post − base in row blocks of the base's stored tensors to the view's sinks
    (``sinks(view)``: one per post); yield ``(view, sinks)`` in order once a view's blocks are all in.

    Each stored tensor is read once (a fused tensor's roles share its blocks, each getting its part:
    :meth:`RoleView.block`) and converted block by block. ``check_finite``: a block whose delta sum is not finite
    stops the pass naming its tensor (consumers whose own sums show it pass False and call
    :func:`explain_non_finite`). ``threads`` workers (default torch's thread count) take one stored tensor each,
    single-threaded inside (small ops on cache-sized blocks lose to waking a thread team). Memory: a few blocks
    per worker plus what the sinks keep."""
    dtype = as_dtype(dtype)
    groups: dict[str, list[int]] = {}  # stored tensor -> its views (by position)
    for j, v in enumerate(views):
        groups.setdefault(v.param, []).append(j)

    with ExitStack() as stack:
        base_files = _BlockFiles(base, stack)
        sources = [BLOCK_SOURCES[p.delta_form](p, stack) for p in posts]
        readers = [base_files] + [s.files for s in sources]  # by checkpoint (None: an adapter, nothing stored)
        plans = []  # (stored name in the base and in each post (None: nothing stored), rows, rows per block, columns, views)
        for param, members in groups.items():
            names = [base.find(param)] + [s.stored(param) for s in sources]
            shape = base._shapes[names[0]]
            cols = math.prod(shape[1:])
            per = max(1, block_bytes // max(1, cols * torch.finfo(dtype).bits // 8))
            plans.append((names, shape[0], per, cols, [views[j] for j in members]))
        max_elems = max((min(per, rows) * cols for _, rows, per, cols, _ in plans), default=1)
        if not all(f.positioned for f in readers if f is not None):
            threads = 1  # a pickle shard is loaded whole: one reader
        threads = max(1, threads or torch.get_num_threads())
        local = threading.local()

        def run(i: int, made: list) -> list:
            """All row blocks of stored tensor ``i`` into its views' sinks (in a worker thread)."""
            names, rows, per, cols, group = plans[i]
            if not hasattr(local, "work"):  # one row per checkpoint: a sink may read base and delta as one matrix
                local.work = torch.empty(len(names), max_elems, dtype=dtype)
            opened = [None if n is None else f.tensor(n) for f, n in zip(readers, names)]  # (tensor, release)
            row_bytes = cols * opened[0][0].element_size()
            held = 0  # the first row whose pages this process still holds
            every = [sink for vs in made for sink in vs]
            all_stored = all(f is not None for f in readers[1:])
            # every post stored and every sink content with sums: each block summed in chunks, never converted whole
            loop = (_compiled(_chunk_gram_loop) if all_stored and all(getattr(s, "sums_only", False) for s in every)
                    else None)
            sums = loop is not None
            # every post stored and no sink reading the base: each ΔW formed in chunks, the base never converted whole
            fused = (None if sums or not all_stored or any(getattr(s, "reads_base", True) for s in every)
                     else _compiled(_chunk_delta_loop))
            if fused is not None and not hasattr(local, "scratch"):
                local.scratch = torch.empty(CHUNK_ELEMS, dtype=dtype)
            for r0 in range(0, rows, per):
                r1 = min(rows, r0 + per)
                if sums:
                    stored = [x[0][r0:r1] for x in opened]
                    for v, vs in zip(group, made):
                        parts = [v.block(x, r0) for x in stored]
                        if parts[0] is None:
                            continue
                        g = _chunk_gram(loop, [p[2] for p in parts], local, dtype)
                        for k, sink in enumerate(vs, start=1):
                            if check_finite and not math.isfinite(g[k][k]):
                                explain_non_finite([base, posts[k - 1]], v)
                            sink.add_sums(g[0][0], g[0][k], g[k][k])
                elif fused is not None:
                    rows_ = [x[0][r0:r1] for x in opened]
                    outs = [local.work[k][:rows_[0].numel()] for k in range(1, len(rows_))]
                    fused([r.reshape(-1) for r in rows_], outs, local.scratch)
                    work = [None] + [o.view(rows_[0].shape) for o in outs]
                else:
                    work = [None if x is None else _into(local.work[k], x[0][r0:r1]) for k, x in enumerate(opened)]
                if r1 == rows or (r1 - held) * row_bytes >= RELEASE_BYTES:
                    for _, release in filter(None, opened):
                        release(held, r1)
                    held = r1
                if sums:
                    continue
                b = work[0]
                # converted, then subtracted in place (a mixed-dtype torch.sub into `out` measured 40% slower)
                deltas = work[1:] if fused is not None else [None if d is None else d.sub_(b) for d in work[1:]]
                if check_finite:
                    for k, d in enumerate(deltas, start=1):
                        if d is not None and not bool(torch.isfinite(d.sum())):
                            explain_non_finite([base, posts[k - 1]], group[0])
                for v, vs in zip(group, made):
                    part = v.block(deltas[0] if b is None else b, r0)  # the geometry: every work row has it
                    if part is None:
                        continue
                    axis, index, Xb = part
                    Xb = None if b is None else Xb
                    for sink, src, d in zip(vs, sources, deltas):
                        sink.add(axis, index, src.role(v, d, r0, axis, index), Xb)
            return made

        # the largest tensor is started first and its views held back until their turn: last, it would run alone
        # while the other workers have nothing left (0.4 s of the 1.1B grid's 5 s)
        size = [rows * cols for _, rows, _, cols, _ in plans]
        big = max(range(len(plans)), key=size.__getitem__, default=0)
        order = [big] + [i for i in range(len(plans)) if i != big]
        # the sinks are made here, in the caller and in that order, so that whatever they compute lazily is computed
        # once; closed before the files are (the workers finish first)
        work = ((i, [sinks(v) for v in plans[i][4]]) for i in order)
        done = stack.enter_context(closing(ordered_map(lambda item: (item[0], run(*item)), work, threads,
                                                       weight=lambda item: size[item[0]])))
        finished, turn = {}, 0  # by plan, the sinks of tensors done before their turn
        for i, made in done:
            finished[i] = made
            while turn in finished:
                yield from zip(plans[turn][4], finished.pop(turn))
                turn += 1


def _chunk_gram_loop(parts: list[torch.Tensor], buf: torch.Tensor, step: int, every: int) -> torch.Tensor:
    """The Gram matrix of [base; post_1 − base; …] of one role's part of a block (``parts``: base, then each post,
    as stored, 2-D), in float64 sums of float32 products over ``every`` chunks of ``step`` rows: each chunk converted
    into the reused buffer ``buf`` (a row per part), subtracted and multiplied there while in the core's cache."""
    n, cols = len(parts), parts[0].size(1)
    g = torch.zeros(n, n, dtype=buf.dtype)
    total = torch.zeros(n, n, dtype=torch.float64)
    full = buf[:, :step * cols]  # a whole chunk's views, made once: the loop's ops are its cost at this size
    whole = (full, full.t(), full[:1], full[1:], [full[k].view(step, cols) for k in range(n)])
    chunks = [p.split(step) for p in parts]
    for i in range(len(chunks[0])):
        m = chunks[0][i].size(0)
        if m == step:
            M, Mt, first, rest, dst = whole
        else:  # the last, shorter chunk
            M = buf[:, :m * cols]
            M, Mt, first, rest, dst = M, M.t(), M[:1], M[1:], [M[k].view(m, cols) for k in range(n)]
        for k in range(n):
            dst[k].copy_(chunks[k][i])
        rest.sub_(first)
        g.addmm_(M, Mt)
        if (i + 1) % every == 0:
            total += g
            g.zero_()
    return total + g


def _chunk_delta_loop(stored: list[torch.Tensor], outs: list[torch.Tensor], scratch: torch.Tensor) -> None:
    """ΔW = post − base of flat stored rows (``stored``: base, then each post) into ``outs`` (one per post), chunk by
    chunk of ``scratch``'s size: the base's chunk converted into ``scratch``, in the core's cache, and subtracted
    from each post's chunk converted in place, so the base is never written whole (8 MiB blocks on two workers:
    1.3 against 2.3 ms a block)."""
    n, step = stored[0].numel(), scratch.numel()
    for s in range(0, n, step):
        e = min(n, s + step)
        base = scratch[:e - s]
        base.copy_(stored[0][s:e])
        for k in range(len(outs)):
            out = outs[k][s:e]
            out.copy_(stored[k + 1][s:e])
            out.sub_(base)


_COMPILED: dict = {}  # a loop's name -> the loop compiled by TorchScript (None: not available)
_COMPILE_LOCK = threading.Lock()  # the pass's workers ask at once: compiled once


def _compiled(loop: Callable) -> Callable | None:
    """A chunk loop (:func:`_chunk_gram_loop`, :func:`_chunk_delta_loop`) run by TorchScript, which holds no GIL
    between its ops: the same loop in Python, on two workers, takes each op's start in turn (the 1.1B norms pass
    1.6-2.0 s, against 1.0 s for whole blocks and 0.8 s compiled). None where TorchScript is gone (the stream
    then converts whole blocks)."""
    with _COMPILE_LOCK:
        if loop.__name__ not in _COMPILED:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch 2.13 calls TorchScript deprecated; the pin keeps it
                    _COMPILED[loop.__name__] = torch.jit.script(loop)
            except Exception:  # noqa: BLE001 - any failure to compile means: use whole blocks
                _COMPILED[loop.__name__] = None
        return _COMPILED[loop.__name__]


def _chunk_gram(loop: Callable, parts: Sequence[torch.Tensor], local: threading.local,
                dtype: torch.dtype) -> list[list[float]]:
    """:func:`_chunk_gram_loop` over ``parts`` with this worker's buffer, chunks of about :data:`CHUNK_ELEMS`
    elements and float32 sums of about :data:`SUM_ELEMS` products."""
    parts = [p.reshape(p.shape[0], -1) for p in parts]
    cols = max(1, parts[0].shape[1])
    step = max(1, CHUNK_ELEMS // cols)
    buf = getattr(local, "chunk", None)
    if buf is None or buf.shape[0] != len(parts) or buf.shape[1] < step * cols or buf.dtype != dtype:
        buf = local.chunk = torch.empty(len(parts), max(step * cols, CHUNK_ELEMS), dtype=dtype)
    return loop(parts, buf, step, max(1, SUM_ELEMS // (step * cols))).tolist()


def _into(row: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """``block`` converted into the front of the flat buffer ``row``, in the block's shape."""
    return row[:block.numel()].view(block.shape).copy_(block)


def ordered_map(fn: Callable, items, threads: int | None = None, weight: Callable | None = None) -> Iterator:
    """``fn(item)`` for each item in ``threads`` single-threaded workers (default torch's thread count), yielded
    in the items' order, at most ``threads`` items ahead of the consumer (so a stream of tensors stays a stream);
    with ``weight(item)`` (its work), also more while together they weigh less than the item the consumer waits
    for, so that one large tensor does not leave the other workers idle. Small dense work (per-matrix SVDs) runs
    faster one matrix per core than one matrix on a team of threads."""
    threads = max(1, threads or torch.get_num_threads())
    caller = torch.get_num_threads()
    # the caller's own torch work meanwhile (making items, using results) runs one-threaded: a team of its own
    # would spin-wait after each op on the cores the workers use (1.5-2 s of 8 s on the 1.1B pair's grid)
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,), thread_name_prefix="rwedit-map")
    pending: deque = deque()
    try:
        for item in items:
            pending.append((pool.submit(fn, item), 1 if weight is None else weight(item)))
            while len(pending) > threads and sum(w for _, w in islice(pending, 1, None)) >= pending[0][1]:
                yield pending.popleft()[0].result()
        while pending:
            yield pending.popleft()[0].result()
    finally:  # closed early or failed: the items not started are dropped, the running ones finish
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(caller)  # MKL's count is process-wide: the workers' 1 must not outlive them
