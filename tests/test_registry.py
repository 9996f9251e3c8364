"""The one registry shape (rwedit.registry): registration order, duplicate refusal, replace, did-you-mean
misses, built-ins first, and plugins loaded once on a miss."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from tiny_models import save_pair

from rwedit import registry as reg
from rwedit.cli import build_parser, main
from rwedit.errors import AlreadyRegisteredError, ConfigError, NotRegisteredError, RweditError
from rwedit.registry import Registry


def test_register_lookup_list_in_order():
    r = Registry("colour")
    assert r.register("red", 1) == 1 and r.register("green", 2) == 2
    assert r["red"] == 1 and list(r) == ["red", "green"] and dict(r) == {"red": 1, "green": 2}
    assert "red" in r and "blue" not in r and r.get("blue") is None and len(r) == 2


def test_a_miss_names_the_closest_and_the_registered():
    r = Registry("colour", hint="Add one with register_colour.")
    r.register("green", 2)
    r.register("red", 1)
    with pytest.raises(NotRegisteredError) as e:
        r["gren"]
    msg = str(e.value)
    assert msg == ("colour 'gren' is not in rwedit's registry (did you mean 'green'?); registered: green, red. "
                   "Add one with register_colour.")
    assert isinstance(e.value, (RweditError, ConfigError, ValueError, KeyError))  # a user error, and a mapping miss
    with pytest.raises(NotRegisteredError, match=r"'zzz' is not in rwedit's registry; registered"):  # none close
        r["zzz"]


def test_duplicates_are_refused_replace_keeps_the_place():
    r = Registry("colour")
    r.register("red", 1)
    r.register("green", 2)
    with pytest.raises(AlreadyRegisteredError, match=r"colour 'red' is already registered .*replace=True"):
        r.register("red", 3)
    assert isinstance(AlreadyRegisteredError("x"), (RweditError, ValueError))
    assert r.register("red", 1) == 1  # the same entry again: a no-op (a module imported twice)
    r.register("red", 3, replace=True)
    assert list(r.items()) == [("red", 3), ("green", 2)]
    r["green"] = 4  # the mapping form of replace
    assert r.unregister("red") == 3 and list(r) == ["green"] and r.pop("green") == 4 and len(r) == 0
    with pytest.raises(NotRegisteredError):
        r.unregister("red")
    with pytest.raises(ConfigError, match="non-empty string name"):
        r.register("", 5)


def test_builtins_come_first_whoever_registers_first():
    calls = []

    def builtins():
        calls.append(1)
        r.register("own", 0)

    r = Registry("kind", builtins=builtins)
    r.register("plugin", 1)
    assert list(r) == ["own", "plugin"] and calls == [1]
    assert r["own"] == 0 and calls == [1]


def _fake_plugins(monkeypatch, name: str, load) -> None:
    """One installed plugin ``name`` (not loaded yet) whose import runs ``load()``."""

    class EntryPoint:
        value = f"{name}_plugin"

        def load(self):
            load()

    EntryPoint.name = name
    monkeypatch.setattr(reg, "_plugins_loaded", False)
    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group: [EntryPoint()] if group == reg.PLUGIN_GROUP else [])


def test_a_miss_loads_the_plugins_once(monkeypatch):
    r = Registry("colour")
    loaded = []
    _fake_plugins(monkeypatch, "mine", lambda: loaded.append(r.register("plugin_colour", 7)))
    assert r["plugin_colour"] == 7 and loaded == [7]
    with pytest.raises(NotRegisteredError):
        r["other"]
    assert loaded == [7]  # once per process


def test_a_broken_plugin_is_named(monkeypatch):
    def broken():
        raise ImportError("no module named broken_plugin")

    _fake_plugins(monkeypatch, "broken", broken)
    with pytest.raises(ConfigError, match=r"rwedit plugin 'broken' \(broken_plugin\) failed to load: "
                                          r"ImportError: no module named broken_plugin"):
        reg.load_plugins()


def test_a_broken_plugin_stops_every_command_with_one_line(monkeypatch, capsys):
    from rwedit.cli import main

    def broken():
        raise ImportError("no module named broken_plugin")

    _fake_plugins(monkeypatch, "broken", broken)
    assert main(["archs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rwedit: error: rwedit plugin 'broken'") and "Traceback" not in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- a plugin seen by every command

HF_CLASSES = '''"""A model family unknown to transformers: registered with its Auto classes on import."""
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM


class PlugConfig(LlamaConfig):
    model_type = "plugllama"


class PlugForCausalLM(LlamaForCausalLM):
    config_class = PlugConfig


AutoConfig.register("plugllama", PlugConfig)
AutoModelForCausalLM.register(PlugConfig, PlugForCausalLM)
'''

PLUGIN = '''"""The rwedit plugin: the family's classes, and its architecture (laid out as llama's)."""
import dataclasses

import plugllama_hf  # noqa: F401

from rwedit.architectures import arch_spec, register_architecture

register_architecture(dataclasses.replace(arch_spec("llama"), name="plugllama", model_types=("plugllama",)))
'''


def _install_plugin(root):
    """``root/hf``: the model family's classes alone; ``root/site``: the plugin and its distribution's metadata
    (the entry point), as pip would install it."""
    (root / "hf").mkdir()
    (root / "hf" / "plugllama_hf.py").write_text(HF_CLASSES)
    info = root / "site" / "rwedit_plugllama-0.1.dist-info"
    info.mkdir(parents=True)
    (root / "site" / "rwedit_plugllama.py").write_text(PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rwedit-plugllama\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{reg.PLUGIN_GROUP}]\nplugllama = rwedit_plugllama\n")


def _rwedit(args, *path):
    """``rwedit ARGS`` in a fresh process with ``path`` first on its PYTHONPATH; the model family's classes are
    imported first (so that transformers knows them with or without the plugin)."""
    path = [*map(str, path), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(path)}
    code = "import sys, plugllama_hf; from rwedit.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def plugin_pair(tmp_path_factory, wiki_tokenizer):
    """A tiny llama pair saved as model_type "plugllama" (and the same pair as llama, the reference)."""
    root = tmp_path_factory.mktemp("plugin")
    save_pair(root / "llama", wiki_tokenizer, max_position_embeddings=256)
    for name in ("base", "post"):
        shutil.copytree(root / "llama" / name, root / "plug" / name)
        cfg = json.loads((root / "plug" / name / "config.json").read_text())
        cfg.update(model_type="plugllama", architectures=["PlugForCausalLM"])
        (root / "plug" / name / "config.json").write_text(json.dumps(cfg))
    _install_plugin(root)
    return root


def _command(name, root, model):
    """One command's line on the pair ``root/model`` (``--out`` aside) and what it writes there."""
    pair = ["--base", root / model / "base", "--post", root / model / "post"]
    spec = {"model": str(root / model / "base"), "alpha": [1.0],
            "edit": {"layers": [1], "role": "q", "v": "random", "b": "given", "b_given": [0.5] * 32},
            "controls": {"random": 1, "lowvar": 0, "write": None}}
    (root / f"{model}.yaml").write_text(yaml.safe_dump(spec))
    return {"deltas": (["deltas", *pair], "deltas.csv"),
            "svd": (["svd", *pair, "--r", "4"], "svd.csv"),
            "probe": (["probe", *pair, "--k", "1,4", "--calib-tokens", "2000", "--seq-len", "64"], "rsf.csv"),
            "edit": (["edit", "--spec", root / f"{model}.yaml"], "adapters")}[name]


def test_a_plugin_architecture_is_seen_by_deltas_probe_svd_and_edit(plugin_pair):
    """Each command run as `rwedit` in a fresh process with the plugin installed (an entry point in the
    rwedit.plugins group) works on the plugin's model_type and writes what this process writes for the same
    pair typed as llama; without the plugin, the same command refuses the model_type."""
    root = plugin_pair
    refused = _rwedit([*_command("deltas", root, "plug")[0], "--out", root / "refused", "--quiet"], root / "hf")
    assert refused.returncode == 2, refused.stderr
    assert "architecture 'plugllama' is not in rwedit's registry" in refused.stderr
    for name in ("deltas", "svd", "probe", "edit"):
        args, written = _command(name, root, "plug")
        done = _rwedit([*args, "--out", root / f"{name}_plug", "--quiet"], root / "site", root / "hf")
        assert done.returncode == 0, (name, done.stderr)
        args, _ = _command(name, root, "llama")
        assert main([*map(str, args), "--out", str(root / f"{name}_llama"), "--quiet"]) == 0
        got, want = (_written(root / f"{name}_{model}" / written) for model in ("plug", "llama"))
        assert got and got == want, name


def _written(path):
    """A table's rows, or each adapter's weight file (its config names its base's folder, which differs)."""
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")  # as written
    return {p.parent.name: p.read_bytes() for p in sorted(path.glob("*/adapter_model.safetensors"))}


def test_every_command_loads_the_plugins_before_its_parser(monkeypatch, capsys):
    """A plugin's subcommand is listed and runs: main loads the plugins before it builds the parser."""
    from rwedit.cli.registry import Command, _COMMANDS

    hello = Command("hello", "say hello", lambda p: p.add_argument("--to"), lambda args: print(f"hello {args.to}") or 0)
    _fake_plugins(monkeypatch, "hello", lambda: _COMMANDS.register("hello", hello))
    monkeypatch.setattr(_COMMANDS, "_entries", dict(_COMMANDS._entries))  # the plugin's command goes with the test
    assert main(["hello", "--to", "plugins"]) == 0 and capsys.readouterr().out == "hello plugins\n"
    assert "say hello" in build_parser([]).format_help()
