"""Activation statistics equal XᵀX/n of inputs captured independently, for every architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rwedit.architectures import GROUP_ROLE, INPUT_GROUP, model_layout
from rwedit.data import pack_tokens, read_texts
from rwedit.errors import DataError
from rwedit.probes import subspaces
from rwedit.probes.subspaces import eig_subspace
from rwedit.probes import activations as activations_mod
from rwedit.probes.activations import (
    ActivationStats,
    StatsSettings,
    cached_activation_stats,
    collect_activation_stats,
)
from tiny_models import TINY_CONFIGS, tiny_model


def _scaled_error(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """max |got − want|_ij / √(S_ii S_jj), S = ``scale`` (default ``want``): a second moment's error on the scale
    of its entries."""
    s = (want if scale is None else scale).diagonal()
    return float(((got - want).abs() / torch.sqrt(torch.outer(s, s))).max())


@pytest.fixture(scope="module")
def wiki_ids(wiki_texts, wiki_tokenizer):
    return pack_tokens(wiki_tokenizer, wiki_texts, seq_len=32, token_budget=32 * 12)


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_second_moments_equal_directly_captured_inputs(model_type, wiki_ids, wiki_tokenizer):
    model = tiny_model(model_type, vocab_size=len(wiki_tokenizer))
    layout = model_layout(model)
    roles = [r for r in ("q", "k", "v", "o", "up", "gate", "down") if layout.has_role(r)]
    captured: dict[tuple[int, str], list[torch.Tensor]] = {}
    hooks = []
    for layer in range(layout.n_layers):
        for role in roles:  # one hook per role module, independent of rwedit's grouping
            mod = model.get_submodule(layout.view(layer, role).module)
            hooks.append(mod.register_forward_pre_hook(
                lambda m, a, key=(layer, role): captured.setdefault(key, []).append(a[0].detach().double())))
    stats = collect_activation_stats(model, wiki_ids, StatsSettings(roles=tuple(roles), batch_size=5), progress=False)
    for h in hooks:
        h.remove()
    assert stats.n_tokens == wiki_ids.numel()
    for (layer, role), xs in captured.items():
        X = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])
        n = X.shape[0]
        assert n == wiki_ids.numel()
        C = X.T @ X / n
        got = stats.second_moment(layer, role)
        assert torch.equal(got, got.T)
        assert _scaled_error(got, C) <= activations_mod.F32_TOKENS * 2.0 ** -24  # the float64 mode's stated bound
        mu = X.mean(0)
        # centring subtracts μμᵀ: the bound holds against the uncentred scale √(E a_i² E a_j²)
        assert _scaled_error(stats.second_moment(layer, role, centred=True), torch.cov(X.T, correction=0),
                             C) <= 2 * activations_mod.F32_TOKENS * 2.0 ** -24
        assert float(((stats.mean(layer, role) - mu).abs() / C.diagonal().sqrt()).max()) <= \
            activations_mod.F32_TOKENS * 2.0 ** -24
        assert stats.second_moment(layer, role).dtype == torch.float64
    # the registry's input groups: roles that share a group (and so one statistic) read one tensor
    for layer in range(layout.n_layers):
        for a in roles:
            for b in roles:
                if INPUT_GROUP[a] == INPUT_GROUP[b]:
                    assert torch.equal(torch.cat(captured[(layer, a)]), torch.cat(captured[(layer, b)])), (a, b)


def test_input_groups_come_from_the_registry():
    assert activations_mod.INPUT_GROUP is INPUT_GROUP and activations_mod.GROUP_ROLE is GROUP_ROLE
    assert GROUP_ROLE == {"attn_in": "q", "mlp_in": "up", "o_in": "o", "down_in": "down"}
    assert all(INPUT_GROUP[r] == g for g, r in GROUP_ROLE.items())


def test_shared_inputs_are_collected_once_and_stats_round_trip(tmp_path, wiki_ids, wiki_tokenizer):
    model = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    settings = StatsSettings(roles=("q", "k", "v", "gate", "up", "down"), batch_size=4)
    stats = collect_activation_stats(model, wiki_ids, settings, source="wikitext", progress=False)
    assert sorted({g for _, g in stats.sums}) == ["attn_in", "down_in", "mlp_in"]
    assert stats.second_moment(0, "q") is not None and torch.equal(stats.second_moment(0, "k"), stats.second_moment(0, "q"))
    with pytest.raises(KeyError, match="no activation statistics for role 'o'"):
        stats.second_moment(0, "o")
    stats.save(tmp_path / "s")
    again = ActivationStats.load(tmp_path / "s")
    assert again.n_tokens == stats.n_tokens and again.meta["source"] == "wikitext"
    assert again.meta["settings"]["seq_len"] == 256 and again.meta["tokens_sha256"] == stats.meta["tokens_sha256"]
    torch.testing.assert_close(again.second_moment(1, "down"), stats.second_moment(1, "down"), rtol=0, atol=0)


def test_cache_reuses_only_exact_matches(tmp_path, wiki_ids, wiki_tokenizer, monkeypatch):
    import rwedit.probes.activations as act

    model = tiny_model("gpt2", vocab_size=len(wiki_tokenizer))
    settings = StatsSettings(roles=("q",), batch_size=6)
    calls = []
    real = act.collect_activation_stats
    monkeypatch.setattr(act, "collect_activation_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    a = act.cached_activation_stats(model, wiki_ids, settings, cache_dir=tmp_path, progress=False)
    b = act.cached_activation_stats(model, wiki_ids, settings, cache_dir=tmp_path, progress=False)
    assert len(calls) == 1 and b.meta["cache"]["hit"] and not a.meta["cache"]["hit"]
    torch.testing.assert_close(a.second_moment(0, "q"), b.second_moment(0, "q"), rtol=0, atol=0)
    act.cached_activation_stats(model, wiki_ids[:-1], settings, cache_dir=tmp_path, progress=False)  # other data
    other = tiny_model("gpt2", seed=3, vocab_size=len(wiki_tokenizer))
    act.cached_activation_stats(other, wiki_ids, settings, cache_dir=tmp_path, progress=False)  # other weights
    assert len(calls) == 3


def test_empty_and_short_data_are_refused(tmp_path, wiki_tokenizer):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no non-empty texts"):
        read_texts(empty)
    with pytest.raises(DataError, match="fewer than one sequence"):
        pack_tokens(wiki_tokenizer, ["a b"], seq_len=64, token_budget=128)


def test_stored_spectra_are_truncated_reused_and_recomputed_when_short(tmp_path, wiki_ids, wiki_tokenizer, monkeypatch):
    """Saved statistics carry their eigendecompositions (top/bottom columns), a reload reuses them
    without eigh, and asking for more columns than stored recomputes the exact decomposition."""
    import rwedit.probes.activations as act

    model = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    stats = collect_activation_stats(model, wiki_ids, StatsSettings(roles=("q", "down"), batch_size=4), progress=False)
    monkeypatch.setattr(act, "SPECTRUM_KEEP", 3)
    monkeypatch.setattr(subspaces, "KEPT_MIN_D", 1)  # the kept-vectors solver, as at a real model's width
    stats.precompute_spectra(progress=False)
    stats.save(tmp_path / "s")
    again = ActivationStats.load(tmp_path / "s")
    C = stats.second_moment(1, "down")  # independent reference: numpy eigh of the raw second moment
    lam, vec = np.linalg.eigh(C.numpy())
    d = C.shape[0]

    calls = []
    monkeypatch.setattr(act, "eig_subspace", lambda m, **kw: calls.append(1) or eig_subspace(m, **kw))
    sp = again.spectrum(1, "down", top=3, bottom=2)
    assert calls == [] and not sp.complete and sp.n_top == 3 and sp.n_bottom == 3
    np.testing.assert_allclose(sp.eigenvalues.numpy(), lam[::-1], rtol=1e-10, atol=1e-12)
    for got, ref in ((sp.top(3), vec[:, ::-1][:, :3]), (sp.bottom(2), vec[:, :2])):
        np.testing.assert_allclose(np.abs(got.numpy().T @ ref), np.eye(got.shape[1]), atol=1e-8)
    with pytest.raises(ValueError, match="keeps only its top 3"):
        sp.top(4)
    full = again.spectrum(1, "down", top=d)  # more than stored: recomputed from the (lazily read) sums
    assert calls == [1] and full.complete
    np.testing.assert_allclose(np.abs(full.top(d).numpy().T @ vec[:, ::-1]), np.eye(d), atol=1e-6)


@pytest.mark.parametrize("mode", ["float64", "mixed", "float32"])
def test_accumulation_against_pure_float64_is_inside_its_stated_bound(mode):
    """The hook's sums of a aᵀ (upper block triangle, mirrored once) against a pure float64 reference on
    activation-like inputs (a mean, a few outlier features; n not a multiple of the blocks, d not of the
    triangle's): symmetric and inside each mode's stated bound (tokens per float32 partial sum × 2⁻²⁴ of
    √(C_ii C_jj)); the float64 mode measures below 1e-6 (~2e-7 here), float64 inputs there stay exact."""
    from rwedit.probes.activations import F32_TOKENS, _Outer

    g = torch.Generator().manual_seed(0)
    n, d, batch = 5000, 203, 2048
    a = torch.randn(n, d, generator=g) * (1 + 30 * (torch.rand(d, generator=g) < 0.02)) + 0.7
    ref = a.double().T @ a.double()
    tokens = {"float64": F32_TOKENS, "mixed": None, "float32": None}[mode]

    def accumulate(x: torch.Tensor) -> _Outer:
        acc = _Outer(d, torch.float32 if mode == "float32" else torch.float64, "cpu", tokens)
        for b in x.split(batch):  # one hook call per batch
            acc.add(b)
        return acc

    acc = accumulate(a)
    got = acc.matrix().double()
    assert torch.equal(got, got.T)
    err = _scaled_error(got, ref)
    bound = {"float64": F32_TOKENS, "mixed": batch, "float32": n}[mode] * 2.0 ** -24
    assert 0 < err <= bound
    # Σ a: the same bound on the scale √(n Σ a_i²) (Σ|a_ti| ≤ √(n Σ a_ti²))
    assert float(((acc.first.double() - a.double().sum(0)).abs() / (n * ref.diagonal()).sqrt()).max()) <= bound
    if mode == "float64":
        assert err < 1e-6
        assert _scaled_error(accumulate(a.double()).matrix(), ref) < 1e-14  # float64 inputs: float64 products


@pytest.mark.parametrize("dtype,rtol", [("mixed", 1e-5), ("float32", 1e-4)])
def test_faster_accumulation_modes_stay_close_to_direct_float64(dtype, rtol, wiki_ids, wiki_tokenizer):
    model = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    captured = []
    h = model.get_submodule(model_layout(model).view(1, "down").module).register_forward_pre_hook(
        lambda m, a: captured.append(a[0].detach().double().reshape(-1, a[0].shape[-1])))
    stats = collect_activation_stats(model, wiki_ids, StatsSettings(roles=("down",), batch_size=4, dtype=dtype),
                                     progress=False)
    h.remove()
    X = torch.cat(captured)
    C = X.T @ X / X.shape[0]
    got = stats.second_moment(1, "down").double()
    assert float((got - C).abs().max() / C.abs().max()) < rtol
    assert (stats.sums[(1, "down_in")].dtype == torch.float64) == (dtype == "mixed")
    with pytest.raises(ValueError, match="float64, mixed or float32"):
        StatsSettings(dtype="float16")


def test_safetensors_are_written_one_tensor_at_a_time_and_read_back_by_safetensors(tmp_path):
    import weakref

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from rwedit.outputs import write_safetensors

    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 5, dtype=torch.float64, generator=g), "b": torch.randn(7, generator=g).bfloat16(),
               "c": torch.tensor(3.5), "d": torch.zeros(0, 4), "e": torch.tensor([True, False, True]),
               "f": torch.arange(5), "g": torch.randn(2, 3, generator=g).half()}
    made: list = []

    def make(name):  # a fresh tensor each time: the writer must have let go of the previous one
        assert all(r() is None for r in made), "an earlier tensor is still held"
        t = tensors[name].clone()
        made.append(weakref.ref(t))
        return t

    path = tmp_path / "t.safetensors"
    n = write_safetensors(path, [(k, t.dtype, tuple(t.shape), lambda k=k: make(k)) for k, t in tensors.items()],
                          metadata={"what": "test"})
    assert n == path.stat().st_size and len(made) == len(tensors)
    save_file(tensors, tmp_path / "ref.safetensors")  # safetensors' own writer: the same tensors read back
    back, ref = load_file(path), load_file(tmp_path / "ref.safetensors")
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t) and torch.equal(back[k], ref[k]), k
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == {"what": "test"} and sorted(f.keys()) == sorted(tensors)
    with pytest.raises(ValueError, match=r"a: made torch.float32 \(3, 5\), declared torch.float64"):
        write_safetensors(tmp_path / "bad.safetensors", [("a", torch.float64, (3, 5), lambda: torch.zeros(3, 5))])


def test_hook_passes_compute_no_logits_but_the_last_and_the_sums_match_a_full_forward(wiki_ids, wiki_tokenizer):
    model = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    ids = wiki_ids[:6]
    captured, logits_shapes = [], []
    h = model.get_submodule(model_layout(model).view(1, "down").module).register_forward_pre_hook(
        lambda m, a: captured.append(a[0].detach().double()))
    model(input_ids=ids, use_cache=False)  # a plain full forward: the reference inputs
    h.remove()
    X = torch.cat([x.reshape(-1, x.shape[-1]) for x in captured])
    h = model.get_output_embeddings().register_forward_hook(lambda m, a, out: logits_shapes.append(tuple(out.shape)))
    stats = collect_activation_stats(model, ids, StatsSettings(roles=("down",), batch_size=3), progress=False)
    h.remove()
    assert logits_shapes == [(3, 1, len(wiki_tokenizer))] * 2  # the last position's logits only, per batch
    assert _scaled_error(stats.second_moment(1, "down"), X.T @ X / X.shape[0]) <= activations_mod.F32_TOKENS * 2.0 ** -24


def test_cached_statistics_are_read_from_their_entry_not_held(tmp_path, wiki_ids, wiki_tokenizer):
    model = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    settings = StatsSettings(roles=("q", "down"), batch_size=4)
    fresh = collect_activation_stats(model, wiki_ids, settings, progress=False)
    cached = cached_activation_stats(model, wiki_ids, settings, cache_dir=tmp_path, progress=False)
    assert cached.meta["cache"]["hit"] is False
    assert isinstance(cached.sums, activations_mod._LazyTensors)  # the full matrices live in the entry's file
    assert set(cached.sums) == set(fresh.sums) and (1, "down_in") in cached.sums and (1, "o_in") not in cached.sums
    for layer, group in fresh.sums:
        assert torch.equal(cached.sums[(layer, group)], fresh.sums[(layer, group)])
