"""Checkpoint sources and the streaming pair iterator, on tiny checkpoints saved to disk."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from rwedit.architectures import get_weight, model_layout
from rwedit.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CheckpointPair,
    NonFiniteWeightError,
)
from tiny_models import tiny_model


def _perturbed(model, seed=1, scale=0.05):
    post = tiny_model(model.config.model_type)
    post.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in post.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return post


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox", "phi3", "llama"])
def test_pair_deltas_equal_in_memory_deltas_across_shardings(tmp_path, model_type):
    base = tiny_model(model_type)
    post = _perturbed(base)
    base.save_pretrained(tmp_path / "base", max_shard_size="20KB")
    post.save_pretrained(tmp_path / "post", max_shard_size="200KB")
    assert len(list((tmp_path / "base").glob("*.safetensors"))) > len(list((tmp_path / "post").glob("*.safetensors"))) >= 1
    layout = model_layout(base)
    seen = set()
    for rp in CheckpointPair(tmp_path / "base", tmp_path / "post"):
        seen.add((rp.layer, rp.role))
        expected = get_weight(post, rp.layer, rp.role) - get_weight(base, rp.layer, rp.role)
        assert rp.base.dtype == torch.float32
        torch.testing.assert_close(rp.delta, expected, atol=0, rtol=0)
    assert seen == {(v.layer, v.role) for v in layout.views()}


def test_bf16_checkpoints_read_as_float32(tmp_path):
    base = tiny_model("llama")
    post = _perturbed(base)
    base.to(torch.bfloat16).save_pretrained(tmp_path / "base")
    post.to(torch.bfloat16).save_pretrained(tmp_path / "post")
    pair = CheckpointPair(tmp_path / "base", tmp_path / "post")
    rp = next(pair.iter_roles(roles=["q"], layers=[1]))
    assert rp.delta.dtype == torch.float32
    # models were cast in place to bf16; the delta is taken after the upcast, in float32
    want = get_weight(post, 1, "q").float() - get_weight(base, 1, "q").float()
    torch.testing.assert_close(rp.delta, want, atol=0, rtol=0)
    raw = next(pair.iter_roles(roles=["q"], layers=[1], dtype=None))
    assert raw.base.dtype == torch.bfloat16


def test_checkpoint_without_base_prefix_and_with_old_names(tmp_path):
    """Hub GPT-2 omits "transformer."; Pythia checkpoints call the unembedding embed_out."""
    gpt2 = tiny_model("gpt2")
    gpt2.save_pretrained(tmp_path / "g")
    f = tmp_path / "g" / "model.safetensors"
    sd = load_file(f)
    save_file({k.removeprefix("transformer."): v for k, v in sd.items()}, f, metadata={"format": "pt"})
    ck = Checkpoint.open(tmp_path / "g")
    assert ck.find("transformer.h.0.attn.c_attn.weight") == "h.0.attn.c_attn.weight"

    neox = tiny_model("gpt_neox")
    neox.save_pretrained(tmp_path / "n")
    f = tmp_path / "n" / "model.safetensors"
    sd = load_file(f)
    old, new = "embed_out.weight", "lm_head.weight"
    for name in (old, new):  # the name transformers wrote, then the other one
        if name not in sd:
            sd[name] = sd.pop(old if name == new else new)
            save_file(sd, f, metadata={"format": "pt"})
        assert Checkpoint.open(tmp_path / "n").find("lm_head.weight") == name
        rp = next(CheckpointPair(tmp_path / "n", tmp_path / "n").iter_roles(roles=["unembed"]))
        torch.testing.assert_close(rp.base, get_weight(neox, None, "unembed"), atol=0, rtol=0)


def test_mismatched_architectures_layers_and_shapes_fail_before_work(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "llama")
    tiny_model("gpt2").save_pretrained(tmp_path / "gpt2")
    tiny_model("llama", num_hidden_layers=3).save_pretrained(tmp_path / "llama3")
    tiny_model("llama", intermediate_size=64).save_pretrained(tmp_path / "wide")
    with pytest.raises(CheckpointMismatchError, match="architectures differ.*'llama'.*'gpt2'"):
        CheckpointPair(tmp_path / "llama", tmp_path / "gpt2")
    with pytest.raises(CheckpointMismatchError, match="layer counts differ: base .* has 2, post .* has 3"):
        CheckpointPair(tmp_path / "llama", tmp_path / "llama3")
    with pytest.raises(CheckpointMismatchError, match="intermediate"):
        CheckpointPair(tmp_path / "llama", tmp_path / "wide")
    # a tensor whose shape disagrees with its own config (a corrupt export) is named
    f = tmp_path / "wide" / "model.safetensors"
    sd = load_file(f)
    sd["model.layers.1.mlp.down_proj.weight"] = torch.zeros(32, 48)
    save_file(sd, f, metadata={"format": "pt"})
    cfg = json.loads((tmp_path / "wide" / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (tmp_path / "wide" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match=r"layer 0 role 'up'.*\(48, 32\), post \(64, 32\)"):
        CheckpointPair(tmp_path / "llama", tmp_path / "wide")


def test_nan_and_inf_are_reported_with_the_tensor_name(tmp_path):
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 4] = float("nan")
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("inf")
    model.save_pretrained(tmp_path / "post")
    pair = CheckpointPair(tmp_path / "base", tmp_path / "post")
    with pytest.raises(NonFiniteWeightError, match=r"'model.layers.1.mlp.up_proj.weight' contains 1 NaN and 1 Inf"):
        list(pair)
    rows = list(pair.iter_roles(check_finite=False))
    assert len(rows) == len(pair.layout.views())


def test_pickle_checkpoints_are_refused_unless_opted_in(tmp_path):
    model = tiny_model("llama")
    folder = tmp_path / "m"
    model.config.save_pretrained(folder)  # an old-style checkpoint: config + pickled state dict
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle.*execute arbitrary code.*allow_pickle=True"):
        Checkpoint.open(folder)
    pair = CheckpointPair(folder, folder, allow_pickle=True)
    rp = next(pair.iter_roles(roles=["k"], layers=[0]))
    torch.testing.assert_close(rp.base, get_weight(model, 0, "k"), atol=0, rtol=0)


def test_uncached_hub_id_offline_fails_at_once_with_advice(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(CheckpointNotFoundError) as e:
        Checkpoint.open("EleutherAI/pythia-70m@step1000", cache_dir=str(tmp_path))
    assert time.perf_counter() - t < 10
    msg = str(e.value)
    assert "EleutherAI/pythia-70m@step1000" in msg and "local folder" in msg
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        Checkpoint.open(str(tmp_path / "nowhere"))


def test_hub_id_found_in_local_cache_resolves_offline(tmp_path, monkeypatch):
    """A Hub id resolves through huggingface_hub's cache layout without any network."""
    model = tiny_model("mistral")
    snap = tmp_path / "models--org--tiny" / "snapshots" / ("a" * 40)
    model.save_pretrained(snap)
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ck = Checkpoint.open("org/tiny", cache_dir=str(tmp_path))
    assert ck.path == snap and ck.model_type == "mistral"


def test_folder_that_is_not_a_model_is_explained(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        Checkpoint.open(tmp_path / "x")
    (tmp_path / "x" / "config.json").write_text(json.dumps({"model_type": "mamba", "vocab_size": 3}))
    with pytest.raises(ValueError, match="not in rwedit's registry"):
        Checkpoint.open(tmp_path / "x")


def test_results_record_the_resolved_commit_of_a_hub_source_and_a_fingerprint_of_a_local_one(tmp_path, monkeypatch):
    """`org/tiny@v1` in a local Hub cache (a tag pointing at a commit) resolves offline to that snapshot; the
    probe's meta.json records the commit, the local post its content fingerprint; re-saving the post with
    other weights changes the fingerprint; a revision the cache lacks fails naming it."""
    import huggingface_hub

    from rwedit.cli import main

    base, post = tiny_model("llama"), tiny_model("llama", seed=1)
    repo = tmp_path / "hub" / "models--org--tiny"
    commit = "c" * 40
    base.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "v1").write_text(commit)
    post.save_pretrained(tmp_path / "post")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["svd", "--base", "org/tiny@v1", "--post", str(tmp_path / "post"), "--r", "2",
                 "--out", str(tmp_path / "svd"), "--quiet"]) == 0
    src = json.loads((tmp_path / "svd" / "meta.json").read_text())["sources"]
    assert src["base"]["commit"] == commit and src["base"]["hub_id"] == "org/tiny" and src["base"]["ref"] == "org/tiny@v1"
    assert src["post"]["commit"] is None and len(src["post"]["fingerprint"]) == 16
    tiny_model("llama", seed=2).save_pretrained(tmp_path / "post")
    assert main(["svd", "--base", "org/tiny@v1", "--post", str(tmp_path / "post"), "--r", "2",
                 "--out", str(tmp_path / "svd2"), "--quiet"]) == 0
    assert json.loads((tmp_path / "svd2" / "meta.json").read_text())["sources"]["post"]["fingerprint"] != \
        src["post"]["fingerprint"]
    with pytest.raises(CheckpointNotFoundError, match="org/tiny@v2"):
        Checkpoint.open("org/tiny@v2")
