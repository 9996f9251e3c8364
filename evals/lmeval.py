"""lm-eval scoring of a base model and its named adapters with one model load.

One ``HFLM`` wraps the (PEFT) model for the whole experiment; each condition is selected in place
(``set_adapter`` / ``disable_adapter``) before ``simple_evaluate``.  lm-eval's response cache is never
used: it is not keyed by adapter, so a second adapter would silently get the first one's scores."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from rwedit.config import Config, option
from rwedit.editor.interventions import with_adapter
from rwedit.errors import ConfigError
from rwedit.evals.tasks import BUNDLED_TASKS, check_tasks, needs_lm_eval_index, task_manager


@dataclass(frozen=True)
class EvalSettings(Config):
    """Which lm-eval tasks, on how many items, in which batches (recorded with every result)."""

    tasks: tuple[str, ...] = option(tuple(BUNDLED_TASKS), help="lm-eval task names (bundled offline tasks: "
                                    + ", ".join(BUNDLED_TASKS) + "; any lm-eval task with the Hub)")
    limit: int | None = option(None, help="items per task (null: all)")
    batch_size: int = option(8, help="lm-eval batch size")
    num_fewshot: int | None = option(None, help="few-shot examples (null: the task's default)")
    max_length: int | None = option(None, help="context window for lm-eval (null: the model's)")
    bootstrap_iters: int = option(1000, help="lm-eval's bootstrap iterations for stderr")

    def __post_init__(self):
        if not self.tasks:
            raise ConfigError("eval.tasks is empty: name at least one task, e.g. rwedit_hh_preference")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.limit = {self.limit}: give a positive number of items or null for all")


def _cached_task_manager(tasks: tuple[str, ...]):
    """The TaskManager for ``tasks``: indexing lm-eval's own ~15,000 task names takes seconds, so it is done
    only when a task is not bundled, and each of the two managers is built once per process."""
    return _task_index(needs_lm_eval_index(tasks))


@functools.lru_cache(maxsize=2)
def _task_index(with_lm_eval: bool):
    return task_manager(None if with_lm_eval else tuple(BUNDLED_TASKS))


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
            # an undefined stderr (one item) is null; a NaN metric stays NaN so the runner refuses it
            out[f"{task}/{name}"] = None if num is not None and math.isnan(num) and "_stderr" in name else num
    return out


class LMEvalScorer:
    """Scores conditions of one loaded model with lm-eval, switching adapters in place."""

    name = "lmeval"

    def __init__(self, model, tokenizer, settings: EvalSettings = EvalSettings()):
        from lm_eval.defaults import DEFAULT_OTHER_SEED
        from lm_eval.models.huggingface import HFLM

        if tokenizer is None:
            raise ConfigError("pass the tokenizer: without it HFLM looks one up on the Hub by the model's name")
        self.model, self.settings = model, settings
        self.raw: dict | None = None
        self.tm = _cached_task_manager(tuple(settings.tasks))
        check_tasks(list(settings.tasks), self.tm)
        kw = {"max_length": settings.max_length} if settings.max_length else {}
        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size, **kw)
        # the tasks are built once and scored for every condition (simple_evaluate would rebuild them and
        # collect torch's environment report, ~0.5 s of subprocesses, on every call); their settings as
        # simple_evaluate sets them
        self.tasks = self.tm.load(list(settings.tasks))
        for task in self.tasks["tasks"].values():
            if settings.num_fewshot is not None and task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=settings.num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)

    @torch.no_grad()
    def run(self, adapter: str | None = None, log_samples: bool = False) -> dict:
        """The raw output of lm-eval's ``evaluate`` (results, configs, versions, samples) for the model as it
        is (``adapter``: that adapter of a PeftModel made active first, ``"base"``: all disabled)."""
        import random

        import numpy as np
        from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED
        from lm_eval.evaluator import evaluate

        s = self.settings
        random.seed(DEFAULT_RANDOM_SEED)  # the seeds simple_evaluate sets before every evaluation (its bootstrap
        np.random.seed(DEFAULT_OTHER_SEED)  # stderr draws from them): the same numbers as through simple_evaluate
        torch.manual_seed(DEFAULT_OTHER_SEED)
        with with_adapter(self.model, adapter):
            try:
                return evaluate(lm=self.lm, task_dict=self.tasks, limit=s.limit, bootstrap_iters=s.bootstrap_iters,
                                log_samples=log_samples, cache_requests=False, verbosity="ERROR")
            except AssertionError as e:  # lm-eval asserts when a continuation does not fit the window
                raise ConfigError(
                    f"lm-eval could not score {', '.join(s.tasks)}: an item is longer than the model's window of "
                    f"{self.lm.max_length} tokens ({str(e) or 'continuation longer than max_length'}). Score "
                    f"with a model that has a longer window, or choose tasks with shorter items") from None

    def score(self, adapter: str | None = None) -> dict[str, float | list[float] | None]:
        """Flat metrics with stderr of the model as it is (or with ``adapter``), e.g. ``rwedit_blimp/acc``,
        ``rwedit_blimp/acc_stderr``, and each metric's per-item values in document order
        (``rwedit_blimp/acc_items``: the same documents for every condition, so conditions compare item by
        item)."""
        out = self.run(adapter, log_samples=True)
        self.raw = out  # lm-eval's own output (results, configs, versions, samples), kept beside the flat row
        return {**flatten_results(out["results"]), **item_values(out.get("samples") or {})}


def item_values(samples: dict) -> dict[str, list[float]]:
    """``{"task/metric_items": [value per document, in doc_id order]}`` from lm-eval's logged samples
    (numeric per-document metrics of the unfiltered responses only)."""
    from rwedit.evals.direct import ITEMS

    out: dict[str, list[float]] = {}
    for task, rows in samples.items():
        rows = sorted((r for r in rows if r.get("filter", "none") == "none"), key=lambda r: r["doc_id"])
        for metric in (rows[0].get("metrics") or []) if rows else []:
            vals = [r.get(metric) for r in rows]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                out[f"{task}/{metric}{ITEMS}"] = [float(v) for v in vals]
    return out
