"""One model across devices: a tiny model split between the CPU and disk offload by an explicit device map
gives the statistics, ``G v`` and adapter logits of the model held whole; every model-loading command takes
the placement flags and passes them to ``from_pretrained`` unchanged; bad placements are clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from rwedit.architectures import model_layout
from rwedit.checkpoints import Checkpoint
from rwedit.cli import main
from rwedit.data import pack_tokens, read_pairs
from rwedit.editor.adapters import attach_conditions, load_adapter_folder
from rwedit.editor.closed_forms import Probe, _objective_batches, gradient_products
from rwedit.editor.edits import EditCondition, RankOneEdit
from rwedit.errors import ConfigError, DeviceError
from rwedit.models import Placement, load_model_and_tokenizer
from rwedit.probes.activations import StatsSettings, collect_activation_stats, model_fingerprint
from conftest import HH_RLHF, WIKITEXT
from tiny_models import save_pair

#: layer 1 goes to disk, the rest stays on the CPU (what a GPU + disk split does, on a CPU-only torch)
SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
         "model.norm": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory, wiki_tokenizer):
    return save_pair(tmp_path_factory.mktemp("placement"), wiki_tokenizer, model_type="llama")


@pytest.fixture(scope="module")
def models(pair, tmp_path_factory):
    """The base whole, and the same checkpoint with layer 1 offloaded to disk."""
    ckpt = Checkpoint.open(pair / "base")
    whole, tok = load_model_and_tokenizer(ckpt)
    split, _ = load_model_and_tokenizer(ckpt, placement=Placement(
        device_map=json.dumps(SPLIT), offload_folder=str(tmp_path_factory.mktemp("offload"))))
    offloaded = [n for n, p in split.named_parameters() if p.device.type == "meta"]
    assert offloaded and all(n.startswith("model.layers.1.") for n in offloaded)  # really split
    return whole, split, tok


def test_split_model_gives_the_statistics_and_Gv_of_the_whole_model(models, wiki_texts):
    whole, split, tok = models
    ids = pack_tokens(tok, wiki_texts, 32, 32 * 8)
    settings = StatsSettings(roles=("q", "o", "up", "down"), seq_len=32, batch_size=4)
    a = collect_activation_stats(whole, ids, settings, progress=False)
    b = collect_activation_stats(split, ids, settings, progress=False)
    assert sorted(a.sums) == sorted(b.sums) and {l for l, _ in a.sums} == {0, 1} and a.n_tokens == b.n_tokens
    for key in a.sums:
        assert b.sums[key].dtype == torch.float64
        torch.testing.assert_close(b.sums[key], a.sums[key], rtol=1e-12, atol=0)
        torch.testing.assert_close(b.firsts[key], a.firsts[key], rtol=1e-12, atol=0)
    assert model_fingerprint(split) == model_fingerprint(whole)  # one cache entry for both placements

    pairs = read_pairs(HH_RLHF, limit=4)
    g = torch.Generator().manual_seed(0)
    probes = [Probe(1, "q", torch.randn(32, generator=g, dtype=torch.float64)),  # on the offloaded layer
              Probe(1, "down", torch.randn(32, generator=g, dtype=torch.float64), side="GTu"),
              Probe(0, "up", torch.randn(32, generator=g, dtype=torch.float64))]
    kw = dict(tokenizer=tok, batch_size=2, max_len=64)
    got = gradient_products(split, probes, "preference", pairs, **kw)
    want = gradient_products(whole, probes, "preference", pairs, **kw)
    # the whole model's G v against autograd's weight gradient: the reference is right, not merely shared
    view = model_layout(whole).view(1, "q")
    whole.zero_grad()
    for loss in _objective_batches(whole, tok, "preference", pairs, 2, 64):
        loss.backward()
    G = view.extract(whole.get_parameter(view.param).grad).double()
    whole.zero_grad()
    torch.testing.assert_close(want[0], G @ probes[0].vector, rtol=1e-4, atol=1e-6 * float(G.abs().max()))
    for x, y in zip(got, want):
        assert float(y.abs().max()) > 0
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12 * float(y.abs().max()))


def _unit(n, g):
    x = torch.randn(n, generator=g, dtype=torch.float64)
    return x / x.norm()


def test_adapters_attach_and_switch_in_place_on_the_offloaded_model(models, tmp_path):
    whole, split, _ = models
    g = torch.Generator().manual_seed(1)
    conditions = [EditCondition("edit", "principal", 3.0, [RankOneEdit(1, "q", _unit(32, g), _unit(32, g), 3.0)]),
                  EditCondition("ctl", "random", 3.0, [RankOneEdit(1, "down", _unit(32, g), _unit(48, g), 3.0),
                                                   RankOneEdit(0, "up", _unit(48, g), _unit(32, g), 3.0)])]
    x = torch.randint(0, 512, (2, 12), generator=g)

    def logits(model, order=("edit", "ctl", "edit")):
        out = {}
        with torch.no_grad():
            for name in order:  # switched back and forth in place
                model.set_adapter(name)
                out[name] = model(input_ids=x).logits
            with model.disable_adapter():
                out["base"] = model(input_ids=x).logits
        return out

    ref_model = attach_conditions(whole, conditions)
    ref = logits(ref_model)
    ref_model.save_pretrained(str(tmp_path / "adapters"))
    ref_model.unload()  # the shared whole model back to plain
    for name in ("edit", "ctl"):  # each adapter changes the output
        assert float((ref[name] - ref["base"]).abs().max()) > 1e-2
    peft_split = attach_conditions(split, conditions)
    lora = [p for n, p in peft_split.named_parameters() if "lora_" in n and "layers.1." in n]
    assert lora and all(p.device.type == "cpu" for p in lora)  # not left on the meta device of their base
    got = logits(peft_split, order=("ctl", "edit", "ctl"))
    peft_split.unload()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-5)
    loaded = load_adapter_folder(split, tmp_path / "adapters", ["edit", "ctl"])  # saved adapters, same model
    got = logits(loaded)
    loaded.unload()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-5)


# --- the command line ---------------------------------------------------------------------------------

FLAGS = ["--device-map", "sequential", "--max-memory", "cpu=3GiB", "--offload-folder", "OFFLOAD", "--dtype", "float64"]


class _Loaded(Exception):
    """Raised by the recording from_pretrained: the command got as far as loading the model."""


def _argv(command: str, pair, tmp_path) -> list[str]:
    """A command line of ``command`` that reaches the model load on the tiny pair."""
    base, post = str(pair / "base"), str(pair / "post")
    if command == "probe":
        return ["probe", "--base", base, "--post", post, "--calib", str(WIKITEXT), "--seq-len", "32",
                "--calib-tokens", "256", "--out", str(tmp_path / "o")]
    if command == "edit":
        return ["edit", "--spec", "edit-example", "--model", base, "--out", str(tmp_path / "o"),
                "--set", "calibration.seq_len=32", "--set", "edit.max_len=32"]
    if command == "eval":
        return ["eval", "--model", base, "--tasks", "rwedit_blimp", "--limit", "2", "--no-direct"]
    if command == "apply":
        folder = tmp_path / "adapter"
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
        return ["apply", str(folder), "--model", base, "--prompt", "The"]
    return ["run", "control-experiment", "--base", base, "--post", post, "--out", str(tmp_path / "o"),
            "--set", "edit.calibration.seq_len=32", "--set", "edit.calibration.tokens=256",
            "--set", "direct.seq_len=32", "--set", "direct.max_len=32", "--quiet"]  # the tiny pair's window: 64


COMMANDS = ("probe", "edit", "eval", "apply", "run")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_model_loading_command_passes_the_placement_to_from_pretrained(command, pair, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = []

    def record(path, *args, **kwargs):
        seen.append(kwargs)
        raise _Loaded

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", record)
    flags = [str(tmp_path / "offload") if f == "OFFLOAD" else f for f in FLAGS]
    main(_argv(command, pair, tmp_path) + flags)
    assert seen, f"rwedit {command} did not reach from_pretrained"
    assert seen[0] == {"dtype": torch.float64, "device_map": "sequential", "max_memory": {"cpu": "3GiB"},
                       "offload_folder": str(tmp_path / "offload")}


def test_an_explicit_json_map_reaches_from_pretrained_as_a_mapping(pair, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda path, *a, **kw: seen.append(kw) or (_ for _ in ()).throw(_Loaded()))
    main(_argv("eval", pair, tmp_path) + ["--device-map", json.dumps(SPLIT), "--offload-folder", str(tmp_path)])
    assert seen[0]["device_map"] == SPLIT and seen[0]["offload_folder"] == str(tmp_path)
    assert "max_memory" not in seen[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of a CPU-only torch")
@pytest.mark.parametrize("command", COMMANDS)
def test_device_cuda_on_a_cpu_only_torch_is_a_clear_refusal(command, pair, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(_argv(command, pair, tmp_path) + ["--device", "cuda"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--device: device 'cuda'" in err and "no usable CUDA" in err and "Traceback" not in err


@pytest.mark.parametrize("flag,value,says", [
    ("--device-map", '{"model.layers.0": "cpu",', "is not valid JSON"),
    ("--device-map", "everywhere", "use auto, balanced, balanced_low_0, sequential, or a JSON map"),
    ("--device-map", '{"lm_head": "gpu"}', "is not a device name"),
    ("--max-memory", "cpu=lots", "max_memory['cpu'] = 'lots' is not a size"),
    ("--max-memory", "cpu:2GiB", "write DEVICE=SIZE pairs"),
    ("--max-memory", '{"cpu": "2GiB"', "is not valid JSON"),
    ("--dtype", "float8", "use one of float32, bfloat16, float16, float64"),
])
def test_a_bad_placement_flag_is_refused_at_parse_time_with_what_to_write(flag, value, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", "m", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and says in err


def test_placements_that_cannot_work_together_are_refused(pair, capsys):
    with pytest.raises(ConfigError, match="give offload_folder"):
        Placement(device_map=SPLIT)
    with pytest.raises(ConfigError, match="max_memory caps a computed device map"):
        Placement(device_map={"": "cpu"}, max_memory={"cpu": "1GiB"})
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no usable CUDA"):
            Placement(device_map={"": 0})
    ckpt = Checkpoint.open(pair / "base")
    with pytest.raises(ConfigError, match="give a device map too"):
        load_model_and_tokenizer(ckpt, placement=Placement(max_memory="cpu=1GiB"))
    # the command line: the map's 'disk' without the folder is one clear line, exit 2
    assert main(["eval", "--model", str(pair / "base"), "--device-map", json.dumps(SPLIT)]) == 2
    assert "give offload_folder (--offload-folder DIR)" in capsys.readouterr().err
    # a recipe's placement: section goes through the same checks
    from rwedit.evals.experiment import Recipe
    from rwedit.recipes import shipped

    path = shipped()["control-experiment"]
    recipe = Recipe.from_yaml(path, sets=['placement.device_map={"": cpu}', "placement.dtype=bfloat16"])
    assert recipe.placement == Placement(device_map={"": "cpu"}, dtype="bfloat16")
    assert "placement" in recipe.config() and "placement" not in Recipe.from_yaml(path).config()  # old hashes kept
    with pytest.raises(ConfigError, match="not valid JSON"):
        Recipe.from_yaml(path, sets=['placement.device_map="{bad"'])


def test_cuda_under_a_per_gpu_launcher_is_the_process_own_gpu(monkeypatch):
    """torchrun / accelerate launch start one process per GPU with LOCAL_RANK: `cuda` is that rank's GPU."""
    from rwedit.models import local_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert local_device("cuda") == "cuda:2" and local_device("cuda:0") == "cuda:0" and local_device("cpu") == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert local_device("cuda") == "cuda:1"
    monkeypatch.delenv("LOCAL_RANK")
    assert local_device("cuda") == "cuda"
