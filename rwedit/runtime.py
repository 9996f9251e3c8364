"""Run-wide settings — progress bars, the statistics cache folder, whether pickle weights are accepted — set
once for a block of work (:func:`using`) instead of passed through every signature; and the measured cost of a
run's stages (:func:`recording`, :func:`stage`: wall and CPU time, forward tokens, peak memory)."""

from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator


@dataclass(frozen=True)
class Runtime:
    """What a run does beside its results: show progress, where activation statistics are cached (None: the
    default cache), and whether pickle weights (which can execute code when loaded) are accepted."""

    progress: bool = True
    cache_dir: str | None = None
    allow_pickle: bool = False


_RUNTIME: contextvars.ContextVar[Runtime] = contextvars.ContextVar("rwedit_runtime", default=Runtime())


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
    """A run stage's measured cost, summed over its calls: wall and CPU seconds, forward tokens (of the models
    :func:`count_tokens` watches) and the peak resident memory while it ran (MiB; on Linux the process's
    high-water mark, reset when the stage starts)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    tokens: int = 0
    peak_rss_mib: float = 0.0
    calls: int = 0


_STAGES: contextvars.ContextVar[tuple[dict, list] | None] = contextvars.ContextVar("rwedit_stages", default=None)


def _peak_kib(reset: bool = False) -> int:
    """The process's resident high-water mark (KiB), then (``reset``) restart it from the current size."""
    import resource
    import sys

    try:
        with open("/proc/self/status") as f:
            peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        return peak
    except (OSError, StopIteration, ValueError):  # no procfs: the lifetime peak (bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak


def _cpu_s() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@contextmanager
def recording() -> Iterator[dict[str, StageCost]]:
    """Within the block, every :func:`stage` adds its cost to the yielded ``{name: StageCost}`` (in first-start
    order)."""
    token = _STAGES.set(({}, []))
    try:
        yield _STAGES.get()[0]
    finally:
        _STAGES.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Measure the block as the run stage ``name`` (stages nest: an outer one includes its inner ones); nothing
    outside :func:`recording`."""
    rec = _STAGES.get()
    if rec is None:
        yield
        return
    costs, open_ = rec
    peak = _peak_kib(reset=True)
    for frame in open_:  # the outer stages keep the peak reached so far
        frame[1] = max(frame[1], peak)
    cost = costs.setdefault(name, StageCost())
    frame = [cost, 0, time.perf_counter(), _cpu_s()]
    open_.append(frame)
    try:
        yield
    finally:
        open_.remove(frame)
        frame[1] = max(frame[1], _peak_kib())
        for outer in open_:
            outer[1] = max(outer[1], frame[1])
        cost.wall_s += time.perf_counter() - frame[2]
        cost.cpu_s += _cpu_s() - frame[3]
        cost.peak_rss_mib = max(cost.peak_rss_mib, frame[1] / 1024)
        cost.calls += 1


def count_tokens(model) -> None:
    """Count the tokens each forward pass of ``model`` (a transformers model) reads, at its input embedding,
    into the stages running then (once per model; a model loaded outside :func:`recording` is left alone)."""
    emb = model.get_input_embeddings()
    if _STAGES.get() is None or getattr(emb, "_rwedit_counted", False):
        return

    def count(module, args):
        rec = _STAGES.get()
        if rec is not None and args:
            for frame in rec[1]:
                frame[0].tokens += int(args[0].numel())

    emb.register_forward_pre_hook(count)
    emb._rwedit_counted = True
