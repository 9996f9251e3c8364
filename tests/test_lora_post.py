"""A PEFT LoRA adapter as the post side of a pair: post = base + scale·B·A per module, from the adapter file,
equal to probing the merged model — for Llama, GPT-2 (Conv1D, fan_in_fan_out) and Phi-3 (fused qkv and
gate_up, rsLoRA) — while only the base checkpoint's tensors are read."""

from __future__ import annotations

import copy
import json
import math

import pandas as pd
import pytest
import torch
from peft import LoraConfig, get_peft_model

from rwedit.checkpoints import CheckpointPair, LoraPost, TensorReader
from rwedit.errors import CheckpointError
from rwedit.cli import main
from rwedit.probes.grid import GridSettings, rsf_grid_frame
from tiny_models import VOCAB, tiny_model

TARGETS = {"llama": (["q_proj", "k_proj", "o_proj", "up_proj", "gate_proj", "down_proj"], {}),  # not v
           "gpt2": (["c_attn", "c_proj", "c_fc"], {"fan_in_fan_out": True}),
           "phi3": (["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], {"use_rslora": True,
                                                                           "rank_pattern": {"down_proj": 2},
                                                                           "alpha_pattern": {"o_proj": 3}})}


def _trained_lora(model_type: str, root):
    """A base model, a LoRA adapter trained a few steps on it, and the merged model, saved under ``root``."""
    base = tiny_model(model_type)
    base.save_pretrained(root / "base")
    targets, extra = TARGETS[model_type]
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, lora_dropout=0.0, **extra)
    peft = get_peft_model(copy.deepcopy(base), cfg)
    opt = torch.optim.SGD([p for p in peft.parameters() if p.requires_grad], lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(3, VOCAB, (2, 12), generator=g)
        peft(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    peft.save_pretrained(root / "lora")
    peft.merge_and_unload().save_pretrained(root / "merged")
    return root / "base", root / "lora", root / "merged"


def _record_reads(monkeypatch) -> list[tuple[str, str]]:
    """(checkpoint folder, tensor) of every tensor read from now on: whole, or by a streaming pass (counted
    when it opens the tensor)."""
    from rwedit.stream import _BlockFiles

    reads = []
    real_read, real_block = TensorReader.read, _BlockFiles.tensor

    def spy(self, param, dtype=torch.float32):
        reads.append((str(self.ckpt.path), param))
        return real_read(self, param, dtype)

    def block_spy(self, name):
        reads.append((str(self.ckpt.path), name))
        return real_block(self, name)

    monkeypatch.setattr(TensorReader, "read", spy)
    monkeypatch.setattr(_BlockFiles, "tensor", block_spy)
    return reads


@pytest.mark.parametrize("model_type", sorted(TARGETS))
def test_lora_post_equals_the_merged_pair_and_reads_only_the_base(model_type, tmp_path, monkeypatch):
    base, lora, merged = _trained_lora(model_type, tmp_path)
    reads = _record_reads(monkeypatch)
    settings = GridSettings(ks=(1, 4), subspaces=("prediction", "random"))
    pair = CheckpointPair(str(base), str(lora))
    assert isinstance(pair.post, LoraPost) and pair.post.delta_form == "factored"
    got = rsf_grid_frame(pair, None, settings)
    assert {p for p, _ in reads} == {str(base)}  # the adapter's post side reads no second checkpoint
    dup = [r for r in set(reads) if reads.count(r) > 1]  # each base tensor once (fused ones too); W_U is read
    assert len(dup) <= 1 and all(reads.count(r) == 2 for r in dup)  # once more for the prediction subspace
    want = rsf_grid_frame(CheckpointPair(str(base), str(merged)), None, settings)
    assert len(got) == len(want) and (got["role"] == want["role"]).all()
    assert got["delta_norm"].tolist() == pytest.approx(want["delta_norm"].tolist(), rel=1e-4, abs=1e-6)
    assert got["rsf"].tolist() == pytest.approx(want["rsf"].tolist(), rel=2e-3, abs=1e-4, nan_ok=True)
    if model_type == "llama":  # v is not targeted: an exact zero delta, as in the merged model
        v = got[got["role"] == "v"]
        assert (v["delta_norm"] == 0).all() and (v["reason"] == "zero delta").all()
    # the SVD probe and the norms through the CLI, against the merged pair
    for name, post in (("lora", lora), ("merged", merged)):
        assert main(["svd", "--base", str(base), "--post", str(post), "--r", "4", "--out", str(tmp_path / f"svd_{name}"),
                     "--quiet"]) == 0
        assert main(["deltas", "--base", str(base), "--post", str(post), "--out", str(tmp_path / f"d_{name}"),
                     "--quiet"]) == 0
    a, b = pd.read_csv(tmp_path / "svd_lora" / "svd.csv"), pd.read_csv(tmp_path / "svd_merged" / "svd.csv")
    for col in ("scale", "consistency"):
        assert a[col].tolist() == pytest.approx(b[col].tolist(), rel=1e-3, abs=1e-5, nan_ok=True), col
    a, b = pd.read_csv(tmp_path / "d_lora" / "deltas.csv"), pd.read_csv(tmp_path / "d_merged" / "deltas.csv")
    assert a["delta_norm"].tolist() == pytest.approx(b["delta_norm"].tolist(), rel=1e-4, abs=1e-6)


def test_lora_scale_and_layout_follow_the_adapter_config(tmp_path):
    """ΔW of one module recomputed by hand from the saved factors (rank/alpha patterns, rsLoRA, Conv1D)."""
    from safetensors.torch import load_file

    base, lora, _ = _trained_lora("phi3", tmp_path)
    pair = CheckpointPair(str(base), str(lora))
    sd = load_file(lora / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.mlp.down_proj"
    A, B = sd[f"{key}.lora_A.weight"].double(), sd[f"{key}.lora_B.weight"].double()
    assert A.shape[0] == 2  # rank_pattern
    rp = next(pair.iter_roles(roles=["down"], layers=[0]))
    torch.testing.assert_close(rp.delta.double(), 8 / math.sqrt(2) * (B @ A), rtol=1e-6, atol=1e-7)


def test_adapters_that_are_not_plain_lora_are_refused_with_the_way_out(tmp_path):
    base, lora, _ = _trained_lora("llama", tmp_path)
    cfg = json.loads((lora / "adapter_config.json").read_text())
    for change, match in ((dict(use_dora=True), "DoRA"), (dict(peft_type="IA3"), "PEFT IA3 adapter")):
        (lora / "adapter_config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(CheckpointError, match=match) as e:
            CheckpointPair(str(base), str(lora))
        assert "merge_and_unload" in str(e.value)
    (lora / "adapter_config.json").write_text(json.dumps(cfg))
    other = tiny_model("llama", hidden_size=48, intermediate_size=64)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="adapter of another model"):
        CheckpointPair(str(tmp_path / "other"), str(lora))


def test_b_delta_reads_the_observed_delta_from_a_lora_post(tmp_path, wiki_tokenizer):
    """The closed form b ∝ ΔW_obs v with the post side given as a LoRA adapter folder: b recomputed from
    the merged model's weights."""
    from safetensors.torch import load_file

    from rwedit.architectures import get_weight
    from rwedit.editor.pipeline import run_edit
    from rwedit.editor.spec import EditSpec
    from transformers import AutoModelForCausalLM

    base, lora, merged = _trained_lora("llama", tmp_path)
    wiki_tokenizer.save_pretrained(base)  # the edit loads the base model with its tokenizer
    spec = EditSpec.from_dict({"model": str(base), "post": str(lora), "alpha": [2.0], "seed": 3,
                               "edit": {"layers": [1], "role": "q", "v": "random", "b": "delta"},
                               "controls": {"random": 0, "lowvar": 0, "write": None}})
    out = run_edit(spec, tmp_path / "e")
    sd = load_file(out / "adapters" / "random_s3_a2" / "adapter_model.safetensors")
    A = next(v for k, v in sd.items() if "lora_A" in k).double()[0]
    B = next(v for k, v in sd.items() if "lora_B" in k).double()[:, 0] / 2.0
    m0, m1 = (AutoModelForCausalLM.from_pretrained(str(p)) for p in (base, merged))
    want = (get_weight(m1, 1, "q") - get_weight(m0, 1, "q")).double() @ A
    torch.testing.assert_close(B, want / want.norm(), atol=1e-4, rtol=0)


def test_three_fine_tunes_of_one_base_give_the_rows_of_three_single_pair_probes(tmp_path, monkeypatch, capsys):
    """`probe --base B --post P1 --post P2 --post LORA`: one rsf.csv whose rows for each post equal that post's
    single-pair probe, one comparison table and figure, and the base's tensors read once each."""
    base, lora, merged = _trained_lora("llama", tmp_path)
    tiny_model("llama", seed=5).save_pretrained(tmp_path / "other_ft")
    posts = [str(merged), str(tmp_path / "other_ft"), str(lora)]
    reads = _record_reads(monkeypatch)
    args = ["--k", "1,4", "--quiet"]
    assert main(["probe", "--base", str(base), *sum((["--post", p] for p in posts), []), "--out",
                 str(tmp_path / "cmp"), *args]) == 0
    base_reads = [r for r in reads if r[0] == str(base)]
    # one pass for the grid and one for the SVD probe, each reading a base tensor once for all 3 posts
    # (W_U: once more for the prediction subspace, and not in the SVD pass)
    assert max(base_reads.count(r) for r in set(base_reads)) == 2
    both = pd.read_csv(tmp_path / "cmp" / "rsf.csv")
    assert list(dict.fromkeys(both["post"])) == ["merged", "other_ft", "lora"]
    for name, post in zip(["merged", "other_ft", "lora"], posts):
        assert main(["probe", "--base", str(base), "--post", post, "--out", str(tmp_path / f"one_{name}"), *args]) == 0
        single = pd.read_csv(tmp_path / f"one_{name}" / "rsf.csv")
        mine = both[both["post"] == name].drop(columns="post").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, single, check_exact=True, check_dtype=False)  # the same numbers, to the bit
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert set(table["post"]) == {"merged", "other_ft", "lora"} and (tmp_path / "cmp" / "compare.png").exists()
    svd = pd.read_csv(tmp_path / "cmp" / "svd.csv")  # the SVD probe per variant, in one more shared pass
    assert main(["svd", "--base", str(base), "--post", posts[1], "--out", str(tmp_path / "svd1"), "--quiet"]) == 0
    single_svd = pd.read_csv(tmp_path / "svd1" / "svd.csv")
    assert svd[svd["post"] == "other_ft"]["consistency"].tolist() == pytest.approx(single_svd["consistency"].tolist(),
                                                                                   rel=1e-6)
    assert table.groupby("post")["svd_consistency"].first()["other_ft"] == pytest.approx(single_svd["consistency"].mean())
    # the adapter and its merged model are the same fine-tune: the same comparison numbers
    m, lo = (table[table["post"] == n].set_index("claim")["rsf_mean"] for n in ("merged", "lora"))
    assert m.to_dict() == pytest.approx(lo.to_dict(), rel=2e-3)
    meta = json.loads((tmp_path / "cmp" / "meta.json").read_text())
    assert set(meta["sources"]) == {"base", "merged", "other_ft", "lora"} and meta["sources"]["lora"]["rank"] == [4]


def test_a_checkpoint_series_is_probed_member_by_member_and_resumes(tmp_path, capsys):
    """A folder of three Trainer-style checkpoints: each member's rows equal its single-pair probe; a run
    stopped after the second member computes only the third when run again; series.csv is ordered by step."""
    from rwedit.probes.grid import GridSettings
    from rwedit.probes.pipeline import ProbeRequest, run_probe

    tiny_model("llama").save_pretrained(tmp_path / "base")
    for i, step in enumerate((300, 100, 200)):
        tiny_model("llama", seed=10 + i).save_pretrained(tmp_path / "run" / f"checkpoint-{step}")
    settings = GridSettings(ks=(1, 4))
    from rwedit.probes.pipeline import SvdSettings
    from rwedit.runtime import using

    with using(progress=False):
        res = run_probe(ProbeRequest(str(tmp_path / "base"), series=str(tmp_path / "run"), grid=settings,
                                     svd=SvdSettings(r=2), out=tmp_path / "s", stop_after=2))
    assert list(res.claims["member"]) == ["checkpoint-100", "checkpoint-200"]
    stamps = {m: (tmp_path / "s" / "members" / m / "meta.json").stat().st_mtime_ns
              for m in ("checkpoint-100", "checkpoint-200")}
    assert main(["probe", "--base", str(tmp_path / "base"), "--series", str(tmp_path / "run"), "--out",
                 str(tmp_path / "s"), "--k", "1,4", "--svd-r", "2", "--quiet"]) == 0
    assert {m: (tmp_path / "s" / "members" / m / "meta.json").stat().st_mtime_ns for m in stamps} == stamps
    table = pd.read_csv(tmp_path / "s" / "series.csv")
    assert table["step"].tolist() == [100, 200, 300] and table["fingerprint"].nunique() == 3
    assert (tmp_path / "s" / "series.png").exists()
    with using(progress=False):  # in memory, the RSF grid alone: the same claims by step, no folder
        mem = run_probe(ProbeRequest(str(tmp_path / "base"), series=str(tmp_path / "run"), grid=settings, svd=None))
    assert mem.folder is None and mem.claims["step"].tolist() == [100, 200, 300] and "svd_scale" not in mem.claims
    col = "rsf write side vs prediction"
    assert mem.claims[col].tolist() == pytest.approx(table[col].tolist(), rel=1e-12)
    assert main(["probe", "--base", str(tmp_path / "base"), "--post", str(tmp_path / "run" / "checkpoint-300"),
                 "--out", str(tmp_path / "one"), "--k", "1,4", "--quiet"]) == 0
    mine = pd.read_csv(tmp_path / "s" / "members" / "checkpoint-300" / "rsf.csv")
    single = pd.read_csv(tmp_path / "one" / "rsf.csv")
    assert mine["rsf"].tolist() == pytest.approx(single["rsf"].tolist(), nan_ok=True)
    assert main(["probe", "--base", str(tmp_path / "base"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "give --post" in capsys.readouterr().err


@pytest.mark.parametrize("model_type", sorted(TARGETS))
def test_an_adapter_streamed_in_cut_blocks_equals_its_whole_factored_delta(model_type, tmp_path, monkeypatch):
    """The adapter as a block source: blocks of 5 stored rows (fused slices and Conv1D columns cut) give the
    rows of the whole factored delta (the oracle ``rows_for_delta``) to float64 rounding, two-sided rows too."""
    from rwedit.probes import grid as grid_mod
    from grid_oracle import rows_for_delta
    from rwedit.probes.grid import GridContext, prediction_from_pair, rsf_grid_pair

    base, lora, _ = _trained_lora(model_type, tmp_path)
    pair = CheckpointPair(str(base), str(lora))
    settings = GridSettings(ks=(1, 4), null_seeds=2, sides=("read", "write", "both"), subspaces=("prediction", "random"))
    real = grid_mod.stream_pair
    monkeypatch.setattr(grid_mod, "stream_pair", lambda *a, **k: real(*a, **{**k, "block_bytes": 5 * 4 * 32}))
    got = list(rsf_grid_pair(pair, None, settings))
    ctx = GridContext(None, prediction_from_pair(pair))
    want = [row for rp in pair.iter_roles() for row in rows_for_delta(rp.low_rank, rp.layer, rp.role, ctx, settings)]
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12, nan_ok=True), (key, a, b)
            else:
                assert a[key] == b[key], (key, a, b)
