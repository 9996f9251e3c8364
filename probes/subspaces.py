"""Subspaces the probes measure against: activation eigenspaces, the unembedding's
prediction subspace and Haar-random null subspaces. Pure tensor maths, float64 throughout."""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import numpy as np

from rwedit.lazy import torch

from rwedit.errors import ConfigError

__all__ = ["MatrixOverwritten", "Spectrum", "check_k", "eig_subspace", "gram_matrix", "haar_basis", "kept_solver",
           "haar_from_generator", "prediction_spectrum"]

#: Default number of unembedding rows upcast to float64 at a time (4096 rows x 4096 cols = 128 MiB).
DEFAULT_CHUNK_ROWS = 4096
#: d from which `eig_subspace(..., keep=m)` computes only the kept eigenvectors (:func:`_kept_spectrum`) instead of
#: all of them. Measured, m 256, 1 thread of a loaded 2-core Xeon, full eigh vs kept: d 1024 0.30 vs 0.40 s; 1536
#: 0.98 vs 0.95; 2048 2.0 vs 1.9; 3072 6.7 vs 4.7; 4864 34-41 vs 26 (full rank), 21 vs 17 (rank 1024). The
#: reduction dominates both (memory-bound: ~20 s at 4864), which is why the gain stays below 2x
KEPT_MIN_D = 1536
#: dtypes whose products are exact in float32 (8- and 11-bit significands), and the rows of one float32 partial Gram:
#: each partial's float64 add costs two passes over a d² float64 matrix, as dear as a product of ~1000 rows, so
#: 4096 rows (the 1.1B pair's 32000 × 2048 unembedding: 0.95-1.0 s at 1024 rows, 0.80 s at 4096; its largest
#: error 6.2e-7 then 6.8e-7 of Σ|w w|, against the worst case 4096·2⁻²⁴ = 2.4e-4)
HALF_DTYPES = ("bfloat16", "float16")
HALF_CHUNK_ROWS = 4096
#: a float32 Gram whose diagonal stays below this (2¹²⁶, a quarter of float32's largest) has every entry and every
#: partial sum finite
_FLOAT32_SAFE = 2.0 ** 126


def check_k(k: int, d: int, what: str = "k") -> int:
    """Return k as an int if 1 <= k <= d, else a :class:`ConfigError` that says how to fix it."""
    try:
        if isinstance(k, bool):
            raise TypeError
        k = operator.index(k)  # ints and numpy integers; floats and bools are refused
    except TypeError:
        raise ConfigError(f"{what}={k!r} must be an integer with 1 <= {what} <= d={d}") from None
    if not 1 <= k <= d:
        raise ConfigError(f"{what}={k} is out of range for a space of dimension d={d}: need 1 <= {what} <= d; "
                          f"pass a {what} in [1, {d}] (clip a k grid to d before calling)")
    return k


def haar_from_generator(d: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """Haar-random orthonormal d x k basis drawn from `generator` (QR of a Gaussian, sign-fixed)."""
    k = check_k(k, d)
    g = torch.randn(d, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    # Without the sign fix QR's convention (positive-ish diag(R) is not guaranteed) biases Q.
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return q * signs


def haar_basis(d: int, k: int, seed: int) -> torch.Tensor:
    """Orthonormal basis (d x k, float64) of a Haar-random k-dim subspace, deterministic in seed.
    Memoised (a grid draws the same seeds for every layer): treat the result as read-only."""
    k = check_k(k, d)  # before the cache: int() would turn k=True into 1
    return _haar_cached(int(d), k, int(seed))


@functools.lru_cache(maxsize=256)
def _haar_cached(d: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return haar_from_generator(d, k, gen)


def _fix_signs(vectors: torch.Tensor) -> torch.Tensor:
    """Flip each column so its largest-magnitude entry is positive (a deterministic sign rule)."""
    idx = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[idx, torch.arange(vectors.shape[1], device=vectors.device)])
    signs[signs == 0] = 1.0
    return vectors * signs


@dataclass(frozen=True)
class Spectrum:
    """Eigen-decomposition of a symmetric d x d matrix: eigenvalues descending (float64), eigenvectors as
    sign-fixed columns in that order. A `truncated` one (what the statistics cache stores) keeps every eigenvalue
    but only the top m columns and, in `low_vectors`, the lowest ones (lowest first)."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    low_vectors: torch.Tensor | None = None

    @property
    def d(self) -> int:
        """Dimension of the space."""
        return int(self.eigenvalues.shape[0])

    @property
    def complete(self) -> bool:
        """Whether every eigenvector is held (not a truncated spectrum)."""
        return self.eigenvectors.shape[1] == self.d

    @property
    def n_top(self) -> int:
        return int(self.eigenvectors.shape[1])

    @property
    def n_bottom(self) -> int:
        if self.complete:
            return self.d
        return 0 if self.low_vectors is None else int(self.low_vectors.shape[1])

    def top(self, k: int, copy: bool = True) -> torch.Tensor:
        """d x k orthonormal basis of the top-k (highest-eigenvalue) directions, largest first; ``copy=False``: a
        view of the stored vectors, for a caller that copies them itself (never write to it)."""
        k = check_k(k, self.d)
        if k > self.n_top:
            raise ConfigError(f"this spectrum keeps only its top {self.n_top} eigenvectors; k={k} needs the full "
                             f"decomposition (ActivationStats.spectrum(..., top={k}) recomputes it)")
        return self.eigenvectors[:, :k].contiguous() if copy else self.eigenvectors[:, :k]

    def bottom(self, k: int) -> torch.Tensor:
        """d x k orthonormal basis of the k lowest-eigenvalue directions, LOWEST first."""
        k = check_k(k, self.d)
        if self.complete:
            return self.eigenvectors[:, -k:].flip(1)
        if k > self.n_bottom:
            raise ConfigError(f"this spectrum keeps only its bottom {self.n_bottom} eigenvectors; k={k} needs the "
                             f"full decomposition (ActivationStats.spectrum(..., bottom={k}) recomputes it)")
        return self.low_vectors[:, :k].contiguous()

    def truncated(self, m: int) -> "Spectrum":
        """The same spectrum keeping only the top m and bottom m eigenvectors (itself if 2m >= d)."""
        if 2 * m >= self.d or not self.complete:
            return self
        return Spectrum(self.eigenvalues, self.eigenvectors[:, :m].contiguous(),
                        self.eigenvectors[:, -m:].flip(1).contiguous())

    def spikedness(self, k: int) -> dict[str, float]:
        """Share of the trace in the top k eigenvalues, and the participation ratio (Σλ)²/Σλ²
        (1 for a rank-1 matrix, d for an isotropic one). NaN when the trace is zero."""
        k = check_k(k, self.d)
        lam = self.eigenvalues
        total = float(lam.sum())
        sq = float((lam * lam).sum())
        share = float(lam[:k].sum()) / total if total != 0 else float("nan")
        pr = total * total / sq if sq != 0 else float("nan")
        return {"topk_share": share, "participation_ratio": pr}


def _validate_square(m: torch.Tensor, name: str) -> None:
    if not isinstance(m, torch.Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor, got {type(m).__name__}")
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ConfigError(f"{name} must be a square d x d matrix, got shape {tuple(m.shape)}")
    if m.shape[0] == 0:
        raise ConfigError(f"{name} is empty (shape {tuple(m.shape)})")
    if not torch.isfinite(m).all():
        n_bad = int((~torch.isfinite(m)).sum())
        raise ConfigError(f"{name} has {n_bad} non-finite (NaN/inf) entries; recompute the statistics")


def _kept_spectrum(m: np.ndarray, keep: int, overwrite: bool = False) -> Spectrum:
    """Every eigenvalue of the symmetric ``m`` but the eigenvectors of the top and bottom ``keep``
    alone, from one Householder reduction to tridiagonal T (LAPACK dsytrd): T's eigenvalues (dsterf), bisection
    for the two index ranges (dstebz) and inverse iteration for both in one call (dstein: a cluster shared by the
    two ends, as in the null space of a second moment of fewer tokens than keep, comes out orthogonal), the
    reflectors applied to those 2·keep columns only (dormqr, as dormtr does)."""
    from scipy.linalg import lapack

    n = m.shape[0]
    c, diag, off, tau, info = lapack.dsytrd(m, lower=1, lwork=int(lapack.dsytrd_lwork(n, lower=1)[0]),
                                            overwrite_a=int(overwrite))
    evals, info2 = lapack.dsterf(diag, off)
    ends = [lapack.dstebz(diag, off, 2, 0, 0, lo, hi, 0, "B") for lo, hi in ((1, keep), (n - keep + 1, n))]
    w, block = (np.concatenate([e[1][:keep] for e in ends]), np.concatenate([e[2][:keep] for e in ends]))
    order = np.lexsort((w, block))  # dstein: grouped by split-off block, ascending within each
    iblock = np.zeros(n, dtype=block.dtype)
    iblock[:2 * keep] = block[order]
    z, info3 = lapack.dstein(diag, off, w[order], iblock, ends[0][3])
    if ends[0][0] != keep or ends[1][0] != keep:
        raise np.linalg.LinAlgError(f"dstebz found {ends[0][0]} and {ends[1][0]} eigenvalues, not {keep}")
    cols = np.r_[keep + np.argsort(-w[keep:], kind="stable"), np.argsort(w[:keep], kind="stable")]  # top desc, bottom
    z = np.asfortranarray(z[:, np.argsort(order)[cols]])  # dstein's columns follow w[order]
    if np.abs(z[:, :keep].T @ z[:, keep:]).max() > 1e-8:  # one eigenvalue in two split-off blocks (exact ties)
        raise np.linalg.LinAlgError("the top and bottom eigenvectors overlap")
    q = c[1:, :-1]  # Q = H(1)…H(n-1), H(i)'s vector in column i below the subdiagonal: dormqr on rows 1.. (dormtr)
    lwork = int(lapack.dormqr("L", "N", q, tau, z[1:], -1)[1][0])
    z[1:], _, info4 = lapack.dormqr("L", "N", q, tau, z[1:], lwork)
    if info or info2 or info3 or info4 or ends[0][4] or ends[1][4]:
        raise np.linalg.LinAlgError(f"LAPACK dsytrd/dsterf/dstebz/dstein/dormqr failed (info {info}, {info2}, "
                                    f"{ends[0][4]}, {ends[1][4]}, {info3}, {info4})")
    vecs = _fix_signs(torch.from_numpy(z))
    return Spectrum(torch.from_numpy(evals[::-1].copy()), vecs[:, :keep].contiguous(), vecs[:, keep:].contiguous())


class MatrixOverwritten(np.linalg.LinAlgError):
    """The kept-vectors solver failed after overwriting the matrix it was allowed to (``overwrite``): give the
    matrix again, not to be overwritten, for the full decomposition."""


def kept_solver(d: int, keep: int) -> bool:
    """Whether a d × d decomposition keeping ``keep`` eigenvectors at each end runs the kept-vectors solver (on a
    CPU): from :data:`KEPT_MIN_D` on, and only where the two ends do not meet."""
    return max(KEPT_MIN_D, 2 * keep + 1) <= d


def _spectrum_of_symmetric(m: torch.Tensor, keep: int | None = None, exact: bool = False,
                           overwrite: bool = False) -> Spectrum:
    """eigh in float64 of an (already validated) symmetric matrix, reordered descending; with ``keep`` (and d at
    least :data:`KEPT_MIN_D` and above 2·keep) only the top and bottom ``keep`` eigenvectors. ``exact``: m equals
    its transpose bit for bit (not symmetrised again); ``overwrite``: m may be destroyed (no d × d copy of it;
    should the kept solver then fail, :class:`MatrixOverwritten`). A copy made here is overwritten freely and,
    should the kept solver fail, made again from ``m`` for the full decomposition."""
    src = m

    def made() -> torch.Tensor:
        x = src.to(torch.float64)
        return x if exact else 0.5 * (x + x.T)

    m = made()
    mine = m is not src
    if keep is not None and kept_solver(m.shape[0], keep) and m.device.type == "cpu":
        try:  # symmetric: the transpose is the Fortran-ordered matrix
            return _kept_spectrum(m.numpy().T, keep, overwrite=overwrite or mine)
        except np.linalg.LinAlgError as e:  # a LAPACK failure or overlapping ends: the full decomposition instead
            if mine:
                m = made()
            elif overwrite:
                raise MatrixOverwritten(f"the kept-vectors solver failed ({e}) on a matrix it overwrote") from e
    evals, evecs = torch.linalg.eigh(m)
    evals = evals.flip(0)
    evecs = _fix_signs(evecs.flip(1))
    return Spectrum(eigenvalues=evals, eigenvectors=evecs)


def eig_subspace(second_moment: torch.Tensor, *, sym_rtol: float = 1e-6, keep: int | None = None,
                 overwrite: bool = False) -> Spectrum:
    """Spectrum of a second-moment matrix C = E[a aᵀ] of a module's inputs, eigenvalues descending (``keep``: at
    least the top and bottom ``keep`` eigenvectors; None: all; ``overwrite``: C may be destroyed, which saves a
    d × d copy; should the kept-vectors solver fail on it, :class:`MatrixOverwritten`: give C again without).

    C must be square, finite and symmetric: max|C - Cᵀ| <= sym_rtol * max|C| (float32
    accumulation leaves asymmetry ~1e-7; anything larger means the wrong matrix was passed)."""
    _validate_square(second_moment, "second_moment")
    m = second_moment.to(torch.float64)
    scale = asym = 0.0
    for i in range(0, m.shape[0], SYM_CHECK_ROWS):  # row blocks: no d × d temporaries
        rows = m[i:i + SYM_CHECK_ROWS]
        scale = max(scale, float(rows.abs().max()))
        asym = max(asym, float((rows - m[:, i:i + SYM_CHECK_ROWS].T).abs().max()))
    if asym > sym_rtol * max(scale, torch.finfo(torch.float64).tiny):
        raise ConfigError(f"second_moment is not symmetric: max|C - C^T| = {asym:.3g} > {sym_rtol:g} * max|C| "
                          f"(= {scale:.3g}); pass E[a a^T] itself (or raise sym_rtol if it is only accumulated noise)")
    return _spectrum_of_symmetric(m, keep, exact=asym == 0, overwrite=overwrite and m is second_moment)


#: rows per block of eig_subspace's symmetry check
SYM_CHECK_ROWS = 512


def gram_matrix(W: torch.Tensor, column_gain: torch.Tensor | None = None, *,
                chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """float64 Gram matrix (W·diag(g))ᵀ(W·diag(g)) of a V x d matrix, accumulated over row chunks so
    only `chunk_rows` rows are ever upcast at once (a 150k x 4096 unembedding stays in its dtype). A bfloat16 or
    float16 W without a gain (a checkpoint's unembedding as stored) takes float32 products of
    :data:`HALF_CHUNK_ROWS` rows added in float64: each product of two half-precision numbers is exact in float32,
    so an entry's error is float32's rounding of a sum of at most that many exact terms (at most
    ``HALF_CHUNK_ROWS·2⁻²⁴`` of Σ_r |w_ri w_rj|), at half the float64 product's cost."""
    if not isinstance(W, torch.Tensor) or W.ndim != 2 or min(W.shape) == 0:
        shape = tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__
        raise ConfigError(f"W must be a non-empty 2-D V x d tensor, got {shape}")
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be >= 1, got {chunk_rows}")
    d = W.shape[1]
    gain = None
    if column_gain is not None:
        if column_gain.ndim != 1 or column_gain.shape[0] != d:
            raise ConfigError(f"final_norm_gain must have shape ({d},) to match W's {d} columns, "
                              f"got {tuple(column_gain.shape)}")
        gain = column_gain.to(device=W.device, dtype=torch.float64)
        if not torch.isfinite(gain).all():
            raise ConfigError("final_norm_gain has non-finite (NaN/inf) entries")
    gram = torch.zeros(d, d, dtype=torch.float64, device=W.device)
    half = str(W.dtype).removeprefix("torch.") in HALF_DTYPES and gain is None  # its products are exact in float32
    step = min(chunk_rows, HALF_CHUNK_ROWS) if half else chunk_rows
    if half:  # reused across chunks: fresh 2048² tensors each chunk cost more in page faults than the adds
        rows = torch.empty(min(step, W.shape[0]), d, dtype=torch.float32, device=W.device)
        part = torch.empty(d, d, dtype=torch.float32, device=W.device)
        wide = torch.empty(d, d, dtype=torch.float64, device=W.device)
    for start in range(0, W.shape[0], step):
        block = W[start : start + step]
        if half:
            block = rows[:block.shape[0]].copy_(block)
            torch.mm(block.T, block, out=part)
            # every partial sum of entry (i, j) is at most √(G_ii G_jj) (Cauchy–Schwarz), and a NaN/Inf in the rows
            # reaches its column's diagonal: one look at the diagonal stands for testing every entry and element
            if float(part.diagonal().max()) < _FLOAT32_SAFE:
                gram += wide.copy_(part)
                continue
        if not torch.isfinite(block).all():
            raise ConfigError(f"W has non-finite (NaN/inf) entries in rows {start}..{start + block.shape[0] - 1}")
        block = block.to(torch.float64)  # half precision here: a product or sum beyond float32's range
        if gain is not None:
            block = block * gain
        gram.addmm_(block.T, block)
    return gram


def prediction_spectrum(W_U: torch.Tensor, final_norm_gain: torch.Tensor | None = None, *,
                        chunk_rows: int = DEFAULT_CHUNK_ROWS, keep: int | None = None) -> Spectrum:
    """Right singular structure of the unembedding W_U (V x d), or of W_U·diag(γ), via eigh of the float64 Gram
    matrix: eigenvalues σ², eigenvectors the right singular vectors; ``.top(k)`` is the prediction subspace P_k.
    ``keep``: only the top (and bottom) ``keep`` eigenvectors, every eigenvalue (the kept-vectors solver: a third
    less time at d = 2048, keep 64)."""
    return _spectrum_of_symmetric(gram_matrix(W_U, final_norm_gain, chunk_rows=chunk_rows), keep=keep)

