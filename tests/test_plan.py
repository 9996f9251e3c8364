"""`rwedit plan`: a planted mismatch in the pair, its files, its tokenizers, its data or its recipe is refused
(exit 2, naming it) before any tensor is read, and the memory estimate is the one the tensor sizes give."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml
from safetensors import safe_open

import rwedit.checkpoints as checkpoints_module
from rwedit.cli import main
from conftest import WIKITEXT
from tiny_models import save_pair

LAYERS = 3


def _recipe(root: Path, **top) -> dict:
    return {
        "name": "planned",
        "edit": {"model": str(root / "base"), "post": str(root / "post"),
                 "calibration": {"data": str(WIKITEXT), "tokens": 512, "seq_len": 32},
                 "edit": {"layers": ["mid"], "role": "q", "v": "principal[0]", "b": "delta"},
                 "alpha": [2.0], "controls": {"random": 1, "lowvar": 1, "write": "o"}},
        "probe": {"enabled": True, "ks": [1, 4]}, "eval": None,
        "direct": {"pairs": 4, "texts": 2, "seq_len": 32, "max_len": 64},
        "export": ["principal0_a2"], **top,
    }


@pytest.fixture(scope="module")
def pair_root(tmp_path_factory, wiki_tokenizer):
    return save_pair(tmp_path_factory.mktemp("plan") / "m", wiki_tokenizer, seed=3, num_hidden_layers=LAYERS,
                     max_position_embeddings=128)


@pytest.fixture
def pair(tmp_path, pair_root):
    """A fresh copy of the good pair, to plant one mismatch into."""
    root = tmp_path / "m"
    shutil.copytree(pair_root, root)
    return root


class _HeadersOnly:
    """``safe_open`` that serves keys, metadata and each tensor's shape and dtype, and fails the test on any
    tensor read."""

    def __init__(self, *a, **k):
        self._h = safe_open(*a, **k)

    def __enter__(self):
        self._h.__enter__()
        return self

    def __exit__(self, *exc):
        return self._h.__exit__(*exc)

    def keys(self):
        return self._h.keys()

    def metadata(self):
        return self._h.metadata()

    def get_slice(self, name):
        sl = self._h.get_slice(name)

        class Slice:
            get_shape, get_dtype = sl.get_shape, sl.get_dtype

            def __getitem__(self, item):
                pytest.fail(f"plan read tensor {name!r} (a slice)")

        return Slice()

    def get_tensor(self, name):
        pytest.fail(f"plan read tensor {name!r}")


@pytest.fixture
def no_tensor_reads(monkeypatch):
    """Every entry point that reads tensor data fails the test; headers stay readable."""
    import transformers

    monkeypatch.setattr(checkpoints_module, "safe_open", _HeadersOnly)
    for mod, name in ((safetensors.torch, "load_file"), (safetensors.torch, "load"), (torch, "load"),
                      (checkpoints_module.TensorReader, "read"),
                      (transformers.AutoModelForCausalLM, "from_pretrained"),
                      (transformers.AutoTokenizer, "from_pretrained")):
        monkeypatch.setattr(mod, name, lambda *a, _n=name, **k: pytest.fail(f"plan called {_n}"))


def _write(path: Path, recipe: dict) -> str:
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _rewrite(folder: Path, change) -> None:
    """Rewrite ``folder/model.safetensors`` with ``change(tensors)`` applied (before any test patching)."""
    f = folder / "model.safetensors"
    tensors = safetensors.torch.load_file(f)
    change(tensors)
    safetensors.torch.save_file(tensors, f, metadata={"format": "pt"})


def _plant_role_shape(root, texts):
    key = "model.layers.1.mlp.up_proj.weight"
    _rewrite(root / "post", lambda t: t.update({key: t[key][:-1]}))
    return "shapes differ at layer 1 role 'up'"


def _plant_norm_shape(root, texts):
    key = "model.layers.2.input_layernorm.weight"
    _rewrite(root / "post", lambda t: t.update({key: torch.cat([t[key], t[key][:1]])}))
    return f"shapes differ at {key}"


def _plant_missing_shard(root, texts):
    from transformers import AutoModelForCausalLM

    post = root / "post"
    model = AutoModelForCausalLM.from_pretrained(post)
    (post / "model.safetensors").unlink()
    model.save_pretrained(post, max_shard_size="40KB")
    shards = sorted(post.glob("model-*.safetensors"))
    assert len(shards) >= 3 and (post / "model.safetensors.index.json").exists()
    shards[1].unlink()
    return f"the index names shard(s) that are not there: {shards[1].name}"


def _plant_tokenizer(root, texts):
    from rwedit.data import train_bpe_tokenizer

    other = train_bpe_tokenizer(texts[1000:1600], vocab_size=len(json.loads(
        (root / "base" / "tokenizer.json").read_text())["model"]["vocab"]))
    for f in (root / "post").glob("tokenizer*"):
        f.unlink()
    other.save_pretrained(root / "post")
    return "tokenizers differ"


def _plant_vocab_beyond_embedding(root, texts):
    from rwedit.data import train_bpe_tokenizer

    bigger = train_bpe_tokenizer(texts[:1000], vocab_size=1024)
    for side in ("base", "post"):
        for f in (root / side).glob("tokenizer*"):
            f.unlink()
        bigger.save_pretrained(root / side)
    return "the embedding has 512 rows"


def _plant_dtype(root, texts):
    _rewrite(root / "post", lambda t: t.update({k: v.to(torch.bfloat16) for k, v in t.items()}))
    return "dtypes differ at layer 0 role 'q'"


def _plant_no_tokenizer(root, texts):
    for f in (root / "base").glob("tokenizer*"):
        f.unlink()
    return "no tokenizer files"


PLANTS = {
    "one layer's role shape": (_plant_role_shape, {}),
    "one layer's norm shape": (_plant_norm_shape, {}),
    "a missing shard": (_plant_missing_shard, {}),
    "a tokenizer of another vocabulary": (_plant_tokenizer, {}),
    "tokenizer ids beyond the embedding": (_plant_vocab_beyond_embedding, {}),
    "a dtype mismatch": (_plant_dtype, {}),
    "no tokenizer with the base": (_plant_no_tokenizer, {}),
    "an export: typo": (None, {"export": ["principal0_a3"]}),
    "a missing calibration file": (None, {"calib": "no-such-text.txt.gz"}),
    "a missing direct-metrics file": (None, {"direct_text": "held-out.txt"}),
    "calibration data of another format": (None, {"calib_jsonl": True}),
}


@pytest.mark.parametrize("what", list(PLANTS))
def test_plan_refuses_a_planted_mismatch_before_any_tensor_is_read(what, pair, tmp_path, wiki_texts, monkeypatch,
                                                                    capsys, request):
    plant, change = PLANTS[what]
    recipe = _recipe(pair)
    expected = plant(pair, wiki_texts) if plant is not None else None
    if "export" in change:
        recipe["export"] = change["export"]
        expected = "export: no condition named 'principal0_a3' (did you mean 'principal0_a2'?)"
    if "calib" in change:
        recipe["edit"]["calibration"]["data"] = change["calib"]
        expected = "edit.calibration.data: no-such-text.txt.gz: no such file"
    if "direct_text" in change:
        recipe["direct"]["text_data"] = change["direct_text"]
        expected = "direct.text_data: held-out.txt: no such file"
    if "calib_jsonl" in change:  # records without the text field the reader looks for
        (tmp_path / "calib.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in wiki_texts[:5]))
        recipe["edit"]["calibration"]["data"] = str(tmp_path / "calib.jsonl")
        expected = "edit.calibration.data: " + str(tmp_path / "calib.jsonl") + ": line 1 has no field 'text'"
    request.getfixturevalue("no_tensor_reads")
    out = tmp_path / "run"
    assert main(["plan", _write(tmp_path / "r.yaml", recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert not out.exists()


def test_plan_of_the_good_pair_passes_without_reading_a_tensor(pair, tmp_path, no_tensor_reads, capsys):
    out = tmp_path / "run"
    assert main(["plan", _write(tmp_path / "r.yaml", _recipe(pair)), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "conditions: 4 + base" in text and "probe: RSF grid" in text and "no tensor read" in text
    assert "data: edit.calibration.data, direct.text_data, direct.pairs_data" in text
    for f in (pair / "post").glob("tokenizer*"):  # a post without tokenizer files: the run needs the base's only
        f.unlink()
    assert main(["plan", _write(tmp_path / "r.yaml", _recipe(pair)), "--out", str(out)]) == 0
    assert not out.exists()


def test_plan_lists_the_resolved_conditions_and_refuses_a_layer_the_model_lacks(pair, tmp_path, no_tensor_reads,
                                                                               capsys):
    """The conditions a run would build (the spec resolved for this model: per-layer units at relative
    layers), the sources' fingerprints, and a recipe that cannot fit refused with exit 2 — without writing the
    output folder."""
    from rwedit.apps.plan import plan_recipe
    from rwedit.editor.spec import EditSpec

    raw = _recipe(pair)
    raw["edit"]["edit"].update(layers=["mid", -1], per_layer=True)
    raw["edit"]["controls"] = {"random": 1, "lowvar": 0, "write": None}
    raw["export"] = ["L1_principal0_a2"]
    recipe = _write(tmp_path / "r.yaml", raw)
    plan = plan_recipe(recipe, out=tmp_path / "run")
    assert plan.conditions == EditSpec.from_dict(raw["edit"]).resolved(LAYERS).condition_names()
    assert plan.conditions == ["L1_principal0_a2", "L1_random_s1_a2", "L2_principal0_a2", "L2_random_s1_a2"]
    assert [s.name for s in plan.stages] == ["probe: statistics", "probe: RSF grid", "edit: statistics", "scoring"]
    assert set(plan.sources) == {"base", "post"} and not (tmp_path / "run").exists()
    raw["effect"] = {"match": "both", "texts": 4}  # KL-matched copies of the controls, and their search
    plan = plan_recipe(_write(tmp_path / "k.yaml", raw), out=tmp_path / "run")
    assert plan.conditions[4:] == ["L1_random_s1_a2_kl", "L2_random_s1_a2_kl"]
    search = next(s for s in plan.stages if s.name == "edit: KL search")
    assert search.tokens == 2 * 40 * 4 * raw["direct"]["seq_len"]
    assert main(["plan", recipe, "--set", "edit.edit.layers=[7]", "--set", "export=[]"]) == 2
    assert f"layers 0..{LAYERS - 1}" in capsys.readouterr().err


def test_plan_refuses_a_run_the_disk_cannot_hold(pair, tmp_path, monkeypatch, capsys):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 10))
    assert main(["plan", _write(tmp_path / "r.yaml", _recipe(pair)), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "not enough disk" in err and "1 KiB free" in err and "0.00 GiB" not in err  # sizes in readable units


def test_run_prints_the_plan_first_and_runs_the_recipe_it_checked(pair, tmp_path, monkeypatch, capsys):
    """`rwedit run` plans first (a mismatch fails there, nothing written), prints the plan, and hands the
    checked recipe — base checkpoint already open — to the runner, which opens it no second time."""
    import rwedit.evals.core as core
    from rwedit.checkpoints import Checkpoint

    opened = []
    real_open = Checkpoint.open.__func__
    monkeypatch.setattr(Checkpoint, "open", classmethod(lambda cls, src, *a, **k: opened.append(str(src))
                                                        or real_open(cls, src, *a, **k)))
    handed = []

    def fake_run_recipe(source, out, **kw):
        handed.append((source, kw))
        source.check_sources()  # what run_experiment does first
        return core.RunResult(Path(out), None, ["ran"])

    monkeypatch.setattr(core, "run_recipe", fake_run_recipe)
    recipe = _write(tmp_path / "r.yaml", _recipe(pair))
    assert main(["run", recipe, "--out", str(tmp_path / "run"), "--set", "direct.texts=3"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("plan: control recipe 'planned'") and text.rstrip().endswith("ran")
    (source, kw), = handed
    assert source.direct.texts == 3 and kw["overrides"] is None and kw["sets"] == ()
    assert opened.count(str(pair / "base")) == 1

    _plant_norm_shape(pair, None)
    assert main(["run", recipe, "--out", str(tmp_path / "run2"), "--quiet"]) == 2
    assert "shapes differ at model.layers.2.input_layernorm.weight" in capsys.readouterr().err
    assert len(handed) == 1 and not (tmp_path / "run2").exists()


def _role_weights(model) -> dict[str, torch.Tensor]:
    """The weights of every role of a Llama model, by module name (an independent list: the nn.Linear
    modules of the layers plus the unembedding)."""
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_plan_memory_estimate_is_the_formula_on_the_tensor_sizes(pair, tmp_path):
    """The streaming pass: runtime + per worker thread, for base and post, a float32 block and the mapped pages not
    yet released (blocks of 1M float32 elements, or the whole tensor when smaller), plus 8 bytes an element of the
    largest role tensor for the grid's sums; the statistics: their float64 upper triangles and one full matrix at a
    time (the cache: d_in^2 float64 per input group per layer); the model: every stored element in float32 — each
    re-derived from the saved model's own modules and config, not from the headers plan reads."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rwedit.apps.plan import plan_recipe
    from rwedit.evals.planning import RUNTIME_BYTES

    model = AutoModelForCausalLM.from_pretrained(pair / "base")
    cfg = AutoConfig.from_pretrained(pair / "base")
    largest = max(w.numel() for w in _role_weights(model).values())
    assert largest == cfg.vocab_size * cfg.hidden_size  # the unembedding, in this tiny model
    params = sum(t.numel() for t in model.state_dict().values())
    head = cfg.hidden_size // cfg.num_attention_heads
    per_layer = (cfg.hidden_size ** 2 * 2 + (cfg.num_attention_heads * head) ** 2 + cfg.intermediate_size ** 2) * 8

    plan = plan_recipe(_write(tmp_path / "r.yaml", _recipe(pair)), out=tmp_path / "run")
    stages = {s.name: s for s in plan.stages}
    assert plan.params == params
    from rwedit.stream import BLOCK_BYTES, RELEASE_BYTES

    block = min(BLOCK_BYTES // 4, largest)
    stored = next(iter(_role_weights(model).values())).element_size()  # saved in the model's dtype
    mapped = min(RELEASE_BYTES + block * stored, largest * stored)  # pages converted since the last release
    assert stages["probe: RSF grid"].memory_bytes == (RUNTIME_BYTES + torch.get_num_threads() * 2 * (block * 4 + mapped)
                                                      + largest * 8)
    # the statistics: each input's float64 upper block triangle (the accumulator's own row blocks), and one input's
    # full matrix with two working copies while it is decomposed and written
    from rwedit.probes.activations import _Outer

    widths = [cfg.hidden_size, cfg.hidden_size, cfg.num_attention_heads * head, cfg.intermediate_size]
    triangles = cfg.num_hidden_layers * sum(sum(r.numel() for r in _Outer(d, torch.float64, "cpu").rows) * 8
                                            for d in widths[1:])
    want = RUNTIME_BYTES + params * 4 + triangles + 3 * max(widths) ** 2 * 8
    assert stages["probe: statistics"].memory_bytes == pytest.approx(want, rel=0.01)
    edit_q_and_o = (cfg.hidden_size ** 2 + (cfg.num_attention_heads * head) ** 2) * 8  # the edit's layer: q, o
    assert plan.cache_bytes == cfg.num_hidden_layers * per_layer + edit_q_and_o
    assert stages["scoring"].memory_bytes > RUNTIME_BYTES + params * 4
    assert {s.device for s in plan.stages} == {"cpu"}


def test_statistics_work_prices_the_kept_vectors_solver_from_its_threshold(pair_root, monkeypatch):
    """Each input's float64 decomposition at KEPT_N3 n³ from `KEPT_MIN_D` on (the solver computing only the kept
    vectors), at EIGH_N3 n³ below, besides the float32 upper block triangle of Xᵀ X a token ((B + 1)/2B of 2 n²: B column
    blocks): re-derived from the layout's input widths."""
    import rwedit.probes.subspaces as subspaces
    from rwedit.architectures import INPUT_GROUP
    from rwedit.checkpoints import Checkpoint
    from rwedit.evals.planning import EIGH_N3, KEPT_N3, stats_work
    from rwedit.probes.activations import _TRIANGLE_BLOCKS

    layout = Checkpoint.open(pair_root / "base").layout
    widths = [{INPUT_GROUP[r]: layout.view(i, r).d_in for r in layout.roles() if r != "unembed"}.values()
              for i in range(layout.n_layers)]
    cut = layout.dims.intermediate  # the down input alone is "large" here
    monkeypatch.setattr(subspaces, "KEPT_MIN_D", cut)
    share = (_TRIANGLE_BLOCKS + 1) / (2 * _TRIANGLE_BLOCKS)  # diagonal blocks whole, half of the others
    want32 = sum(share * 2 * 100 * d * d for ds in widths for d in ds)
    want64 = sum((KEPT_N3 if d >= cut else EIGH_N3) * d ** 3 for ds in widths for d in ds)
    assert KEPT_N3 < EIGH_N3 and stats_work(layout, 100) == pytest.approx((want32, want64), rel=1e-12)


def test_plan_states_memory_per_device_the_recipe_places_stages_on(pair, tmp_path, monkeypatch):
    """device: cuda puts the model stages' memory on the GPU (without the host process), the streaming grid
    stays on the host, and a stage above the GPU's free memory is named; auto says its split is unknown."""
    from rwedit.apps.plan import plan_recipe
    from rwedit.evals.planning import RUNTIME_BYTES

    recipe = _write(tmp_path / "r.yaml", _recipe(pair))
    on_cpu = {s.name: s for s in plan_recipe(recipe, out=tmp_path / "run").stages}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    free = on_cpu["scoring"].memory_bytes - RUNTIME_BYTES - 1  # one byte short of the scoring stage on the GPU
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=0: (free, 2 * free))
    plan = plan_recipe(recipe, {"device": "cuda"}, out=tmp_path / "run")
    stages = {s.name: s for s in plan.stages}
    assert {n: s.device for n, s in stages.items()} == {"probe: statistics": "cuda", "probe: RSF grid": "cpu",
                                                        "edit: statistics": "cuda", "scoring": "cuda"}
    for name, s in stages.items():
        assert s.memory_bytes == on_cpu[name].memory_bytes - (RUNTIME_BYTES if s.device == "cuda" else 0), name
    assert any("scoring need more memory than cuda has free" in n for n in plan.notes), plan.notes
    assert not any("probe: RSF grid" in n for n in plan.notes)
    auto = plan_recipe(recipe, {"device": "auto"}, out=tmp_path / "run")
    assert any("a split plan cannot know before placement" in n for n in auto.notes)


def _bench_pair() -> tuple[Path, dict] | None:
    """The foundation benchmark's synthetic 1.1B pair and its recorded results, when cached here or where the
    results say it was built."""
    repo = Path(__file__).resolve().parents[1]
    results = repo / "benchmarks" / "results" / "pair_pass.json"
    if not results.exists():
        return None
    rec = json.loads(results.read_text())
    for folder in (repo / "benchmarks" / ".cache" / "llama-1.1b-pair", Path(rec.get("cache", ""))):
        if (folder / "BUILD_COMPLETE.json").exists():
            return folder, rec
    return None


@pytest.mark.slow
def test_plan_memory_estimate_of_the_1_1b_pair_is_within_20_percent_of_the_measured_pass(tmp_path, wiki_tokenizer):
    """The streaming-pass estimate against the peak RSS the foundation benchmark measured for that pass, and
    the whole plan of a control recipe on the pair (headers only) in under 2 s once imported."""
    found = _bench_pair()
    if found is None:
        pytest.skip("the synthetic 1.1B pair is not cached (python benchmarks/bench_pair_pass.py builds it)")
    folder, rec = found
    from rwedit.apps.plan import plan_recipe
    from rwedit.evals.planning import pair_pass_bytes
    from rwedit.checkpoints import Checkpoint

    base, post = Checkpoint.open(folder / "base"), Checkpoint.open(folder / "post")
    measured = rec["steps"]["rwedit"]["peak_rss_mb"] * 2**20
    estimate = pair_pass_bytes(base, post)
    assert abs(estimate / measured - 1) <= 0.20, (estimate / 2**20, measured / 2**20)

    root = tmp_path / "pair"  # the pair's files, linked, with a tokenizer (the cache ships none)
    for side in ("base", "post"):
        (root / side).mkdir(parents=True)
        for f in (folder / side).iterdir():
            (root / side / f.name).symlink_to(f)
        wiki_tokenizer.save_pretrained(root / side)
    t = time.perf_counter()
    plan = plan_recipe(_write(tmp_path / "r.yaml", _recipe(root)), out=tmp_path / "run")
    took = time.perf_counter() - t
    assert took < 2.0, took
    assert math.isclose(plan.params, 1_100_048_384)


def test_plan_sizes_the_model_in_the_placement_dtype_and_defers_a_device_map_split(pair, tmp_path):
    """--dtype bfloat16 halves the model in every model stage (2 bytes an element instead of float32's 4); a
    device map puts the model stages on 'auto' (split by accelerate), the streaming grid stays on the host."""
    from rwedit.apps.plan import plan_recipe
    from rwedit.evals.planning import RUNTIME_BYTES

    recipe = _write(tmp_path / "r.yaml", _recipe(pair))
    whole = plan_recipe(recipe, out=tmp_path / "run")
    placed = plan_recipe(recipe, sets=("placement.dtype=bfloat16", "placement.device_map=auto"), out=tmp_path / "run")
    a, b = {s.name: s for s in whole.stages}, {s.name: s for s in placed.stages}
    assert b["scoring"].device == "auto" and b["probe: RSF grid"].device == "cpu"
    assert a["scoring"].memory_bytes - b["scoring"].memory_bytes == RUNTIME_BYTES + whole.params * 2
    assert b["probe: RSF grid"].memory_bytes == a["probe: RSF grid"].memory_bytes
    assert any("split" in n for n in placed.notes)


def test_plan_imports_no_torch_once_its_rates_are_cached_and_reads_the_config_as_json(pair_root, tmp_path):
    """`rwedit plan` as a fresh process loads no transformers, pandas, peft, lm-eval, scipy or matplotlib (each
    costs seconds of imports), and torch only to measure this machine's rates, which it caches: the second plan
    (or one given --gflops) imports no torch. The recipe's kind is imported alone and config.json is read as JSON;
    the layout it gives is the one transformers' config gives."""
    import os
    import subprocess
    import sys

    from rwedit.architectures import Layout
    from rwedit.checkpoints import Checkpoint, HeaderConfig, _read_config

    recipe = _write(tmp_path / "r.yaml", _recipe(pair_root))
    heavy = ("torch", "transformers", "pandas", "peft", "lm_eval", "scipy", "matplotlib")
    env = {**os.environ, "RWEDIT_CACHE": str(tmp_path / "cache")}

    def plan(*more: str) -> str:
        code = ("import sys; from rwedit.cli import main; "
                f"rc = main(['plan', {recipe!r}, '--out', {str(tmp_path / 'run')!r}, *{more!r}]); "
                f"print('LOADED', rc, sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                             timeout=300)
        return out.stdout + out.stderr

    stated, first, second = plan("--gflops", "100"), plan(), plan()
    assert "LOADED 0 []" in stated, stated[-2000:]
    assert "LOADED 0 ['torch']" in first and "measured here (cpu" in first, first[-2000:]
    assert "LOADED 0 []" in second and f"cached in {tmp_path / 'cache' / 'rates.json'}" in second, second[-2000:]
    rates = [next(line for line in out.splitlines() if line.startswith("estimated time:")).split(" (")[0]
             for out in (first, second)]
    assert rates[0] == rates[1]  # the rates the first measured, as measured
    ckpt = Checkpoint.open(pair_root / "base")
    assert isinstance(ckpt.config, HeaderConfig)
    assert ckpt.layout.dims == Layout.from_config(_read_config(pair_root / "base", transformers=True)).dims


def test_lmeval_padding_follows_the_logits_budget_groups():
    """With a logits budget, requests are grouped by the batch size their length allows and padded per group, as
    rwedit's lm-eval model batches them: worked by hand."""
    from rwedit.evals.planning import logits_batch, padded_tokens

    vocab, budget = 1000, 8 * 1000 * 200  # 200 tokens' logits and log-softmax
    assert [logits_batch(n, 4, vocab, budget) for n in (100, 90, 10, 5, 500)] == [2, 2, 4, 4, 1]
    assert logits_batch(500, 4, vocab, None) == 4
    lengths = [10, 100, 5, 90, 10]
    assert padded_tokens(lengths, 4, sort=True) == 4 * 100 + 5  # one batch of 4 padded to 100, then the 5
    assert padded_tokens(lengths, 4, sort=True, vocab=vocab, budget=budget) == 2 * 100 + 3 * 10


def test_lmeval_batches_keep_the_logits_from_their_first_continuation_on():
    """Each batch of a budget group, longest first, with the positions from its earliest continuation start to its
    padded end: worked by hand (the same batches rwedit's lm-eval model runs)."""
    from rwedit.evals.planning import logits_batches

    vocab, budget = 1000, 8 * 1000 * 200  # batch size 200 // tokens, at most 4: groups in first-seen order
    lengths, conts = [10, 100, 5, 90, 10, 60], [3, 20, 5, 50, 1, 10]
    assert logits_batches(lengths, conts, 4, vocab, budget) == [
        ([0, 4, 2], 10 - min(10 - 3, 10 - 1, 5 - 5)),  # the 5-token item is all continuation: every position
        ([1, 3], 100 - min(100 - 20, 90 - 50)),  # 90's continuation starts at 40: 60 positions
        ([5], 60 - 50),
    ]


def test_a_statistics_stage_is_priced_as_hook_passes_its_arithmetic_and_its_cache_write(pair_root):
    """Its forward tokens without the unembedding's logits, its products and decompositions, and the cache entry
    written at the stated rate: the seconds re-derived term by term at stated rates."""
    from rwedit.checkpoints import Checkpoint
    from rwedit.evals.planning import (CACHE_WRITE_BYTES_S, FORWARD_EFFICIENCY, PlanContext, Rates, forward_flops,
                                       stats_bytes, stats_stage, stats_work)

    base = Checkpoint.open(pair_root / "base")
    layout, d = base.layout, base.layout.dims
    ctx = PlanContext(base, None, "cpu", 0, 0)
    st = stats_stage(ctx, "statistics", "test", 1000)
    rates = Rates(1e9, 5e8, 2e9, "stated")
    hook = forward_flops(layout) - 2.0 * d.vocab * d.hidden
    f32, f64 = stats_work(layout, 1000)
    want = 1000 * hook / (1e9 * FORWARD_EFFICIENCY) + f32 / 1e9 + f64 / 5e8 + stats_bytes(layout) / CACHE_WRITE_BYTES_S
    assert st.cache_bytes == stats_bytes(layout)
    assert st.seconds(rates, forward_flops(layout)) == pytest.approx(want, rel=1e-12)


def test_a_stage_of_parts_prices_each_part_at_its_own_efficiency():
    """The scoring stage's parts (direct metrics, lm-eval) run at different shares of the product rate: the stage
    is the sum of its parts, each re-derived by hand."""
    from rwedit.evals.planning import Rates, Stage

    st = Stage("scoring", "test", 0, 300, parts={"direct": 100, "lmeval": 200}, efficiency=0.75,
               part_efficiency={"lmeval": 0.5}, flops=2e9)
    rates = Rates(1e9, 5e8, 2e9, "stated")
    assert st.seconds(rates, 10.0, "direct") == pytest.approx(100 * 10 / 0.75e9)
    assert st.seconds(rates, 10.0, "lmeval") == pytest.approx(200 * 10 / 0.5e9)
    assert st.seconds(rates, 10.0) == pytest.approx(100 * 10 / 0.75e9 + 200 * 10 / 0.5e9 + 2.0)
