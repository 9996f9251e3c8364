"""Subspace maths checked against constructions with known answers (numpy-built, closed forms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rwedit.errors import ConfigError
from rwedit.probes.subspaces import (
    Spectrum,
    eig_subspace,
    gram_matrix,
    haar_basis,
    prediction_spectrum,
)


def np_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    """A random d x d orthogonal matrix built with numpy only."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def projector_gap(a: np.ndarray, b: np.ndarray) -> float:
    """‖P_a − P_b‖_F for the orthogonal projectors onto the column spans of a and b."""
    return float(np.linalg.norm(a @ a.T - b @ b.T))


# ----------------------------------------------------------------------------- haar_basis


def test_haar_basis_orthonormal_deterministic_float64():
    b = haar_basis(50, 7, seed=3)
    assert b.shape == (50, 7) and b.dtype == torch.float64
    assert np.allclose(b.T.numpy() @ b.numpy(), np.eye(7), atol=1e-12)
    assert torch.equal(b, haar_basis(50, 7, seed=3))
    assert not torch.allclose(b, haar_basis(50, 7, seed=4))


def test_haar_basis_is_haar_distributed():
    # Haar: E[B Bᵀ] = (k/d) I, and E[B_00] = 0 (QR without the sign fix biases B_00 to one sign).
    d, k, n = 8, 2, 1000
    bases = np.stack([haar_basis(d, k, seed=s).numpy() for s in range(n)])
    mean_proj = np.einsum("nik,njk->ij", bases, bases) / n
    # diagonal of P is Beta(k/2, (d-k)/2): mean k/d, var ab/((a+b)^2 (a+b+1))
    a, b = k / 2, (d - k) / 2
    sd_diag = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    assert np.abs(np.diag(mean_proj) - k / d).max() < 5 * sd_diag / math.sqrt(n)
    assert np.abs(mean_proj - np.diag(np.diag(mean_proj))).max() < 5 * sd_diag / math.sqrt(n)
    # each entry of a Haar unit vector has mean 0 and variance 1/d
    assert abs(bases[:, 0, 0].mean()) < 5 / math.sqrt(d * n)


@pytest.mark.parametrize("k", [0, 9, -1])
def test_haar_basis_bad_k(k):
    with pytest.raises(ValueError, match=rf"k={k}.*d=8"):
        haar_basis(8, k, seed=0)


@pytest.mark.parametrize("k", [True, 2.0, "3"])
def test_k_must_be_an_integer(k):
    with pytest.raises(ValueError, match="must be an integer"):
        haar_basis(8, k, seed=0)


def test_numpy_integer_k_accepted():
    assert haar_basis(8, np.int64(3), seed=0).shape == (8, 3)


# ----------------------------------------------------------------------------- eig_subspace


def spiked(d: int, lam: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    q = np_orthogonal(d, np.random.default_rng(seed))
    return (q * lam) @ q.T, q


def test_eig_subspace_recovers_known_spectrum():
    d = 30
    lam = np.concatenate([[50.0, 20.0, 9.0, 4.0], np.linspace(1.0, 0.1, d - 4)])
    c, q = spiked(d, lam, seed=1)
    spec = eig_subspace(torch.from_numpy(c))
    assert isinstance(spec, Spectrum) and spec.d == d
    assert np.allclose(spec.eigenvalues.numpy(), np.sort(lam)[::-1], atol=1e-10)
    for k in (1, 3, 4):
        assert projector_gap(spec.top(k).numpy(), q[:, :k]) < 1e-9
    # bottom: lowest-variance first
    bot = spec.bottom(2).numpy()
    assert abs(abs(bot[:, 0] @ q[:, -1]) - 1) < 1e-9 and abs(abs(bot[:, 1] @ q[:, -2]) - 1) < 1e-9
    # orthonormal eigenvectors, and the stated sign rule: largest-|entry| of each column positive
    v = spec.eigenvectors.numpy()
    assert np.allclose(v.T @ v, np.eye(d), atol=1e-12)
    assert (v[np.abs(v).argmax(axis=0), np.arange(d)] > 0).all()


@pytest.mark.parametrize("case", ["distinct", "cluster", "rank_deficient"])
def test_kept_eigenvectors_match_numpy_eigh(case, monkeypatch):
    """The kept-vectors solver (one tridiagonal reduction, the two end ranges only) against numpy's full eigh:
    every eigenvalue to 1e-10 of the largest, kept vectors up to sign, a degenerate cluster as a subspace,
    a rank-deficient second moment's bottom vectors in its null space; orthonormal, the sign rule kept."""
    import rwedit.probes.subspaces as sub

    monkeypatch.setattr(sub, "KEPT_MIN_D", 1)  # the large-d path at a test's size
    d, keep, rng = 300, 40, np.random.default_rng(7)
    lam = np.geomspace(100.0, 0.01, d)
    if case == "cluster":
        lam[10:30] = 5.0  # 20 equal eigenvalues inside the top 40
    if case == "rank_deficient":
        x = rng.standard_normal((100, d)) * np.linspace(1, 3, d)  # 100 tokens: rank 100, 200 zero eigenvalues
        c = x.T @ x / 100
    else:
        c, _ = spiked(d, lam, seed=3)
    ref_lam, ref = np.linalg.eigh(c)
    ref_lam, ref = ref_lam[::-1], ref[:, ::-1]
    spec = eig_subspace(torch.from_numpy(c), keep=keep)
    assert spec.n_top == spec.n_bottom == keep and not spec.complete
    np.testing.assert_allclose(spec.eigenvalues.numpy(), ref_lam, rtol=0, atol=1e-10 * ref_lam[0])
    top, bot = spec.top(keep).numpy(), spec.bottom(keep).numpy()
    both = np.concatenate([top, bot], axis=1)
    assert np.abs(both.T @ both - np.eye(2 * keep)).max() < 1e-12
    assert (both[np.abs(both).argmax(axis=0), np.arange(2 * keep)] > 0).all()
    single = [i for i in range(keep) if case != "cluster" or not 10 <= i < 30]
    np.testing.assert_allclose(np.abs(np.sum(top[:, single] * ref[:, single], axis=0)), 1, atol=1e-8)
    if case == "cluster":
        assert projector_gap(top[:, 10:30], ref[:, 10:30]) < 1e-8
    if case == "rank_deficient":  # bottom vectors: any orthonormal basis inside the null space is right
        assert np.abs(c @ bot).max() < 1e-10 * ref_lam[0]
    else:
        np.testing.assert_allclose(np.abs(np.sum(bot * ref[:, ::-1][:, :keep], axis=0)), 1, atol=1e-8)


def test_the_input_survives_unless_given_to_overwrite_and_the_spectrum_is_the_same(monkeypatch):
    """``overwrite`` spares the kept-vectors solver a d × d copy, and changes no bit of the result; without it the
    caller's matrix is untouched, exactly symmetric (not symmetrised again) or not."""
    import rwedit.probes.subspaces as sub

    monkeypatch.setattr(sub, "KEPT_MIN_D", 1)
    c, _ = spiked(200, np.geomspace(50.0, 0.01, 200), seed=5)
    exact = torch.from_numpy(0.5 * (c + c.T))  # bit-for-bit symmetric
    nearly = exact + 1e-13 * torch.triu(torch.ones_like(exact), 1)  # symmetric within sym_rtol only
    for m in (exact, nearly):
        kept = m.clone()
        ref = eig_subspace(m, keep=20)
        assert torch.equal(m, kept)
        again = eig_subspace(m.clone(), keep=20, overwrite=True)
        for a, b in ((ref.eigenvalues, again.eigenvalues), (ref.eigenvectors, again.eigenvectors),
                     (ref.low_vectors, again.low_vectors)):
            assert torch.equal(a, b)
    np.testing.assert_allclose(eig_subspace(nearly, keep=20).eigenvalues.numpy(),
                               eig_subspace(exact, keep=20).eigenvalues.numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", ["few_tokens", "identity"])
def test_kept_ends_stay_orthogonal_when_one_cluster_spans_both(case, monkeypatch):
    """Fewer tokens than kept vectors (the null space reaches into the top range) or one eigenvalue throughout
    (split-off blocks with exact ties: the full eigh instead): the top and bottom ends are still orthonormal
    eigenvectors, against numpy's eigenvalues."""
    import rwedit.probes.subspaces as sub

    monkeypatch.setattr(sub, "KEPT_MIN_D", 1)
    d, keep = 200, 30
    x = np.random.default_rng(5).standard_normal((10, d))
    c = x.T @ x if case == "few_tokens" else np.eye(d)
    spec = eig_subspace(torch.from_numpy(c), keep=keep)
    both = np.concatenate([spec.top(keep).numpy(), spec.bottom(keep).numpy()], axis=1)
    lam = np.r_[spec.eigenvalues.numpy()[:keep], spec.eigenvalues.numpy()[::-1][:keep]]
    np.testing.assert_allclose(spec.eigenvalues.numpy(), np.linalg.eigvalsh(c)[::-1], rtol=0, atol=1e-10 * c.max())
    assert np.abs(both.T @ both - np.eye(2 * keep)).max() < 1e-12
    assert np.abs(c @ both - both * lam).max() < 1e-10 * np.abs(c).max()


def test_small_matrices_keep_the_full_eigh():
    """Below KEPT_MIN_D (organism-sized inputs) ``keep`` changes nothing: the same full decomposition, bit for bit."""
    c, _ = spiked(512, np.geomspace(10.0, 0.1, 512), seed=2)
    full, kept = eig_subspace(torch.from_numpy(c)), eig_subspace(torch.from_numpy(c), keep=64)
    assert kept.complete and torch.equal(full.eigenvalues, kept.eigenvalues)
    assert torch.equal(full.eigenvectors, kept.eigenvectors)


def test_spikedness_closed_forms():
    d = 20
    lam = np.array([10.0, 5.0, 2.0] + [1.0] * (d - 3))
    c, _ = spiked(d, lam, seed=2)
    sp = eig_subspace(torch.from_numpy(c)).spikedness(3)
    assert sp["topk_share"] == pytest.approx(17.0 / (17.0 + d - 3), rel=1e-12)
    assert sp["participation_ratio"] == pytest.approx((17.0 + d - 3) ** 2 / (129.0 + d - 3), rel=1e-12)
    iso = eig_subspace(torch.eye(d, dtype=torch.float64)).spikedness(5)
    assert iso == pytest.approx({"topk_share": 5 / d, "participation_ratio": float(d)}, rel=1e-12)
    x = np.random.default_rng(0).standard_normal(d)
    rank1 = eig_subspace(torch.from_numpy(np.outer(x, x))).spikedness(1)
    assert rank1 == pytest.approx({"topk_share": 1.0, "participation_ratio": 1.0}, rel=1e-9)


def test_eig_subspace_float32_input_accepted():
    a = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    c = (a.T @ a) / 500  # float32: asymmetry at rounding level
    spec = eig_subspace(c)
    ref = np.linalg.eigvalsh(c.double().numpy())[::-1]
    assert spec.eigenvalues.dtype == torch.float64
    assert np.allclose(spec.eigenvalues.numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.ones(3, 4, dtype=torch.float64), "square"),
        (torch.ones(4, dtype=torch.float64), "square"),
        (torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64), "not symmetric"),
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]], dtype=torch.float64), "non-finite"),
    ],
)
def test_eig_subspace_rejects_bad_matrices(bad, match):
    with pytest.raises(ValueError, match=match):
        eig_subspace(bad)


@pytest.mark.parametrize("k", [0, 7])
def test_spectrum_bad_k_says_k_and_d(k):
    spec = eig_subspace(torch.eye(6, dtype=torch.float64))
    for call in (spec.top, spec.bottom, spec.spikedness):
        with pytest.raises(ValueError, match=rf"k={k} .*d=6.*1 <= k <= d"):
            call(k)


# ----------------------------------------------------------------------------- prediction basis


def planted_unembedding(V: int, d: int, sing: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """W_U = P diag(sing) Qᵀ with known right singular vectors Q (columns)."""
    rng = np.random.default_rng(seed)
    p = np.linalg.qr(rng.standard_normal((V, d)))[0]
    q = np_orthogonal(d, rng)
    return (p * sing) @ q.T, q


def test_prediction_basis_recovers_planted_right_singular_vectors():
    V, d = 400, 48
    sing = np.concatenate([[30.0, 20.0, 12.0, 8.0, 5.0], np.linspace(2.0, 0.5, d - 5)])
    w_u, q = planted_unembedding(V, d, sing, seed=5)
    W = torch.from_numpy(w_u)
    for k in (1, 3, 5):
        assert projector_gap(prediction_spectrum(W).top(k).numpy(), q[:, :k]) < 1e-8
    spec = prediction_spectrum(W)
    assert np.allclose(spec.eigenvalues.clamp(min=0).sqrt().numpy(), sing, rtol=1e-9)
    # chunked accumulation is the same Gram matrix
    assert torch.allclose(gram_matrix(W, chunk_rows=7), torch.from_numpy(w_u.T @ w_u), rtol=1e-12, atol=1e-10)


def test_a_kept_prediction_spectrum_is_the_full_ones_top(monkeypatch):
    """``keep``: the kept-vectors solver's top eigenvectors span the planted right singular vectors as the full
    decomposition's do, with every eigenvalue."""
    import rwedit.probes.subspaces as sub

    monkeypatch.setattr(sub, "KEPT_MIN_D", 1)
    V, d = 400, 48
    sing = np.concatenate([[30.0, 20.0, 12.0, 8.0, 5.0], np.linspace(2.0, 0.5, d - 5)])
    w_u, q = planted_unembedding(V, d, sing, seed=6)
    kept = prediction_spectrum(torch.from_numpy(w_u), keep=5)
    assert kept.n_top == 5 and not kept.complete
    assert np.allclose(kept.eigenvalues.clamp(min=0).sqrt().numpy(), sing, rtol=1e-9)
    for k in (1, 3, 5):
        assert projector_gap(kept.top(k).numpy(), q[:, :k]) < 1e-8


def test_prediction_basis_with_final_norm_gain_matches_numpy_svd():
    rng = np.random.default_rng(7)
    V, d, k = 300, 32, 4
    w_u = rng.standard_normal((V, d)) * np.linspace(3.0, 0.2, d)  # distinct column scales
    gamma = rng.uniform(0.5, 2.0, size=d)
    w32 = torch.from_numpy(w_u).float()  # stored dtype float32; compare against its exact values
    got = prediction_spectrum(w32, torch.from_numpy(gamma).float(), chunk_rows=64).top(k)
    assert got.dtype == torch.float64 and got.shape == (d, k)
    gamma32 = torch.from_numpy(gamma).float().double().numpy()
    ref_vh = np.linalg.svd(w32.double().numpy() * gamma32)[2]
    assert projector_gap(got.numpy(), ref_vh[:k].T) < 1e-8
    # without the gain the subspace differs (the option actually does something)
    plain = prediction_spectrum(w32).top(k).numpy()
    assert projector_gap(plain, ref_vh[:k].T) > 1e-3


def test_prediction_basis_bfloat16_input():
    """σ² of a bfloat16 W_U within Weyl's bound of the exact ones: the Gram's error (float32 sums of at most
    33 exact products an entry, the chunk here) bounds every eigenvalue's in its Frobenius norm."""
    w = torch.randn(200, 16, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    exact = w.double().numpy()
    ref = np.linalg.svd(exact)[1] ** 2
    bound = np.linalg.norm(33 * 2.0**-24 * (np.abs(exact).T @ np.abs(exact)))
    got = prediction_spectrum(w, chunk_rows=33).eigenvalues.numpy()
    assert np.abs(got - ref).max() <= bound and bound < 1e-4 * ref[-1]


def test_prediction_basis_bad_inputs():
    w = torch.randn(50, 8)
    with pytest.raises(ValueError, match=r"k=9 .*d=8"):
        prediction_spectrum(w).top(9)
    with pytest.raises(ValueError, match=r"k=0 .*d=8"):
        prediction_spectrum(w).top(0)
    with pytest.raises(ValueError, match=r"final_norm_gain must have shape \(8,\)"):
        prediction_spectrum(w, torch.ones(7))
    bad = w.clone()
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        prediction_spectrum(bad).top(2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gram_is_float64_to_its_stated_bound(dtype):
    """A stored half-precision W_U takes float32 partial Grams of HALF_CHUNK_ROWS rows: each entry within
    HALF_CHUNK_ROWS·2⁻²⁴ of Σ_r |w_ri w_rj| of the float64 Gram of the same (exactly representable) values, and
    the prediction spectrum's eigenvalues and top subspace those of the float64 decomposition."""
    from rwedit.probes.subspaces import HALF_CHUNK_ROWS

    rng = np.random.default_rng(3)
    V, d = 3 * HALF_CHUNK_ROWS + 500, 40  # several chunks and a remainder
    w_u, q = planted_unembedding(V, d, np.concatenate([[40.0, 25.0, 10.0], np.linspace(3.0, 0.3, d - 3)]), seed=9)
    W = torch.from_numpy(w_u / 30).to(dtype)
    exact = W.double().numpy()  # the stored values, in float64
    ref = exact.T @ exact
    got = gram_matrix(W).numpy()
    bound = HALF_CHUNK_ROWS * 2.0**-24 * (np.abs(exact).T @ np.abs(exact))
    assert np.all(np.abs(got - ref) <= bound)
    assert np.abs(got - ref).max() > 0  # it did take the float32 path (a float64 Gram would be exact here)
    evals, evecs = np.linalg.eigh(ref)
    spec = prediction_spectrum(W)
    weyl = np.linalg.norm(bound)  # every eigenvalue moves by at most the Gram error's norm
    assert np.abs(spec.eigenvalues.numpy() - evals[::-1]).max() <= weyl
    assert projector_gap(spec.top(3).numpy(), evecs[:, ::-1][:, :3]) < 1e-4

def test_half_precision_gram_falls_back_to_float64_beyond_float32s_range():
    """A bfloat16 weight whose square overflows float32 (bfloat16 reaches 3e38) is summed in float64 instead."""
    W = torch.ones(2500, 8, dtype=torch.bfloat16)
    W[5, 0] = 1e30
    got = gram_matrix(W)
    assert torch.isfinite(got).all()
    exact = W.double()
    torch.testing.assert_close(got, exact.T @ exact, rtol=1e-12, atol=0)


def test_a_failing_kept_solver_falls_back_on_an_intact_matrix(monkeypatch):
    """The kept-vectors solver may overwrite the matrix and still fail (overlapping ends): the full decomposition
    then runs on the matrix made again (a copy made inside), or the caller is told to give it again (its own,
    given to overwrite); the statistics do that. Each result against numpy's eigh of the original."""
    import rwedit.probes.activations as act
    import rwedit.probes.subspaces as sub

    monkeypatch.setattr(sub, "KEPT_MIN_D", 1)

    calls = []

    def failing(m, keep, overwrite=False):  # destroys what it may, then fails
        calls.append(overwrite)
        if overwrite:
            m[...] = np.nan
        raise np.linalg.LinAlgError("overlapping ends (simulated)")

    monkeypatch.setattr(sub, "_kept_spectrum", failing)
    c, _ = spiked(120, np.geomspace(30.0, 0.1, 120), seed=2)
    want = np.linalg.eigvalsh(0.5 * (c + c.T))[::-1]
    nearly = torch.from_numpy(c)  # symmetrised inside: a copy, overwritten, made again
    np.testing.assert_allclose(eig_subspace(nearly, keep=10).eigenvalues.numpy(), want, atol=1e-10)
    exact = torch.from_numpy(0.5 * (c + c.T))
    np.testing.assert_allclose(eig_subspace(exact.clone(), keep=10).eigenvalues.numpy(), want, atol=1e-10)
    with pytest.raises(sub.MatrixOverwritten):
        eig_subspace(exact.clone(), keep=10, overwrite=True)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((400, 2 * act.SPECTRUM_KEEP + 8)))
    stats = act.ActivationStats({(0, "attn_in"): x.T @ x}, {(0, "attn_in"): x.sum(0)}, 400)
    calls.clear()
    np.testing.assert_allclose(stats.spectrum(0, "q", top=0).eigenvalues.numpy(),
                               np.linalg.eigvalsh((x.T @ x / 400).numpy())[::-1], atol=1e-10)
    assert calls == [True, False]  # overwritten and failed, then given again


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_gram_matrix_names_the_rows_of_a_non_finite_unembedding(dtype, bad):
    """A NaN/Inf in any precision's W is a ConfigError naming its chunk's rows (half precision is checked once
    converted, float32 as stored)."""
    W = torch.randn(3000, 16).to(dtype)
    W[2500, 3] = bad
    with pytest.raises(ConfigError, match=r"non-finite \(NaN/inf\) entries in rows 2048\.\.2999"):
        gram_matrix(W, chunk_rows=1024)
