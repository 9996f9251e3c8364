"""The RSF grid of one delta held whole (the tests' reference for the streamed grid of rwedit.probes.grid)."""

from __future__ import annotations

import math

import torch

from rwedit.lowrank import LowRankDelta
from rwedit.probes.grid import (GridContext, GridSettings, _in_settings_order, _side_plans, _two_sided_rows,
                                null_method)
from rwedit.probes.rsf import NullSpread, _energies, gram_concentration, sketch_spread


def rows_for_delta(delta, layer: int | None, role: str, ctx: GridContext, settings: GridSettings) -> list[dict]:
    """All grid rows for one delta (d_out × d_in, dense or a LowRankDelta) from whole-matrix projections."""
    out: list[dict] = []
    spread = None  # the closed-form null's Σσ⁴ / (Σσ²)², computed once per delta
    method = null_method(settings, tuple(delta.shape), delta.device.type == "cuda")
    for plan in _side_plans(tuple(delta.shape), layer, role, ctx, settings):
        (energies,), total = _energies(delta, plan.side, (plan.stacked.to(delta.device),), settings.dtype)
        if spread is None and method != "seeds":
            spread = (NullSpread(math.nan, math.nan, math.nan, method) if total == 0 else
                      sketch_spread(delta, settings.null_sketch, settings.seed) if method == "sketch" else
                      NullSpread(*(gram_concentration(delta),) * 3))
        out += plan.rows(layer, role, energies, total, spread)
    if "both" in settings.sides:
        if isinstance(delta, LowRankDelta):
            delta = delta.dense(torch.float32)  # the two-sided rows take a dense matrix
        out += _two_sided_rows(delta, layer, role, ctx, settings)
    return _in_settings_order(out, settings)
