"""SVD structure probe for one (W_base, W_post) pair, after He & Cao: does post-training keep the base's
singular vectors up to one shared rotation and rescale the singular values?

With W_base = U Σ Vᵀ and W_post = U' Σ' V'ᵀ (top r of each): the least-squares scale s in σ' ≈ s σ,
the rotations Q_U = Uᵀ U', Q_V = Vᵀ V', how orthogonal they are, their consistency
‖Q_U − Q_V‖_F / ‖Q_U‖_F, and the reparameterisation error of W_hat = U Q Σ' (V Q)ᵀ with Q the
orthogonal polar factor of (Q_U + Q_V)/2.

Sign ambiguity: an SVD fixes each pair (u_i, v_i) only up to a shared sign, and a pair's flip
multiplies column i of BOTH Q_U and Q_V (post side) or row i of both (base side) by −1, so
‖Q_U − Q_V‖_F, ‖QᵀQ − I‖_F, Q's action in W_hat and the reparameterisation error are all
sign-safe. The same holds for any rotation shared by u and v inside a block of equal singular
values; only a top-r cut that splits such a block leaves the top-r subspace itself ambiguous.

Accuracy of method="lowrank" (torch.svd_lowrank, q = r + oversampling, niter power iterations)
versus the float64 full SVD. Bound ACCEPTED at the defaults (oversampling = r, niter = 6) on
matrices whose singular values decay at least like σ_i ∝ i^(-1/2) (`LOWRANK_BOUND`, tested in
tests/test_svd.py on a planted pair: W_post = rotated, rescaled W_base plus 1% noise):
    top-r σ relative error <= 1e-3;  |Δscale|/scale <= 1e-4;  |Δscale_residual| <= 1e-4;
    |Δconsistency| <= 1e-4;  |Δreparam_error| <= 1e-4;  |Δorth_U|, |Δorth_V| <= 5e-3.
Measured worst case over 36 such pairs (shapes 512x384 .. 1536x4096, 4096x1536; r = 16, 32, 64,
128; decay exponents 0.5, 0.7, 1.0; 2 seeds): σ 3.0e-4, scale 5.0e-6, scale_residual 6.4e-6,
consistency 4.7e-6, reparam_error 1.6e-6, orth 7.1e-4 (all <= 1e-6 at exponent 1.0).
Flatter spectra are outside the bound: at exponent 0.3 or a Gaussian (Marchenko–Pastur) matrix,
2048 x 2048, r = 64, scale/consistency/reparam_error stayed within 1e-3 but σ was off by up to
1.4e-2 and orth_U/orth_V by up to 0.2 (the subspace at the cut is not resolved): use
method="full" there. Timing guide (2 CPU cores, 2048 x 2048, r = 64): full 4-8 s, lowrank 0.6 s.
"""

from __future__ import annotations

from rwedit.errors import ConfigError
import math
import operator
from dataclasses import dataclass
from typing import Literal, Union

import torch

__all__ = [
    "LOWRANK_BOUND",
    "SVDMetrics",
    "polar_factor",
    "singular_value_replacement",
    "singular_value_scale",
    "svd_structure",
    "top_svd",
]

Rank = Union[int, Literal["full"]]
Method = Literal["auto", "full", "lowrank"]

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
_CHUNK_ELEMENTS = 1 << 22


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


# ----------------------------------------------------------------------------- helpers


def _check_pair(W_base: torch.Tensor, W_post: torch.Tensor) -> None:
    for name, w in (("W_base", W_base), ("W_post", W_post)):
        if not isinstance(w, torch.Tensor):
            raise ConfigError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
        if w.ndim != 2 or min(w.shape) == 0:
            raise ConfigError(f"{name} must be a non-empty 2-D d_out x d_in matrix, got shape {tuple(w.shape)}")
    if W_base.shape != W_post.shape:
        raise ConfigError(
            f"W_base and W_post must have the same shape, got {tuple(W_base.shape)} and {tuple(W_post.shape)}"
        )
    for name, w in (("W_base", W_base), ("W_post", W_post)):
        if not torch.isfinite(w).all():
            raise ConfigError(f"{name} has {int((~torch.isfinite(w)).sum())} non-finite (NaN/inf) entries")


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


def top_svd(
    W: torch.Tensor,
    r: int,
    method: Literal["full", "lowrank"] = "full",
    *,
    seed: int = 0,
    oversampling: int | None = None,
    niter: int = 6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-r (U, σ, V) of W in float64 (U: d_out x r, V: d_in x r), σ descending. "lowrank" runs
    torch.svd_lowrank with q = r + oversampling (default r) columns and `niter` power iterations,
    seeded by `seed` without touching the global RNG stream."""
    w = W.to(torch.float64)
    if method == "full":
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return u[:, :r], s[:r], vh[:r].T
    if method != "lowrank":
        raise ConfigError(f"method must be 'full' or 'lowrank', got {method!r}")
    p = r if oversampling is None else oversampling
    if p < 0 or niter < 0:
        raise ConfigError(f"oversampling and niter must be >= 0, got {p} and {niter}")
    q = min(r + p, min(w.shape))
    devices = [w.get_device()] if w.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        if w.is_cuda:  # svd_lowrank draws its test matrix from w's device generator
            with torch.cuda.device(w.device):
                torch.cuda.manual_seed(seed)
        else:
            torch.random.default_generator.manual_seed(seed)
        u, s, v = torch.svd_lowrank(w, q=q, niter=niter)
    return u[:, :r], s[:r], v[:, :r]


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


def _residual_norm(W: torch.Tensor, left: torch.Tensor, right_t: torch.Tensor) -> float:
    """‖W − left @ right_t‖_F in float64, one row-chunk of W upcast at a time."""
    rows = max(1, _CHUNK_ELEMENTS // W.shape[1])
    total = 0.0
    for start in range(0, W.shape[0], rows):
        block = W[start : start + rows].to(device=left.device, dtype=torch.float64)
        diff = block - left[start : start + rows] @ right_t
        total += float((diff * diff).sum())
    return math.sqrt(total)


def _nan_metrics(r: int, method: str, sb: torch.Tensor, sp: torch.Tensor, reason: str) -> SVDMetrics:
    nan = math.nan
    return SVDMetrics(r, method, nan, nan, nan, nan, nan, nan, nan, sb.cpu(), sp.cpu(), reason)


# ----------------------------------------------------------------------------- public API


def svd_structure(
    W_base: torch.Tensor,
    W_post: torch.Tensor,
    r: Rank = 64,
    method: Method = "auto",
    seed: int = 0,
    *,
    oversampling: int | None = None,
    niter: int = 6,
) -> SVDMetrics:
    """HC structure metrics (scale, rotations, consistency, reparameterisation error; see the module
    doc) of one d_out x d_in pair over the top r triplets.
    method "auto" = full SVD when min(d) <= 1024 or r == "full", else randomized (see module doc
    for the accepted lowrank error); all maths in float64."""
    _check_pair(W_base, W_post)
    rr = _resolve_rank(r, W_base.shape)
    meth = _resolve_method(method, r, W_base.shape)
    for name, w in (("W_base", W_base), ("W_post", W_post)):
        if not bool(w.any()):  # no spectrum to compare: skip the SVDs
            unknown = torch.full((rr,), math.nan, dtype=torch.float64)
            return _nan_metrics(rr, meth, unknown, unknown, f"zero {name}")
    u, sb, v = top_svd(W_base, rr, meth, seed=seed, oversampling=oversampling, niter=niter)
    u2, sp, v2 = top_svd(W_post, rr, meth, seed=seed, oversampling=oversampling, niter=niter)
    post_norm = float(torch.linalg.matrix_norm(W_post.to(torch.float64)))

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
    reparam = _residual_norm(W_post, left, right_t) / post_norm
    if rr == min(W_post.shape):
        floor = 0.0  # nothing truncated (avoid ‖W‖² − Σσ² cancellation noise)
    else:
        floor = math.sqrt(max(post_norm**2 - float(sp @ sp), 0.0)) / post_norm
    return SVDMetrics(
        r=rr,
        method=meth,
        scale=scale,
        scale_residual=scale_residual,
        orth_U=orth_u,
        orth_V=orth_v,
        consistency=consistency,
        reparam_error=reparam,
        truncation_floor=floor,
        sigma_base=sb.cpu(),
        sigma_post=sp.cpu(),
    )


def singular_value_replacement(W_base: torch.Tensor, W_post: torch.Tensor, r: Rank = 64) -> torch.Tensor:
    """HC's replacement W' = U' (s Σ) V'ᵀ: post-trained singular vectors with ALL the base singular
    values, scaled by the least-squares s fitted on the top r. Full float64 SVD; returned in
    W_post's dtype and device. Sign-safe: a shared flip of (u'_i, v'_i) cancels."""
    _check_pair(W_base, W_post)
    rr = _resolve_rank(r, W_base.shape)
    if not bool(W_base.any()):
        raise ConfigError("W_base is all zeros: it has no singular values to transplant")
    sb = torch.linalg.svdvals(W_base.to(torch.float64))
    u2, sp, vh2 = torch.linalg.svd(W_post.to(torch.float64), full_matrices=False)
    s, _ = singular_value_scale(sb[:rr], sp[:rr])
    return ((u2 * (s * sb)) @ vh2).to(dtype=W_post.dtype, device=W_post.device)
