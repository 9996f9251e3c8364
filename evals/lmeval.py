"""lm-eval scoring of a base model and its named adapters with one model load.

One ``HFLM`` wraps the (PEFT) model for the whole experiment; each condition is selected in place
(``set_adapter`` / ``disable_adapter``) before ``simple_evaluate``.  lm-eval's response cache is never
used: it is not keyed by adapter, so a second adapter would silently get the first one's scores."""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Iterator

import torch

from rwedit.evals.tasks import BUNDLED_TASKS, check_tasks, task_manager

BASE = "base"


@dataclass(frozen=True)
class EvalSettings:
    """Which lm-eval tasks, on how many items, in which batches (recorded with every result)."""

    tasks: tuple[str, ...] = tuple(BUNDLED_TASKS)
    limit: int | None = None  # items per task (None: all)
    batch_size: int = 8
    num_fewshot: int | None = None
    max_length: int | None = None  # context window for lm-eval (default: the model's)
    bootstrap_iters: int = 1000

    def __post_init__(self):
        if not self.tasks:
            raise ValueError("eval.tasks is empty: name at least one task, e.g. rwedit_hh_preference")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"eval.limit = {self.limit}: give a positive number of items or null for all")


@functools.lru_cache(maxsize=4)
def _cached_task_manager(cache_root: str | None, tasks: tuple[str, ...]):
    # indexing lm-eval's built-in registry takes ~10 s: skip it when only bundled tasks are asked for, and
    # build each manager once per process
    return task_manager(cache_root, tasks)


@contextlib.contextmanager
def select(model, adapter: str | None) -> Iterator[None]:
    """Make ``adapter`` active on a PeftModel (``None`` or ``"base"``: all adapters disabled)."""
    if adapter in (None, BASE):
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                yield
        else:
            yield
        return
    if adapter not in getattr(model, "peft_config", {}):
        raise KeyError(f"no adapter named {adapter!r}; loaded: {sorted(getattr(model, 'peft_config', {}))}")
    model.set_adapter(adapter)
    yield


def flatten_results(results: dict) -> dict[str, float | None]:
    """``{task: {"acc,none": x, "acc_stderr,none": s}}`` -> ``{"task/acc": x, "task/acc_stderr": s}``."""
    out: dict[str, float | None] = {}
    for task, metrics in results.items():
        for key, val in metrics.items():
            if "," not in key:
                continue
            name, filt = key.split(",", 1)
            name = name if filt == "none" else f"{name}[{filt}]"
            try:
                num = float(val)
            except (TypeError, ValueError):
                num = None  # lm-eval writes "N/A" where it has no stderr
            out[f"{task}/{name}"] = None if num is not None and math.isnan(num) else num
    return out


class LMEvalScorer:
    """Scores conditions of one loaded model with lm-eval, switching adapters in place."""

    def __init__(self, model, tokenizer, settings: EvalSettings = EvalSettings(), task_cache: str | None = None):
        from lm_eval.models.huggingface import HFLM

        if tokenizer is None:
            raise ValueError("pass the tokenizer: without it HFLM looks one up on the Hub by the model's name")
        self.model, self.settings = model, settings
        self.tm = _cached_task_manager(None if task_cache is None else str(task_cache), tuple(settings.tasks))
        check_tasks(list(settings.tasks), self.tm)
        kw = {"max_length": settings.max_length} if settings.max_length else {}
        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size, **kw)

    @torch.no_grad()
    def run(self, adapter: str | None = None, log_samples: bool = False) -> dict:
        """The raw ``simple_evaluate`` output for one condition."""
        from lm_eval import simple_evaluate

        s = self.settings
        with select(self.model, adapter):
            return simple_evaluate(model=self.lm, tasks=list(s.tasks), task_manager=self.tm, limit=s.limit,
                                   num_fewshot=s.num_fewshot, bootstrap_iters=s.bootstrap_iters,
                                   log_samples=log_samples, use_cache=None, cache_requests=False,
                                   verbosity="ERROR")

    def score(self, adapter: str | None = None) -> dict[str, float | None]:
        """Flat metrics with stderr for one condition, e.g. ``rwedit_blimp/acc``, ``rwedit_blimp/acc_stderr``."""
        return flatten_results(self.run(adapter)["results"])
