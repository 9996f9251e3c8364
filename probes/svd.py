"""SVD structure probe for one (W_base, W_post) pair, after He & Cao: does post-training keep the base's
singular vectors up to one shared rotation and rescale the singular values?

With W_base = U Σ Vᵀ and W_post = U' Σ' V'ᵀ (top r of each): the least-squares scale s in σ' ≈ s σ,
the rotations Q_U = Uᵀ U', Q_V = Vᵀ V', how orthogonal they are, their consistency
‖Q_U − Q_V‖_F / ‖Q_U‖_F, and the reparameterisation error of W_hat = U Q Σ' (V Q)ᵀ with Q the
orthogonal polar factor of (Q_U + Q_V)/2.

The null (``null_seeds``, opt-in): the same statistics for random updates of the base with the same
‖ΔW‖_F = ‖W_post − W_base‖_F, one per seed and kind (`NULL_KINDS`), measured exactly as the observed pair (same
r, same method): "gaussian" adds an i.i.d. Gaussian ΔW; "rotation" turns W_base's top-r singular vectors by two
independent random rotations, W_base + U (Q_1 Σ Q_2ᵀ − Σ) Vᵀ with Q_i = exp(θ A_i), A_i random skew-symmetric and
θ solved for the norm (singular values kept: what a rotation without HC's shared structure gives).
:func:`hc_claims` says "yes" to an HC claim only where the observed value (mean over matrices) lies outside the
prediction interval of every null the claim is judged against (`HC_CLAIMS`), with each null's z.

Sign ambiguity: an SVD fixes each pair (u_i, v_i) only up to a shared sign, and a pair's flip
multiplies column i of BOTH Q_U and Q_V (post side) or row i of both (base side) by −1, so
‖Q_U − Q_V‖_F, ‖QᵀQ − I‖_F, Q's action in W_hat and the reparameterisation error are all
sign-safe. The same holds for any rotation shared by u and v inside a block of equal singular
values; only a top-r cut that splits such a block leaves the top-r subspace itself ambiguous.

Fast path, method="lowrank": a randomized range finder with subspace (power) iteration on WᵀW, in
W's precision (float32 for float32/bf16/fp16 storage, no float64 copy of W; small products in float64).
Each pass over W (as one tensor or as a stream of row blocks) computes Y = W Ω and Z = Wᵀ Y; the
Rayleigh–Ritz triplets of span(Ω) (σ̃, ũ = Y ŵ / σ̃, ṽ = Ω ŵ, from the q x q Gram matrix YᵀY) satisfy
W ṽ = σ̃ ũ exactly, and Z gives their residual Wᵀũ − σ̃ṽ at no extra product: an a posteriori error
estimate. The iteration stops at the first pass where every top-r triplet has relative residual
‖Wᵀũ_i − σ̃_i ṽ_i‖ / σ̃_i <= tol (`RESIDUAL_TOL`), so the number of power iterations is sized by the
spectrum actually met; when the observed residual decay predicts that tol is out of reach within
`MAX_PASSES` passes (a spectrum too flat at the cut), it stops early and the path fails loudly
(`LowRankAccuracyError`), or under method="auto" falls back to the full SVD.
Bound ACCEPTED (`LOWRANK_BOUND`, |lowrank − full float64 SVD| per metric, whenever the residual
certificate holds; tested in tests/test_svd.py, including transposed and fused-row views):
    top-r σ relative error <= 1e-3;  |Δscale|/scale <= 1e-4;  |Δscale_residual| <= 1e-4;
    |Δconsistency| <= 1e-4;  |Δreparam_error| <= 1e-4;  |Δorth_U|, |Δorth_V| <= 5e-3.
Calibration of tol (planted pairs σ_i = i^-α, post = rotated, rescaled base + 1% noise, shapes
300x640 .. 1024x768 incl. tall/wide, r = 24..64, q = 2r, α = 0.3..1.0, and a flat Gaussian 1024 x 768):
at tol 1e-1 σ, reparam_error and orth break the bound, at 1e-2 the flat matrix's orth comes within 15%
of it (4.3e-3), at 3e-3 the worst errors were σ 2.2e-5, scale 2.1e-7, scale_residual 3.7e-7,
consistency 1.9e-6, reparam_error 6.9e-7, orth 3.6e-4 (>= 14x inside the bound). Passes needed at 3e-3:
6 (α = 1), 7 (0.7), 9 (0.5), 12 (0.4), 14 (0.3), 20 (flat). Timing (2048 x 5632, r = 64, 2 shared CPU
cores): on one thread each, lowrank 1.4 s vs full 24.7 s (17.7x); on 2 threads lowrank 0.9-1.7 s vs
full 19-224 s, the full SVD slowing most under load (benchmarks/results/probes.json).
"""

from __future__ import annotations

import math
import operator
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple, Sequence, Union

from rwedit.lazy import torch

from rwedit.errors import ConfigError, RweditError
from rwedit.registry import Registry
from rwedit.stats import null_interval

__all__ = [
    "HC_CLAIMS",
    "HCClaim",
    "LOWRANK_BOUND",
    "MAX_PASSES",
    "NULL_KINDS",
    "NULL_STATS",
    "NULL_UPDATES",
    "RESIDUAL_TOL",
    "LowRankAccuracyError",
    "RangeFinderInfo",
    "SVDMetrics",
    "hc_claims",
    "null_draws",
    "polar_factor",
    "randomized_top_svd",
    "singular_value_scale",
    "svd_structure",
    "top_svd",
]

Rank = Union[int, Literal["full"]]
Method = Literal["auto", "full", "lowrank"]
#: the one default rank of the SVD probe (``rwedit svd``, a probe request, the SVD experiment): the top 64
#: triplets of each matrix (all of a smaller one's), cheap at any scale; every output that depends on it states it
DEFAULT_R = 64

#: `auto` uses the full SVD when min(d_out, d_in) is at most this.
AUTO_FULL_MAX_DIM = 1024
#: Accepted |lowrank − full| per metric on spectra decaying at least like i^(-1/2) (see module doc).
LOWRANK_BOUND = {
    "sigma_rel": 1e-3,
    "scale_rel": 1e-4,
    "scale_residual": 1e-4,
    "consistency": 1e-4,
    "reparam_error": 1e-4,
    "orth": 5e-3,
}
#: the statistics the null reports per random update (module doc)
NULL_STATS = ("scale", "scale_residual", "orth_U", "orth_V", "consistency", "reparam_error")
#: the fast path's a posteriori certificate: every top-r triplet's ‖Wᵀũ − σ̃ṽ‖ / σ̃ at most this (module doc)
RESIDUAL_TOL = 3e-3
#: passes over W (the first from a random start, then one per power iteration) before the fast path gives up
MAX_PASSES = 24
_CHUNK_ELEMENTS = 1 << 22

RowBlocks = Callable[[], Iterable["torch.Tensor"]]


class LowRankAccuracyError(RweditError, ArithmeticError):
    """The randomized top-r SVD could not certify the requested accuracy (a spectrum too flat at the cut,
    or a rank below r); the message says how far it got and to use method="full" (or "auto")."""


@dataclass(frozen=True)
class RangeFinderInfo:
    """How the randomized path ended: passes over W, basis columns q, its last a posteriori estimate
    (max relative Ritz residual of the top r), and whether that met tol."""

    passes: int
    q: int
    residual: float
    tol: float
    converged: bool
    residuals: tuple[float, ...] = ()  # the estimate after each pass (its observed decay sizes the iteration)
    norm: float = math.nan  # ‖W‖_F, from the first pass's blocks


@dataclass(frozen=True)
class SVDMetrics:
    """HC structure metrics of one pair over the top r singular triplets. Every float and σ entry
    is NaN, with `reason` set, when the pair has an all-zero matrix (no spectrum to compare)."""

    r: int
    method: str
    scale: float
    scale_residual: float
    orth_U: float
    orth_V: float
    consistency: float
    reparam_error: float
    truncation_floor: float  # ‖W_post − (its own rank-r truncation)‖_F / ‖W_post‖_F: reparam_error's floor
    sigma_base: torch.Tensor  # top-r σ (float64, CPU)
    sigma_post: torch.Tensor  # top-r σ' (float64, CPU)
    reason: str | None = None
    passes: int = 0  # randomized path: passes over each matrix (the larger of base and post); 0 for full
    residual: float = math.nan  # randomized path: its a posteriori estimate, max of base and post (<= tol)
    fallback: str | None = None  # method="auto": why the randomized path gave way to the full SVD
    null: tuple[dict, ...] = ()  # one row per (kind, seed) of the same-norm null: null, seed, NULL_STATS


# ----------------------------------------------------------------------------- helpers


def _work_dtype(w: torch.Tensor) -> torch.dtype:
    """Precision of the big products with w: float64 for float64 storage, else float32 (never a float64 copy)."""
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def _fro_norm(name: str, w: torch.Tensor) -> float:
    """‖w‖_F, refusing NaN/inf entries: one reduction in w's working precision; float64 (a copy) only when
    that gives 0 or inf, which an under- or overflow can fake, or when the entries are not finite."""
    nrm = float(torch.linalg.vector_norm(w, dtype=_work_dtype(w)))
    if nrm == 0.0 or not math.isfinite(nrm):
        nrm = float(torch.linalg.vector_norm(w.to(torch.float64)))
        if not math.isfinite(nrm):
            raise ConfigError(f"{name} has {int((~torch.isfinite(w)).sum())} non-finite (NaN/inf) entries")
    return nrm


def _check_pair(W_base: torch.Tensor, W_post: torch.Tensor) -> tuple[float, float]:
    """Refuse a malformed pair; return the Frobenius norms of W_base and W_post (0.0 for an all-zero one)."""
    for name, w in (("W_base", W_base), ("W_post", W_post)):
        if not isinstance(w, torch.Tensor):
            raise ConfigError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
        if w.ndim != 2 or min(w.shape) == 0:
            raise ConfigError(f"{name} must be a non-empty 2-D d_out x d_in matrix, got shape {tuple(w.shape)}")
    if W_base.shape != W_post.shape:
        raise ConfigError(
            f"W_base and W_post must have the same shape, got {tuple(W_base.shape)} and {tuple(W_post.shape)}"
        )
    return _fro_norm("W_base", W_base), _fro_norm("W_post", W_post)


def clip_rank(r: Rank, shape: torch.Size) -> Rank:
    """``r`` for one matrix of a model-wide setting: at most min(d_out, d_in), the singular values it has
    (``"full"`` stays ``"full"``)."""
    return r if r == "full" else min(int(r), min(shape))


def _resolve_rank(r: Rank, shape: torch.Size) -> int:
    m = min(shape)
    if isinstance(r, str) and r == "full":
        return m
    try:
        if isinstance(r, bool):
            raise TypeError
        r = operator.index(r)
    except TypeError:
        raise ConfigError(f"r must be a positive int or 'full', got {r!r}") from None
    if not 1 <= r <= m:
        raise ConfigError(f"r={r} is out of range for a {tuple(shape)} matrix: need 1 <= r <= {m}, or r='full'")
    return r


def _resolve_method(method: str, r: Rank, shape: torch.Size) -> str:
    if method not in ("auto", "full", "lowrank"):
        raise ConfigError(f"method must be 'auto', 'full' or 'lowrank', got {method!r}")
    if method == "auto":
        return "full" if (r == "full" or min(shape) <= AUTO_FULL_MAX_DIM) else "lowrank"
    return method


def top_svd(W: torch.Tensor, r: int, method: Literal["full", "lowrank", "auto"] = "full", *, seed: int = 0,
            oversampling: int | None = None, tol: float = RESIDUAL_TOL, max_passes: int = MAX_PASSES
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-r (U, σ, V) of W in float64 (U: d_out x r, V: d_in x r), σ descending. "full" is the float64
    LAPACK SVD; "lowrank" is :func:`randomized_top_svd` and raises :class:`LowRankAccuracyError` when it
    cannot certify ``tol``; "auto" tries "lowrank" and falls back to "full" then."""
    if method not in ("full", "lowrank", "auto"):
        raise ConfigError(f"method must be 'full', 'lowrank' or 'auto', got {method!r}")
    if method == "full":
        u, s, vh = torch.linalg.svd(W.to(torch.float64), full_matrices=False)
        return u[:, :r], s[:r], vh[:r].T
    try:
        u, s, v, _ = randomized_top_svd(W, r, seed=seed, oversampling=oversampling, tol=tol, max_passes=max_passes)
    except LowRankAccuracyError:
        if method == "lowrank":
            raise
        return top_svd(W, r, "full")
    return u, s, v


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the small dense steps (q x q eigenproblems, n x q products, r x r metrics) on one thread: on a
    busy machine a multithreaded LAPACK call that small waits on descheduled threads (a 128 x 128 eigh
    took 1.4 s on 2 threads vs 1 ms on one, with 4 other processes on 2 cores)."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _orthonormalize(Z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Orthonormal basis of span(Z) (n x q, q <= n, float64) in ``dtype``: Z V Λ^(-1/2) from the eigenpairs of
    the q x q Gram matrix (two products, cheaper than Householder QR; orthonormal to ~1e-16 cond(ZᵀZ)),
    Householder QR when ZᵀZ is too ill-conditioned for that."""
    lam, vec = torch.linalg.eigh(Z.T @ Z)
    if float(lam[0]) > float(lam[-1]) * 1e-9:
        return (Z @ (vec / lam.sqrt())).to(dtype)
    return torch.linalg.qr(Z)[0].to(dtype)


def randomized_top_svd(rows: torch.Tensor | RowBlocks, r: int, *, oversampling: int | None = None,
                       tol: float = RESIDUAL_TOL, max_passes: int = MAX_PASSES, seed: int = 0,
                       dtype: torch.dtype | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, RangeFinderInfo]:
    """Top-r (U, σ, V) of a d_out x d_in matrix W in float64, certified to relative Ritz residual <= tol
    (module doc), and a :class:`RangeFinderInfo`; raises :class:`LowRankAccuracyError` when it cannot.

    ``rows`` is W itself (any strides: a transposed or row-gathered view is fine) or a zero-argument
    callable returning a fresh iterable of W's row blocks, top to bottom, the same every call (one call
    per pass; each block is used once, so a stream never holds W whole). q = r + oversampling (default r)
    basis columns, at most min(d_out, d_in); products run in ``dtype`` (default float32, float64 when W
    is float64) on the blocks' device, on torch's intra-op threads (torch.get_num_threads()). ``seed``
    fixes the random start without touching the global RNG."""
    if isinstance(rows, torch.Tensor):
        if rows.ndim != 2 or min(rows.shape) == 0:
            raise ConfigError(f"W must be a non-empty 2-D d_out x d_in matrix, got shape {tuple(rows.shape)}")
        dt = dtype or (torch.float64 if rows.dtype == torch.float64 else torch.float32)
        W = rows.to(dt)  # a copy only when W is stored in another precision

        def blocks() -> Iterable[torch.Tensor]:
            return (W,)
    else:
        blocks, dt = rows, dtype
    p = r if oversampling is None else int(oversampling)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"r must be a positive int, got {r!r}")
    if p < 0 or max_passes < 1 or not 0 < tol < 1:
        raise ConfigError(f"need oversampling >= 0, max_passes >= 1 and 0 < tol < 1; got {p}, {max_passes}, {tol}")

    omega = None
    history: list[float] = []
    sq = 0.0
    for k in range(1, max_passes + 1):
        ys, z = [], None
        for blk in blocks():
            if omega is None:  # first block of the first pass: the sizes and the random start
                if blk.ndim != 2 or min(blk.shape) == 0:
                    raise ConfigError(f"row blocks must be non-empty 2-D tensors, got shape {tuple(blk.shape)}")
                dt = dt or (torch.float64 if blk.dtype == torch.float64 else torch.float32)
                n = blk.shape[1]
                gen = torch.Generator().manual_seed(seed)
                start = torch.randn(n, min(r + p, n), generator=gen, dtype=torch.float64)
                with _one_thread():
                    omega = torch.linalg.qr(start.to(blk.device))[0].to(dt)
            if blk.ndim != 2 or blk.shape[1] != omega.shape[0]:
                raise ConfigError(f"row blocks must be 2-D with {omega.shape[0]} columns, got shape {tuple(blk.shape)}")
            blk = blk.to(device=omega.device, dtype=dt)
            if k == 1:
                sq += float(torch.linalg.vector_norm(blk)) ** 2
            y = blk @ omega
            ys.append(y)
            z = blk.T @ y if z is None else z.addmm_(blk.T, y)
        if z is None:
            raise ConfigError("the row blocks were empty: W needs at least one row")
        if k == 1 and not (math.isfinite(sq) and sq > 0.0):
            raise ConfigError(f"W is all zeros or has non-finite (NaN/inf) entries (‖W‖² = {sq}): no spectrum to find")
        y = torch.cat(ys) if len(ys) > 1 else ys[0]
        if k > 1 and y.shape[0] != m:
            raise ConfigError(f"the row blocks held {y.shape[0]} rows on pass {k} and {m} before: they must be "
                              "the same every call")
        m, n = y.shape[0], omega.shape[0]
        if r > min(m, n):
            raise ConfigError(f"r={r} is out of range for a {m} x {n} matrix: need 1 <= r <= {min(m, n)}")
        if omega.shape[1] > m:  # more columns than W has rows: keep the basis within W's rank
            omega, y, z = omega[:, :m], y[:, :m], z[:, :m]
        q = omega.shape[1]
        with _one_thread():  # the small steps
            # Rayleigh–Ritz on span(Ω): YᵀY = Ŵ diag(σ̃²) Ŵᵀ, ṽ = Ω ŵ, ũ = Y ŵ / σ̃ (so W ṽ = σ̃ ũ);
            # the residual Wᵀũ − σ̃ṽ = Z ŵ / σ̃ − Ω ŵ σ̃
            y64 = y.to(torch.float64)
            lam, what = torch.linalg.eigh(y64.T @ y64)
            lam, what = lam.flip(0)[:r], what.flip(1)[:, :r]
            sig = lam.clamp_min(0).sqrt()
            if not float(sig[-1]) > float(sig[0]) * 1e-6:
                raise LowRankAccuracyError(
                    f"randomized top-{r} SVD of a {m} x {n} matrix: σ_{r}/σ_1 = {float(sig[-1] / sig[0]):.1e}, the "
                    f"matrix has (numerical) rank below r = {r}; use method='full' or a smaller r")
            om64 = omega.to(torch.float64)
            z64 = z.to(torch.float64)
            res = z64 @ (what / sig) - om64 @ (what * sig)
            err = float((torch.linalg.vector_norm(res, dim=0) / sig).max())
            history.append(err)
            if err <= tol:
                info = RangeFinderInfo(k, q, err, tol, True, tuple(history), math.sqrt(sq))
                return (y64 @ what) / sig, sig, om64 @ what, info
            if 4 <= k < max_passes:  # the observed decay over the last 3 passes: the passes tol still needs
                rate = (history[-1] / history[-4]) ** (1 / 3)
                need = math.inf if rate >= 1 else math.log(tol / err) / math.log(rate)
                if k + need > max_passes:
                    break
            omega = _orthonormalize(z64, dt)
    raise LowRankAccuracyError(
        f"randomized top-{r} SVD of a {m} x {n} matrix (q = {q}) did not reach relative residual {tol:.0e}: "
        f"{history[-1]:.1e} after {len(history)} passes, and its decay ({', '.join(f'{x:.1e}' for x in history[-3:])}) "
        f"predicts more than max_passes = {max_passes}: the spectrum decays too slowly at the cut for the "
        f"randomized path; use method='full' (or 'auto', which falls back to it)")


def singular_value_scale(sigma_base: torch.Tensor, sigma_post: torch.Tensor) -> tuple[float, float]:
    """Least-squares s in σ' ≈ s σ, s = ⟨σ,σ'⟩/⟨σ,σ⟩, and the residual ‖σ' − sσ‖/‖σ'‖."""
    sb, sp = sigma_base.to(torch.float64), sigma_post.to(torch.float64)
    s = _ratio(float(sb @ sp), float(sb @ sb))
    resid = _ratio(float(torch.linalg.vector_norm(sp - s * sb)), float(torch.linalg.vector_norm(sp)))
    return s, resid


def _ratio(num: float, den: float) -> float:
    """num / den, NaN instead of ZeroDivisionError when den == 0."""
    return num / den if den != 0.0 else math.nan


def polar_factor(M: torch.Tensor) -> torch.Tensor:
    """Orthogonal polar factor of a square matrix: with M = A S Bᵀ, the nearest orthogonal A Bᵀ."""
    a, _, bh = torch.linalg.svd(M.to(torch.float64))
    return a @ bh


def _chunks(W: torch.Tensor) -> RowBlocks:
    """W as row blocks of about _CHUNK_ELEMENTS entries."""
    rows = max(1, _CHUNK_ELEMENTS // W.shape[1])
    return lambda: (W[start : start + rows] for start in range(0, W.shape[0], rows))


def _residual_norm(rows: RowBlocks, left: torch.Tensor, right_t: torch.Tensor) -> float:
    """‖W − left @ right_t‖_F over W's row blocks, each in its working precision, summed in float64."""
    total, start = 0.0, 0
    for block in rows():
        dt = _work_dtype(block)
        block = block.to(device=left.device, dtype=dt)
        stop = start + block.shape[0]
        total += float(torch.linalg.vector_norm(block - left[start:stop].to(dt) @ right_t.to(dt))) ** 2
        start = stop
    if start != left.shape[0]:
        raise ConfigError(f"the row blocks held {start} rows on this pass and {left.shape[0]} before: they must "
                          "be the same every call")
    return math.sqrt(total)


def _nan_metrics(r: int, method: str, sb: torch.Tensor, sp: torch.Tensor, reason: str) -> SVDMetrics:
    nan = math.nan
    return SVDMetrics(r, method, nan, nan, nan, nan, nan, nan, nan, sb.cpu(), sp.cpu(), reason)


# ----------------------------------------------------------------------------- public API


def svd_structure(W_base: torch.Tensor, W_post: torch.Tensor, r: Rank = DEFAULT_R, method: Method = "auto",
                  seed: int = 0, *, oversampling: int | None = None, tol: float = RESIDUAL_TOL,
                  max_passes: int = MAX_PASSES, null_seeds: Sequence[int] = (), null_key: str = "") -> SVDMetrics:
    """HC structure metrics (scale, rotations, consistency, reparameterisation error; see the module
    doc) of one d_out x d_in pair over the top r triplets.
    method "full" = float64 LAPACK SVD; "lowrank" = :func:`randomized_top_svd` (within `LOWRANK_BOUND` of
    "full" when it certifies ``tol``, else :class:`LowRankAccuracyError`); "auto" = full when min(d) <= 1024
    or r == "full", else lowrank, falling back to full (``fallback`` says why) where lowrank cannot certify.
    ``null_seeds`` (opt-in): the same statistics for one same-norm random update per seed and null kind
    (``null``; one more top-r SVD each, same r and method); ``null_key`` (e.g. "layer.role") makes the draws
    of different matrices independent."""
    norm_base, post_norm = _check_pair(W_base, W_post)
    rr = _resolve_rank(r, W_base.shape)
    meth = _resolve_method(method, r, W_base.shape)
    for name, nrm in (("W_base", norm_base), ("W_post", post_norm)):
        if nrm == 0.0:  # no spectrum to compare: skip the SVDs
            unknown = torch.full((rr,), math.nan, dtype=torch.float64)
            return _nan_metrics(rr, meth, unknown, unknown, f"zero {name}")
    passes, resid, fallback = 0, math.nan, None
    if meth == "lowrank":
        kw = dict(seed=seed, oversampling=oversampling, tol=tol, max_passes=max_passes)
        try:
            u, sb, v, info_b = randomized_top_svd(W_base, rr, **kw)
            u2, sp, v2, info_p = randomized_top_svd(W_post, rr, **kw)
            passes, resid = max(info_b.passes, info_p.passes), max(info_b.residual, info_p.residual)
        except LowRankAccuracyError as e:
            if method != "auto":
                raise
            meth, fallback = "full", str(e)
    if meth == "full":
        u, sb, v = top_svd(W_base, rr, "full")
        u2, sp, v2 = top_svd(W_post, rr, "full")

    m = _metrics(u, sb, v, u2, sp, v2, _chunks(W_post), post_norm, min(W_post.shape), meth, passes, resid, fallback)
    if not null_seeds:
        return m
    dt = _work_dtype(W_base)
    target = float(torch.linalg.vector_norm(W_post.to(dt) - W_base.to(dt), dtype=torch.float64))
    how = "full" if meth == "full" else ("auto" if method == "auto" else "lowrank")
    rows = []
    for kind in NULL_UPDATES:
        for sd in null_seeds:
            gen = torch.Generator().manual_seed(zlib.crc32(f"{null_key}:{kind}:{int(sd)}".encode()))
            W = W_base if target == 0.0 else NULL_UPDATES[kind](W_base, u, sb, v, target, gen)
            if W is None:  # the update cannot be built at this norm: no draw
                rows.append({"null": kind, "seed": int(sd), **dict.fromkeys(NULL_STATS, math.nan)})
                continue
            u2, sp, v2 = top_svd(W, rr, how, seed=seed, oversampling=oversampling, tol=tol, max_passes=max_passes)
            n = _metrics(u, sb, v, u2, sp, v2, _chunks(W), _fro_norm("null", W), min(W.shape), meth, 0, math.nan, None)
            rows.append({"null": kind, "seed": int(sd), **{k: getattr(n, k) for k in NULL_STATS}})
    return replace(m, null=tuple(rows))


def _gaussian_update(W: torch.Tensor, u, sb, v, target: float, gen: torch.Generator) -> torch.Tensor:
    """W + G·target/‖G‖_F, G i.i.d. standard Gaussian (in W's working precision)."""
    g = torch.randn(W.shape, generator=gen, dtype=_work_dtype(W)).to(W.device)
    return W.to(g.dtype) + g.mul_(target / float(torch.linalg.vector_norm(g, dtype=torch.float64)))


def _rotation_update(W: torch.Tensor, u: torch.Tensor, sb: torch.Tensor, v: torch.Tensor, target: float,
                     gen: torch.Generator) -> torch.Tensor | None:
    """W + U (Q_1 Σ Q_2ᵀ − Σ) Vᵀ over W's top-r triplets (U, Σ, V): its singular vectors turned by two
    independent rotations Q_i = exp(θ A_i), A_i = (G_i − G_iᵀ)/√2 with G_i i.i.d. Gaussian, θ solved (brentq)
    so that the update's norm, ‖Q_1 Σ Q_2ᵀ − Σ‖_F, is ``target``; None when no θ below a half turn reaches it."""
    from scipy.optimize import brentq

    r = sb.shape[0]
    a = [(g - g.T) / math.sqrt(2) for g in (torch.randn(r, r, generator=gen, dtype=torch.float64) for _ in "12")]
    sig = torch.diag(sb.to(torch.float64).cpu())

    def middle(theta: float) -> torch.Tensor:
        return torch.linalg.matrix_exp(theta * a[0]) @ sig @ torch.linalg.matrix_exp(theta * a[1]).T - sig

    with _one_thread():
        # with iA_1 = V diag(λ) Vᴴ, iA_2 = W diag(μ) Wᴴ and C = Vᴴ Σ W (so Σ|C_jk|² = ‖Σ‖²), the update's norm²
        # 2‖Σ‖² − 2 tr(Σ Q_1 Σ Q_2ᵀ) is 4 Σ_jk |C_jk|² sin²(θ(μ_k − λ_j)/2): O(r²) per θ, no matrix exponential
        (lam, vec), (mu, wec) = (torch.linalg.eigh(1j * x.to(torch.complex128)) for x in a)
        weight = (vec.mH @ sig.to(torch.complex128) @ wec).abs().square()
        half_freq = (mu[None, :] - lam[:, None]) / 2

        def gap(theta: float) -> float:
            return 2 * math.sqrt(float((weight * torch.sin(theta * half_freq).square()).sum())) - target

        turn = math.pi / max(float(torch.linalg.matrix_norm(x, ord=2)) for x in a)  # a half turn of the fastest plane
        hi = target / float(torch.linalg.matrix_norm(a[0] @ sig - sig @ a[1]))  # the first-order θ
        while gap(hi) < 0:
            if hi >= turn:
                return None
            hi = min(2 * hi, turn)
        theta = brentq(gap, 0.0, hi, xtol=1e-15 * hi, rtol=1e-14)
        step = (u @ middle(theta).to(u.device)) @ v.T
    dt = _work_dtype(W)
    return W.to(dt) + step.to(dt)


#: the null's random updates of W_base, by name: (W_base, U, σ, V of its top r, ‖ΔW‖_F, generator) -> W_null
NULL_UPDATES: Registry[Callable] = Registry("SVD null update")
NULL_UPDATES.register("gaussian", _gaussian_update)
NULL_UPDATES.register("rotation", _rotation_update)
NULL_KINDS = tuple(NULL_UPDATES)


class HCClaim(NamedTuple):
    """One HC claim: the statistic it rests on (its distance from ``about`` when given: for s, how far from no
    rescaling), the side of the null its value must lie on (below, above, either) and the nulls it is judged
    against (the rotation null keeps the singular values exactly, so it says nothing about their scaling)."""

    claim: str
    stat: str
    side: str
    nulls: tuple[str, ...]
    about: float | None = None


HC_CLAIMS = (
    HCClaim("near-uniform singular-value scaling", "scale_residual", "below", ("gaussian",)),
    HCClaim("singular values rescaled (s away from 1)", "scale", "above", ("gaussian",), 1.0),
    HCClaim("one rotation shared by both sides", "consistency", "below", NULL_KINDS),
    HCClaim("base vectors + one shared rotation reproduce W_post", "reparam_error", "below", NULL_KINDS),
)


def null_draws(rows: Iterable[dict]) -> dict[str, dict[str, list[float]]]:
    """Per null kind and statistic, the K draws of the statistic's mean over matrices: ``rows`` are the null
    rows of every matrix (:attr:`SVDMetrics.null`; extra keys such as layer and role are ignored), draw k the
    mean of the NaN-free rows of the k-th seed."""
    acc: dict = {}
    for row in rows:
        for stat in NULL_STATS:
            x = row.get(stat)
            if x is not None and math.isfinite(float(x)):
                acc.setdefault(str(row["null"]), {}).setdefault(stat, {}).setdefault(int(row["seed"]), []).append(
                    float(x))
    return {kind: {stat: [sum(v) / len(v) for _, v in sorted(seeds.items())] for stat, seeds in stats.items()}
            for kind, stats in acc.items()}


def hc_claims(observed: dict, draws: dict[str, dict[str, list[float]]]) -> list[dict]:
    """HC's verdicts (`HC_CLAIMS`): each claim's observed value (mean over matrices) against the
    :class:`~rwedit.stats.NullInterval` of every null it is judged against (``draws``: :func:`null_draws`).
    ``answer`` is "yes" only where the value lies outside every one of them on the claim's side, "no" where
    inside one (or beyond it on the other side), "no null" without two draws of each; ``found`` says which;
    ``measure`` names the compared value, ``observed`` is it; ``null`` states each null's mean ± sd, 95%
    interval of one draw and z, ``numbers`` the value and that; per null the flat ``<null>_mean``, ``_sd``,
    ``_low``, ``_high``, ``_z`` and ``_draws``."""
    out = []
    for c in HC_CLAIMS:
        def f(v):
            return v if c.about is None else abs(v - c.about)

        x = observed.get(c.stat)
        x = math.nan if x is None else f(float(x))
        ivs = {k: null_interval([f(d) for d in draws.get(k, {}).get(c.stat, [])]) for k in c.nulls}
        measure = c.stat if c.about is None else f"|{c.stat} − {c.about:g}|"
        row = {"claim": c.claim, "stat": c.stat, "measure": measure, "side": c.side, "observed": x}
        for k, iv in ivs.items():
            row.update({f"{k}_mean": iv.estimate, f"{k}_sd": iv.sd, f"{k}_low": iv.low, f"{k}_high": iv.high,
                        f"{k}_z": iv.z(x) if iv.n > 1 else math.nan, f"{k}_draws": iv.n})
        if not math.isfinite(x) or any(iv.n < 2 for iv in ivs.values()):
            answer, found = "no null", "no null measured: no verdict"
        else:
            where = {k: "below" if x < iv.low else "above" if x > iv.high else "within" for k, iv in ivs.items()}
            inside = [k for k, w in where.items() if w == "within"]
            answer = "yes" if all(iv.outside(x, c.side) for iv in ivs.values()) else "no"
            found = ("yes" if answer == "yes" else
                     f"no: indistinguishable from a random update of the same norm ({', '.join(inside)})" if inside
                     else "no: " + ", ".join(f"{w} the {k} null" for k, w in where.items())
                     + f" (the claim needs {c.side})")
        null = "; ".join(f"{k} {iv.estimate:.4g} ± {iv.sd:.2g} [{iv.low:.4g}, {iv.high:.4g}], z {row[f'{k}_z']:.3g}"
                         for k, iv in ivs.items() if iv.n > 1) or "none"
        out.append({**row, "answer": answer, "found": found, "null": null,
                    "numbers": f"{measure} {x:.4g} vs random same-norm updates: {null}"})
    return out


def _metrics(u: torch.Tensor, sb: torch.Tensor, v: torch.Tensor, u2: torch.Tensor, sp: torch.Tensor, v2: torch.Tensor,
             post_rows: RowBlocks, post_norm: float, d_min: int, meth: str, passes: int, resid: float,
             fallback: str | None) -> SVDMetrics:
    """The HC metrics from both top-r SVDs (float64); W_post is read once more, row block by row block."""
    rr = sb.shape[0]
    with _one_thread():  # r x r and d x r products
        scale, scale_residual = singular_value_scale(sb, sp)
        eye = torch.eye(rr, dtype=torch.float64, device=u.device)
        q_u = u.T @ u2
        q_v = v.T @ v2
        orth_u = float(torch.linalg.matrix_norm(q_u.T @ q_u - eye))
        orth_v = float(torch.linalg.matrix_norm(q_v.T @ q_v - eye))
        consistency = _ratio(float(torch.linalg.matrix_norm(q_u - q_v)), float(torch.linalg.matrix_norm(q_u)))

        q = polar_factor(0.5 * (q_u + q_v))
        # W_hat = (U Q) Σ' (V Q)ᵀ, applied chunk-wise: left = U Q Σ', right_t = (V Q)ᵀ
        left = (u @ q) * sp
        right_t = (v @ q).T
    reparam = _residual_norm(post_rows, left, right_t) / post_norm
    if rr == d_min:
        floor = 0.0  # nothing truncated (avoid ‖W‖² − Σσ² cancellation noise)
    else:
        floor = math.sqrt(max(post_norm**2 - float(sp @ sp), 0.0)) / post_norm
    return SVDMetrics(r=rr, method=meth, scale=scale, scale_residual=scale_residual, orth_U=orth_u, orth_V=orth_v,
                      consistency=consistency, reparam_error=reparam, truncation_floor=floor, sigma_base=sb.cpu(),
                      sigma_post=sp.cpu(), passes=passes, residual=resid, fallback=fallback)
