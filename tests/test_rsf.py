"""RSF checked against closed forms, planted signals of known size and plain numpy formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rwedit.probes import rsf as rsf_mod
from rwedit.probes.rsf import (
    RSFResult,
    random_null,
    random_null_nested,
    random_null_samples,
    rank1_rsf,
    rsf,
    rsf_nested,
    subspace_fraction,
)
from rwedit.probes.subspaces import eig_subspace, prediction_spectrum


def np_orthonormal(d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal d x k from a numpy Gaussian. The QR runs in torch: numpy's OpenBLAS LAPACK
    contends with torch's OpenMP threads on a 2-core box (a 512 x 512 QR took 4 s instead of 0.1 s)."""
    return torch.linalg.qr(torch.from_numpy(rng.standard_normal((d, k))))[0].numpy()


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


# ----------------------------------------------------------------------------- exact closed forms


def test_rank_one_inside_subspace_read_fraction_one():
    rng = np.random.default_rng(0)
    d_out, d_in, k = 12, 40, 5
    B = np_orthonormal(d_in, k, rng)
    v = B @ rng.standard_normal(k)
    delta = np.outer(rng.standard_normal(d_out), v)
    res = rsf(t(delta), t(B), "read")
    assert isinstance(res, RSFResult) and res.reason is None
    assert res.fraction == pytest.approx(1.0, abs=1e-12)
    assert res.rsf == pytest.approx(d_in / k, rel=1e-12)
    assert (res.k, res.d, res.baseline) == (k, d_in, pytest.approx(k / d_in))
    assert res.delta_norm == pytest.approx(np.linalg.norm(delta), rel=1e-12)


def test_rank_one_at_angle_gives_cos_squared():
    # v = cosθ e_in + sinθ e_out with e_in ∈ span B, e_out ⟂ span B  ->  f = cos²θ exactly
    rng = np.random.default_rng(1)
    d_in, k, theta = 30, 4, 0.7
    Q = np_orthonormal(d_in, d_in, rng)
    B, e_in, e_out = Q[:, :k], Q[:, 1], Q[:, k + 3]
    delta = np.outer(rng.standard_normal(9), math.cos(theta) * e_in + math.sin(theta) * e_out)
    assert subspace_fraction(t(delta), t(B), "read") == pytest.approx(math.cos(theta) ** 2, abs=1e-12)
    assert subspace_fraction(t(np.outer(rng.standard_normal(9), e_out)), t(B), "read") == pytest.approx(0.0, abs=1e-24)


def test_write_side_and_both_closed_forms():
    rng = np.random.default_rng(2)
    d_out, d_in, k_l, k_r = 24, 18, 3, 5
    B_l, B_r = np_orthonormal(d_out, k_l, rng), np_orthonormal(d_in, k_r, rng)
    u, v = B_l @ rng.standard_normal(k_l), B_r @ rng.standard_normal(k_r)
    w = rsf(t(np.outer(u, rng.standard_normal(d_in))), t(B_l), "write")
    assert w.fraction == pytest.approx(1.0, abs=1e-12) and w.rsf == pytest.approx(d_out / k_l, rel=1e-12)
    both = rsf(t(np.outer(u, v)), (t(B_l), t(B_r)), "both")
    baseline = k_l / d_out + k_r / d_in
    assert both.fraction == pytest.approx(2.0, abs=1e-12)
    assert both.baseline == pytest.approx(baseline, rel=1e-15)
    assert both.rsf == pytest.approx(2.0 / baseline, rel=1e-12)
    assert both.k == (k_l, k_r) and both.d == (d_out, d_in)


# ----------------------------------------------------------------------------- numpy independence


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_fractions_match_plain_numpy(dtype):
    rng = np.random.default_rng(3)
    d_out, d_in, k = 33, 21, 6
    delta_t = t(rng.standard_normal((d_out, d_in)) * rng.uniform(0.1, 3, size=d_in)).to(dtype)
    D = delta_t.double().numpy()  # the exact values the probe sees
    B_r, B_l = np_orthonormal(d_in, k, rng), np_orthonormal(d_out, k + 2, rng)
    tot = np.sum(D**2)
    f_read = np.sum((D @ B_r) ** 2) / tot
    f_write = np.sum((B_l.T @ D) ** 2) / tot
    assert subspace_fraction(delta_t, t(B_r), "read") == pytest.approx(f_read, rel=1e-12)
    assert subspace_fraction(delta_t, t(B_l), "write") == pytest.approx(f_write, rel=1e-12)
    both = rsf(delta_t, (t(B_l), t(B_r)), "both")
    assert both.fraction == pytest.approx(f_read + f_write, rel=1e-12)
    assert both.rsf == pytest.approx((f_read + f_write) / ((k + 2) / d_out + k / d_in), rel=1e-12)


def test_nested_matches_per_k_and_numpy():
    rng = np.random.default_rng(4)
    D = rng.standard_normal((40, 25)) + 3 * np.outer(rng.standard_normal(40), rng.standard_normal(25))
    B_r, B_l = np_orthonormal(25, 10, rng), np_orthonormal(40, 10, rng)
    ks = [1, 2, 5, 10]
    for side, B in (("read", B_r), ("write", B_l)):
        nested = rsf_nested(t(D), t(B), side, ks)
        for k, res in zip(ks, nested):
            proj = D @ B[:, :k] if side == "read" else B[:, :k].T @ D
            f = np.sum(proj**2) / np.sum(D**2)
            d = D.shape[1] if side == "read" else D.shape[0]
            assert res.k == k and res.fraction == pytest.approx(f, rel=1e-12)
            assert res.rsf == pytest.approx(f * d / k, rel=1e-12)
            single = rsf(t(D), t(B[:, :k]), side)
            assert single.fraction == pytest.approx(res.fraction, rel=1e-12)
    both = rsf_nested(t(D), (t(B_l), t(B_r)), "both", [3, (2, 7)])
    f27 = (np.sum((B_l[:, :2].T @ D) ** 2) + np.sum((D @ B_r[:, :7]) ** 2)) / np.sum(D**2)
    assert both[0].k == (3, 3) and both[1].k == (2, 7)
    assert both[1].fraction == pytest.approx(f27, rel=1e-12)
    assert both[1].rsf == pytest.approx(f27 / (2 / 40 + 7 / 25), rel=1e-12)


def test_chunked_accumulation_matches(monkeypatch):
    rng = np.random.default_rng(5)
    D, B = rng.standard_normal((37, 29)), np_orthonormal(29, 4, rng)
    whole = rsf(t(D), t(B), "read").fraction
    monkeypatch.setattr(rsf_mod, "_CHUNK_ELEMENTS", 50)  # 1 row per chunk
    assert rsf(t(D), t(B), "read").fraction == pytest.approx(whole, rel=1e-13)
    assert rsf(t(D), t(np_orthonormal(37, 3, rng)), "write").delta_norm == pytest.approx(np.linalg.norm(D), rel=1e-13)


# ----------------------------------------------------------------------------- planted signals


def planted_fraction_and_tol(sig: float, nu: float, d_out: int, d_in: int, k: int, side: str) -> tuple[float, float]:
    """Closed-form E-ratio of f for ΔW = sig·(unit rank-1 inside the subspace) + N(0, nu²) iid, and a
    5-sigma tolerance. The captured part is X = sig² + c + χ_X, the total Y = sig² + c + χ_Y with
    c = 2·sig·(unit cross term) ~ N(0, 4 sig² nu²) shared by both, χ_X of mean m·k·nu² and sd
    nu²·sqrt(2 m k) (m = d_out read side, d_in write side), χ_Y of mean d_out·d_in·nu² and sd
    nu²·sqrt(2 d_out d_in). First order: δf = (δX − f δY)/Y."""
    m = d_out if side == "read" else d_in
    X = sig**2 + m * k * nu**2
    Y = sig**2 + d_out * d_in * nu**2
    f = X / Y
    sd_c = 2 * sig * nu
    sd_x = nu**2 * math.sqrt(2 * m * k)
    sd_y = nu**2 * math.sqrt(2 * d_out * d_in)
    tol = 5 * (sd_c * (1 - f) + sd_x + f * sd_y) / Y
    return f, tol


def test_planted_read_signal_against_spiked_covariance():
    rng = np.random.default_rng(10)
    d_out, d_in, k = 192, 384, 4
    # known spiked covariance: 6 spikes, then a flat bulk
    Q = np_orthonormal(d_in, d_in, rng)
    lam = np.concatenate([[60.0, 40.0, 25.0, 15.0, 8.0, 4.0], np.ones(d_in - 6)])
    C = (Q * lam) @ Q.T
    spec = eig_subspace(t(C))
    B = spec.top(k)
    assert np.linalg.norm(B.numpy() @ B.numpy().T - Q[:, :k] @ Q[:, :k].T) < 1e-8  # it is the planted span
    sig = 1.0
    nu = 1.0 / math.sqrt(d_out * d_in)  # noise energy ≈ signal energy
    b = rng.standard_normal(d_out)
    b /= np.linalg.norm(b)
    delta = sig * np.outer(b, Q[:, 0]) + nu * rng.standard_normal((d_out, d_in))
    res = rsf(t(delta), B, "read")
    f_exp, tol = planted_fraction_and_tol(sig, nu, d_out, d_in, k, "read")
    assert tol < 0.05 * f_exp  # the check is informative at this size
    assert res.fraction == pytest.approx(f_exp, abs=tol)
    assert res.rsf == pytest.approx(f_exp * d_in / k, abs=tol * d_in / k)
    assert res.rsf > 20  # RSF >> 1: far outside any null band
    # the low-variance end of the same spectrum sees only noise: RSF near 1
    assert rsf(t(delta), spec.bottom(k), "read").rsf < 2.0


def test_isotropic_delta_falls_in_null_band():
    rng = np.random.default_rng(11)
    d_out, d_in, k = 192, 384, 4
    Q = np_orthonormal(d_in, d_in, rng)
    lam = np.concatenate([[60.0, 40.0, 25.0, 15.0, 8.0], np.ones(d_in - 5)])
    B = eig_subspace(t((Q * lam) @ Q.T)).top(k)
    noise = t(rng.standard_normal((d_out, d_in)))
    mean, sd = random_null(noise, "read", k, seeds=range(100))
    # closed form for a Gaussian ΔW and a fixed k-dim B: f ~ Beta(d_out k/2, d_out (d_in - k)/2).
    # random_null instead varies B for this fixed ΔW; the Haar quadratic-form variance
    # Var tr(AP) = 2k(d-k)/(d(d-1)(d+2)) (tr A² - (tr A)²/d) with A = ΔWᵀΔW (Wishart) gives the same
    # sd up to O(1/d) terms, so the two agree within the ~10% sampling error of a 100-seed sd.
    a, bb = d_out * k / 2, d_out * (d_in - k) / 2
    sd_beta = math.sqrt(a * bb / ((a + bb) ** 2 * (a + bb + 1))) * d_in / k
    assert mean == pytest.approx(1.0, abs=4 * sd / 10)
    assert sd == pytest.approx(sd_beta, rel=0.3)
    assert abs(rsf(noise, B, "read").rsf - mean) < 4 * sd


def test_planted_write_signal_against_unembedding_subspace():
    rng = np.random.default_rng(12)
    V, d, d_in, k = 700, 128, 256, 8
    P = np_orthonormal(V, d, rng)
    Qd = np_orthonormal(d, d, rng)
    sing = np.concatenate([np.linspace(40.0, 20.0, k), np.linspace(5.0, 1.0, d - k)])
    W_U = (P * sing) @ Qd.T  # known right singular vectors Qd
    B = prediction_spectrum(t(W_U)).top(k)
    assert np.linalg.norm(B.numpy() @ B.numpy().T - Qd[:, :k] @ Qd[:, :k].T) < 1e-8
    sig, nu = 1.0, 1.0 / math.sqrt(d * d_in)
    c = rng.standard_normal(d_in)
    c /= np.linalg.norm(c)
    delta = sig * np.outer(Qd[:, 0], c) + nu * rng.standard_normal((d, d_in))  # writes along q_1
    res = rsf(t(delta), B, "write")
    f_exp, tol = planted_fraction_and_tol(sig, nu, d, d_in, k, "write")
    assert res.fraction == pytest.approx(f_exp, abs=tol)
    assert res.rsf == pytest.approx(f_exp * d / k, abs=tol * d / k)
    noise = t(rng.standard_normal((d, d_in)))
    mean, sd = random_null(noise, "write", k, seeds=range(100))
    assert abs(rsf(noise, B, "write").rsf - mean) < 4 * sd
    assert res.rsf > mean + 20 * sd


def test_random_null_of_rank_one_delta_matches_beta_law():
    # ΔW = b vᵀ: RSF = (d/k)·‖Bᵀv‖² with ‖Bᵀv‖² ~ Beta(k/2, (d-k)/2) for Haar B: mean 1 exactly.
    rng = np.random.default_rng(13)
    d_in, k, n = 40, 3, 400
    delta = t(np.outer(rng.standard_normal(7), rng.standard_normal(d_in)))
    a, b = k / 2, (d_in - k) / 2
    sd_exact = (d_in / k) * math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    mean, sd = random_null(delta, "read", k, seeds=range(n))
    assert mean == pytest.approx(1.0, abs=4 * sd_exact / math.sqrt(n))
    assert sd == pytest.approx(sd_exact, rel=0.2)
    # samples are the per-seed RSF against haar_basis(d, k, seed), deterministic
    samples = random_null_samples(delta, "read", k, seeds=[5, 6])
    from rwedit.probes.subspaces import haar_basis

    assert samples[0] == pytest.approx(rsf(delta, haar_basis(d_in, k, 5), "read").rsf, rel=1e-12)
    assert torch.equal(samples, random_null_samples(delta, "read", k, seeds=[5, 6]))
    # both sides: E = 1 as well
    mean_b, _ = random_null(t(rng.standard_normal((15, 20))), "both", (2, 3), seeds=range(200))
    assert mean_b == pytest.approx(1.0, abs=0.1)


def test_nested_null_is_the_prefix_rsf_and_follows_the_beta_law():
    """Each seed's k-column prefix of one Haar basis gives the plain numpy RSF, and over many seeds the
    samples of a rank-1 delta follow Beta(k/2, (d-k)/2)·d/k for every k at once."""
    from rwedit.probes.subspaces import haar_basis

    rng = np.random.default_rng(21)
    d_in, ks, n = 50, (1, 4, 10), 300
    delta = np.outer(rng.standard_normal(9), rng.standard_normal(d_in)) + 0.1 * rng.standard_normal((9, d_in))
    got = random_null_nested(t(delta), "read", ks, seeds=[3, 4])
    for k in ks:
        B = haar_basis(d_in, max(ks), 3).numpy()[:, :k]
        ref = np.linalg.norm(delta @ B) ** 2 / np.linalg.norm(delta) ** 2 / (k / d_in)
        assert float(got[k][0]) == pytest.approx(ref, rel=1e-5)  # float32 products
    w = random_null_nested(t(delta.T.copy()), "write", ks, seeds=[3, 4])
    assert torch.allclose(w[4], got[4], rtol=1e-5)
    rank1 = t(np.outer(rng.standard_normal(7), rng.standard_normal(d_in)))
    many = random_null_nested(rank1, "read", ks, seeds=range(n))
    for k in ks:
        a, b = k / 2, (d_in - k) / 2
        sd_exact = (d_in / k) * math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        assert float(many[k].mean()) == pytest.approx(1.0, abs=4 * sd_exact / math.sqrt(n))
        assert float(many[k].std()) == pytest.approx(sd_exact, rel=0.2)
    zero = random_null_nested(torch.zeros(3, 5), "read", (2,), seeds=[1, 2])
    assert torch.isnan(zero[2]).all()
    with pytest.raises(ValueError, match="out of range"):
        random_null_nested(rank1, "read", (d_in + 1,), seeds=[1])


# ----------------------------------------------------------------------------- bad input


def test_zero_delta_gives_nan_with_reason_never_raises():
    B = t(np_orthonormal(10, 3, np.random.default_rng(0)))
    for side, basis in (("read", B), ("write", t(np_orthonormal(6, 2, np.random.default_rng(1)))), ("both", None)):
        if side == "both":
            basis = (t(np_orthonormal(6, 2, np.random.default_rng(1))), B)
        res = rsf(torch.zeros(6, 10), basis, side)
        assert math.isnan(res.fraction) and math.isnan(res.rsf)
        assert res.reason == "zero delta" and res.delta_norm == 0.0
    assert all(math.isnan(x) for x in random_null(torch.zeros(6, 10), "read", 3, seeds=[0, 1]))


def test_bad_k_messages():
    delta = torch.randn(6, 10)
    with pytest.raises(ValueError, match=r"k=11 .*d=10.*1 <= k <= d"):
        random_null(delta, "read", 11, seeds=[0])
    with pytest.raises(ValueError, match=r"k=0 .*d=6"):
        random_null(delta, "write", 0, seeds=[0])
    B = t(np_orthonormal(10, 3, np.random.default_rng(0)))
    with pytest.raises(ValueError, match=r"k=4 exceeds the 3 columns .*d=10"):
        rsf_nested(delta, B, "read", [1, 4])
    with pytest.raises(ValueError, match=r"k=0 .*d=10"):
        rsf_nested(delta, B, "read", [0])
    with pytest.raises(ValueError, match=r"k_R=5 exceeds the 3 columns"):
        rsf_nested(delta, (t(np_orthonormal(6, 5, np.random.default_rng(1))), B), "both", [(2, 5)])
    with pytest.raises(ValueError, match="seeds is empty"):
        random_null(delta, "read", 2, seeds=[])


def test_bad_shapes_and_values():
    rng = np.random.default_rng(0)
    delta = torch.randn(6, 10)
    with pytest.raises(ValueError, match=r"expected shape \(10, k\).*got \(6, 3\)"):
        rsf(delta, t(np_orthonormal(6, 3, rng)), "read")
    with pytest.raises(ValueError, match=r"expected shape \(6, k\).*got \(10, 3\)"):
        rsf(delta, t(np_orthonormal(10, 3, rng)), "write")
    with pytest.raises(ValueError, match=r"v\[:, None\]"):
        rsf(delta, torch.ones(10) / math.sqrt(10), "read")
    with pytest.raises(ValueError, match=r"side must be one of"):
        rsf(delta, t(np_orthonormal(10, 3, rng)), "left")
    with pytest.raises(ValueError, match=r"basis=\(B_L, B_R\)"):
        rsf(delta, t(np_orthonormal(10, 3, rng)), "both")
    with pytest.raises(ValueError, match="not orthonormal"):
        rsf(delta, 2.0 * t(np_orthonormal(10, 3, rng)), "read")
    nan_delta = delta.clone()
    nan_delta[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"delta has 1 non-finite"):
        rsf(nan_delta, t(np_orthonormal(10, 3, rng)), "read")
    inf_delta = delta.clone()
    inf_delta[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        random_null(inf_delta, "write", 2, seeds=[0, 1])
    with pytest.raises(ValueError, match="non-empty 2-D"):
        rsf(torch.randn(10), t(np_orthonormal(10, 3, rng)), "read")


def test_rank1_rsf_equals_rsf_of_the_outer_product_on_either_side():
    g = torch.Generator().manual_seed(11)
    d, other, k = 24, 9, 5
    basis = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]
    x = 3.0 * torch.randn(d, generator=g, dtype=torch.float64)  # not unit: rank1_rsf normalises it
    b = torch.randn(other, generator=g, dtype=torch.float64)
    b = b / b.norm()  # a random unit factor on the other side
    value = rank1_rsf(x, basis)
    assert value == pytest.approx(rsf(torch.outer(b, x), basis, "read").rsf, rel=1e-12)
    assert value == pytest.approx(rsf(torch.outer(x, b), basis, "write").rsf, rel=1e-12)
    # closed forms: x inside the span -> d/k; x orthogonal to it -> 0
    assert rank1_rsf(basis @ torch.randn(k, generator=g, dtype=torch.float64), basis) == pytest.approx(d / k)
    x_out = x - basis @ (basis.T @ x)
    assert rank1_rsf(x_out, basis) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(rank1_rsf(torch.zeros(d, dtype=torch.float64), basis))
    with pytest.raises(ValueError, match="wrong number of rows"):
        rank1_rsf(torch.ones(d + 1), basis)
    with pytest.raises(ValueError, match="not orthonormal"):
        rank1_rsf(x, 2 * basis)


@pytest.mark.parametrize("shape", ["spiked", "flat"])
@pytest.mark.parametrize("side", ["read", "write"])
def test_exact_null_matches_many_seeds(shape, side):
    """The closed-form null of RSF against Haar-random subspaces (mean exactly 1, sd from tr G²) agrees with
    the seeded null over 3000 seeds within its sampling error, for a spiked and a flat delta."""
    from rwedit.probes.rsf import exact_null_sd, gram_concentration, random_null_nested

    g = torch.Generator().manual_seed(0)
    d_out, d_in = 24, 40
    if shape == "spiked":  # one dominant direction plus a little of everything
        delta = 5 * torch.randn(d_out, 1, generator=g) @ torch.randn(1, d_in, generator=g) + 0.3 * torch.randn(
            d_out, d_in, generator=g)
    else:
        delta = torch.randn(d_out, d_in, generator=g)
    conc = gram_concentration(delta)
    sv = torch.linalg.svdvals(delta.double())
    assert conc == pytest.approx(float((sv ** 4).sum() / (sv ** 2).sum() ** 2), rel=1e-5)
    d = d_in if side == "read" else d_out
    nested = random_null_nested(delta, side, (1, 4, 12), range(3000))
    for k in (1, 4, 12):
        vals = nested[k].double()
        sd = exact_null_sd(conc, d, k)
        n = vals.numel()
        assert abs(float(vals.mean()) - 1.0) < 4 * sd / math.sqrt(n)
        assert float(vals.std()) == pytest.approx(sd, rel=0.08)


def test_exact_null_of_a_rank1_delta_is_the_beta_distribution():
    """For a rank-1 delta the captured fraction is ‖P v‖² ~ Beta(k/2, (d−k)/2): its variance in closed form."""
    from rwedit.probes.rsf import exact_null_sd

    for d, k in ((40, 1), (40, 7), (512, 64)):
        a, b = k / 2, (d - k) / 2
        var_f = a * b / ((a + b) ** 2 * (a + b + 1))
        assert exact_null_sd(1.0, d, k) == pytest.approx(math.sqrt(var_f) * d / k, rel=1e-12)


def test_a_factored_delta_gives_the_dense_energies_and_gram_concentration():
    """ΔW = U Vᵀ in factor form: column energies on both sides, ‖ΔW‖² and tr G² equal the dense matrix's
    (recomputed here from its singular values)."""
    from rwedit.lowrank import LowRankDelta
    from rwedit.probes.rsf import _energies, gram_concentration
    from rwedit.probes.subspaces import haar_basis

    g = torch.Generator().manual_seed(0)
    U, V = torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randn(24, 5, generator=g, dtype=torch.float64)
    low, dense = LowRankDelta(U, V), U @ V.T
    for side, d in (("read", 24), ("write", 40)):
        B = haar_basis(d, 7, 3)
        (e_low,), t_low = _energies(low, side, (B,))
        (e_dense,), t_dense = _energies(dense, side, (B,))
        torch.testing.assert_close(e_low, e_dense, rtol=1e-10, atol=1e-10)
        assert t_low == pytest.approx(t_dense, rel=1e-12)
    s2 = torch.linalg.svdvals(dense) ** 2
    assert gram_concentration(low) == pytest.approx(float((s2 ** 2).sum() / s2.sum() ** 2), rel=1e-10)


def _planted(spectrum: str, d_out: int = 96, d_in: int = 64, seed: int = 0) -> torch.Tensor:
    """A d_out × d_in delta with a known spectrum: flat (rank 32, equal σ), spiked (3 large over a bulk), rank-1."""
    g = torch.Generator().manual_seed(seed)
    r = min(d_out, d_in)
    U = torch.linalg.qr(torch.randn(d_out, r, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(d_in, r, generator=g, dtype=torch.float64))[0]
    s = torch.zeros(r, dtype=torch.float64)
    if spectrum == "flat":
        s[:32] = 1.0
    elif spectrum == "spiked":
        s[:] = 0.2
        s[:3] = torch.tensor([4.0, 2.5, 1.5])
    else:
        s[0] = 3.0
    return (U * s) @ V.T


@pytest.mark.parametrize("spectrum", ["flat", "spiked", "rank1"])
def test_the_sketched_null_is_inside_its_stated_bound(spectrum):
    """The sketched Σσ⁴/(Σσ²)² against the exact value from the singular values, over 200 probe seeds: unbiased
    (the mean within 4 standard errors), inside its 95 % interval, and each side's null sd within its stated
    relative error, in at least 95 % of the seeds."""
    from rwedit.probes.rsf import exact_null_sd, sketch_spread

    delta = _planted(spectrum)
    s2 = torch.linalg.svdvals(delta) ** 2
    exact = float((s2 ** 2).sum() / s2.sum() ** 2)
    spreads = [sketch_spread(delta, 64, seed) for seed in range(200)]
    values = torch.tensor([sp.value for sp in spreads], dtype=torch.float64)
    assert all(sp.method == "sketch" for sp in spreads)
    assert abs(float(values.mean()) - exact) < 4 * float(values.std()) / math.sqrt(len(values))
    assert sum(sp.lo <= exact <= sp.hi for sp in spreads) >= 0.95 * len(spreads)
    for d in delta.shape:
        sd = exact_null_sd(exact, d, 4)
        inside = [abs(sp.sd(d, 4) - sd) <= sp.rel_error(d) * sp.sd(d, 4) * (1 + 1e-12) for sp in spreads]
        assert sum(inside) >= 0.95 * len(spreads), (d, sum(inside))
    # the bound is an honest width, not a blanket: tight where Σσ⁴ is spread over many directions
    widest = max(sp.rel_error(delta.shape[1]) for sp in spreads)
    assert widest < (0.1 if spectrum == "flat" else 1.0)


@pytest.mark.parametrize("d_in,width,pieces", [(1024, 64, True), (2048, 128, True), (896, 64, False),
                                                (1024, 192, False)])
def test_the_cut_sides_product_in_pieces_is_the_whole_product(d_in, width, pieces):
    """Projections of a 600-row block whose cut-side product Lᵀ·X runs in 256-row pieces (1024-3072 columns, under
    192 rows out) or whole: each side's energies those of float64 products of the delta with its bases."""
    from rwedit.probes.blocks import CUT_PIECE, Projections, _cut_piece_rows

    g = torch.Generator().manual_seed(5)
    delta = torch.randn(600, d_in, generator=g)
    read = torch.linalg.qr(torch.randn(d_in, 16, generator=g, dtype=torch.float64))[0]
    write = torch.linalg.qr(torch.randn(600, width, generator=g, dtype=torch.float64))[0]
    p = Projections(tuple(delta.shape), read, write)
    assert (_cut_piece_rows(write, delta) == CUT_PIECE) == pieces
    for i in range(0, 600, 300):  # two 300-row blocks (a piece and a remainder each), the second added in
        p.add(0, slice(i, i + 300), delta[i:i + 300])
    d64 = delta.double()
    assert torch.allclose(p.energies("write"), ((d64.T @ write) ** 2).sum(0), rtol=1e-5)
    assert torch.allclose(p.energies("read"), ((d64 @ read) ** 2).sum(0), rtol=1e-5)


def test_the_streamed_sketch_is_the_whole_matrix_sketch():
    """GramSketch fed row blocks (axis 0: the d_in-side Gram) or column blocks (axis 1: the d_out side) gives the
    sketch of the delta held whole (of ΔWᵀ for axis 1), the same probe Ω; a delta in factor form gets the exact
    value."""
    from rwedit.lowrank import LowRankDelta
    from rwedit.probes.blocks import GramSketch
    from rwedit.probes.rsf import gram_concentration, sketch_spread

    delta = _planted("spiked").float()
    for axis, whole in ((0, delta), (1, delta.T.contiguous())):
        sk = GramSketch(tuple(delta.shape), axis, 32, seed=3)
        for i in range(0, delta.shape[axis], 10):
            idx = slice(i, i + 10)
            sk.add(axis, idx, delta[idx] if axis == 0 else delta[:, idx])
        got, want = sk.spread(), sketch_spread(whole, 32, seed=3)
        assert (got.value, got.lo, got.hi) == pytest.approx((want.value, want.lo, want.hi), rel=1e-5)
    g = torch.Generator().manual_seed(0)
    low = LowRankDelta(torch.randn(40, 3, generator=g, dtype=torch.float64),
                       torch.randn(24, 3, generator=g, dtype=torch.float64))
    sk = GramSketch((40, 24), 0, 32)
    sk.add(0, slice(0, 40), low)
    assert sk.spread().method == "exact" and sk.spread().value == pytest.approx(gram_concentration(low), rel=1e-12)
    assert sketch_spread(low, 32).method == "exact"


def test_the_grid_chooses_labels_and_bounds_its_null():
    """null: exact gives the Gram's sd (the rows and columns of before); sketch labels its rows and bounds the sd
    it gives; auto keeps the exact Gram for small matrices and on a GPU, sketches large ones; the CSV columns grow
    only when something is sketched."""
    from grid_oracle import rows_for_delta
    from rwedit.probes.grid import (COLUMNS, NULL_COLUMNS, GridContext, GridSettings, columns, null_method,
                                    null_methods)
    from rwedit.probes.rsf import exact_null_sd, gram_concentration

    delta = _planted("spiked").float()
    ctx = GridContext(64)
    kw = dict(ks=(1, 4, 16), subspaces=("random",))
    exact = rows_for_delta(delta, 0, "q", ctx, GridSettings(null="exact", **kw))
    auto = rows_for_delta(delta, 0, "q", ctx, GridSettings(**kw))
    sketch = rows_for_delta(delta, 0, "q", ctx, GridSettings(null="sketch", null_sketch=128, **kw))
    conc = gram_concentration(delta)
    for r in exact:  # the rows of before: COLUMNS alone
        assert r["null_exact_sd"] == exact_null_sd(conc, r["d"], r["k"]) and list(r) == list(COLUMNS)
    assert auto == exact and columns(exact) == list(COLUMNS)
    assert columns(sketch) == list(COLUMNS) + list(NULL_COLUMNS)
    assert null_methods(exact, GridSettings()) == {"exact": 1} and null_methods(sketch, GridSettings()) == {"sketch": 1}
    for e, s in zip(exact, sketch):
        assert s["null_method"] == "sketch" and 0 < s["null_rel_error"] < 0.5
        assert s["rsf"] == e["rsf"] and s["null_mean"] == e["null_mean"] == 1.0 and s["null_sd"] == s["null_exact_sd"]
        assert abs(s["null_exact_sd"] - e["null_exact_sd"]) <= s["null_rel_error"] * s["null_exact_sd"]
    seeds = rows_for_delta(delta, 0, "q", ctx, GridSettings(null="seeds", null_seeds=3, **kw))
    assert all(math.isnan(r["null_exact_sd"]) for r in seeds) and columns(seeds) == list(COLUMNS)
    assert null_methods(seeds, GridSettings(null="seeds", null_seeds=3)) == {"seeds": 1}
    auto_settings = GridSettings()
    assert null_method(auto_settings, (512, 192)) == "exact"  # the organism's largest matrix
    assert null_method(auto_settings, (5632, 2048)) == "sketch"  # a 1.1B MLP matrix
    assert null_method(auto_settings, (5632, 2048), gpu=True) == "exact"
    assert null_method(auto_settings, (128, 100_000)) == "exact"  # min(d) ≤ 2m: the Gram costs less than the sketch
    with pytest.raises(ValueError, match="null must be one of"):
        GridSettings(null="gram")


def test_a_probe_records_its_null_in_the_csv_and_meta(tmp_path, wiki_tokenizer):
    """A probe request (as a recipe section) with ``null: sketch`` writes rsf.csv with the null's method and error
    bound and meta.json with the setting and the matrices per method; the default (auto) on a small model keeps
    the exact null and the columns of before."""
    import json

    import pandas as pd

    from rwedit.probes.grid import COLUMNS, NULL_COLUMNS
    from rwedit.probes.pipeline import ProbeRequest, run_probe
    from tiny_models import save_pair

    root = save_pair(tmp_path / "pair", wiki_tokenizer)
    spec = {"base": str(root / "base"), "posts": [str(root / "post")], "svd": None, "cards": 0}
    for null, cols, methods in (("sketch", list(COLUMNS) + list(NULL_COLUMNS), {"sketch": 15}),
                                ("auto", list(COLUMNS), {"exact": 15})):
        out = tmp_path / null
        run_probe(ProbeRequest.from_dict({**spec, "out": str(out), "grid": {"ks": [1, 4], "null": null,
                                                                           "subspaces": ["random"]}}))
        df, meta = pd.read_csv(out / "rsf.csv"), json.loads((out / "meta.json").read_text())
        assert list(df.columns) == cols
        assert meta["grid"]["null"] == null and meta["grid"]["null_methods"] == methods
    sk = pd.read_csv(tmp_path / "sketch" / "rsf.csv")
    ex = pd.read_csv(tmp_path / "auto" / "rsf.csv")
    assert set(sk["null_method"]) == {"sketch"} and (sk["null_rel_error"] > 0).all()
    assert ((sk["null_exact_sd"] - ex["null_exact_sd"]).abs() <= sk["null_rel_error"] * sk["null_exact_sd"]).mean() >= 0.9
    assert "sketched for 15 matrices" in (tmp_path / "sketch" / "summary.md").read_text()
