"""Every source is verified before it is used (#27.2): a LoRA post's config against its tensors (PEFT's own
loader as the reference), a post whose delta is exactly zero, the posts of a comparison and the members of a
series as a set, and a series resumed into its folder with other settings or another base."""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from rwedit.checkpoints import Checkpoint, CheckpointPair, LoraPost, check_members, peft_targets
from rwedit.errors import CheckpointError, CheckpointMismatchError, ConfigError, OutputExistsError
from rwedit.probes.grid import GridSettings
from rwedit.probes.pipeline import ProbeRequest, SvdSettings, run_probe, series_members
from rwedit.runtime import using
from tiny_models import tiny_model

TARGETS = ["q_proj", "o_proj", "down_proj"]


@pytest.fixture(scope="module")
def lora_root(tmp_path_factory):
    """A tiny Llama base and a LoRA adapter with nonzero factors (r = 4, alpha = 8) on q, o and down."""
    root = tmp_path_factory.mktemp("sources")
    base = tiny_model("llama")
    base.save_pretrained(root / "base")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, lora_dropout=0.0)
    get_peft_model(copy.deepcopy(base), cfg).save_pretrained(root / "lora")
    return root


@pytest.fixture
def lora(tmp_path, lora_root):
    """A fresh copy of the adapter to damage, and the base beside it."""
    shutil.copytree(lora_root / "lora", tmp_path / "lora")
    return lora_root / "base", tmp_path / "lora"


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))


def _peft_delta(base_dir, lora_dir, module: str) -> torch.Tensor:
    """ΔW of ``module`` as PEFT's own loader builds it (merged model minus base)."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    w0 = base.get_submodule(module).weight.detach().clone()
    merged = PeftModel.from_pretrained(base, lora_dir).merge_and_unload()
    return merged.get_submodule(module).weight.detach() - w0


@pytest.mark.parametrize("change, words", [
    (dict(r=8), ("rank r = 8", "factors have rank 4", "0.5x")),  # every ||ΔW|| would be halved
    (dict(r=0), ("r = 0", "positive integer")),
    (dict(r=2.5), ("r = 2.5", "positive integer")),
    (dict(lora_alpha=float("nan")), ("lora_alpha = nan", "finite")),
    (dict(lora_alpha=0), ("lora_alpha = 0", "positive")),
    (dict(lora_alpha=-8), ("lora_alpha = -8", "positive")),
    (dict(lora_alpha="8"), ("lora_alpha = '8'",)),
    (dict(alpha_pattern={"o_proj": float("inf")}), ("alpha_pattern['o_proj'] = inf",)),
    (dict(rank_pattern={"o_proj(": 4}), ("rank_pattern key", "not a regular expression")),
    (dict(target_modules="q_proj("), ("target_modules", "not a regular expression")),
    (dict(target_modules=["v_proj", "k_proj"]), ("do not name", "model.layers.0.mlp.down_proj")),
    (dict(target_modules=TARGETS + ["up_proj"]), ("holds no factors for", "up_proj")),
    (dict(layers_to_transform=[0]), ("do not name", "layers.1")),
    (dict(target_modules=None), ("no target_modules",)),
])
def test_an_adapter_config_that_contradicts_its_tensors_is_refused(lora, change, words):
    base, folder = lora
    _edit_config(folder, **change)
    with pytest.raises(CheckpointError) as e:
        CheckpointPair(str(base), str(folder))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_peft_refuses_or_builds_another_delta_where_rwedit_refuses(lora):
    """PEFT's loader as the reference: a rank that contradicts the factors does not load at all, and targets
    that miss the held modules load into a model whose delta is not the file's (what rwedit would have read)."""
    base, folder = lora
    module = "model.layers.0.self_attn.q_proj"
    post = LoraPost.open(folder, Checkpoint.open(base))
    A, B, scale = post.factors[module]
    torch.testing.assert_close(_peft_delta(base, folder, module).double(), scale * B @ A, atol=1e-6, rtol=1e-5)
    _edit_config(folder, r=8)
    with pytest.raises(RuntimeError, match="size mismatch"):
        _peft_delta(base, folder, module)
    _edit_config(folder, r=4, target_modules=["v_proj", "k_proj"])
    assert _peft_delta(base, folder, module).abs().max() == 0  # PEFT dropped the file's q factors


def test_a_targeted_module_missing_from_the_file_is_refused(lora):
    base, folder = lora
    sd = load_file(folder / "adapter_model.safetensors")
    save_file({k: v for k, v in sd.items() if "layers.1.mlp.down_proj" not in k}, folder / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match=r"holds no factors for .*'model\.layers\.1\.mlp\.down_proj'"):
        CheckpointPair(str(base), str(folder))


@pytest.mark.parametrize("config", [
    dict(target_modules=["q_proj", "down_proj"]),
    dict(target_modules=["self_attn.q_proj", "model.layers.1.mlp.up_proj"]),
    dict(target_modules=r".*\.layers\.1\..*_proj"),
    dict(target_modules=r"q_proj"),  # a string is a full match: nothing
    dict(target_modules=["q_proj", "o_proj"], layers_to_transform=[1]),
    dict(target_modules=["q_proj", "o_proj"], layers_to_transform=0, layers_pattern="layers"),
    dict(target_modules=["q_proj", "o_proj"], layers_to_transform=[0], layers_pattern=["blocks"]),
    dict(target_modules=["q_proj", "down_proj"], exclude_modules=["model.layers.0.self_attn.q_proj"]),
    dict(target_modules=["q_proj", "down_proj"], exclude_modules=r".*layers\.1.*"),
])
def test_the_target_matching_is_peft_s_own(config):
    """peft_targets against PEFT 0.21's check_target_module_exists on every module name of a model."""
    from peft.tuners.tuners_utils import check_target_module_exists

    ref = LoraConfig(r=2, **config)
    names = [n for n, _ in tiny_model("llama").named_modules() if n]
    got = [n for n in names if peft_targets(config, n)]
    want = [n for n in names if check_target_module_exists(ref, n)]  # an excluded module is falsy there
    assert got == want


# --- a delta that is exactly zero ------------------------------------------------------------------------------


def test_a_post_identical_to_the_base_is_named_not_probed_into_nans(tmp_path, lora_root):
    """The base's own folder, a byte copy and a re-saved copy of it, and an untrained adapter (lora_B = 0) are
    each refused by name for an RSF probe; a real fine-tune reads one tensor of each side to be told apart."""
    base = Checkpoint.open(lora_root / "base")
    shutil.copytree(lora_root / "base", tmp_path / "copy")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(lora_root / "base").to(torch.float32).save_pretrained(tmp_path / "resaved")
    untrained = tmp_path / "untrained"
    get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(untrained)
    rq = ProbeRequest(str(lora_root / "base"), posts=("x",))
    for post, why in ((lora_root / "base", "the base's own folder"), (tmp_path / "copy", "bit for bit"),
                      (tmp_path / "resaved", "bit for bit"), (untrained, "lora_B = 0")):
        with pytest.raises(CheckpointMismatchError, match="the delta is exactly zero") as e:
            check_members([("p", str(post), None)], base, rq)
        assert why in str(e.value)
    tiny_model("llama", seed=9).save_pretrained(tmp_path / "fine_tune")
    members = [("p", str(tmp_path / "fine_tune"), None), ("l", str(lora_root / "lora"), None)]
    assert check_members(members, base, rq) == members
    # without the grid (the SVD probe, the norms) an identical pair is measured and reported as unchanged
    assert check_members([("p", str(tmp_path / "copy"), None)], base, ProbeRequest(str(base.path), posts=("x",),
                                                                                   grid=None)) is not None


# --- the posts of a comparison, the members of a series ------------------------------------------------------


def test_the_same_post_twice_is_refused_however_it_is_spelled(tmp_path, lora_root, monkeypatch):
    base = Checkpoint.open(lora_root / "base")
    tiny_model("llama", seed=9).save_pretrained(tmp_path / "ft")
    os.symlink(tmp_path / "ft", tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    rq = ProbeRequest(str(base.path), posts=("x",))
    for other in ("ft/", str(tmp_path / "ft"), "link", "./ft"):
        with pytest.raises(ConfigError, match="given twice"):
            check_members([("a", "ft", None), ("b", other, None)], base, rq)


def _series(tmp_path, names, root_model=False):
    for i, name in enumerate(names):
        tiny_model("llama", seed=20 + i).save_pretrained(tmp_path / "run" / name)
    if root_model:
        tiny_model("llama", seed=40).save_pretrained(tmp_path / "run")
    return str(tmp_path / "run")


@pytest.mark.parametrize("names, root_model, words", [
    (["checkpoint-100", "checkpoint-200"], True, ("a model at its root", "checkpoint-100, checkpoint-200", "list")),
    (["checkpoint-100", "best", "final"], False, ("best, final", "no step")),
])
def test_a_series_folder_whose_order_is_unknown_is_refused(tmp_path, lora_root, names, root_model, words):
    spec = _series(tmp_path, names, root_model)
    rq = ProbeRequest(str(lora_root / "base"), series=spec)
    with pytest.raises(ConfigError) as e:
        check_members(series_members(spec), Checkpoint.open(lora_root / "base"), rq)
    for w in words:
        assert w in str(e.value)


def test_series_lists_need_every_step_or_none_and_one_member_per_step(tmp_path, lora_root):
    base = Checkpoint.open(lora_root / "base")
    for n in ("a/checkpoint-100", "b/checkpoint-100", "c/final", "c/checkpoint-300"):
        tiny_model("llama", seed=len(n)).save_pretrained(tmp_path / n)
    p = lambda n: str(tmp_path / n)  # noqa: E731

    def check(spec):
        return check_members(series_members(spec), base, ProbeRequest(str(base.path), series=spec))

    with pytest.raises(ConfigError, match="final has no step"):
        check(f"{p('a/checkpoint-100')},{p('c/final')},{p('c/checkpoint-300')}")
    with pytest.raises(ConfigError, match="both at step 100"):
        check(f"{p('a/checkpoint-100')},{p('b/checkpoint-100')}")
    with pytest.raises(ConfigError, match="given twice"):
        check(f"{p('a/checkpoint-100')},{p('c/checkpoint-300')},{p('a/checkpoint-100')}/")
    assert [s for _, _, s in check(f"{p('c/checkpoint-300')},{p('a/checkpoint-100')}")] == [100, 300]


def test_a_series_resumed_with_other_settings_or_another_base_is_refused_with_the_changed_keys(tmp_path, lora_root):
    """Members probed into OUT are reused by a rerun only with the same settings and the same base weights."""
    spec = _series(tmp_path, ["checkpoint-1", "checkpoint-2"])
    base = Checkpoint.open(lora_root / "base")
    out = tmp_path / "s"
    kw = dict(series=spec, svd=SvdSettings(r=2), out=str(out))
    with using(progress=False):
        run_probe(ProbeRequest(str(base.path), grid=GridSettings(ks=(1, 4)), stop_after=1, **kw))
    same = ProbeRequest(str(base.path), grid=GridSettings(ks=(1, 4)), **kw)
    assert check_members(series_members(spec), base, same)  # a plain resume
    other = ProbeRequest(str(base.path), grid=GridSettings(ks=(1, 2)), **kw)
    with pytest.raises(OutputExistsError, match=r"changed: grid\.ks\)"):
        check_members(series_members(spec), base, other)
    tiny_model("llama", seed=77).save_pretrained(tmp_path / "base2")  # same shapes, other weights
    with pytest.raises(OutputExistsError, match=r"changed: base\)"):
        check_members(series_members(spec), Checkpoint.open(tmp_path / "base2"),
                      ProbeRequest(str(tmp_path / "base2"), grid=GridSettings(ks=(1, 4)), **kw))
    with pytest.raises(OutputExistsError, match=r"changed: grid, svd\.r\)"):
        check_members(series_members(spec), base, ProbeRequest(str(base.path), grid=None, **{**kw, "svd": SvdSettings(r=3)}))
