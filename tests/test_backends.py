"""Scoring through lm-eval's backends and lm-eval's start-up: the task index is built only when needed."""

from __future__ import annotations


def test_lm_evals_task_index_is_built_only_for_a_task_that_is_not_bundled(monkeypatch):
    """The bundled tasks alone never index lm-eval's own registry (seconds per process); a stock task does;
    each of the two managers is built once per process, whatever the task list."""
    import rwedit.evals.lmeval as lmeval

    built = []
    monkeypatch.setattr(lmeval, "task_manager", lambda tasks=None: built.append(tasks) or object())
    lmeval._task_index.cache_clear()
    try:
        a = lmeval._cached_task_manager(("rwedit_blimp",))
        assert lmeval._cached_task_manager(("rwedit_hh_preference", "rwedit_blimp")) is a
        full = lmeval._cached_task_manager(("rwedit_blimp", "hellaswag"))
        assert full is not a and lmeval._cached_task_manager(("arc_easy",)) is full
        assert built == [tuple(lmeval.BUNDLED_TASKS), None]  # None: lm-eval's defaults indexed too
    finally:
        lmeval._task_index.cache_clear()
