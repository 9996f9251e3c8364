"""Weight constructions of He & Cao's SVD-structure tests (is post-training carried by the singular vectors or
the singular values of each matrix?), each ``W_cond`` = the post residual of its top-r triplets + a replaced top-r
part, written with :func:`rwedit.architectures.set_weight`. Definitions and what each keeps exactly: the SVD
structure experiment in docs/experiments.md. All maths in float64 on the weights' device."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal, Union

import torch

from rwedit.probes.svd import AUTO_FULL_MAX_DIM, polar_factor, singular_value_scale, top_svd
from rwedit.errors import ConfigError

__all__ = ["CONDITION_KINDS", "RANDOM_KINDS", "Decomposition", "condition_matrix", "decompose", "haar_orthogonal",
           "matrix_seed"]

#: every construction this module knows, in report order
CONDITION_KINDS: tuple[str, ...] = ("post", "sv_replacement", "reparam", "swap", "disrupt_left_random",
                                    "disrupt_right_random")
#: constructions that draw a random orthogonal matrix (one condition per seed)
RANDOM_KINDS: tuple[str, ...] = ("disrupt_left_random", "disrupt_right_random")
#: the kind of a construction's same-norm random control (SVD experiment) is this prefix + the construction's kind
NULL_PREFIX = "null_"

Rank = Union[int, Literal["full"]]


# ----------------------------------------------------------------------------- maths


@dataclass(frozen=True)
class Decomposition:
    """Top-r triplets of W_base (U, sb, V) and W_post (Up, sp, Vp) in float64, and the post residual E."""

    U: torch.Tensor
    sb: torch.Tensor
    V: torch.Tensor
    Up: torch.Tensor
    sp: torch.Tensor
    Vp: torch.Tensor
    residual: torch.Tensor  # E = W_post − Up diag(sp) Vpᵀ (float64)
    r: int
    method: str


def _rank(rank: Rank, shape: torch.Size) -> int:
    m = min(shape)
    if rank == "full":
        return m
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"rank must be a positive int or 'full', got {rank!r}")
    return min(rank, m)


def decompose(W_base: torch.Tensor, W_post: torch.Tensor, rank: Rank = "full", method: str = "auto",
              seed: int = 0) -> Decomposition:
    """Top-r SVDs of both matrices (``method``: "full", "lowrank" — refused where its error bound cannot be
    certified — or "auto": the full SVD when ``rank="full"`` or min(d) <= 1024, else the randomized one with
    the full SVD as its fallback) and the post residual ``E``."""
    if W_base.shape != W_post.shape or W_base.ndim != 2:
        raise ConfigError(f"W_base and W_post must be matrices of one shape, got {tuple(W_base.shape)} "
                         f"and {tuple(W_post.shape)}")
    for name, w in (("W_base", W_base), ("W_post", W_post)):
        if not bool(torch.isfinite(w).all()):
            raise ConfigError(f"{name} has non-finite entries")
        if not bool(w.any()):
            raise ConfigError(f"{name} is all zeros: it has no singular vectors to take a rotation from")
    r = _rank(rank, W_base.shape)
    if method == "auto" and (r == min(W_base.shape) or min(W_base.shape) <= AUTO_FULL_MAX_DIM):
        method = "full"  # else "auto": the certified randomized SVD, the full one where it cannot certify
    if method not in ("full", "lowrank", "auto"):
        raise ConfigError(f"method must be 'auto', 'full' or 'lowrank', got {method!r}")
    U, sb, V = top_svd(W_base, r, method, seed=seed)
    Up, sp, Vp = top_svd(W_post, r, method, seed=seed)
    E = W_post.to(torch.float64) - (Up * sp) @ Vp.T
    return Decomposition(U, sb, V, Up, sp, Vp, E, r, method)


def haar_orthogonal(n: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A Haar-random n x n orthogonal matrix (float64): QR of a Gaussian matrix with the signs of R's
    diagonal moved into Q (Mezzadri 2007), drawn from its own generator (the global RNG is untouched)."""
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, n, generator=g, dtype=torch.float64)
    q, rr = torch.linalg.qr(z)
    d = torch.sign(torch.diagonal(rr))
    d[d == 0] = 1.0
    return (q * d).to(device)


def matrix_seed(seed: int, layer: int | None, role: str, kind: str) -> int:
    """A stable per-matrix seed, so that a condition's R differs between matrices and is reproducible."""
    return zlib.crc32(f"{seed}:{layer}:{role}:{kind}".encode())


def condition_matrix(kind: str, W_base: torch.Tensor, W_post: torch.Tensor, *, rank: Rank = "full",
                     fit_r: int = 64, method: str = "auto", seed: int | None = None,
                     dec: Decomposition | None = None) -> torch.Tensor:
    """``W_cond`` of one condition (docs/experiments.md), in W_post's dtype and device.
    ``seed`` (required for the random kinds) seeds R directly: derive one per matrix with
    :func:`matrix_seed`. Pass ``dec`` to reuse a :func:`decompose` of the same pair."""
    if kind not in CONDITION_KINDS:
        raise ConfigError(f"unknown condition kind {kind!r}; kinds: {', '.join(CONDITION_KINDS)}")
    if kind in RANDOM_KINDS and seed is None:
        raise ConfigError(f"{kind} draws a random orthogonal matrix: give a seed")
    d = dec if dec is not None else decompose(W_base, W_post, rank, method)
    U, sb, V, Up, sp, Vp, r = d.U, d.sb, d.V, d.Up, d.sp, d.Vp, d.r
    if kind == "post":
        C = (Up * sp) @ Vp.T
    elif kind == "sv_replacement":
        f = max(1, min(int(fit_r), r))
        s, _ = singular_value_scale(sb[:f], sp[:f])
        C = (Up * (s * sb)) @ Vp.T
    elif kind == "reparam":
        Q = polar_factor(0.5 * (U.T @ Up + V.T @ Vp))
        C = ((U @ Q) * sp) @ (V @ Q).T
    elif kind == "swap":
        C = ((U @ polar_factor(V.T @ Vp)) * sp) @ Vp.T
    elif kind == "disrupt_left_random":
        R = haar_orthogonal(r, seed, U.device)
        C = ((U @ R) * sp) @ Vp.T
    else:  # disrupt_right_random
        R = haar_orthogonal(r, seed, U.device)
        C = (Up * sp) @ (V @ R).T
    return (d.residual + C).to(dtype=W_post.dtype, device=W_post.device)
