"""Consumers of a weight delta streamed in blocks (:class:`rwedit.stream.BlockSink`): the probes' sums, built up
block by block so that a matrix is held whole only where a consumer needs it (:class:`Dense`). The whole-matrix
functions of :mod:`rwedit.probes.rsf` are their reference (the tests compare the two on every layout)."""

from __future__ import annotations

import math
from typing import Callable, Union

import torch

from rwedit.lowrank import LowRankDelta
from rwedit.stream import SUM_ELEMS
from rwedit.probes.rsf import (NullSpread, concentration_of_gram, gram_concentration, sketch_probe,
                               spread_from_sketch)


class Norms:
    """‖W_base‖², ⟨W_base, ΔW⟩ and ‖ΔW‖² (so ‖W_post‖² = ‖W_base‖² + 2⟨W_base, ΔW⟩ + ‖ΔW‖²), summed in
    float64 over blocks; with ``low`` the rounding floor ‖W − round_low(W)‖² of a pair stored in two dtypes."""

    #: products one float32 sum takes before it is added in float64
    SUM_ELEMS = SUM_ELEMS

    def __init__(self, low: torch.dtype | None = None):
        self.bb = self.bd = self.dd = self.floor = 0.0
        self.low = low

    def add(self, axis, index, delta, base: torch.Tensor) -> None:
        if isinstance(delta, LowRankDelta):  # an adapter's block: small, formed in the base block's dtype
            delta = delta.dense(base.dtype)
        d, b = delta.reshape(-1), base.reshape(-1)
        rows = _rows_of(b, d)
        for s in range(0, b.numel(), self.SUM_ELEMS):
            if rows is not None:  # one 2 × 2 Gram reads each block once, where three dots read each twice
                r = rows[:, s:s + self.SUM_ELEMS]
                (bb, bd), (_, dd) = (r @ r.T).tolist()
            else:
                x, y = b[s:s + self.SUM_ELEMS], d[s:s + self.SUM_ELEMS]
                bb, bd, dd = float(torch.dot(x, x)), float(torch.dot(x, y)), float(torch.dot(y, y))
            self.bb += bb
            self.bd += bd
            self.dd += dd
        if self.low is not None:
            r = (b - b.to(self.low).to(b.dtype))
            self.floor += float(torch.dot(r, r))

    @property
    def sums_only(self) -> bool:
        """The stream may feed the sums alone (:class:`~rwedit.stream.SumsSink`); the rounding floor needs the block."""
        return self.low is None

    def add_sums(self, bb: float, bd: float, dd: float) -> None:
        self.bb += bb
        self.bd += bd
        self.dd += dd

    @property
    def base_norm(self) -> float:
        return math.sqrt(self.bb)

    @property
    def post_norm(self) -> float:
        return math.sqrt(max(self.bb + 2 * self.bd + self.dd, 0.0))

    @property
    def delta_norm(self) -> float:
        return math.sqrt(self.dd)


def _rows_of(b: torch.Tensor, d: torch.Tensor) -> torch.Tensor | None:
    """``b`` and ``d`` as the two rows of one strided view (no copy) when they lie in one buffer, ``d`` after ``b``
    at a fixed distance (the pass converts a pair's blocks into rows of one buffer); else None."""
    if (b.dtype != d.dtype or b.numel() != d.numel() or not (b.is_contiguous() and d.is_contiguous())
            or b.untyped_storage().data_ptr() != d.untyped_storage().data_ptr()):
        return None
    step = d.storage_offset() - b.storage_offset()
    return b.as_strided((2, b.numel()), (step, 1), b.storage_offset()) if step >= b.numel() else None


class _Factors:
    """A delta fed in factor form ΔW = U Vᵀ, in blocks of U's rows (axis 0) or of V's rows (axis 1): UᵀU, VᵀV
    and the products Vᵀ B (read side) and Uᵀ B (write side) with each side's basis B. The cut factor's terms
    add up over the blocks; the other factor is whole in every block and taken once."""

    def __init__(self):
        self.gram: dict[str, torch.Tensor] = {}
        self.proj: dict[str, torch.Tensor] = {}

    def _put(self, store: dict, key: str, cut: bool, make) -> None:
        if cut:
            store[key] = make() if key not in store else store[key] + make()
        elif key not in store:
            store[key] = make()

    def add(self, axis: int, index, low: LowRankDelta, bases: dict[str, torch.Tensor] | None = None) -> None:
        for name, F in (("U", low.U), ("V", low.V)):
            self._put(self.gram, name, (name == "U") == (axis == 0), lambda: F.T @ F)
        for side, name, F in (("read", "V", low.V), ("write", "U", low.U)):
            B = (bases or {}).get(side)
            if B is not None:
                cut = (name == "U") == (axis == 0)
                self._put(self.proj, side, cut, lambda: F.T @ (B[index] if cut else B))

    @property
    def total(self) -> float:
        """‖U Vᵀ‖²_F = tr(UᵀU · VᵀV)."""
        return float(torch.sum(self.gram["U"] * self.gram["V"]))

    def energies(self, side: str) -> torch.Tensor:
        """‖ΔW b‖² = xᵀ(UᵀU)x with x = Vᵀb (read); ‖ΔWᵀ b‖² = yᵀ(VᵀV)y with y = Uᵀb (write)."""
        x = self.proj[side]
        return (x * (self.gram["U" if side == "read" else "V"] @ x)).sum(dim=0)

    def concentration(self) -> float:
        """Σσ⁴ / (Σσ²)² = tr((UᵀU VᵀV)²) / tr(UᵀU VᵀV)²: r × r products only."""
        m = self.gram["U"] @ self.gram["V"]
        total = float(torch.trace(m))
        return math.nan if total == 0.0 else float(torch.trace(m @ m)) / total ** 2


#: rows of one piece of the cut side's product Lᵀ·X where MKL's sgemm runs it whole at three quarters of its speed:
#: fewer than 192 rows of output and 1024-3072 columns (measured on one thread of a 2-core Xeon, d 1024-3072 and
#: 64-160 rows out: 59-66 G/s whole, 72-78 G/s in 256-row pieces; with 192 rows out or at 896 and 4864-5632 columns
#: the product runs at 79-86 G/s whole, and pieces lose 0-6 %)
CUT_PIECE = 256


def _cut_piece_rows(L: torch.Tensor, X: torch.Tensor) -> int:
    """Rows of one piece of ``Lᵀ X``: :data:`CUT_PIECE` where the CPU runs that faster, else all of X's."""
    slow = X.device.type == "cpu" and L.shape[1] < 192 and 1024 <= X.shape[1] <= 3072
    return CUT_PIECE if slow else max(1, X.shape[0])


def _add_cut_product(acc: torch.Tensor, L: torch.Tensor, X: torch.Tensor) -> None:
    """``acc += Lᵀ X`` (added inside the product: no temporary), in pieces of :func:`_cut_piece_rows` rows."""
    step = _cut_piece_rows(L, X)
    for s in range(0, X.shape[0], step):
        acc.addmm_(L[s:s + step].T, X[s:s + step])


#: a basis, or a function that makes it (where only a factored block would need it: made then)
Basis = Union[torch.Tensor, Callable[[], torch.Tensor]]


def _made(basis) -> torch.Tensor:
    return basis() if callable(basis) else basis


class Projections:
    """Per-column energies of ΔW against a read-side basis (‖ΔW b_j‖², b_j in R^d_in) and a write-side basis
    (‖ΔWᵀ b_j‖², b_j in R^d_out), and ‖ΔW‖²_F. A side whose blocks cut across its basis' dimension sums
    its energies block by block; the other side accumulates the k-column product and squares it at the end.

    ``probe``: the sketched null's Gaussian Ω (d × m, float64) on the side whose energies are summed (read for row
    blocks, write for column blocks: ``probe_side``). Z = Σ Xᵀ(XΩ) over the blocks X (rows of ΔW, or of ΔWᵀ) rides
    in the same two products as the bases (Ω joins that side's basis, XΩ the other side's rows), so each block
    is read by two matrix products, not four. ``cast`` holds the bases in dtype where made once for many sinks,
    that side's with Ω appended under ``"<side>+probe"``."""

    reads_base = False  # the stream may form ΔW without the base block (rwedit.stream.BlockSink)

    def __init__(self, shape: tuple[int, int], read: Basis | None = None, write: Basis | None = None,
                 dtype: torch.dtype = torch.float32, cast: dict[str, torch.Tensor] | None = None,
                 probe: torch.Tensor | None = None, probe_side: str = "read"):
        self.shape, self.dtype = shape, dtype
        cast = cast or {}
        self.read = None if read is None else (cast["read"] if "read" in cast else _made(read).to(dtype))
        self.write = None if write is None else (cast["write"] if "write" in cast else _made(write).to(dtype))
        self._bases = {"read": read, "write": write}  # as given: factored blocks project in float64
        self.probe, self.probe_side = probe, probe_side
        basis = self.read if probe_side == "read" else self.write
        self._wide = basis  # the probe side's basis, Ω appended
        if probe is not None:
            self._wide = cast.get(f"{probe_side}+probe")
            if self._wide is None:
                self._wide = torch.cat([b for b in (basis, probe.to(dtype)) if b is not None], dim=1)
        self._total = 0.0
        self._e: dict[str, torch.Tensor] = {}
        self._stack: torch.Tensor | None = None  # Σ [B_cut[index] | XΩ]ᵀ X over the blocks
        self._parts: list[tuple[str, int]] = []  # its rows: (the cut side or "probe", how many)
        self._factors: _Factors | None = None

    def add(self, axis, index, delta, base=None) -> None:
        if isinstance(delta, LowRankDelta):
            if self._factors is None:
                self._factors = _Factors()
                self._bases = {s: _made(b).double() for s, b in self._bases.items() if b is not None}
            self._factors.add(axis, index, delta, self._bases)
            return
        if delta.is_contiguous():
            d = delta.reshape(-1)
            self._total += float(torch.dot(d, d))
        else:
            self._total += float(torch.linalg.vector_norm(delta)) ** 2
        # X: the block as rows (of ΔW for axis 0, of ΔWᵀ for axis 1); its columns span the `summed` side whole,
        # its rows cut the other side's basis to B_cut[index]
        X, summed, cut = (delta, "read", "write") if axis == 0 else (delta.T, "write", "read")
        if self.probe is not None and summed != self.probe_side:
            raise ValueError(f"the sketch's probe is on the {self.probe_side} side, but axis {axis} blocks sum "
                             f"the {summed} side")
        basis, other = (self.read, self.write) if summed == "read" else (self.write, self.read)
        rows = [] if other is None else [(cut, other[index])]
        wide = self._wide if summed == self.probe_side else basis
        if wide is not None:
            P = X @ wide
            if basis is not None:
                e = P[:, :basis.shape[1]].pow(2).sum(0).double()
                self._e[summed] = e if summed not in self._e else self._e[summed] + e
            if self.probe is not None:
                rows.append(("probe", P[:, P.shape[1] - self.probe.shape[1]:]))
        if rows:
            L = rows[0][1] if len(rows) == 1 else torch.cat([r for _, r in rows], dim=1)
            if self._stack is None:
                self._stack = torch.zeros(L.shape[1], X.shape[1], dtype=X.dtype, device=X.device)
                self._parts = [(k, r.shape[1]) for k, r in rows]
            _add_cut_product(self._stack, L, X)

    def _accumulated(self, key: str) -> torch.Tensor | None:
        """Rows of the accumulated product for ``key`` (the cut side, or "probe"); None if it has none."""
        start = 0
        for k, n in self._parts:
            if k == key:
                return self._stack[start:start + n]
            start += n
        return None

    @property
    def total(self) -> float:
        """‖ΔW‖²_F."""
        return self._factors.total if self._factors is not None else self._total

    def energies(self, side: str) -> torch.Tensor:
        """Float64 ``‖ΔW b_j‖²`` (read) or ``‖ΔWᵀ b_j‖²`` (write) for every column b_j of that side's basis."""
        if self._factors is not None:
            return self._factors.energies(side)
        a = self._accumulated(side)
        if a is not None:
            return torch.linalg.vector_norm(a, dim=1, dtype=torch.float64).pow(2)
        if side in self._e:
            return self._e[side]
        basis = self.read if side == "read" else self.write
        return torch.zeros(basis.shape[1], dtype=torch.float64)

    def spread(self) -> NullSpread:
        """The sketched Σσ⁴ / (Σσ²)² of ΔW from the probe (:func:`rwedit.probes.rsf.spread_from_sketch`); a delta in
        factor form gets the exact value from its r × r Gram matrices."""
        if self._factors is not None:
            c = self._factors.concentration()
            return NullSpread(c, c, c)
        z = self._accumulated("probe")
        z = torch.zeros(self.probe.shape, dtype=torch.float64) if z is None else z.T.double()
        return spread_from_sketch(z, self.probe, self._total)


class Gram:
    """Σσ⁴ / (Σσ²)² of ΔW (the exact RSF null's concentration). Blocks that run along the larger dimension
    add up the smaller Gram matrix directly (gathered into ≥ ``GATHER`` rows or columns first: a Gram update
    from a thin block runs the matrix product well below its speed); otherwise the matrix is assembled
    (:class:`Dense`) and its smaller Gram formed at the end — the one consumer that may hold the whole delta. A
    delta in factor form needs neither: its r × r Gram matrices give the number."""

    GATHER = 512
    reads_base = False

    def __init__(self, shape: tuple[int, int], axis: int, dtype: torch.dtype = torch.float32):
        d_out, d_in = shape
        # axis 0 blocks are rows: Σ Xᵀ X is the d_in Gram, the small one when d_in <= d_out
        self.streamed = (d_in <= d_out) if axis == 0 else (d_out <= d_in)
        self.G: torch.Tensor | None = None
        self.shape, self.dtype = shape, dtype
        self.dense: Dense | None = None  # made at the first dense block that needs it
        self._factors: _Factors | None = None
        if self.streamed:
            side = d_in if axis == 0 else d_out
            self.G = torch.zeros(side, side, dtype=dtype)
            # gathered blocks, as rows (axis 0) or as rows of ΔWᵀ (axis 1)
            self._buf = torch.empty(min(self.GATHER, d_out if axis == 0 else d_in), side, dtype=dtype)
            self._n = 0

    def _flush(self) -> None:
        if self._n:
            X = self._buf[:self._n]
            self.G.addmm_(X.T, X)
            self._n = 0

    def add(self, axis, index, delta, base=None) -> None:
        if isinstance(delta, LowRankDelta):
            self._factors = self._factors or _Factors()
            self._factors.add(axis, index, delta)
            return
        if not self.streamed:
            self.dense = self.dense or Dense(self.shape, self.dtype)
            self.dense.add(axis, index, delta)
            return
        X = delta if axis == 0 else delta.T  # the blocks as rows of the matrix whose Xᵀ X is the small Gram
        if X.shape[0] >= self._buf.shape[0]:
            self._flush()
            self.G.addmm_(X.T, X)
            return
        if self._n + X.shape[0] > self._buf.shape[0]:
            self._flush()
        self._buf[self._n:self._n + X.shape[0]] = X
        self._n += X.shape[0]

    def concentration(self) -> float:
        if self._factors is not None:
            return self._factors.concentration()
        if not self.streamed:
            return gram_concentration(self.dense.matrix)
        self._flush()
        return concentration_of_gram(self.G)

    def spread(self) -> NullSpread:
        c = self.concentration()
        return NullSpread(c, c, c)


class GramSketch(Projections):
    """The sketched Σσ⁴ / (Σσ²)² of ΔW alone (:func:`rwedit.probes.rsf.spread_from_sketch`): Z = Σ_blocks Xᵀ(X Ω) over
    the blocks X (rows of ΔW for axis 0: the d_in-side Gram; rows of ΔWᵀ for axis 1: the d_out side) with a d × m
    Gaussian Ω, 2·m multiply-adds per element of ΔW against the exact Gram's min(d), and no whole matrix
    whatever the axis: :class:`Projections` with a probe and no bases (the grid gives its projections the probe
    instead). A delta in factor form gets the exact value from its r × r Gram matrices."""

    def __init__(self, shape: tuple[int, int], axis: int, m: int, seed: int = 0, dtype: torch.dtype = torch.float32):
        d, side = (shape[1], "read") if axis == 0 else (shape[0], "write")
        super().__init__(shape, dtype=dtype, probe=sketch_probe(d, m, seed), probe_side=side,
                         cast={f"{side}+probe": sketch_probe(d, m, seed, dtype)})


class Dense:
    """The whole ΔW, assembled from its blocks (for consumers that need the matrix: the two-sided RSF, a full
    SVD)."""

    reads_base = False

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype = torch.float32):
        self.matrix = torch.zeros(shape, dtype=dtype)

    def add(self, axis, index, delta, base=None) -> None:
        if isinstance(delta, LowRankDelta):
            delta = delta.dense(self.matrix.dtype)
        if axis == 0:
            self.matrix[index] = delta
        else:
            self.matrix[:, index] = delta
