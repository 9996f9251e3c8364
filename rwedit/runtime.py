"""Run-wide settings — progress bars, the statistics cache folder, whether pickle weights are accepted — set
once for a block of work (:func:`using`) instead of passed through every signature."""

from __future__ import annotations

import contextvars
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
