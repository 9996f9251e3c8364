"""Row-block streaming equals the whole-tensor path: every RSF grid row, ‖ΔW‖ and the exact null, on every
registered architecture's tiny pair (fused Q/K/V and gate/up, Conv1D's transposed storage), with blocks small
enough to split a fused slice across two blocks."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM

from rwedit.architectures import supported_model_types
from rwedit.checkpoints import CheckpointPair
from rwedit.stream import stream_pair
from rwedit.probes import grid as grid_mod
from rwedit.probes.activations import StatsSettings, collect_activation_stats
from rwedit.probes.blocks import Dense, Norms
from rwedit.probes.grid import GridContext, GridSettings, rsf_grid_deltas, rsf_grid_pair
from rwedit.probes.norms import delta_norms
from rwedit.probes.subspaces import prediction_spectrum

from grid_oracle import rows_for_delta
from tiny_models import save_pair, tiny_model

MODEL_TYPES = sorted(supported_model_types())


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, wiki_tokenizer):
    """One saved tiny pair per architecture, post = base + noise (bf16 storage for one, to test conversion)."""
    out = {}
    for mt in MODEL_TYPES:
        root = tmp_path_factory.mktemp(mt)
        out[mt] = save_pair(root, wiki_tokenizer, model_type=mt)
    return out


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float) and isinstance(y, float):
            if math.isnan(x) or math.isnan(y):
                assert math.isnan(x) and math.isnan(y), (key, x, y, a)
            else:
                # z-scores are differences (RSF − null mean) / sd: float32's ~1e-7 in the RSF is ~1e-5 there
                assert x == pytest.approx(y, rel=2e-5, abs=1e-4 if key.endswith("_z") else 1e-7), (key, x, y, a)
        else:
            assert x == y, (key, a, b)


def _second_post(root, tmp_path, seed: int, scale: float):
    """A second post of the pair in ``root``: its base plus seeded Gaussian noise of ``scale``, saved under tmp_path."""
    model = AutoModelForCausalLM.from_pretrained(root / "base")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.parameters():
            w.add_(torch.randn(w.shape, generator=g) * scale)
    model.save_pretrained(tmp_path / "post2")
    return tmp_path / "post2"


@pytest.mark.parametrize("model_type,block_bytes", [(mt, 7 * 4 * 32) for mt in MODEL_TYPES] + [("llama", 1 << 20)])
def test_streamed_grid_rows_equal_the_whole_tensor_path(pairs, model_type, block_bytes, monkeypatch):
    """Blocks of 7 rows of a 32-wide tensor cut fused Q/K/V slices in the middle; 1 MiB holds a whole tensor."""
    pair = CheckpointPair(pairs[model_type] / "base", pairs[model_type] / "post")
    settings = GridSettings(ks=(1, 4, 8), null_seeds=3, sides=("read", "write", "both"))
    model = AutoModelForCausalLM.from_pretrained(pairs[model_type] / "base")
    ids = torch.randint(3, model.config.vocab_size, (8, 16), generator=torch.Generator().manual_seed(0))
    stats = collect_activation_stats(model, ids, StatsSettings(roles=("q", "o", "up", "down"), batch_size=8),
                                     progress=False)
    real = grid_mod.stream_pair
    monkeypatch.setattr(grid_mod, "stream_pair", lambda *a, **k: real(*a, **{**k, "block_bytes": block_bytes}))
    streamed = list(rsf_grid_pair(pair, stats, settings))
    # the reference: every delta formed whole, as the pre-streaming grid did
    ctx = GridContext(stats, grid_mod.prediction_from_pair(pair))
    whole = [row for rp in pair.iter_roles() for row in rows_for_delta(rp.delta, rp.layer, rp.role, ctx, settings)]
    assert len(streamed) == len(whole) > 0
    assert {r["side"] for r in whole} == {"read", "write", "both"}
    assert {r["subspace"] for r in whole} >= {"activation", "prediction", "random"}
    for s, w in zip(streamed, whole):
        _close(s, w)
    # deltas held in memory (a training run's W_t − W_0: the trajectory) go through the same sinks, one block each
    held = list(rsf_grid_deltas({(rp.layer, rp.role): rp.delta for rp in pair.iter_roles()}, pair.layout, ctx, settings))
    assert len(held) == len(whole)
    for h, w in zip(held, whole):
        _close(h, w)
    # and the exact null's concentration itself, against Σσ⁴/(Σσ²)² from the singular values
    rp = next(pair.iter_roles(roles=["down"], layers=[1]))
    sv = torch.linalg.svdvals(rp.delta.double())
    conc = float((sv ** 4).sum() / (sv ** 2).sum() ** 2)
    row = next(r for r in streamed if r["layer"] == 1 and r["role"] == "down" and r["side"] == "read"
               and r["subspace"] == "random" and r["k"] == 4)
    d = row["d"]
    expect = math.sqrt(2 * 4 * (d - 4) / (d * (d - 1) * (d + 2)) * (conc - 1 / d)) * d / 4
    assert row["null_exact_sd"] == pytest.approx(expect, rel=1e-4)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_the_sketched_null_rides_in_the_projections_products(pairs, model_type, monkeypatch):
    """With the sketched null, Ω joins the projections' products (7-row blocks cut every matrix): each matrix gets
    the sketch of its delta held whole, on the side its blocks sum over (d_in for row blocks, d_out for the column
    blocks of a transposed layout), and the RSF of the whole-matrix projections."""
    from rwedit.probes.rsf import sketch_spread

    pair = CheckpointPair(pairs[model_type] / "base", pairs[model_type] / "post")
    settings = GridSettings(ks=(1, 4), null="sketch", null_sketch=16, seed=2)
    real = grid_mod.stream_pair
    monkeypatch.setattr(grid_mod, "stream_pair", lambda *a, **k: real(*a, **{**k, "block_bytes": 7 * 4 * 32}))
    streamed = list(rsf_grid_pair(pair, None, settings))
    ctx = GridContext(None, grid_mod.prediction_from_pair(pair))
    checked = 0
    for rp in pair.iter_roles():
        rows = [r for r in streamed if (r["layer"], r["role"]) == (rp.layer, rp.role)]
        whole = rows_for_delta(rp.delta, rp.layer, rp.role, ctx, settings)
        assert [(r["side"], r["subspace"], r["k"]) for r in rows] == [(w["side"], w["subspace"], w["k"]) for w in whole]
        want = sketch_spread(rp.delta.T if pair.layout.view(rp.layer, rp.role).transposed else rp.delta, 16, 2)
        for r, w in zip(rows, whole):
            assert r["rsf"] == pytest.approx(w["rsf"], rel=1e-5) and r["null_method"] == "sketch"
            assert r["null_exact_sd"] == pytest.approx(want.sd(r["d"], r["k"]), rel=1e-4)
            assert r["null_rel_error"] == pytest.approx(want.rel_error(r["d"]), rel=1e-4)
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("settings", [GridSettings(ks=(1, 4), null="sketch", null_sketch=16),
                                      GridSettings(ks=(1, 4, 8), null_seeds=3, sides=("read", "write", "both"))])
def test_two_posts_in_one_pass_give_each_its_own_rows_and_share_the_bases(pairs, settings, tmp_path, monkeypatch):
    """Two fine-tunes of one base in one pass (activation, prediction, random subspaces; blocks cutting fused
    slices): each post's rows are its single pass's to the bit and the whole-tensor oracle's, and each matrix
    side's stacked bases are made once for both posts (the second post makes none)."""
    root = pairs["llama"]
    model = AutoModelForCausalLM.from_pretrained(root / "base")
    ids = torch.randint(3, model.config.vocab_size, (8, 16), generator=torch.Generator().manual_seed(0))
    stats = collect_activation_stats(model, ids, StatsSettings(roles=("q", "o", "up", "down"), batch_size=8),
                                     progress=False)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # a second post: the base moved by ~1e-3 of its weights (the first moved by ~1)
        for w in model.parameters():
            w.add_(torch.randn(w.shape, generator=g) * 1e-3 * float(w.abs().mean()))
    model.save_pretrained(tmp_path / "post2")
    real, made = grid_mod.stream_pair, []
    monkeypatch.setattr(grid_mod, "stream_pair", lambda *a, **k: real(*a, **{**k, "block_bytes": 7 * 4 * 32}))
    plan = grid_mod._side_plan
    monkeypatch.setattr(grid_mod, "_side_plan", lambda side, d, ks, *a: made.append((side, d, *a[:2])) or
                        plan(side, d, ks, *a))
    pairs_ = {n: CheckpointPair(root / "base", p) for n, p in (("one", root / "post"), ("two", tmp_path / "post2"))}
    base = pairs_["one"].base
    both = list(grid_mod.rsf_grid_posts(base, {n: p.post for n, p in pairs_.items()}, stats, settings))
    shared, made[:] = Counter(made), []
    list(grid_mod.rsf_grid_posts(base, {"one": pairs_["one"].post}, stats, settings))
    assert shared == Counter(made) and max(shared.values()) == 1  # one post's plans, each made once, for both
    for name, pair in pairs_.items():
        mine = [{k: v for k, v in r.items() if k != "post"} for r in both if r["post"] == name]
        alone = list(rsf_grid_pair(pair, stats, settings))
        assert mine == alone  # the same floats: nothing computed differently for sharing a pass
        ctx = GridContext(stats, grid_mod.prediction_from_pair(pair))
        whole = [row for rp in pair.iter_roles() for row in rows_for_delta(rp.delta, rp.layer, rp.role, ctx, settings)]
        assert len(mine) == len(whole) > 0
        for s, w in zip(mine, whole):
            _close(s, w)


@pytest.mark.parametrize("model_type", ["gpt2", "phi3", "gpt_neox"])
def test_streamed_blocks_reassemble_every_role_exactly(pairs, model_type):
    """Dense sinks fed by 5-row blocks rebuild each role's ΔW bit for bit (fused and transposed layouts)."""
    pair = CheckpointPair(pairs[model_type] / "base", pairs[model_type] / "post")
    views = pair.layout.views()
    got = {(v.layer, v.role): s[0].matrix for v, s in
           stream_pair(pair.base, [pair.post], views, lambda v: [Dense(v.shape)], block_bytes=5 * 4 * 32)}
    for rp in pair.iter_roles():
        assert torch.equal(got[(rp.layer, rp.role)], rp.delta), (rp.layer, rp.role)


def test_the_largest_tensor_is_started_first_and_its_views_come_in_their_turn(pairs):
    """The pass starts the largest stored tensor first (last, it would run alone) but yields every view in the
    order given, and makes each view's sinks once."""
    pair = CheckpointPair(pairs["llama"] / "base", pairs["llama"] / "post")
    views = pair.layout.views()
    made, first_block = [], []

    class Log(Norms):
        sums_only = False  # sees the blocks

        def add(self, axis, index, delta, base):
            if not first_block:
                first_block.append(self.view.param)
            super().add(axis, index, delta, base)

    def sinks(v):
        made.append(v)
        s = Log()
        s.view = v
        return [s]

    largest = max(views, key=lambda v: math.prod(pair.base._shapes[pair.base.find(v.param)]))
    assert largest is not views[0]
    got = [v for v, _ in stream_pair(pair.base, [pair.post], views, sinks, threads=1)]
    assert [(v.layer, v.role) for v in got] == [(v.layer, v.role) for v in views]
    assert first_block == [largest.param] and made[0].param == largest.param and sorted(map(id, made)) == sorted(
        map(id, views))


def test_streamed_norms_equal_plain_torch(pairs):
    pair = CheckpointPair(pairs["gpt2"] / "base", pairs["gpt2"] / "post")
    got = {(n.layer, n.role): n for n in delta_norms(pair)}
    for rp in pair.iter_roles():
        n = got[(rp.layer, rp.role)]
        assert n.base_norm == pytest.approx(float(torch.linalg.vector_norm(rp.base.double())), rel=1e-6)
        assert n.post_norm == pytest.approx(float(torch.linalg.vector_norm(rp.post.double())), rel=1e-6)
        assert n.delta_norm == pytest.approx(float(torch.linalg.vector_norm(rp.delta.double())), rel=1e-6)


def test_the_norms_of_two_posts_in_one_pass_are_each_posts_own_and_read_the_base_once(pairs, tmp_path, monkeypatch):
    from rwedit.probes.norms import delta_norms_posts
    from rwedit.stream import _BlockFiles

    root = pairs["gpt2"]
    two = {n: CheckpointPair(root / "base", p) for n, p in (("one", root / "post"),
                                                            ("two", _second_post(root, tmp_path, 5, 1e-3)))}
    reads, real = [], _BlockFiles.tensor
    monkeypatch.setattr(_BlockFiles, "tensor", lambda self, name: reads.append((str(self.ckpt.path), name))
                        or real(self, name))
    got = delta_norms_posts(two)
    base_reads = [r for r in reads if r[0] == str(root / "base")]
    assert base_reads and len(base_reads) == len(set(base_reads))  # each base tensor read once for both posts
    for name, pair in two.items():
        assert got[name] == delta_norms(pair)  # the same floats as the post's own pass
    assert got["one"] != got["two"]


def test_a_nan_in_a_late_block_is_named(tmp_path, wiki_tokenizer):
    """A NaN only in the post's last rows is caught by the streamed pass with the tensor's name."""
    base = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    post = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    with torch.no_grad():
        post.model.layers[1].mlp.down_proj.weight[-1, -1] = float("nan")
    save_pair(tmp_path, wiki_tokenizer, models=(base, post))
    pair = CheckpointPair(tmp_path / "base", tmp_path / "post")
    from rwedit.errors import NonFiniteWeightError

    with pytest.raises(NonFiniteWeightError, match="layers.1.mlp.down_proj"):
        list(stream_pair(pair.base, [pair.post], pair.layout.views(), lambda v: [Norms()], block_bytes=4 * 4 * 48))
    # the norms and the grid skip that pass and find it from their own sums
    with pytest.raises(NonFiniteWeightError, match="layers.1.mlp.down_proj"):
        delta_norms(pair)
    with pytest.raises(NonFiniteWeightError, match="layers.1.mlp.down_proj"):
        list(rsf_grid_pair(pair, None, GridSettings(ks=(1, 4), null_seeds=2)))


def test_ordered_map_keeps_order_stays_bounded_and_restores_the_thread_count():
    """Results in the items' order whatever finishes first; the items are pulled at most ``threads`` ahead of
    the consumer (a stream of tensors stays a stream); the caller runs one-threaded meanwhile (a team of its own
    would spin on the workers' cores) and has its thread count back afterwards."""
    import random
    import time

    from rwedit.stream import ordered_map

    pulled = []

    def items():
        for i in range(12):
            pulled.append(i)
            yield i

    def slow_square(i):
        time.sleep(random.Random(i).uniform(0, 0.01))
        return i * i, torch.get_num_threads()

    outside = torch.get_num_threads()
    torch.set_num_threads(2)
    out = []
    try:
        for got in ordered_map(slow_square, items(), threads=2):
            assert len(pulled) - len(out) <= 3  # the one being yielded + 2 in flight
            assert torch.get_num_threads() == 1
            out.append(got)
        assert [x for x, _ in out] == [i * i for i in range(12)] and {n for _, n in out} == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(outside)


def test_ordered_map_runs_ahead_of_a_heavy_item_by_its_weight():
    """With weights, the workers go on past an item that outweighs those after it (a large tensor does not leave
    the other worker idle) as far as its weight allows, and the results still come in the items' order."""
    import threading

    from rwedit.stream import ordered_map

    weights = [10, 3, 3, 3, 3, 3, 3]
    started, yielded, pulled_at = [], [], {}
    release = threading.Event()

    def work(i):
        started.append(i)
        if i == 0:  # the heavy head: held until the items that fit in its weight have started (else 5 s)
            release.wait(5)
        return i

    def items():
        for i in range(len(weights)):
            pulled_at[i] = len(yielded)
            yield i

    def watch():
        while len(started) < 5 and not release.is_set():
            release.wait(0.01)
        release.set()

    threading.Thread(target=watch, daemon=True).start()
    for r in ordered_map(work, items(), threads=2, weight=lambda i: weights[i]):
        yielded.append(r)
    assert yielded == list(range(len(weights)))
    # 3 + 3 + 3 = 9 < 10: items 1-4 are pulled while the head runs; with item 4 they weigh 12, so item 5 waits
    # until the head is taken, and (items of equal weight: two ahead) items 1 and 2 after it
    assert [pulled_at[i] for i in range(6)] == [0, 0, 0, 0, 0, 3]


def test_norms_of_a_pair_stored_in_one_buffer_equal_float64_dots():
    """The Gram path (base and delta as rows of one buffer) and the three-dot path give float64's sums."""
    g = torch.Generator().manual_seed(1)
    buf = torch.randn(3, 5000, generator=g)
    b, d = buf[0, :4096].view(64, 64), buf[2, :4096].view(64, 64)
    bb, bd, dd = (float(x @ y) for x, y in ((b.double().flatten(), b.double().flatten()),
                                             (b.double().flatten(), d.double().flatten()),
                                             (d.double().flatten(), d.double().flatten())))
    from rwedit.probes.blocks import _rows_of

    assert _rows_of(b, d) is not None and _rows_of(b, d.clone()) is None and _rows_of(b, b.t()) is None
    for delta in (d, d.clone()):  # one buffer, then two
        for chunk in (Norms.SUM_ELEMS, 1000):  # one float32 sum, or several (and a remainder) added in float64
            n = Norms()
            n.SUM_ELEMS = chunk
            n.add(0, slice(0, 64), delta, b)
            assert (n.bb, n.bd, n.dd) == pytest.approx((bb, bd, dd), rel=1e-5)


@pytest.mark.parametrize("dtypes", [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
                                    (torch.float16, torch.bfloat16)])
def test_streamed_norms_of_pairs_stored_in_like_and_unlike_dtypes(tmp_path, wiki_tokenizer, dtypes):
    """Like dtypes convert in one operation, unlike ones one by one: both give the float64 norms of the stored
    weights, block by block (small blocks split every tensor)."""
    base = tiny_model("llama", vocab_size=len(wiki_tokenizer)).to(dtypes[0])
    post = tiny_model("llama", vocab_size=len(wiki_tokenizer)).to(dtypes[1])
    save_pair(tmp_path, wiki_tokenizer, models=(base, post))
    pair = CheckpointPair(tmp_path / "base", tmp_path / "post", allow_dtype_mismatch=dtypes[0] != dtypes[1])
    got = {(v.layer, v.role): s[0] for v, s in
           stream_pair(pair.base, [pair.post], pair.layout.views(), lambda v: [Norms()], block_bytes=7 * 4 * 32)}
    for rp in pair.iter_roles(dtype=torch.float64):
        n = got[(rp.layer, rp.role)]
        assert n.base_norm == pytest.approx(float(torch.linalg.vector_norm(rp.base)), rel=1e-6)
        assert n.delta_norm == pytest.approx(float(torch.linalg.vector_norm(rp.delta)), rel=1e-6)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_norms_summed_in_chunks_equal_float64_for_every_layout_and_without_torchscript(pairs, model_type, tmp_path,
                                                                                       monkeypatch):
    """The sums-only path (each block converted, subtracted and multiplied in chunks, never whole) gives every
    role's float64 ‖W_base‖², ⟨W_base, ΔW⟩ and ‖ΔW‖², for two posts at once, through fused and transposed
    layouts, with chunks and float32 sums small enough to leave remainders; without TorchScript the stream
    converts whole blocks and gives the same."""
    import rwedit.stream as stream_mod

    root = pairs[model_type]
    pairs_ = [CheckpointPair(root / "base", p) for p in (root / "post", _second_post(root, tmp_path, 9, 1e-2))]
    views = pairs_[0].layout.views()
    monkeypatch.setattr(stream_mod, "CHUNK_ELEMS", 100)  # a chunk of one or a few rows, and a partial last one
    monkeypatch.setattr(stream_mod, "SUM_ELEMS", 300)  # float32 sums of a few chunks, added in float64
    runs = {}
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(stream_mod, "_compiled", lambda loop: None)
        calls = []
        real = Norms.add_sums
        monkeypatch.setattr(Norms, "add_sums", lambda self, *a: calls.append(a) or real(self, *a))
        runs[compiled] = {(v.layer, v.role): [(n.bb, n.bd, n.dd) for n in s] for v, s in stream_pair(
            pairs_[0].base, [p.post for p in pairs_], views, lambda v: [Norms(), Norms()], block_bytes=7 * 4 * 32)}
        assert bool(calls) == compiled  # the sums path runs exactly where TorchScript compiles the loop
    for k, pair in enumerate(pairs_):
        for rp in pair.iter_roles(dtype=torch.float64):
            b, d = rp.base.flatten(), rp.delta.flatten()
            want = (float(b @ b), float(b @ d), float(d @ d))
            for compiled in (True, False):
                bb, bd, dd = runs[compiled][(rp.layer, rp.role)][k]
                assert (bb, dd) == pytest.approx((want[0], want[2]), rel=1e-6), (compiled, rp.role)
                # a signed sum: float32's error is relative to its terms' scale √(bb·dd), not to the sum
                assert bd == pytest.approx(want[1], abs=1e-6 * math.sqrt(want[0] * want[2])), (compiled, rp.role)


class _NoBase(Dense):
    """The whole ΔW from its blocks, as a sink that never reads the base; records the base blocks it was given."""

    reads_base = False

    def __init__(self, shape):
        super().__init__(shape)
        self.bases = []

    def add(self, axis, index, delta, base=None) -> None:
        self.bases.append(base)
        super().add(axis, index, delta)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_deltas_formed_in_chunks_without_the_base_are_float32_differences(pairs, model_type, tmp_path, monkeypatch):
    """Sinks that never read the base (the grid's) get every ΔW formed chunk by chunk with no base block: each
    role's blocks assemble to post − base of the stored values subtracted in float32, to the bit, for two posts
    (one stored in another dtype), through fused and transposed layouts, with chunks that leave remainders; as do
    whole blocks without TorchScript (which pass the base)."""
    import rwedit.stream as stream_mod

    root = pairs[model_type]
    post2 = _second_post(root, tmp_path, 9, 1e-2)
    AutoModelForCausalLM.from_pretrained(post2, dtype=torch.float32).save_pretrained(post2)  # unlike the base's
    pairs_ = [CheckpointPair(root / "base", p, allow_dtype_mismatch=True) for p in (root / "post", post2)]
    views = pairs_[0].layout.views()
    monkeypatch.setattr(stream_mod, "CHUNK_ELEMS", 100)
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(stream_mod, "_compiled", lambda loop: None)
        got = {(v.layer, v.role): s for v, s in stream_pair(
            pairs_[0].base, [p.post for p in pairs_], views, lambda v: [_NoBase(v.shape), _NoBase(v.shape)],
            block_bytes=7 * 4 * 32)}
        for k, pair in enumerate(pairs_):
            for rp in pair.iter_roles(dtype=None):
                sink = got[(rp.layer, rp.role)][k]
                want = rp.post.float() - rp.base.float()
                assert torch.equal(sink.matrix, want), (compiled, rp.role)
                assert all((b is None) == compiled for b in sink.bases), (compiled, rp.role)


@pytest.mark.parametrize("null,seeds", [("auto", 0), ("sketch", 2), ("seeds", 2)])
def test_the_grids_multiply_adds_are_those_it_does(pairs, null, seeds, monkeypatch):
    """`grid_macs` (what `rwedit plan` prices) against every matrix product the grid runs, counted as it runs them
    (in the stream's workers too): the projections, each null and the prediction subspace's Gram matrix."""
    import threading

    pair = CheckpointPair(pairs["llama"] / "base", pairs["llama"] / "post")
    model = AutoModelForCausalLM.from_pretrained(pairs["llama"] / "base")
    ids = torch.randint(3, model.config.vocab_size, (8, 16), generator=torch.Generator().manual_seed(0))
    stats = collect_activation_stats(model, ids, StatsSettings(roles=("q", "o", "up", "down"), batch_size=8),
                                     progress=False)
    settings = GridSettings(ks=(1, 4, 8), null=null, null_seeds=seeds, null_sketch=8)
    counted, lock = [0], threading.Lock()

    def counting(fn, first):  # first: index of the left factor among the arguments
        def wrapper(*args, **kwargs):
            a, b = args[first], args[first + 1]
            with lock:
                counted[0] += math.prod(a.shape[:-1]) * a.shape[-1] * (b.shape[-1] if b.ndim > 1 else 1)
            return fn(*args, **kwargs)
        return wrapper

    for owner, name, first in ((torch, "mm", 0), (torch, "matmul", 0), (torch, "addmm", 1),
                               (torch.Tensor, "__matmul__", 0), (torch.Tensor, "mm", 0),
                               (torch.Tensor, "addmm_", 1), (torch.Tensor, "addmm", 1)):
        monkeypatch.setattr(owner, name, counting(getattr(owner, name), first))
    monkeypatch.setattr(grid_mod, "_PREDICTION", {})  # the unembedding's Gram matrix computed here, not reused
    rows = list(rsf_grid_pair(pair, stats, settings))
    assert rows and counted[0] > 0
    f32, f64 = grid_mod.grid_macs(pair.layout, settings)
    assert f32 + f64 == counted[0]
    if null == "sketch":  # the sketch prices less than the exact Gram of the same matrices would
        assert f32 < grid_mod.grid_macs(pair.layout, GridSettings(ks=(1, 4, 8), null="exact", null_seeds=seeds))[0]
