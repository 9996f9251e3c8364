"""SVD structure probe checked on pairs built from known factors, with the answers derived by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rwedit.probes.svd import (
    LOWRANK_BOUND,
    SVDMetrics,
    singular_value_replacement,
    singular_value_scale,
    svd_structure,
)


def orthonormal(d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal d x k from a numpy Gaussian (QR in torch: numpy's LAPACK fights torch's threads)."""
    return torch.linalg.qr(torch.from_numpy(rng.standard_normal((d, k))))[0].numpy()


def block_rotation(m: int, r: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An m x m orthogonal R = diag(R_r, R_rest): rotates within the top r and within the rest."""
    R = np.zeros((m, m))
    R[:r, :r] = orthonormal(r, r, rng)
    R[r:, r:] = orthonormal(m - r, m - r, rng)
    return R, R[:r, :r]


def factors(d_out: int, d_in: int, seed: int):
    rng = np.random.default_rng(seed)
    m = min(d_out, d_in)
    U, V = orthonormal(d_out, m, rng), orthonormal(d_in, m, rng)
    sigma = np.sort(rng.uniform(0.5, 10.0, size=m))[::-1] + np.linspace(m, 0, m) * 0.05  # distinct
    return rng, U, V, sigma


def T(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


# ----------------------------------------------------------------------------- planted structure


def test_shared_rotation_and_scale_recovered_exactly():
    d_out, d_in, r, s = 48, 40, 8, 1.7
    rng, U, V, sigma = factors(d_out, d_in, seed=0)
    R, _ = block_rotation(min(d_out, d_in), r, rng)
    W_base = (U * sigma) @ V.T
    W_post = (U @ R) @ np.diag(s * sigma) @ (V @ R).T  # an SVD of W_post: U' = UR, V' = VR, σ' = sσ
    m = svd_structure(T(W_base), T(W_post), r=r, method="full")
    assert isinstance(m, SVDMetrics) and m.method == "full" and m.r == r and m.reason is None
    assert m.scale == pytest.approx(s, rel=1e-12)
    assert m.scale_residual == pytest.approx(0.0, abs=1e-12)
    assert m.orth_U == pytest.approx(0.0, abs=1e-9) and m.orth_V == pytest.approx(0.0, abs=1e-9)
    assert m.consistency == pytest.approx(0.0, abs=1e-9)
    # W_hat reproduces the top-r part exactly, so the error is the tail: sqrt(Σ_{i>r} σ²/Σ σ²)
    floor = math.sqrt(np.sum(sigma[r:] ** 2) / np.sum(sigma**2))
    assert m.truncation_floor == pytest.approx(floor, rel=1e-9)
    assert m.reparam_error == pytest.approx(floor, rel=1e-9)
    full = svd_structure(T(W_base), T(W_post), r="full")
    assert full.r == min(d_out, d_in) and full.method == "full"
    assert full.reparam_error == pytest.approx(0.0, abs=1e-9) and full.consistency == pytest.approx(0.0, abs=1e-9)
    # float32 storage: same answers to float32 accuracy
    m32 = svd_structure(T(W_base).float(), T(W_post).float(), r=r)
    assert m32.scale == pytest.approx(s, rel=1e-5) and m32.consistency < 1e-4


def test_different_rotations_give_hand_computed_consistency():
    # W_post = (U R1) sΣ (V R2)ᵀ is an SVD of W_post, unique up to a sign per pair (distinct σ), so
    # Q_U = D0 R1_r D, Q_V = D0 R2_r D with sign matrices D0, D:
    #   consistency = ‖R1_r − R2_r‖_F / ‖R1_r‖_F = ‖R1_r − R2_r‖_F / sqrt(r)
    # and with P = polar((R1_r + R2_r)/2), W_hat = U_r P Σ'_r Pᵀ V_rᵀ while W_post's top-r part is
    # U_r R1_r Σ'_r R2_rᵀ V_rᵀ, so ‖W_post − W_hat‖² = ‖P Σ' Pᵀ − R1_r Σ' R2_rᵀ‖² + s² Σ_{i>r} σ_i².
    d_out, d_in, r, s = 36, 50, 6, 0.8
    rng, U, V, sigma = factors(d_out, d_in, seed=1)
    m_dim = min(d_out, d_in)
    R1, R1r = block_rotation(m_dim, r, rng)
    R2, R2r = block_rotation(m_dim, r, rng)
    W_base = (U * sigma) @ V.T
    W_post = (U @ R1) @ np.diag(s * sigma) @ (V @ R2).T
    m = svd_structure(T(W_base), T(W_post), r=r, method="full")
    assert m.consistency == pytest.approx(np.linalg.norm(R1r - R2r) / math.sqrt(r), rel=1e-9)
    assert m.orth_U == pytest.approx(0.0, abs=1e-9) and m.orth_V == pytest.approx(0.0, abs=1e-9)
    assert m.scale == pytest.approx(s, rel=1e-12)
    a, _, bt = np.linalg.svd((R1r + R2r) / 2)
    P = a @ bt
    Sp = np.diag(s * sigma[:r])
    err2 = np.linalg.norm(P @ Sp @ P.T - R1r @ Sp @ R2r.T) ** 2 + s**2 * np.sum(sigma[r:] ** 2)
    assert m.reparam_error == pytest.approx(math.sqrt(err2) / (s * np.linalg.norm(sigma)), rel=1e-9)
    assert m.consistency > 0.5  # independent rotations: far from HC's shared-rotation picture


def test_one_sided_random_rotation_disruption():
    # HC's disruption: rotate only the left vectors -> consistency = ‖R_r − I‖_F / sqrt(r)
    d, r = 30, 5
    rng, U, V, sigma = factors(d, d, seed=2)
    R, Rr = block_rotation(d, r, rng)
    m = svd_structure(T((U * sigma) @ V.T), T((U @ R) @ np.diag(sigma) @ V.T), r=r)
    assert m.consistency == pytest.approx(np.linalg.norm(Rr - np.eye(r)) / math.sqrt(r), rel=1e-9)
    assert m.scale == pytest.approx(1.0, rel=1e-12)


def test_scale_is_least_squares_over_top_r():
    d_out, d_in, r = 20, 16, 4
    rng, U, V, sigma = factors(d_out, d_in, seed=3)
    sigma_post = np.sort(sigma * rng.uniform(0.8, 1.6, size=sigma.size))[::-1]
    m = svd_structure(T((U * sigma) @ V.T), T((U * sigma_post) @ V.T), r=r)
    sb, sp = sigma[:r], sigma_post[:r]
    s = sb @ sp / (sb @ sb)
    assert m.scale == pytest.approx(s, rel=1e-12)
    assert m.scale_residual == pytest.approx(np.linalg.norm(sp - s * sb) / np.linalg.norm(sp), rel=1e-9)
    assert np.allclose(m.sigma_post.numpy(), sp, rtol=1e-12)
    # the helper on its own
    assert singular_value_scale(T(sb), T(sp))[0] == pytest.approx(s, rel=1e-14)


# ----------------------------------------------------------------------------- lowrank vs full


def decaying_pair(d_out: int, d_in: int, alpha: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """σ_i = i^(−alpha); post = base rotated by a small shared rotation (plus a smaller one on the
    right), rescaled by 1.3 with 2% jitter, plus 1% Gaussian noise; both stored in float32."""
    rng = np.random.default_rng(seed)
    m = min(d_out, d_in)
    U, V = orthonormal(d_out, m, rng), orthonormal(d_in, m, rng)
    sigma = np.arange(1, m + 1) ** (-alpha)
    A = rng.standard_normal((m, m)) * 0.05 / math.sqrt(m)
    B = rng.standard_normal((m, m)) * 0.02 / math.sqrt(m)
    R = torch.linalg.matrix_exp(T(A - A.T)).numpy()
    R2 = torch.linalg.matrix_exp(T(B - B.T)).numpy()
    sigma2 = 1.3 * sigma * (1 + 0.02 * rng.standard_normal(m))
    W_base = (U * sigma) @ V.T
    W_post = (U @ R) @ np.diag(sigma2) @ (V @ R @ R2).T
    E = rng.standard_normal((d_out, d_in))
    W_post = W_post + 0.01 * E * np.linalg.norm(W_post) / np.linalg.norm(E)
    return T(W_base).float(), T(W_post).float()


@pytest.mark.parametrize(
    "shape, r, alpha",
    [
        ((512, 384), 32, 0.5),
        ((300, 640), 24, 0.7),
        # the size the bound was measured at; ~1 s alone but slow on a busy 2-core box: pytest -m slow
        pytest.param((1024, 768), 64, 0.5, marks=pytest.mark.slow),
    ],
)
def test_lowrank_within_stated_bound(shape, r, alpha):
    W_base, W_post = decaying_pair(*shape, alpha=alpha, seed=7)
    full = svd_structure(W_base, W_post, r=r, method="full")
    low = svd_structure(W_base, W_post, r=r, method="lowrank", seed=0)
    assert low.method == "lowrank"
    b = LOWRANK_BOUND
    sig_err = max(
        float(((low.sigma_base - full.sigma_base).abs() / full.sigma_base).max()),
        float(((low.sigma_post - full.sigma_post).abs() / full.sigma_post).max()),
    )
    assert sig_err <= b["sigma_rel"]
    assert abs(low.scale - full.scale) / full.scale <= b["scale_rel"]
    assert abs(low.scale_residual - full.scale_residual) <= b["scale_residual"]
    assert abs(low.consistency - full.consistency) <= b["consistency"]
    assert abs(low.reparam_error - full.reparam_error) <= b["reparam_error"]
    assert abs(low.orth_U - full.orth_U) <= b["orth"] and abs(low.orth_V - full.orth_V) <= b["orth"]
    # and the planted structure is what both see: scale ≈ 1.3, small consistency
    assert full.scale == pytest.approx(1.3, rel=0.02) and full.consistency < 0.05


def test_lowrank_is_seeded_and_leaves_global_rng_alone():
    W_base, W_post = decaying_pair(300, 200, alpha=0.7, seed=1)
    state = torch.get_rng_state()
    a = svd_structure(W_base, W_post, r=16, method="lowrank", seed=3)
    assert torch.equal(state, torch.get_rng_state())
    b = svd_structure(W_base, W_post, r=16, method="lowrank", seed=3)
    assert a.consistency == b.consistency and torch.equal(a.sigma_base, b.sigma_base)


def test_auto_method_choice():
    g = torch.Generator().manual_seed(0)
    small = torch.randn(64, 32, generator=g)
    assert svd_structure(small, 1.1 * small, r=4).method == "full"
    big = torch.randn(1100, 1030, generator=g)
    assert svd_structure(big, 1.1 * big, r=4, method="auto").method == "lowrank"
    assert svd_structure(small, 1.1 * small, r="full", method="auto").method == "full"


# ----------------------------------------------------------------------------- replacement


def test_singular_value_replacement_closed_form():
    d_out, d_in, r = 30, 22, 5
    rng, U, V, sigma = factors(d_out, d_in, seed=4)
    m = min(d_out, d_in)
    U2, V2 = orthonormal(d_out, m, rng), orthonormal(d_in, m, rng)
    sigma2 = np.sort(rng.uniform(1.0, 20.0, size=m))[::-1]
    W_base, W_post = (U * sigma) @ V.T, (U2 * sigma2) @ V2.T
    s = sigma[:r] @ sigma2[:r] / (sigma[:r] @ sigma[:r])
    expected = (U2 * (s * sigma)) @ V2.T  # sign-safe: a shared flip of (u'_i, v'_i) cancels
    got = singular_value_replacement(T(W_base), T(W_post), r=r)
    assert got.dtype == torch.float64 and got.shape == (d_out, d_in)
    assert np.allclose(got.numpy(), expected, rtol=0, atol=1e-10 * np.abs(expected).max())
    got32 = singular_value_replacement(T(W_base).float(), T(W_post).float(), r=r)
    assert got32.dtype == torch.float32
    assert np.allclose(got32.double().numpy(), expected, atol=1e-4 * np.abs(expected).max())


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    a, b = torch.randn(8, 6), torch.randn(8, 6)
    with pytest.raises(ValueError, match=r"same shape.*\(8, 6\) and \(6, 8\)"):
        svd_structure(a, b.T)
    with pytest.raises(ValueError, match=r"r=0 .*1 <= r <= 6"):
        svd_structure(a, b, r=0)
    with pytest.raises(ValueError, match=r"r=7 .*1 <= r <= 6"):
        svd_structure(a, b, r=7)
    with pytest.raises(ValueError, match="method must be"):
        svd_structure(a, b, r=2, method="randomized")
    nan = b.clone()
    nan[1, 1] = float("nan")
    with pytest.raises(ValueError, match="W_post has 1 non-finite"):
        svd_structure(a, nan, r=2)
    with pytest.raises(ValueError, match="non-empty 2-D"):
        svd_structure(torch.randn(5), torch.randn(5), r=1)
    with pytest.raises(ValueError, match=r"r=9 "):
        singular_value_replacement(a, b, r=9)


def test_zero_matrices_give_nan_with_reason():
    a = torch.randn(8, 6)
    m = svd_structure(a, torch.zeros(8, 6), r=3)
    assert m.reason == "zero W_post" and math.isnan(m.consistency) and math.isnan(m.scale)
    m = svd_structure(torch.zeros(8, 6), a, r=3)
    assert m.reason == "zero W_base" and math.isnan(m.reparam_error)
