"""Direction cards against planted signals: a token that alone drives a chosen input direction comes first
in that direction's contexts (its opposite token first on the negative side); a W_U row planted along a
chosen residual direction makes that token the lens's first promoted one (final norm gain folded in)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rwedit.architectures import get_weight, set_weight
from rwedit.probes.directions import Direction, cards_frame, explain, final_norm_gain, logit_lens, unembedding
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def planted():
    """A tiny Llama whose embeddings are orthogonal to u except token T (+c·u) and token S (−c·u), so at
    layer 0 only those tokens' inputs have any projection on u; and whose W_U row W is c·w/γ (γ the final
    norm's non-uniform gain), so the folded lens of w is largest at W."""
    torch.manual_seed(0)
    model = tiny_model("llama", seed=1)
    d = model.config.hidden_size
    u, w = torch.randn(d), torch.randn(d)
    u, w = u / u.norm(), w / w.norm()
    T, S, W = 17, 42, 63
    with torch.no_grad():
        E = model.get_input_embeddings().weight
        E -= torch.outer(E @ u, u)
        E[T] = 3.0 * u
        E[S] = -3.0 * u
        model.model.norm.weight.copy_(torch.linspace(0.5, 2.0, d))
        if model.config.tie_word_embeddings:
            pytest.skip("the tiny Llama ties W_U to the embeddings; the lens plant needs them apart")
        gain = final_norm_gain(model)
        W_U = get_weight(model, None, "unembed").clone()
        W_U[W] = 4.0 * w / gain
        set_weight(model, None, "unembed", W_U)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (24, 16), generator=g)
    ids[(ids == T) | (ids == S)] = 5  # the planted tokens appear only where placed
    ids[5, 7], ids[11, 3], ids[2, 9] = T, T, S
    return model, u, w, (T, S, W), ids


def test_the_planted_token_drives_its_input_direction(planted):
    model, u, w, (T, S, W), ids = planted
    d = Direction("activation", 0, "q", "read", 0, u)
    card = explain(model, [d], ids, top=3, progress=False)[0]
    assert [c.token for c in card.positive[:2]] == [f"<{T}>"] * 2
    assert {(c.sequence, c.position) for c in card.positive[:2]} == {(5, 7), (11, 3)}
    assert card.negative[0].token == f"<{S}>" and (card.negative[0].sequence, card.negative[0].position) == (2, 9)
    assert card.positive[0].value > 0 > card.negative[0].value
    # every other position projects to ~0 (their embeddings are orthogonal to u): float noise at most
    others = card.positive[2:] + card.negative[1:]
    assert others and all(abs(c.value) < 1e-5 * card.positive[0].value for c in others)
    assert 0 < card.share < 1


def test_the_share_equals_a_direct_second_moment_computation(planted):
    model, u, w, _, ids = planted
    seen = []
    h = model.model.layers[1].self_attn.q_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    model(input_ids=ids, use_cache=False)
    h.remove()
    A = seen[0].reshape(-1, seen[0].shape[-1]).double()
    v = torch.randn(A.shape[1], dtype=torch.float64)
    card = explain(model, [Direction("activation", 1, "k", "read", 0, v)], ids, progress=False)[0]
    v = v / v.norm()
    assert card.share == pytest.approx(float(((A @ v) ** 2).sum() / (A ** 2).sum()), rel=1e-9)
    assert card.positive[0].value == pytest.approx(float((A @ v).max()), rel=1e-9)


def test_the_planted_row_is_the_lens_first_token_with_the_norm_folded_in(planted):
    model, u, w, (T, S, W), ids = planted
    (promoted, suppressed), = logit_lens(w[None], *unembedding(model), top=3)
    assert promoted[0][0] == f"<{W}>"
    want = get_weight(model, None, "unembed").float() @ (final_norm_gain(model) * w)
    assert promoted[0][1] == pytest.approx(float(want.max()), rel=1e-6)
    assert suppressed[0][1] == pytest.approx(float(want.min()), rel=1e-6)
    (unfolded, _), = logit_lens(w[None], *unembedding(model, fold_norm=False), top=1)
    assert unfolded[0][1] == pytest.approx(float((get_weight(model, None, "unembed").float() @ w).max()), rel=1e-6)


def test_cards_only_show_what_their_space_supports_and_serialise(planted):
    model, u, w, _, ids = planted
    o_in = model.config.num_attention_heads * (model.config.hidden_size // model.config.num_attention_heads)
    dirs = [Direction("activation", 0, "q", "read", 0, u),  # residual read: contexts and lens
            Direction("activation", 0, "o", "read", 0, torch.randn(o_in)),  # head space: contexts, no lens
            Direction("delta_left", 0, "down", "write", 0, w),  # residual write: lens, no contexts
            Direction("prediction", None, "unembed", "write", 0, w)]
    cards = explain(model, dirs, ids, progress=False)
    assert [bool(c.positive or c.negative) for c in cards] == [True, True, False, False]
    assert [bool(c.promoted) for c in cards] == [True, False, True, True]
    frame = cards_frame(cards)
    assert list(frame["role"]) == ["q", "o", "down", "unembed"]
    json.dumps(frame.to_dict("records"))  # JSON-ready, as directions.jsonl holds it
    assert "promotes" in "\n".join(cards[0].lines())


def test_delta_directions_are_the_singular_vectors_of_a_planted_low_rank_update():
    """ΔW = 3·u1 v1ᵀ + 1·u2 v2ᵀ (orthonormal u's and v's): the cards' directions are ±(v_i, u_i) with σ = 3, 1."""
    from rwedit.probes.directions import delta_directions

    g = torch.Generator().manual_seed(0)
    Uq, _ = torch.linalg.qr(torch.randn(12, 2, generator=g, dtype=torch.float64))
    Vq, _ = torch.linalg.qr(torch.randn(9, 2, generator=g, dtype=torch.float64))
    delta = 3 * torch.outer(Uq[:, 0], Vq[:, 0]) + torch.outer(Uq[:, 1], Vq[:, 1])
    dirs = delta_directions(delta, 2, "q", m=4)
    assert [(d.kind, d.index, round(d.value, 9)) for d in dirs] == [
        ("delta_right", 0, 3.0), ("delta_left", 0, 3.0), ("delta_right", 1, 1.0), ("delta_left", 1, 1.0)]
    for i in range(2):
        v, u = dirs[2 * i].vector, dirs[2 * i + 1].vector
        assert abs(float(v @ Vq[:, i])) == pytest.approx(1, abs=1e-9) and abs(float(u @ Uq[:, i])) == pytest.approx(1, abs=1e-9)
        assert float(u @ delta @ v) == pytest.approx(dirs[2 * i].value, abs=1e-9)  # signs paired: uᵀΔWv = +σ
        assert float(v[v.abs().argmax()]) > 0


def test_delta_directions_of_a_wide_matrix_come_from_the_randomized_svd_and_match_the_full_one(monkeypatch):
    """min(d) > 8m: the top-m triplets from the certified randomized SVD (no full SVD of ΔW), agreeing with
    numpy's full SVD on a planted spectrum (σ 10, 6, 3, 2 over noise of 0.01) to well inside its tolerance."""
    import rwedit.probes.svd as svd_mod
    from rwedit.probes.directions import delta_directions

    calls = []
    real = svd_mod.randomized_top_svd
    monkeypatch.setattr(svd_mod, "randomized_top_svd", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((300, 4)))
    v, _ = np.linalg.qr(rng.standard_normal((120, 4)))
    delta = (u * [10.0, 6.0, 3.0, 2.0]) @ v.T + 0.01 * rng.standard_normal((300, 120)) / np.sqrt(300)
    ref_u, ref_s, ref_vt = np.linalg.svd(delta)
    dirs = delta_directions(torch.from_numpy(delta).float(), 0, "down", m=4)
    assert calls == [1] and len(dirs) == 8
    for i in range(4):
        right, left = dirs[2 * i], dirs[2 * i + 1]
        assert right.value == pytest.approx(ref_s[i], rel=1e-4)
        assert abs(float(right.vector.double().numpy() @ ref_vt[i])) > 1 - 1e-5
        assert abs(float(left.vector.double().numpy() @ ref_u[:, i])) > 1 - 1e-5


def test_activation_directions_are_the_second_moment_eigenvectors(planted):
    from rwedit.probes.activations import StatsSettings, collect_activation_stats
    from rwedit.probes.directions import activation_directions

    model, _, _, _, ids = planted
    stats = collect_activation_stats(model, ids, StatsSettings(roles=("q",), layers=(0,)), progress=False)
    dirs = activation_directions(stats, 0, "q", m=2)
    seen = []
    h = model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    model(input_ids=ids, use_cache=False)
    h.remove()
    A = seen[0].reshape(-1, seen[0].shape[-1]).double()
    lam, vec = torch.linalg.eigh(A.T @ A / A.shape[0])
    for i, d in enumerate(dirs):
        assert d.value == pytest.approx(float(lam[-1 - i]), rel=1e-6)
        assert abs(float(d.vector.double() @ vec[:, -1 - i])) == pytest.approx(1, abs=1e-6)


def test_a_probe_writes_cards_explain_prints_them_and_the_summary_page_opens(tmp_path, wiki_tokenizer, capsys):
    """`rwedit probe` with calibration writes directions.jsonl (activation, ΔW and prediction cards of every
    probed cell) and summary.html with the cards; `rwedit explain OUT` prints the headline cells'; the page
    opens in Chromium with nothing broken."""
    from browser import open_page
    from rwedit.cli import main
    from tiny_models import save_pair

    m = save_pair(tmp_path / "m", wiki_tokenizer)
    out = tmp_path / "probe"
    assert main(["probe", "--base", str(m / "base"), "--post", str(m / "post"), "--calib",
                 "bundled:wikitext-2/valid.txt.gz", "--calib-tokens", "2048", "--seq-len", "64", "--roles", "q,o", "--k", "1,4",
                 "--cards", "2", "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(x) for x in (out / "directions.jsonl").read_text().splitlines()]
    kinds = {(r["kind"], r["role"]) for r in rows}
    assert {("activation", "q"), ("delta_right", "q"), ("delta_left", "o"), ("prediction", "unembed")} <= kinds
    q_act = [r for r in rows if r["kind"] == "activation" and r["role"] == "q"]
    assert all(r["top_contexts"] and r["promoted"] and 0 < r["share"] < 1 for r in q_act)
    assert all(not r["promoted"] for r in rows if r["role"] == "q" and r["side"] == "write")  # head space: no lens
    capsys.readouterr()
    assert main(["explain", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "layer 0 q · activation #0" in printed and "promotes:" in printed and "#1" not in printed
    met = open_page(out / "summary.html", tmp_path)
    assert met["console_errors"] == [] and met["broken"] == [] and met["images"] >= 2
    assert 'class="card"' in (out / "summary.html").read_text()


def test_an_edits_v_and_b_get_the_cards_their_spaces_support(planted):
    """A read edit on q with v the planted input direction u: v's contexts show the planted token first (and its
    lens, q reading the residual stream), b (q's output space) has neither; a write edit on down with b the
    planted lens direction w: b promotes the planted token first, v (the MLP's hidden space) has contexts only."""
    from rwedit.editor.edits import RankOneEdit
    from rwedit.probes.directions import edit_directions

    model, u, w, (T, S, W), ids = planted
    inner = model.config.intermediate_size
    read = RankOneEdit(0, "q", torch.randn(model.config.hidden_size), u, 2.0, {"v_eigenvalue": 1.5})
    write = RankOneEdit(1, "down", w, torch.randn(inner) / inner ** 0.5, 2.0)
    dirs = edit_directions([read], "principal0", 0) + edit_directions([write], "write_down", 1)
    assert [(d.kind, d.side, d.index, d.label) for d in dirs] == [
        ("edit_v", "read", 0, "principal0"), ("edit_b", "write", 0, "principal0"),
        ("edit_v", "read", 1, "write_down"), ("edit_b", "write", 1, "write_down")]
    assert dirs[0].value == 1.5 and dirs[1].value is None
    v_q, b_q, v_down, b_down = explain(model, dirs, ids, top=3, progress=False)
    assert v_q.positive[0].token == f"<{T}>" and v_q.negative[0].token == f"<{S}>" and v_q.promoted
    assert not (b_q.positive or b_q.negative or b_q.promoted)
    assert b_down.promoted[0][0] == f"<{W}>" and not (b_down.positive or b_down.negative)
    assert (v_down.positive or v_down.negative) and not v_down.promoted and 0 < v_down.share < 1
    assert "edit_v #0 of principal0 (value 1.5)" in v_q.lines()[0]
    assert "nothing to show: q's output space" in b_q.lines()[-1] and "nothing" not in "".join(v_q.lines())


def test_cards_are_cached_with_the_statistics_and_a_warm_call_does_not_load_the_model(planted, tmp_path):
    """cached_explain keeps the cards beside the statistics' cache folder: the second call returns the same
    rows without calling ``load`` (no model, no calibration pass); other directions or card settings miss."""
    from types import SimpleNamespace

    from rwedit.probes.directions import cached_explain

    model, u, w, _, ids = planted
    stats = SimpleNamespace(meta={"cache": {"path": str(tmp_path / "stats-key"), "hit": False}})
    dirs = [Direction("activation", 0, "q", "read", 0, u), Direction("prediction", None, "unembed", "write", 0, w)]
    calls = []

    def load():
        calls.append(1)
        return model, None, ids

    lens = unembedding(model)
    cold = cached_explain(stats, dirs, load, unembed=lens, top=3, progress=False)
    assert len(calls) == 1 and len(list((tmp_path / "stats-key" / "cards").glob("*.jsonl"))) == 1

    def no_load():
        raise AssertionError("a warm call loaded the model")

    warm = cached_explain(stats, dirs, no_load, unembed=lens, top=3, progress=False)
    assert [c.row() for c in warm] == [c.row() for c in cold] and warm[0].direction is dirs[0]
    cached_explain(stats, dirs, load, unembed=lens, top=2, progress=False)  # other settings: recomputed
    cached_explain(stats, [Direction("activation", 0, "q", "read", 0, -u)] + dirs[1:], load, unembed=lens, top=3,
                   progress=False)  # another direction: recomputed
    assert len(calls) == 3
    uncached = cached_explain(None, dirs, load, unembed=lens, top=3, progress=False)  # no statistics cache
    assert len(calls) == 4 and [c.row() for c in uncached] == [c.row() for c in cold]


def test_a_warm_probe_reuses_its_cards_without_a_second_calibration_pass(tmp_path, wiki_tokenizer, monkeypatch):
    """The second run of one probe (same statistics cache) loads the model once, for the statistics' key, not
    again for the cards, and writes the same cards."""
    import rwedit.probes.pipeline as pipeline
    from rwedit.cli import main
    from tiny_models import save_pair

    m = save_pair(tmp_path / "m", wiki_tokenizer)
    passes = []
    real = pipeline.calibration_pass
    monkeypatch.setattr(pipeline, "calibration_pass", lambda *a, **k: passes.append(1) or real(*a, **k))
    args = ["probe", "--base", str(m / "base"), "--post", str(m / "post"), "--calib", "bundled:wikitext-2/valid.txt.gz",
            "--calib-tokens", "1024", "--seq-len", "64", "--roles", "q,o", "--k", "1", "--cards", "2", "--quiet",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args + ["--out", str(tmp_path / "cold")]) == 0 and len(passes) == 2  # statistics, then the cards
    assert main(args + ["--out", str(tmp_path / "warm")]) == 0 and len(passes) == 3  # the statistics' key only
    assert (tmp_path / "warm" / "directions.jsonl").read_text() == (tmp_path / "cold" / "directions.jsonl").read_text()


def test_the_logit_lens_of_many_directions_matches_one_product(monkeypatch):
    """Directions are taken a block of rows at a time: the tokens and values of each equal those of one whole
    m × vocab product, gain folded in (an independent top-k over the full product)."""
    import rwedit.probes.directions as dirs

    monkeypatch.setattr(dirs, "LENS_ROWS", 7)
    g = torch.Generator().manual_seed(3)
    W_U, u, gain = torch.randn(500, 16, generator=g), torch.randn(30, 16, generator=g), torch.rand(16, generator=g) + 0.5
    got = logit_lens(u, W_U, gain, top=4)
    full = (u * gain) @ W_U.T
    assert len(got) == 30
    for j, (promoted, suppressed) in enumerate(got):
        hi, lo = full[j].topk(4), full[j].topk(4, largest=False)
        assert [t for t, _ in promoted] == [f"<{int(i)}>" for i in hi.indices]
        assert [v for _, v in promoted] == pytest.approx(hi.values.tolist(), rel=1e-5)
        assert [t for t, _ in suppressed] == [f"<{int(i)}>" for i in lo.indices]
        assert [v for _, v in suppressed] == pytest.approx(lo.values.tolist(), rel=1e-5)
