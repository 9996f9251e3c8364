"""The RSF grid of one delta held whole (the tests' reference for the streamed grid of rwedit.probes.grid)."""

from __future__ import annotations

import math

import torch

from rwedit.lowrank import LowRankDelta
from rwedit.probes.grid import GridContext, GridSettings, _in_settings_order, _side_plans, _two_sided_rows
from rwedit.probes.rsf import _energies, gram_concentration


def rows_for_delta(delta, layer: int | None, role: str, ctx: GridContext, settings: GridSettings) -> list[dict]:
    """All grid rows for one delta (d_out × d_in, dense or a LowRankDelta) from whole-matrix projections."""
    out: list[dict] = []
    conc = None  # tr G² for the exact null, computed once per delta
    for plan in _side_plans(tuple(delta.shape), layer, role, ctx, settings):
        (energies,), total = _energies(delta, plan.side, (plan.stacked.to(delta.device),), settings.dtype)
        if conc is None:
            conc = gram_concentration(delta) if total > 0 and settings.exact_null else math.nan
        out += plan.rows(layer, role, energies, total, conc)
    if "both" in settings.sides:
        if isinstance(delta, LowRankDelta):
            delta = delta.dense(torch.float32)  # the two-sided rows take a dense matrix
        out += _two_sided_rows(delta, layer, role, ctx, settings)
    return _in_settings_order(out, settings)
