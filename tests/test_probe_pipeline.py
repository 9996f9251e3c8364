"""The probe commands end to end on two tiny checkpoints, checked against independent recomputation."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from rwedit.architectures import get_weight
from rwedit.cli import main
from rwedit.data import pack_tokens
from rwedit.probes.activations import StatsSettings, collect_activation_stats
from rwedit.probes.grid import GridSettings, rsf_grid_pair
from rwedit.checkpoints import CheckpointPair
from rwedit.errors import ConfigError
from conftest import WIKITEXT
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, wiki_tokenizer):
    root = tmp_path_factory.mktemp("pair")
    base = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    post = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    post.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in post.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    for name, m in (("base", base), ("post", post)):
        m.save_pretrained(root / name)
        wiki_tokenizer.save_pretrained(root / name)
    return root, base, post


def test_probe_cli_writes_results_plots_and_summary(tiny_pair, tmp_path, capsys):
    root, base, post = tiny_pair
    out = tmp_path / "probe"
    rc = main(["probe", "--base", str(root / "base"), "--post", str(root / "post"), "--calib", str(WIKITEXT),
               "--calib-tokens", "2048", "--seq-len", "64", "--k", "1,4,16,64", "--null-seeds", "4",
               "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert rc == 0
    df = pd.read_csv(out / "rsf.csv")
    for col in ("layer", "role", "side", "subspace", "k", "d", "fraction", "rsf", "null_mean", "null_sd", "delta_norm"):
        assert col in df.columns
    # k ≥ d is the whole space (RSF = 1 by construction): skipped for the d = 32 sides, and said so
    assert (df.k < df.d).all() and set(df[df.d == 32]["k"]) == {1, 4, 16}
    assert set(df[df.d == 512]["k"]) == {1, 4, 16, 64}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["k_skipped"]["64"] > 0 and "k = 64 for" in (out / "summary.md").read_text()
    assert set(df["subspace"]) == {"activation", "prediction", "random"}
    # activation rows only on the read side; prediction on residual-stream sides only
    assert set(df[df.subspace == "activation"]["side"]) == {"read"}
    pred = df[df.subspace == "prediction"]
    assert set(pred[pred.side == "write"]["role"]) == {"o", "down"}
    # independent recomputation of one row: read side of layer 1 q vs its activation subspace, k = 4
    row = df[(df.layer == 1) & (df.role == "q") & (df.side == "read") & (df.subspace == "activation") & (df.k == 4)].iloc[0]
    dW = (get_weight(post, 1, "q") - get_weight(base, 1, "q")).double()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(root / "base")
    from rwedit.data import read_texts
    ids = pack_tokens(tok, read_texts(WIKITEXT), 64, 2048)
    X = []
    h = base.model.layers[1].self_attn.q_proj.register_forward_pre_hook(lambda m, a: X.append(a[0].reshape(-1, 32).double()))
    with torch.no_grad():
        for i in range(0, len(ids), 8):
            base(input_ids=ids[i:i + 8])
    h.remove()
    X = torch.cat(X)
    evals, evecs = torch.linalg.eigh(X.T @ X / len(X))
    B = evecs[:, -4:]
    frac = float((dW @ B).pow(2).sum() / dW.pow(2).sum())
    assert math.isclose(row["fraction"], frac, rel_tol=1e-6)
    assert math.isclose(row["rsf"], frac / (4 / 32), rel_tol=1e-6)
    assert math.isclose(row["delta_norm"], float(dW.norm()), rel_tol=1e-6)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["calibration"]["seq_len"] == 64 and meta["activation_stats"]["model_fingerprint"]
    assert meta["grid"]["null_seeds"] == 4
    summary = (out / "summary.md").read_text()
    assert "Headline" in summary and "Spikedness" in summary
    for f in ("rsf_heatmap_read_activation.png", "rsf_heatmap_write_prediction.png", "rsf_vs_k.png", "headline.csv",
              "spectrum.csv"):
        assert (out / f).stat().st_size > 0
    # headline = mean over layers of rsf.csv
    head = pd.read_csv(out / "headline.csv")
    h = head[(head.role == "o") & (head.side == "write") & (head.subspace == "prediction") & (head.k == 4)].iloc[0]
    want = df[(df.role == "o") & (df.side == "write") & (df.subspace == "prediction") & (df.k == 4)]["rsf"].mean()
    assert math.isclose(h["rsf_mean"], want, rel_tol=1e-12)


def test_zero_delta_rows_are_nan_with_a_reason(tiny_pair):
    root, base, post = tiny_pair
    pair = CheckpointPair(root / "base", root / "base")
    rows = list(rsf_grid_pair(pair, None, GridSettings(ks=(1, 4, 16), roles=("q",), layers=(0,), null_seeds=2)))
    assert rows and all(math.isnan(r["rsf"]) and r["reason"] == "zero delta" for r in rows)


def test_the_grid_as_a_dataframe_holds_the_streamed_rows(tiny_pair):
    from rwedit.probes.grid import COLUMNS, rsf_grid_frame

    root, *_ = tiny_pair
    pair = CheckpointPair(root / "base", root / "post")
    settings = GridSettings(ks=(1, 4), roles=("q", "o"), layers=(1,))
    df = rsf_grid_frame(pair, None, settings)
    rows = list(rsf_grid_pair(pair, None, settings))
    assert list(df.columns) == list(COLUMNS) and len(df) == len(rows)
    assert df["rsf"].tolist() == pytest.approx([r["rsf"] for r in rows], nan_ok=True)


def test_exact_null_alone_fills_the_null_columns_and_leaves_the_rsf_unchanged(tiny_pair):
    """null_seeds = 0: no random subspaces; the null columns are the exact null (mean 1, its closed-form sd,
    recomputed here from the delta's singular values), the RSF values equal the seeded grid's."""
    root, base, post = tiny_pair
    pair = CheckpointPair(root / "base", root / "post")
    kw = dict(ks=(1, 4, 16), roles=("q", "down"), layers=(0,))
    exact = list(rsf_grid_pair(pair, None, GridSettings(null_seeds=0, **kw)))
    seeded = list(rsf_grid_pair(pair, None, GridSettings(null_seeds=3, **kw)))
    # equal up to float32 rounding: the seeds widen the one product that projects ΔW onto every basis
    assert [r["rsf"] for r in exact] == pytest.approx([r["rsf"] for r in seeded], rel=1e-6)
    for r in exact:
        dW = (get_weight(post, 0, r["role"]) - get_weight(base, 0, r["role"])).double()
        s2 = torch.linalg.svdvals(dW) ** 2
        g2 = float((s2 ** 2).sum() / s2.sum() ** 2)
        d, k = r["d"], r["k"]
        sd = math.sqrt(2 * k * (d - k) / (d * (d - 1) * (d + 2)) * (g2 - 1 / d)) * d / k
        assert r["null_mean"] == 1.0 and r["null_sd"] == pytest.approx(sd, rel=1e-4) == r["null_exact_sd"]
        assert r["null_z"] == pytest.approx((r["rsf"] - 1) / sd, rel=1e-4)


@pytest.mark.parametrize("kw,match", [(dict(null_seeds=1), "give >= 2 random subspaces"),
                                      (dict(null_seeds=0, sides=("both",)), "no closed form for the two-sided"),
                                      (dict(null_seeds=0, null="seeds"), "leave no null at all")])
def test_null_settings_without_a_null_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        GridSettings(**kw)


def test_svd_cli_writes_results(tiny_pair, tmp_path):
    root, base, post = tiny_pair
    out = tmp_path / "svd"
    assert main(["svd", "--base", str(root / "base"), "--post", str(root / "post"), "--r", "8", "--out", str(out), "--quiet"]) == 0
    df = pd.read_csv(out / "svd.csv")
    for col in ("layer", "role", "r", "scale", "scale_residual", "orth_U", "orth_V", "consistency", "reparam_error"):
        assert col in df.columns
    assert len(df) == 2 * 7 and (df["r"] == 8).all()
    # scale recomputed independently from singular values
    W0, W1 = get_weight(base, 0, "down").double(), get_weight(post, 0, "down").double()
    s0, s1 = torch.linalg.svdvals(W0)[:8], torch.linalg.svdvals(W1)[:8]
    want = float(s0 @ s1 / (s0 @ s0))
    got = df[(df.layer == 0) & (df.role == "down")]["scale"].iloc[0]
    assert math.isclose(got, want, rel_tol=1e-9)
    assert (out / "svd_scale.png").exists() and (out / "summary.md").exists()


def test_svd_probe_with_r_above_a_matrix_rank_uses_all_its_triplets(tiny_pair, tmp_path):
    """The default r = 64 on a model of hidden 32: each matrix uses min(d_out, d_in) triplets, which is the
    same as r = 'full', and meta.json names the clipped matrices."""
    from rwedit.probes.pipeline import ProbeRequest, SvdSettings, run_probe

    root, base, post = tiny_pair
    big, full = (run_probe(ProbeRequest(str(root / "base"), str(root / "post"), grid=None, svd=SvdSettings(r=r),
                                        out=tmp_path / name)).svd.drop(columns="post")
                 for r, name in ((64, "r64"), ("full", "full")))
    assert big.equals(pd.read_csv(tmp_path / "r64" / "svd.csv"))  # the returned table is the written one
    want = {(L, role): min(get_weight(base, L, role).shape) for L, role in zip(big["layer"], big["role"])}
    assert list(big["r"]) == list(want.values()) and set(big["r"]) == {16, 32}  # k/v are 16 x 32 (GQA)
    pd.testing.assert_frame_equal(big, full)
    meta = json.loads((tmp_path / "r64" / "meta.json").read_text())
    assert meta["svd"]["r"] == 64
    assert meta["svd"]["r_clipped_to_rank"] == {f"{L}.{role}": r for (L, role), r in want.items()}


def test_two_sided_rows_match_the_formula(tiny_pair, wiki_tokenizer):
    root, base, post = tiny_pair
    pair = CheckpointPair(root / "base", root / "post")
    from rwedit.data import read_texts
    ids = pack_tokens(wiki_tokenizer, read_texts(WIKITEXT, limit=400), 32, 32 * 8)
    stats = collect_activation_stats(base, ids, StatsSettings(roles=("down",)), progress=False)
    rows = list(rsf_grid_pair(pair, stats, GridSettings(ks=(4,), sides=("both",), roles=("down",), null_seeds=3)))
    assert [r["layer"] for r in rows] == [0, 1] and all(r["subspace"] == "prediction+activation" for r in rows)
    dW = (get_weight(post, 0, "down") - get_weight(base, 0, "down")).double()
    WU = get_weight(base, None, "unembed").double()
    BL = torch.linalg.svd(WU, full_matrices=False).Vh[:4].T          # top right singular vectors of W_U
    BR = torch.linalg.eigh(stats.second_moment(0, "down")).eigenvectors[:, -4:]
    f = float(((BL.T @ dW).pow(2).sum() + (dW @ BR).pow(2).sum()) / dW.pow(2).sum())
    assert math.isclose(rows[0]["fraction"], f, rel_tol=1e-6)
    assert math.isclose(rows[0]["rsf"], f / (4 / 32 + 4 / 48), rel_tol=1e-6)


@pytest.mark.parametrize("model_type", ["gemma", "llama"])
def test_prediction_subspace_with_folded_final_norm(tmp_path, model_type):
    from rwedit.probes.grid import prediction_from_pair

    model = tiny_model(model_type)
    with torch.no_grad():
        model.model.norm.weight.copy_(torch.linspace(-0.5, 2.0, 32))
    model.save_pretrained(tmp_path / "m")
    pair = CheckpointPair(tmp_path / "m", tmp_path / "m")
    # Gemma scales by (1 + w), computed in float32 as the model does
    gamma = (model.model.norm.weight.float() + (1.0 if model_type == "gemma" else 0.0)).double()
    WU = get_weight(model, None, "unembed").double()
    for gain, M in ((False, WU), (True, WU * gamma)):
        want = torch.linalg.svd(M, full_matrices=False).Vh[:3].T
        got = prediction_from_pair(pair, gain=gain).top(3)
        # same subspace: the projector onto it agrees (signs of singular vectors are arbitrary)
        torch.testing.assert_close(got @ got.T, want @ want.T, atol=1e-8, rtol=0)


def test_rsf_colour_scale_is_logarithmic_and_centred_at_isotropy():
    """4x concentrated and 4x depleted sit equally far from the neutral middle of the diverging map."""
    from rwedit.probes.report import centred_log_norm

    norm = centred_log_norm([0.5, 1.0, 4.0, 2.0])
    assert float(norm(1.0)) == pytest.approx(0.5)
    assert float(norm(4.0)) - 0.5 == pytest.approx(0.5 - float(norm(0.25)))
    assert (norm.vmin, norm.vmax) == pytest.approx((0.25, 4.0))


def test_run_probe_returns_tables_and_writes_a_folder_only_when_asked(tiny_pair, tmp_path, monkeypatch):
    """A notebook call (no `out`) writes nothing and returns the tables the folder would hold; the request reads
    from a mapping as a recipe section would; an option once only on the single pair (allow_dtype_mismatch)
    holds in a comparison, and a comparison's rows of a post are its single-pair rows."""
    import copy
    from dataclasses import replace

    from rwedit.errors import CheckpointMismatchError
    from rwedit.probes.pipeline import ProbeRequest, run_probe

    root, base, post = tiny_pair
    monkeypatch.chdir(tmp_path)
    req = ProbeRequest.from_dict({"base": str(root / "base"), "posts": [str(root / "post")],
                                  "grid": {"ks": [1, 4], "subspaces": ["prediction", "random"]}, "svd": {"r": 4}})
    res = run_probe(req)
    assert res.folder is None and list(tmp_path.iterdir()) == []
    assert set(res.rsf["post"]) == {"post"} and set(res.svd["r"]) == {4} and set(res.claims["post"]) == {"post"}
    assert res.table is res.headline and "random" not in set(res.headline["subspace"])
    written = run_probe(replace(req, out=str(tmp_path / "one")))
    assert written.folder == tmp_path / "one"
    pd.testing.assert_frame_equal(written.rsf.drop(columns="post"), pd.read_csv(tmp_path / "one" / "rsf.csv",
                                  keep_default_na=False, na_values=["nan", ""]).fillna({"reason": ""}), check_dtype=False)
    pd.testing.assert_frame_equal(res.rsf, written.rsf)
    assert json.loads((tmp_path / "one" / "meta.json").read_text())["svd"]["r"] == 4  # the rank is stated
    copy.deepcopy(post).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    two = replace(req, posts=(str(root / "post"), str(tmp_path / "bf16")))
    with pytest.raises(CheckpointMismatchError, match="allow-dtype-mismatch"):
        run_probe(two)
    both = run_probe(replace(two, allow_dtype_mismatch=True))
    assert list(dict.fromkeys(both.rsf["post"])) == ["post", "bf16"] and set(both.claims["post"]) == {"post", "bf16"}
    pd.testing.assert_frame_equal(both.rsf[both.rsf["post"] == "post"].reset_index(drop=True), res.rsf)
    with pytest.raises(ConfigError, match="not both and not neither"):
        ProbeRequest(str(root / "base"))


def test_prediction_spectrum_held_serves_fewer_eigenvectors_and_is_solved_again_for_more(tmp_path, monkeypatch):
    """The grid asks for its largest k of leading eigenvectors, the direction cards for m: a held spectrum with
    enough of them serves; one with too few (or a call for all) is solved again; the kept top is the full top."""
    import rwedit.probes.subspaces as sub
    from rwedit.probes import grid as grid_mod

    monkeypatch.setattr(sub, "KEPT_MIN_D", 1)  # the kept-vectors solver at the tiny model's d
    tiny_model("llama").save_pretrained(tmp_path / "m")
    calls = []
    real = grid_mod.prediction_spectrum
    monkeypatch.setattr(grid_mod, "prediction_spectrum", lambda *a, **k: calls.append(k.get("keep")) or real(*a, **k))
    monkeypatch.setattr(grid_mod, "_PREDICTION", {})
    pair = CheckpointPair(tmp_path / "m", tmp_path / "m")
    few = grid_mod.prediction_from_pair(pair, top=3)
    assert few.n_top == 3 and not few.complete
    assert grid_mod.prediction_from_pair(pair, top=2) is few and calls == [3]
    assert grid_mod.prediction_from_pair(pair, top=5).n_top == 5 and calls == [3, 5]
    whole = grid_mod.prediction_from_pair(pair)
    assert whole.complete and calls == [3, 5, None]
    assert grid_mod.prediction_from_pair(pair, top=4) is whole and calls == [3, 5, None]
    torch.testing.assert_close(few.top(3), whole.top(3), rtol=0, atol=1e-8)
    torch.testing.assert_close(few.eigenvalues, whole.eigenvalues, rtol=1e-10, atol=1e-12)


def test_prediction_spectrum_of_a_base_is_computed_once_and_again_when_its_files_change(tmp_path, monkeypatch):
    """The grid and the direction cards both ask for the base's prediction spectrum: the second ask is the first
    answer; a re-saved base (other weights, same folder) is decomposed anew."""
    from rwedit.probes import grid as grid_mod

    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    calls = []
    real = grid_mod.prediction_spectrum
    monkeypatch.setattr(grid_mod, "prediction_spectrum", lambda *a, **k: calls.append(1) or real(*a, **k))
    pair = CheckpointPair(tmp_path / "m", tmp_path / "m")
    first = grid_mod.prediction_from_pair(pair)
    assert grid_mod.prediction_from_pair(pair.base) is first and len(calls) == 1
    assert grid_mod.prediction_from_pair(pair, gain=True) is not first and len(calls) == 2
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(2.0)
    model.save_pretrained(tmp_path / "m")
    again = grid_mod.prediction_from_pair(CheckpointPair(tmp_path / "m", tmp_path / "m"))
    assert len(calls) == 3
    torch.testing.assert_close(again.eigenvalues, 4 * first.eigenvalues)
