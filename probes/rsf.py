"""Relative subspace fraction (RSF) of a weight delta against a subspace: the share of ‖ΔW‖²_F that the
subspace captures on one side of ΔW, divided by the share a random subspace of the same size captures.

read:  f = ‖ΔW B‖²_F / ‖ΔW‖²_F        (B: d_in x k),   RSF = f / (k / d_in)
write: f = ‖Bᵀ ΔW‖²_F / ‖ΔW‖²_F       (B: d_out x k),  RSF = f / (k / d_out)
both:  f = (‖B_Lᵀ ΔW‖² + ‖ΔW B_R‖²) / ‖ΔW‖²,            RSF = f / (k_L/d_out + k_R/d_in)

A Haar-random B gives E[f] = k/d exactly, so E[RSF] = 1 under the null. All sums are float64 and
the delta is upcast one row-chunk at a time, so a large delta never needs a float64 copy.
"""

from __future__ import annotations

from rwedit.errors import ConfigError
import functools
import math
from dataclasses import dataclass
from typing import Literal, Sequence, Union

from rwedit.lazy import as_dtype, torch

from rwedit.lowrank import LowRankDelta

from .subspaces import check_k, haar_basis, haar_from_generator

__all__ = [
    "RSFResult",
    "NullSpread",
    "isotropic_baseline",
    "random_null",
    "random_null_samples",
    "rank1_rsf",
    "rsf",
    "rsf_nested",
    "sketch_spread",
    "subspace_fraction",
]

Side = Literal["read", "write", "both"]
Basis = Union["torch.Tensor", tuple["torch.Tensor", "torch.Tensor"]]
KSpec = Union[int, tuple[int, int]]

_SIDES = ("read", "write", "both")
#: Elements of the delta upcast to float64 per chunk (2^22 -> 32 MiB).
_CHUNK_ELEMENTS = 1 << 22
#: Default tolerance on max|BᵀB − I| (a float32 eigh basis at d = 4096 is orthonormal to ~1e-6).
DEFAULT_ORTHO_ATOL = 1e-4


@dataclass(frozen=True)
class RSFResult:
    """One RSF measurement. For side="both", k and d are (k_L, k_R) and (d_out, d_in).
    fraction/rsf are NaN, with `reason` set, when the measurement is undefined (zero delta)."""

    side: str
    fraction: float
    rsf: float
    k: KSpec
    d: KSpec
    baseline: float
    delta_norm: float
    reason: str | None = None


def isotropic_baseline(side: Side, k: KSpec, shape: tuple[int, int]) -> float:
    """Expected fraction for a Haar-random subspace: k/d_in (read), k/d_out (write),
    k_L/d_out + k_R/d_in (both); `shape` is the delta's (d_out, d_in)."""
    d_out, d_in = shape
    if side == "read":
        return k / d_in
    if side == "write":
        return k / d_out
    if side == "both":
        k_l, k_r = k
        return k_l / d_out + k_r / d_in
    raise ConfigError(f"side must be one of {_SIDES}, got {side!r}")


# ----------------------------------------------------------------------------- validation


def _check_side(side: str) -> None:
    if side not in _SIDES:
        raise ConfigError(f"side must be one of {_SIDES}, got {side!r}")


def _check_delta(delta: torch.Tensor) -> None:
    if not isinstance(delta, torch.Tensor):
        raise ConfigError(f"delta must be a torch.Tensor, got {type(delta).__name__}")
    if delta.ndim != 2 or min(delta.shape) == 0:
        raise ConfigError(f"delta must be a non-empty 2-D d_out x d_in matrix, got shape {tuple(delta.shape)}")
    if delta.is_complex():
        raise ConfigError("delta must be real, got a complex tensor")


def _check_basis(basis: torch.Tensor, rows: int, what: str, device: torch.device, ortho_atol: float) -> torch.Tensor:
    """Validate one basis (rows x k, finite, orthonormal columns) and return it as float64."""
    if not isinstance(basis, torch.Tensor):
        raise ConfigError(f"{what} basis must be a torch.Tensor, got {type(basis).__name__}")
    if basis.ndim != 2:
        raise ConfigError(
            f"{what} basis must be 2-D with shape ({rows}, k), got shape {tuple(basis.shape)} "
            "(a single direction v goes in as v[:, None])"
        )
    if basis.shape[0] != rows:
        raise ConfigError(
            f"{what} basis has the wrong number of rows: expected shape ({rows}, k) to match the "
            f"delta, got {tuple(basis.shape)}"
        )
    check_k(basis.shape[1], rows, what=f"{what} basis columns k")
    b = basis.to(device=device, dtype=torch.float64)
    if not torch.isfinite(b).all():
        raise ConfigError(f"{what} basis has non-finite (NaN/inf) entries")
    err = float((b.T @ b - torch.eye(b.shape[1], dtype=torch.float64, device=device)).abs().max())
    if err > ortho_atol:
        raise ConfigError(
            f"{what} basis columns are not orthonormal: max|B^T B - I| = {err:.3g} > {ortho_atol:g}; "
            "orthonormalise it first (torch.linalg.qr) or pass eigenvectors computed in float64"
        )
    return b


def _split_both(basis: Basis) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(basis, (tuple, list)) and len(basis) == 2):
        raise ConfigError("side='both' takes basis=(B_L, B_R): a write-side d_out x k_L and a read-side d_in x k_R basis")
    return basis[0], basis[1]


# ----------------------------------------------------------------------------- core sums


def _read_energies(mat: "torch.Tensor | LowRankDelta", basis: torch.Tensor,
                   dtype: torch.dtype | str = "float64") -> tuple[torch.Tensor, float]:
    """Per-column ‖mat b_j‖² (float64, length k) and ‖mat‖²_F, casting mat to `dtype` one row-chunk at a
    time (products in `dtype`, sums in float64). A factored ``U Vᵀ`` costs O((d_in·k + r·k)·r): ‖U Vᵀ b‖² =
    xᵀ(UᵀU)x with x = Vᵀb, and ‖U Vᵀ‖²_F = tr(UᵀU · VᵀV)."""
    dtype = as_dtype(dtype)
    if isinstance(mat, LowRankDelta):
        b = basis.to(device=mat.device, dtype=torch.float64)
        uu, vv = mat.U.T @ mat.U, mat.V.T @ mat.V
        x = mat.V.T @ b
        return (x * (uu @ x)).sum(dim=0).to(basis.device), float(torch.sum(uu * vv))
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // mat.shape[1])
    energies = torch.zeros(basis.shape[1], dtype=torch.float64, device=basis.device)
    total = torch.zeros((), dtype=torch.float64, device=basis.device)
    basis = basis.to(dtype)
    for start in range(0, mat.shape[0], rows_per_chunk):
        block = mat[start : start + rows_per_chunk].to(device=basis.device, dtype=dtype)
        proj = (block @ basis).to(torch.float64)
        energies += (proj * proj).sum(dim=0)
        total += torch.sum(block * block, dtype=torch.float64)
    return energies, float(total)


def _energies(delta: torch.Tensor, side: str, bases: tuple[torch.Tensor, ...],
              dtype: torch.dtype | str = "float64") -> tuple[list[torch.Tensor], float]:
    """Column energies for each basis of `side` ([read] / [write] / [write, read]) and ‖ΔW‖²_F."""
    if side == "read":
        e, total = _read_energies(delta, bases[0], dtype)
        out = [e]
    elif side == "write":
        e, total = _read_energies(delta.T, bases[0], dtype)  # ‖Bᵀ ΔW‖_F = ‖ΔWᵀ B‖_F
        out = [e]
    else:
        e_l, total = _read_energies(delta.T, bases[0], dtype)
        e_r, _ = _read_energies(delta, bases[1], dtype)
        out = [e_l, e_r]
    if not math.isfinite(total):
        n_bad = int((~torch.isfinite(delta.dense() if isinstance(delta, LowRankDelta) else delta)).sum())
        raise ConfigError(
            f"delta has {n_bad} non-finite (NaN/inf) entries (shape {tuple(delta.shape)}); "
            "check the checkpoints or the dtype the delta was formed in"
        )
    return out, total


def _validated_bases(delta: torch.Tensor, side: str, basis: Basis, ortho_atol: float) -> tuple[torch.Tensor, ...]:
    d_out, d_in = delta.shape
    dev = delta.device
    if side == "read":
        return (_check_basis(basis, d_in, "read-side (d_in)", dev, ortho_atol),)
    if side == "write":
        return (_check_basis(basis, d_out, "write-side (d_out)", dev, ortho_atol),)
    b_l, b_r = _split_both(basis)
    return (
        _check_basis(b_l, d_out, "write-side B_L (d_out)", dev, ortho_atol),
        _check_basis(b_r, d_in, "read-side B_R (d_in)", dev, ortho_atol),
    )


# ----------------------------------------------------------------------------- public API


def rsf_nested(
    delta: torch.Tensor,
    basis_max: Basis,
    side: Side,
    ks: Sequence[KSpec],
    *,
    ortho_atol: float = DEFAULT_ORTHO_ATOL,
    dtype: torch.dtype | str = "float64",
) -> list[RSFResult]:
    """RSF for each k in `ks`, using the first k columns of `basis_max` (nested top-k bases), from a
    single projection: ‖ΔW B_k‖² is a cumulative sum of per-column energies. For side="both",
    basis_max = (B_L, B_R) and each k is an int (same k both sides) or a pair (k_L, k_R)."""
    _check_side(side)
    _check_delta(delta)
    bases = _validated_bases(delta, side, basis_max, ortho_atol)
    d_out, d_in = delta.shape
    # resolve every k before the heavy projection, so a bad grid fails fast
    if side == "both":
        plan = [
            (_nested_k(kl, bases[0], "k_L", d_out), _nested_k(kr, bases[1], "k_R", d_in))
            for kl, kr in (k if isinstance(k, (tuple, list)) else (k, k) for k in ks)
        ]
    else:
        plan = [_nested_k(k, bases[0], "k", bases[0].shape[0]) for k in ks]
    energies, total = _energies(delta, side, bases, dtype)
    cums = [torch.cumsum(e, dim=0) for e in energies]
    norm = math.sqrt(total)
    results = []
    for k_rec in plan:
        if side == "both":
            captured = float(cums[0][k_rec[0] - 1] + cums[1][k_rec[1] - 1])
            d_rec: KSpec = (d_out, d_in)
        else:
            captured = float(cums[0][k_rec - 1])
            d_rec = d_in if side == "read" else d_out
        baseline = isotropic_baseline(side, k_rec, (d_out, d_in))
        if total == 0.0:
            frac, ratio, reason = math.nan, math.nan, "zero delta"
        else:
            frac, reason = captured / total, None
            ratio = frac / baseline
        results.append(RSFResult(side, frac, ratio, k_rec, d_rec, baseline, norm, reason))
    return results


def _nested_k(k: int, basis: torch.Tensor, what: str, d: int) -> int:
    """Validate a nested k against the columns available in the basis (and the space dimension d)."""
    k = check_k(k, d, what=what)
    if k > basis.shape[1]:
        raise ConfigError(
            f"{what}={k} exceeds the {basis.shape[1]} columns of the basis (space dimension d={d}): "
            f"pass a basis with at least {k} columns or keep {what} <= {basis.shape[1]}"
        )
    return k


def rsf(delta: torch.Tensor, basis: Basis, side: Side, *, ortho_atol: float = DEFAULT_ORTHO_ATOL) -> RSFResult:
    """RSF of `delta` (d_out x d_in) against all columns of `basis` on `side` (formulas in the module doc).
    Zero delta -> NaN with reason "zero delta"; bad shapes, NaN, non-orthonormal basis -> ValueError."""
    _check_side(side)
    if side == "both":
        b_l, b_r = _split_both(basis)
        k: KSpec = (b_l.shape[1] if b_l.ndim == 2 else 0, b_r.shape[1] if b_r.ndim == 2 else 0)
    else:
        k = basis.shape[1] if isinstance(basis, torch.Tensor) and basis.ndim == 2 else 0
    return rsf_nested(delta, basis, side, [k], ortho_atol=ortho_atol)[0]


def rank1_rsf(x: torch.Tensor, basis: torch.Tensor, *, ortho_atol: float = DEFAULT_ORTHO_ATOL) -> float:
    """RSF of a rank-1 delta on the side whose factor is ``x``, against the span of ``basis``'s columns:
    ``‖basisᵀ x̂‖² / (k/d)`` with ``x̂ = x/‖x‖`` (``basis``: d x k, orthonormal columns, d = len(x)).

    It equals ``rsf(outer(b, x), basis, "read").rsf`` for any nonzero ``b`` (x read side) and
    ``rsf(outer(x, v), basis, "write").rsf`` for any nonzero ``v`` (x write side): the other factor
    cancels from the fraction.  Float64; NaN for a zero ``x``, as :func:`rsf` gives for a zero delta."""
    if not isinstance(x, torch.Tensor) or x.ndim != 1 or x.numel() == 0:
        raise ConfigError(f"x must be a non-empty 1-D tensor, got {getattr(x, 'shape', type(x).__name__)}")
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("x has non-finite (NaN/inf) entries")
    b = _check_basis(basis, x.numel(), "basis (len(x))", x.device, ortho_atol)
    norm2 = float(x @ x)
    if norm2 == 0.0:
        return math.nan
    k = b.shape[1]
    return float((b.T @ x).pow(2).sum()) / norm2 / (k / x.numel())


def subspace_fraction(delta: torch.Tensor, basis: Basis, side: Side, *, ortho_atol: float = DEFAULT_ORTHO_ATOL) -> float:
    """The raw fraction f of ‖ΔW‖²_F captured by the subspace(s) (NaN for a zero delta)."""
    return rsf(delta, basis, side, ortho_atol=ortho_atol).fraction


def random_null_samples(delta: torch.Tensor, side: Side, k: KSpec, seeds: Sequence[int]) -> torch.Tensor:
    """RSF of `delta` against one Haar-random basis per seed (float64 tensor, one value per seed),
    all seeds projected in one pass. For side="both", seed s draws B_L then B_R from one generator."""
    _check_side(side)
    _check_delta(delta)
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("seeds is empty: pass at least one seed (several, to get an sd)")
    d_out, d_in = delta.shape
    if side == "both":
        k_l, k_r = (k, k) if not isinstance(k, (tuple, list)) else k
        k_l, k_r = check_k(k_l, d_out, "k_L"), check_k(k_r, d_in, "k_R")
        draws = []
        for s in seeds:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(int(s))
            draws.append((haar_from_generator(d_out, k_l, gen), haar_from_generator(d_in, k_r, gen)))
        stacked = (
            torch.cat([b for b, _ in draws], dim=1).to(delta.device),
            torch.cat([b for _, b in draws], dim=1).to(delta.device),
        )
        widths = (k_l, k_r)
        k_rec: KSpec = (k_l, k_r)
    else:
        d = d_in if side == "read" else d_out
        k_rec = check_k(k, d)
        stacked = tuple([torch.cat([haar_basis(d, k_rec, s) for s in seeds], dim=1).to(delta.device)])
        widths = (k_rec,)
    energies, total = _energies(delta, side, stacked)
    if total == 0.0:
        return torch.full((len(seeds),), math.nan, dtype=torch.float64)
    captured = sum(e.reshape(len(seeds), w).sum(dim=1) for e, w in zip(energies, widths))
    baseline = isotropic_baseline(side, k_rec, (d_out, d_in))
    return (captured / total / baseline).cpu()


def random_null_nested(delta: torch.Tensor, side: str, ks: Sequence[int], seeds: Sequence[int],
                       dtype: torch.dtype | str = "float32") -> dict[int, torch.Tensor]:
    """RSF null samples for every k at once (side "read" or "write"): one Haar d x max(ks) basis per seed,
    whose first k columns are a Haar k-dim basis, so all ks cost one projection.  Products run in
    `dtype` (float32: relative error ~1e-7, far below the null's own spread), sums in float64."""
    _check_side(side)
    _check_delta(delta)
    if side == "both":
        raise ConfigError("random_null_nested takes side 'read' or 'write'; use random_null_samples for 'both'")
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("seeds is empty: pass at least one seed (several, to get an sd)")
    d_out, d_in = delta.shape
    d = d_in if side == "read" else d_out
    ks = sorted({check_k(k, d) for k in ks})
    kmax = ks[-1]
    stacked = torch.cat([haar_basis(d, kmax, s) for s in seeds], dim=1).to(delta.device)
    (energies,), total = _energies(delta, side, (stacked,), dtype)
    if total == 0.0:
        return {k: torch.full((len(seeds),), math.nan, dtype=torch.float64) for k in ks}
    cum = torch.cumsum(energies.reshape(len(seeds), kmax), dim=1).cpu()
    return {k: cum[:, k - 1] / total / (k / d) for k in ks}


def random_null(delta: torch.Tensor, side: Side, k: KSpec, seeds: Sequence[int]) -> tuple[float, float]:
    """(mean, sd) of RSF over Haar-random k-dim subspaces, one per seed; E[RSF] = 1 exactly.
    sd uses ddof=1 (NaN for a single seed); both are NaN for a zero delta."""
    vals = random_null_samples(delta, side, k, seeds)
    mean = float(vals.mean())
    sd = float(vals.std(correction=1)) if vals.numel() > 1 else math.nan
    return mean, sd



def gram_concentration(delta: torch.Tensor) -> float:
    """tr G² of the delta's normalised Gram matrix G = ΔWᵀΔW / ‖ΔW‖²_F (tr G = 1), i.e. Σσ⁴ / (Σσ²)²:
    1 for a rank-1 delta, 1/rank for a flat one. The read-side and write-side Gram matrices share their
    non-zero eigenvalues, so one number serves both sides; computed from the smaller Gram matrix."""
    if isinstance(delta, LowRankDelta):  # Σσ⁴ = tr((UᵀU VᵀV)²), Σσ² = tr(UᵀU VᵀV): r × r products only
        m = (delta.U.T @ delta.U) @ (delta.V.T @ delta.V)
        total = float(torch.trace(m))
        return math.nan if total == 0.0 else float(torch.trace(m @ m)) / total ** 2
    a = delta.float()
    return concentration_of_gram(a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a)


def concentration_of_gram(gram: torch.Tensor) -> float:
    """Σσ⁴ / (Σσ²)² of a delta from either of its Gram matrices (ΔWᵀΔW or ΔWΔWᵀ, however it was summed):
    ‖G‖²_F / (tr G)², in float64; NaN for a zero delta."""
    g = gram.double()
    total = float(torch.diagonal(g).sum())
    return math.nan if total == 0.0 else float(g.pow(2).sum()) / total ** 2


def exact_null_sd(concentration: float, d: int, k: int) -> float:
    """The exact sd of RSF against a Haar-random k-dim subspace of a d-dim side (its mean is exactly 1):
    Var f = 2k(d−k) / (d(d−1)(d+2)) · (tr G² − 1/d) for the captured fraction f, and RSF = f·d/k."""
    if not 1 <= k < d or not math.isfinite(concentration):
        return math.nan
    var_f = 2 * k * (d - k) / (d * (d - 1) * (d + 2)) * max(concentration - 1 / d, 0.0)
    return math.sqrt(var_f) * d / k


#: the sketched null's interval: x of the Laurent–Massart tails P(·) ≤ e^-x, two of them at 2.5 % each
_TAIL_X = math.log(2 / 0.05)


@dataclass(frozen=True)
class NullSpread:
    """Σσ⁴/(Σσ²)² of a delta (the exact null's one number) and a 95 % interval [lo, hi] on it: lo = hi for the
    exact value (a Gram matrix), the sketch's interval otherwise (:func:`spread_from_sketch`)."""

    value: float
    lo: float
    hi: float
    method: str = "exact"

    def sd(self, d: int, k: int) -> float:
        return exact_null_sd(self.value, d, k)

    def rel_error(self, d: int) -> float:
        """The 95 % bound on |sd − exact sd| / sd of the null's sd on a d-dim side (0 when exact; the factor of k
        cancels): sd ∝ √(c − 1/d) is monotone in c, so [lo, hi] maps onto the sd's interval."""
        if self.method == "exact" or math.isnan(self.value):
            return 0.0 if self.method == "exact" else math.nan
        v, lo, hi = (max(c - 1 / d, 0.0) for c in (self.value, self.lo, self.hi))
        if v == 0.0:
            return 0.0 if hi == 0.0 else math.inf
        return max(math.sqrt(hi / v) - 1, 1 - math.sqrt(lo / v))


@functools.lru_cache(maxsize=8)
def sketch_probe(d: int, m: int, seed: int, dtype: "torch.dtype | str" = "float64") -> torch.Tensor:
    """The sketch's Gaussian d × m probe Ω (drawn in float64, then cast to ``dtype``), deterministic in seed, on a
    stream apart from the Haar bases' (whose seeds are small integers). Memoised (every matrix side of this d,
    of every post, sketches with the same Ω): treat the result as read-only."""
    if as_dtype(dtype) != torch.float64:  # row by row: what products and copies read best
        return sketch_probe(d, m, seed).to(as_dtype(dtype)).contiguous()
    omega = torch.randn(d, m, generator=torch.Generator().manual_seed((1 << 40) + int(seed)), dtype=torch.float64)
    # stored column by column, as the streamed grid's Z (the transpose of its m × d sum) is: Z − cΩ then runs on
    # like layouts (mixed ones run elementwise, 0.4-0.7 ms where like ones take 0.15 at d = 2048, m = 64)
    return omega.T.contiguous().T


def spread_from_sketch(z: torch.Tensor, omega: torch.Tensor, total: float) -> NullSpread:
    """Σσ⁴/(Σσ²)² from Z = GΩ, G = ΔWᵀΔW on the d-dim side Ω lives on, and Σσ² = tr G, with a 95 % interval.

    Centred Hutchinson: with H = G − (tr G/d)·I and Y = Z − (tr G/d)Ω = HΩ, T̂ = ‖Y‖²_F/m is unbiased for
    tr H² = Σσ⁴ − (Σσ²)²/d (E ωᵀH²ω = tr H² for ω ~ N(0, I)), Var T̂ = 2 tr H⁴/m ≤ 2(tr H²)²/m, so Σσ⁴ =
    T̂ + (Σσ²)²/d is unbiased with relative standard error at most √(2/m) (the uncentred ‖Z‖²_F/m is unbiased
    too, with the larger variance 2 tr G⁴/m). T̂/T is Σ a_i χ²₁ with ‖a‖₂ = w/√m, max a ≤ w/m, w = √(tr H⁴)/tr H²
    ≤ 1, so (Laurent & Massart 2000, Lemma 1) −2w√(x/m) ≤ T̂/T − 1 ≤ 2w√(x/m) + 2wx/m but for a chance 2e^-x = 5 %;
    w comes from the same columns (the off-diagonal (YᵀY)²_ij have mean tr H⁴), clipped to 1."""
    d, m = omega.shape
    if total == 0.0 or not math.isfinite(total):
        return NullSpread(math.nan, math.nan, math.nan, "sketch")
    y = torch.sub(z.double(), omega.double(), alpha=total / d)
    gram = y.T @ y
    t = float(torch.trace(gram)) / m
    off = float(gram.pow(2).sum() - gram.diagonal().pow(2).sum()) / (m * (m - 1))
    w = min(1.0, math.sqrt(max(off, 0.0)) / t) if t > 0 else 0.0
    low = 1 - 2 * w * math.sqrt(_TAIL_X / m)
    high = 1 + 2 * w * math.sqrt(_TAIL_X / m) + 2 * w * _TAIL_X / m
    floor, s2 = total ** 2 / d, total ** 2
    return NullSpread((t + floor) / s2, (t / high + floor) / s2, (t / low + floor) / s2 if low > 0 else math.inf,
                      "sketch")


def sketch_spread(delta: "torch.Tensor | LowRankDelta", m: int, seed: int = 0) -> NullSpread:
    """The sketched Σσ⁴/(Σσ²)² of a delta held whole (on its d_in side; the streamed grid's is
    :class:`rwedit.probes.blocks.GramSketch`); a delta in factor form gets the exact value, which costs less."""
    if isinstance(delta, LowRankDelta):
        c = gram_concentration(delta)
        return NullSpread(c, c, c)
    if delta.dtype not in (torch.float32, torch.float64):
        delta = delta.float()
    omega = sketch_probe(delta.shape[1], m, seed).to(device=delta.device, dtype=delta.dtype)
    z = delta.T @ (delta @ omega)
    total = float(torch.linalg.vector_norm(delta, dtype=torch.float64)) ** 2
    return spread_from_sketch(z.double().cpu(), omega.cpu(), total)
