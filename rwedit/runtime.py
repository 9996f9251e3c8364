"""Run-wide settings — progress bars, the statistics cache folder, whether pickle weights are accepted — set
once for a block of work (:func:`using`) instead of passed through every signature; and the measured cost of a
run's stages (:func:`recording`, :func:`stage`: wall and CPU time, forward tokens, peak memory)."""

from __future__ import annotations

import contextvars
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator


@dataclass(frozen=True)
class Runtime:
    """What a run does beside its results: show progress, where activation statistics are cached (None: the
    default cache), and whether pickle weights (which can execute code when loaded) are accepted."""

    progress: bool = True
    cache_dir: str | None = None
    allow_pickle: bool = False


_RUNTIME: contextvars.ContextVar[Runtime] = contextvars.ContextVar("rwedit_runtime", default=Runtime())


def cache_root() -> Path:
    """rwedit's cache folder (activation statistics, organisms, measured rates): ``$RWEDIT_CACHE``, default
    ``~/.cache/rwedit``."""
    return Path(os.environ.get("RWEDIT_CACHE", Path.home() / ".cache" / "rwedit"))


def runtime() -> Runtime:
    """The settings in force here (the defaults outside any :func:`using` block)."""
    return _RUNTIME.get()


@contextmanager
def using(**changes) -> Iterator[Runtime]:
    """Within the block, the run-wide settings with ``changes`` applied (a None value changes nothing)."""
    token = _RUNTIME.set(replace(_RUNTIME.get(), **{k: v for k, v in changes.items() if v is not None}))
    try:
        yield _RUNTIME.get()
    finally:
        _RUNTIME.reset(token)


# --- stage costs -------------------------------------------------------------------------------------


@dataclass
class StageCost:
    """A run stage's measured cost, summed over its calls: wall and CPU seconds, forward tokens and the positions
    whose logits those passes computed (of the models :func:`count_tokens` watches: a pass run for its hooks or
    for its continuations computes fewer than its tokens) and the peak resident memory while it ran (MiB, sampled
    every 10 ms)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    tokens: int = 0
    logits: int = 0
    peak_rss_mib: float = 0.0
    calls: int = 0


#: within :func:`recording`: the costs by name and the stages running now (each [cost, peak KiB, t0, cpu0])
_STAGES: contextvars.ContextVar[tuple[dict, list] | None] = contextvars.ContextVar("rwedit_stages", default=None)


def _rss_kib() -> int:
    """The process's resident memory now (KiB; 0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _cpu_s() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@contextmanager
def recording(interval_s: float = 0.01) -> Iterator[dict[str, StageCost]]:
    """Within the block, every :func:`stage` adds its cost to the yielded ``{name: StageCost}`` (in first-start
    order); a thread samples the resident memory every ``interval_s`` into the stages running then."""
    import threading

    costs, open_ = {}, []
    done = threading.Event()

    def sample():
        while not done.wait(interval_s):
            rss = _rss_kib()
            for frame in list(open_):
                frame[1] = max(frame[1], rss)

    thread = threading.Thread(target=sample, daemon=True, name="rwedit-stage-rss")
    token = _STAGES.set((costs, open_))
    thread.start()
    try:
        yield costs
    finally:
        done.set()
        thread.join()
        _STAGES.reset(token)


def release_memory() -> None:
    """Hand the memory freed so far back to the operating system (glibc's ``malloc_trim``; elsewhere nothing).
    glibc keeps freed blocks below its mmap threshold (32 MiB at most) in its arenas: after the probe stage of
    a 0.5B model 4.7 GB stayed resident with 0.1 GB of tensors alive, and every later stage stood on top of it."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):  # not glibc
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Measure the block as the run stage ``name`` (stages nest: an outer one includes its inner ones); nothing
    outside :func:`recording`. The memory the stage freed is handed back at its end (:func:`release_memory`)."""
    rec = _STAGES.get()
    if rec is None:
        try:
            yield
        finally:
            release_memory()
        return
    costs, open_ = rec
    cost = costs.setdefault(name, StageCost())
    frame = [cost, _rss_kib(), time.perf_counter(), _cpu_s()]
    open_.append(frame)
    try:
        yield
    finally:
        release_memory()
        open_.remove(frame)
        cost.wall_s += time.perf_counter() - frame[2]
        cost.cpu_s += _cpu_s() - frame[3]
        cost.peak_rss_mib = max(cost.peak_rss_mib, max(frame[1], _rss_kib()) / 1024)
        cost.calls += 1


def count_tokens(model) -> None:
    """Count the tokens each forward pass of ``model`` (a transformers model) reads, at its input embedding, and
    the positions its unembedding computes logits for, into the stages running then (once per model; a model
    loaded outside :func:`recording` is left alone)."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if _STAGES.get() is None or getattr(emb, "_rwedit_counted", False):
        return

    def counter(field: str, positions):
        def count(module, args):
            rec = _STAGES.get()
            if rec is not None and args:
                for frame in rec[1]:
                    setattr(frame[0], field, getattr(frame[0], field) + positions(args[0]))
        return count

    emb.register_forward_pre_hook(counter("tokens", lambda ids: int(ids.numel())))
    if head is not None:  # its input: the hidden states of the positions it computes (… × hidden)
        head.register_forward_pre_hook(counter("logits", lambda h: int(h.numel() // h.shape[-1])))
    emb._rwedit_counted = True
