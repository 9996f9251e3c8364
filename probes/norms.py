"""Per-role weight-delta norms of a checkpoint pair: where did post-training change the weights?"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from rwedit.checkpoints import CheckpointPair
from rwedit.probes.blocks import Norms
from rwedit.stream import explain_non_finite, stream_pair
from rwedit.outputs import make_folder, write_text


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


def delta_norms(
    pair: CheckpointPair,
    roles: Iterable[str] | None = None,
    layers: Iterable[int] | None = None,
    progress: bool = True,
) -> list[DeltaNorm]:
    """Stream the pair once, in row blocks, and return the Frobenius norms of every role's base, post and delta."""
    views = pair.layout.views(roles, layers)
    low = pair.rounding_dtype()
    out = []
    # the sums themselves show a NaN/Inf weight: no separate finiteness pass over every block
    for view, (n,) in tqdm(stream_pair(pair.base, [pair.post], views, lambda v: [Norms(low)], check_finite=False),
                           total=len(views), desc="delta norms", disable=not progress):
        if not math.isfinite(n.bb + n.bd + n.dd):
            explain_non_finite([pair.base, pair.post], view)
        out.append(DeltaNorm(view.layer, view.role, view.d_out, view.d_in, n.base_norm, n.post_norm,
                             n.delta_norm, 0.0 if low is None else n.floor ** 0.5))
    return out


def write_csv(rows: list[DeltaNorm], path: str | Path) -> Path:
    """One row per (layer, role) with a ``relative`` column (‖ΔW‖/‖W_base‖)."""
    path = make_folder(Path(path).parent) / Path(path).name
    fields = list(DeltaNorm.__dataclass_fields__) + ["relative"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({**asdict(r), "layer": "" if r.layer is None else r.layer, "relative": r.relative})
    write_text(path, buf.getvalue())
    return path
