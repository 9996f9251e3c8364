"""What the organism and the quickstart show while they work: one progress bar per training stage (steps, loss,
ETA) in place of the trainers' printed log dicts, and the libraries' own bars, log lines and deprecation
notices switched off for the duration (rwedit's stage lines and bars say where a run is)."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

#: the libraries whose FutureWarning/DeprecationWarning notices are theirs to act on, not a quickstart user's
QUIET_MODULES = r"(transformers|trl|peft|datasets|accelerate|lm_eval)(\.|$)"


def training_bar(desc: str, progress: bool):
    """A ``transformers.TrainerCallback`` that draws one tqdm bar over the optimizer steps of a training run, its
    postfix the last logged loss; with ``progress`` False it draws nothing. Give the trainer
    ``disable_tqdm=True`` and remove its ``PrinterCallback`` (:func:`use_bar`), else it prints every log dict."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class TrainingBar(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kw):
            self.bar = tqdm(total=state.max_steps, desc=desc, unit="step", disable=not progress, dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kw):
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}", refresh=False)

        def on_train_end(self, args, state, control, **kw):
            self.bar.close()

    return TrainingBar()


def use_bar(trainer, desc: str, progress: bool):
    """``trainer`` with :func:`training_bar` in place of the log printer that ``disable_tqdm=True`` installs."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)  # in case disable_tqdm was not set: one bar, ours
    trainer.add_callback(training_bar(desc, progress))
    return trainer


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """transformers' and datasets' progress bars and below-error log lines, TRL's reference-log-prob bar (it
    honours ``TQDM_DISABLE``) and the libraries' deprecation notices off inside the block; restored after."""
    import datasets
    import tqdm.std  # noqa: F401  (tqdm reads its TQDM_* settings once, at import: before TQDM_DISABLE is set below)
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    ds_bars = datasets.is_progress_bar_enabled()
    env = os.environ.get("TQDM_DISABLE")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    os.environ["TQDM_DISABLE"] = "1"  # read by TRL at call time; rwedit's own bars are not affected
    try:
        with warnings.catch_warnings():
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category, module=QUIET_MODULES)
            yield
    finally:
        if env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = env
        if ds_bars:
            datasets.enable_progress_bars()
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


__all__ = ["QUIET_MODULES", "quiet_libraries", "training_bar", "use_bar"]
