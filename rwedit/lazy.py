"""torch imported at its first use, not when a module that uses it is imported: the modules that name a recipe's
settings and read checkpoint headers import in milliseconds, so ``rwedit --help`` and ``rwedit plan`` (headers
only) never pay torch's ~1.3 s CPU import. ``from rwedit.lazy import torch`` in place of ``import torch``."""

from __future__ import annotations

import functools
import importlib
import os
import sys
import types


class LazyModule(types.ModuleType):
    """The module ``name``, imported at the first attribute read through this object (each read goes to the
    module itself, so a test's patch of one of its attributes is seen here)."""

    def __getattr__(self, attr: str):
        name = self.__name__
        return getattr(sys.modules.get(name) or importlib.import_module(name), attr)


torch = LazyModule("torch")


def as_dtype(dtype):
    """A torch dtype given by its name (``"float32"``: a default that does not import torch) or itself; None
    stays None."""
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def torch_threads() -> int:
    """torch's intra-op threads: asked of torch once it is imported, else what it starts with (OMP_NUM_THREADS,
    else the usable CPUs: an upper bound where torch takes one thread a physical core)."""
    if "torch" in sys.modules:
        return torch.get_num_threads()
    try:
        return int(os.environ["OMP_NUM_THREADS"])
    except (KeyError, ValueError):
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def no_grad(fn):
    """``@torch.no_grad()`` that imports torch when ``fn`` is called, not when it is defined."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)
    return run


__all__ = ["LazyModule", "as_dtype", "no_grad", "torch", "torch_threads"]
