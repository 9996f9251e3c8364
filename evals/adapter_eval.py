"""The ``eval`` kind: a base model and every adapter of a folder, scored by the one runner loop.

``rwedit eval`` builds an :class:`EvalRecipe` from its flags and runs it with
:func:`rwedit.evals.core.run_experiment`, so its rows go to the resumable store as they are scored
(``OUT/results.jsonl``, lm-eval's own output in ``OUT/raw/lmeval``) and ``--resume`` scores only what is
missing; ``experiment: eval`` in a recipe runs the same with ``rwedit run``, and from Python
``run_recipe({"experiment": "eval", "model": ..., "adapters": ...}).rows`` is the scores' DataFrame (a folder
kept only with ``out``). The conditions are the base (adapters disabled) and one
:class:`~rwedit.editor.interventions.Adapter` per adapter folder, switched in place on one loaded model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from rwedit.config import option
from rwedit.editor.interventions import BASE, Adapter, Unchanged
from rwedit.errors import ConfigError
from rwedit.evals.core import Condition, ExperimentKind, ExperimentRecipe, Prepared, register_experiment

EXPERIMENT = "eval"


def adapter_names(adapters: str | Path | None) -> tuple[Path | None, list[str]]:
    """The folder holding the adapters and their names: ``adapters`` is one adapter folder (holding
    ``adapter_config.json``) or a folder of them such as ``OUT/adapters`` of ``rwedit edit``; None: none."""
    if adapters is None:
        return None, []
    root = Path(adapters)
    if not root.is_dir():
        raise ConfigError(f"--adapters {root}: no such folder (give an adapter folder or the folder that holds "
                          f"adapter folders, e.g. OUT/adapters of `rwedit edit`)")
    if (root / "adapter_config.json").exists():  # one adapter folder
        return root.parent, [root.name]
    names = sorted(p.name for p in root.iterdir() if (p / "adapter_config.json").exists())
    if not names:
        raise ConfigError(f"--adapters {root} holds no adapter folders (none with adapter_config.json)")
    return root, names


@dataclass(frozen=True)
class EvalRecipe(ExperimentRecipe):
    """The base model (``model``) and the adapters of ``adapters``, scored with ``eval`` and ``direct``."""

    experiment: str = option(EXPERIMENT, help="the experiment kind: `rwedit run` dispatches on it")
    name: str = option("eval", help="names the default output folder runs/NAME")
    adapters: str | None = option(None, path=True, help="an adapter folder, or a folder of adapter folders, scored "
                                  "next to the base (null: the base alone)")
    force: bool = option(False, help="load adapters made for other weights (their base check skipped)")

    def __post_init__(self):
        self.check_kind(EXPERIMENT)
        if self.model is None:
            raise ConfigError("eval: give the model whose adapters are scored (--model, or model: in the recipe)")
        if self.post is not None:
            raise ConfigError("eval scores one model and its adapters: give adapters, not post")
        if self.eval is None and self.direct is None:
            raise ConfigError("eval: nothing to score (eval: and direct: are both off)")

    @cached_property
    def adapter_folders(self) -> tuple[Path | None, list[str]]:
        return adapter_names(self.adapters)

    def check_sources(self) -> dict:
        """The adapters' folder and the model, before anything is written; records the model's source."""
        from rwedit.checkpoints import source_info

        self.adapter_folders  # noqa: B018  (a missing or empty adapter folder fails first)
        return {"base": source_info(self.base_checkpoint)}


def _prepare(recipe: EvalRecipe, out: Path) -> Prepared:
    """Load the model once with every adapter on it; the base, then each adapter in name order."""
    from rwedit.evals.direct import DirectScorer
    from rwedit.evals.lmeval import LMEvalScorer
    from rwedit.models import context_window, load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(recipe.base_checkpoint, device=recipe.device, placement=recipe.placement)
    root, names = recipe.adapter_folders
    if names:
        from rwedit.editor.adapters import load_adapter_folder

        model = load_adapter_folder(model, root, names, force=recipe.force)
    model.eval()

    def scorers():
        out = []
        if recipe.direct is not None:  # the direct metrics' lengths, shortened to fit the model's window
            d, window = recipe.direct, context_window(model)
            if window is not None:
                d = replace(d, seq_len=min(d.seq_len, window), max_len=min(d.max_len, window))
            out.append(DirectScorer(model, tok, d))
        if recipe.eval is not None:
            disk = dict(pretrained=recipe.base_checkpoint.path, adapter_dirs={n: root / n for n in names})
            out.append(LMEvalScorer(model, tok, recipe.eval, **disk))
        return out

    conditions = [Condition(BASE, Unchanged())] + [Condition(n, Adapter(n)) for n in names]
    return Prepared(model, conditions, scorers)


def _report(folder, **_) -> Path:
    """Nothing to draw: the rows are the result (``rwedit export ADAPTER --metrics FOLDER`` reads them)."""
    from rwedit.evals.store import ResultStore

    return ResultStore(folder).path


def _plan(recipe: EvalRecipe, ctx):
    """Its conditions, one per adapter folder; nothing runs before scoring."""
    from rwedit.evals.planning import KindPlan

    return KindPlan(conditions=recipe.adapter_folders[1], checked=["the adapter folders"] if recipe.adapters else [])


KIND = register_experiment(ExperimentKind(
    EXPERIMENT, EvalRecipe, help="a base model and every adapter of a folder, scored with lm-eval and the direct "
    "metrics (what `rwedit eval` runs)", prepare=_prepare, report=_report, plan=_plan))

__all__ = ["EvalRecipe", "KIND", "adapter_names"]
