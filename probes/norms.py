"""Per-role weight-delta norms of a checkpoint pair: where did post-training change the weights?"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

from tqdm.auto import tqdm

from rwedit.checkpoints import CheckpointPair
from rwedit.probes.blocks import Norms
from rwedit.runtime import runtime
from rwedit.stream import explain_non_finite, stream_pair


@dataclass(frozen=True)
class DeltaNorm:
    """‖W_base‖_F, ‖W_post‖_F and ‖ΔW‖_F of one role of one layer (``layer`` empty for unembed)."""

    layer: int | None
    role: str
    d_out: int
    d_in: int
    base_norm: float
    post_norm: float
    delta_norm: float
    #: ‖ΔW‖ a bare dtype conversion of the base would show (pairs stored in two dtypes; else 0)
    rounding_floor: float = 0.0

    @property
    def relative(self) -> float:
        return self.delta_norm / self.base_norm if self.base_norm > 0 else float("nan")


def delta_norms(pair: CheckpointPair, roles: Iterable[str] | None = None,
                layers: Iterable[int] | None = None) -> list[DeltaNorm]:
    """Stream the pair once, in row blocks, and return the Frobenius norms of every role's base, post and delta."""
    return delta_norms_posts({"post": pair}, roles, layers)["post"]


def delta_norms_posts(pairs: Mapping[str, CheckpointPair], roles: Iterable[str] | None = None,
                      layers: Iterable[int] | None = None) -> dict[str, list[DeltaNorm]]:
    """The norms of several pairs of one base (by name) in one pass: each base block read and converted once for
    all posts; each post's norms those of its own pass."""
    if not pairs:
        return {}
    first = next(iter(pairs.values()))
    views = first.layout.views(roles, layers)
    lows = [p.rounding_dtype() for p in pairs.values()]
    out: dict[str, list[DeltaNorm]] = {n: [] for n in pairs}
    # the sums themselves show a NaN/Inf weight: no separate finiteness pass over every block
    for view, sinks in tqdm(stream_pair(first.base, [p.post for p in pairs.values()], views,
                                        lambda v: [Norms(low) for low in lows], check_finite=False),
                            total=len(views), desc="delta norms", disable=not runtime().progress):
        for (name, pair), n, low in zip(pairs.items(), sinks, lows):
            if not math.isfinite(n.bb + n.bd + n.dd):
                explain_non_finite([pair.base, pair.post], view)
            out[name].append(DeltaNorm(view.layer, view.role, view.d_out, view.d_in, n.base_norm, n.post_norm,
                                       n.delta_norm, 0.0 if low is None else n.floor ** 0.5))
    return out
