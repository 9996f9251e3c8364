"""Within-run trajectory: the RSF grid of ``W_t − W_0`` at each save (or every N steps) of a Trainer."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import torch
from transformers import TrainerCallback

from rwedit.architectures import get_weight, model_layout
from rwedit.probes.activations import ActivationStats
from rwedit.probes.grid import COLUMNS, GridContext, GridSettings, rsf_grid_deltas
from rwedit.probes.subspaces import prediction_spectrum

TRAJECTORY_COLUMNS = ("step",) + COLUMNS


class RSFTrajectoryCallback(TrainerCallback):
    """Appends RSF rows of ``W_t − W_0`` (a ``step`` column) to ``out_csv`` at every save (and every
    ``every_n_steps``): ``W_0`` copied at the start (CPU, float32), the prediction subspace the starting model's,
    the activation subspaces from ``stats`` (collect them on the starting model)."""

    def __init__(self, out_csv: str | Path, stats: ActivationStats | None = None,
                 settings: GridSettings = GridSettings(roles=("q", "k", "o", "down")),
                 every_n_steps: int | None = None):
        self.out_csv = Path(out_csv)
        self.stats, self.settings, self.every_n_steps = stats, settings, every_n_steps
        self._w0: dict[tuple[int | None, str], torch.Tensor] | None = None
        self._ctx: GridContext | None = None
        self._done_steps: set[int] = set()

    def _snapshot(self, model) -> None:
        self._layout = layout = model_layout(model)
        roles: Sequence[str] = self.settings.roles or layout.roles()
        self._w0 = {(v.layer, v.role): get_weight(model, v.layer, v.role).float().cpu()
                    for v in layout.views(roles, self.settings.layers)}
        pred = None
        if "prediction" in self.settings.subspaces:
            pred = prediction_spectrum(get_weight(model, None, "unembed").float().cpu())
        self._ctx = GridContext(self.stats, pred)
        self.out_csv.parent.mkdir(parents=True, exist_ok=True)
        if not self.out_csv.exists():
            with open(self.out_csv, "w", newline="") as f:
                csv.writer(f).writerow(TRAJECTORY_COLUMNS)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self._w0 is None:
            self._snapshot(model)

    def record(self, model, step: int) -> list[dict]:
        """Compute and append the rows for the model's current weights at ``step``."""
        if self._w0 is None:
            self._snapshot(model)
        if step in self._done_steps:
            return []
        deltas = {key: get_weight(model, *key).float().cpu() - w0 for key, w0 in self._w0.items()}
        rows = [{"step": step, **r} for r in rsf_grid_deltas(deltas, self._layout, self._ctx, self.settings)]
        with open(self.out_csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=TRAJECTORY_COLUMNS, extrasaction="ignore")  # a sketched null's columns
            w.writerows(rows)
        self._done_steps.add(step)
        return rows

    def on_save(self, args, state, control, model=None, **kwargs):
        self.record(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            self.record(model, state.global_step)
