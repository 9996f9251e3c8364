"""The command line answers, its delta table matches a direct computation, and the package keeps its shape:
one registered module per subcommand, each shared option declared once, one error path."""

from __future__ import annotations

import csv
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

import rwedit.cli
from rwedit.architectures import get_weight
from rwedit.cli import COMMAND_MODULES, DESCRIPTION, EPILOG, build_parser, load_commands, main, registry
from rwedit.cli.registry import get_command
from rwedit.errors import RweditError
from tiny_models import tiny_model


def test_help_answers_as_an_installed_console_script():
    out = subprocess.run([sys.executable, "-m", "rwedit", "--help"], capture_output=True, text=True, check=True)
    assert "deltas" in out.stdout and "archs" in out.stdout


def test_archs_lists_every_registered_architecture(capsys):
    assert main(["archs"]) == 0
    out = capsys.readouterr().out
    for name in ("gpt2", "gpt_neox", "llama", "phi3", "gemma2", "qkv_per_head"):
        assert name in out


def test_deltas_csv_matches_direct_norms(tmp_path, capsys):
    base = tiny_model("phi3")
    post = tiny_model("phi3", seed=1)
    base.save_pretrained(tmp_path / "b")
    post.save_pretrained(tmp_path / "p")
    assert main(["deltas", "--base", str(tmp_path / "b"), "--post", str(tmp_path / "p"),
                 "--out", str(tmp_path / "d"), "--quiet"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "d" / "deltas.csv")))
    assert len(rows) == 2 * 7 + 1
    for r in rows:
        layer = int(r["layer"]) if r["layer"] else None
        want = torch.linalg.norm(get_weight(post, layer, r["role"]) - get_weight(base, layer, r["role"]))
        assert abs(float(r["delta_norm"]) - float(want)) < 1e-4 * float(want)


def test_errors_are_one_clear_line_not_a_traceback(tmp_path, capsys):
    assert main(["deltas", "--base", str(tmp_path / "missing"), "--post", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "does not exist" in err and "Traceback" not in err


# --- the command-line package: one module per subcommand over shared options ----------------------

CLI_DIR = Path(rwedit.cli.__file__).parent
SHARED = ("--quiet", "--cache-dir", "--base", "--post", "--allow-pickle", "--device", "--out", "--model",
          "--roles", "--batch-size", "--recipe", "--graded", "--reduced")


def test_top_level_help_keeps_the_description_and_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert DESCRIPTION.splitlines()[0] in out and "rwedit run recipes/control-experiment.yaml" in out
    assert EPILOG in out  # the examples verbatim
    for name in COMMAND_MODULES:
        assert name.replace("_", "-") in out


@pytest.mark.parametrize("name", [m.replace("_", "-") for m in COMMAND_MODULES])
def test_every_subcommand_help_exits_0(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert f"usage: rwedit {name}" in capsys.readouterr().out


def test_command_summaries_are_whole_sentences():
    """`rwedit --help` lists each command with the whole first paragraph of its docstring, never a line cut
    mid-sentence (the tasks summary once ended "...; list the")."""
    for c in load_commands():
        words = c.help.split()
        assert words[-1].lower() not in {"the", "a", "an", "and", "or", "of", "to", "with", "for"}, c.help
        assert c.help.count("(") == c.help.count(")") and not c.help.endswith((",", ";", ":")), c.help
    assert "backends" in get_command("tasks").help


def test_hints_name_the_installed_hub_cli():
    """Messages tell the user to run `hf ...` (the Hub CLI installed with huggingface_hub), not the retired
    `huggingface-cli`."""
    root = CLI_DIR.parent
    hits = [str(p) for folder in ("rwedit", "cli", "probes", "editor", "evals", "apps")
            for p in (root / folder).rglob("*.py") if "huggingface-cli" in p.read_text()]
    assert hits == []


def test_every_subcommand_is_one_registered_module():
    cmds = load_commands()
    assert [c.name for c in cmds] == [m.replace("_", "-") for m in COMMAND_MODULES]
    for c in cmds:
        assert (CLI_DIR / f"{c.name.replace('-', '_')}.py").is_file() and get_command(c.name) is c
    build_parser()  # every command's options together: no clashes


@pytest.mark.parametrize("flag", SHARED)
def test_each_shared_option_is_declared_once_in_options(flag):
    hits = {p.name: p.read_text().count(f'"{flag}"') for p in CLI_DIR.glob("*.py")}
    assert hits["options.py"] >= 1 and sum(hits.values()) == hits["options.py"], hits  # (--model: also --base's alias)


def test_every_flag_has_help_and_a_shared_flag_reads_the_same_in_every_command():
    """One flag vocabulary: walking every subcommand's parser, each option has help text, a flag used by
    several commands has one help text (up to a command's own detail after a colon, parenthesis or semicolon),
    the shared flags exist where the vocabulary says, and --out is a folder everywhere."""
    import argparse
    import re

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps: dict[str, dict[str, str]] = {}  # primary flag -> command -> help core
    aliases: dict[str, set[str]] = {}
    for name, p in sub.choices.items():
        for a in p._actions:
            if a.dest == "help":
                continue
            assert a.help and a.help.strip(), f"rwedit {name}: {a.option_strings or a.dest} has no help"
            if a.option_strings:
                core = re.split(r":| \(|;", a.help)[0].strip()  # a command may add detail after it
                helps.setdefault(a.option_strings[0], {})[name] = core
                for alias in a.option_strings[1:]:
                    aliases.setdefault(alias, set()).add(name)
    for flag, by_command in helps.items():
        assert len(set(by_command.values())) == 1, (flag, by_command)
    pairs = {"deltas", "probe", "svd", "run", "quickstart"}
    assert pairs <= set(helps["--base"]) and pairs <= set(helps["--post"]) and "--base" not in aliases
    assert set(helps["--model"]) >= {"edit", "apply", "eval"}
    assert {"deltas", "probe", "svd", "edit", "run", "eval", "quickstart"} <= set(helps["--out"])
    assert set(helps["--out"].values()) == {"output folder"}
    quiet = {"deltas", "probe", "svd", "edit", "apply", "run", "eval", "organism", "quickstart"}
    assert quiet <= set(helps["--quiet"]) and {"probe", "edit", "eval"} <= set(helps["--device"])
    assert helps["--organism-root"].keys() == {"organism", "quickstart"} == aliases["--root"]
    assert aliases["--model"] == {"run", "plan", "quickstart"}  # the older spelling of --base where a pair is meant


def test_config_help_comes_from_the_config_field_else_the_fallback():
    from rwedit.cli.options import config_help
    from rwedit.config import Config, option

    @dataclass(frozen=True)
    class Demo(Config):
        a: int = option(1, help="the a of 100%")
        b: int = option(2)

    assert config_help(Demo, "a", "fallback") == "the a of 100%%"  # escaped for argparse
    assert config_help(Demo, "b", "fallback") == "fallback"
    assert config_help(Demo, "nope", "fallback") == "fallback"
    assert config_help(dict, "a", "fallback") == "fallback"  # not a Config


def test_an_rwedit_error_is_one_line_exit_2(monkeypatch, capsys):
    def boom(args):
        raise RweditError("the recipe needs `model:` (a local folder or Hub id)")

    monkeypatch.setitem(registry._COMMANDS, "archs", replace(get_command("archs"), run=boom))
    assert main(["archs"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "rwedit archs: error: the recipe needs `model:` (a local folder or Hub id)"
    assert "Traceback" not in err
    with pytest.raises(RweditError):
        main(["--debug", "archs"])


def test_interrupt_is_exit_130(monkeypatch, capsys):
    def stop(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(registry._COMMANDS, "archs", replace(get_command("archs"), run=stop))
    assert main(["archs"]) == 130
    assert "rwedit archs: interrupted" in capsys.readouterr().err


def test_svd_prints_the_returned_table(tmp_path, capsys):
    tiny_model("phi3").save_pretrained(tmp_path / "b")
    tiny_model("phi3", seed=1).save_pretrained(tmp_path / "p")
    assert main(["svd", "--base", str(tmp_path / "b"), "--post", str(tmp_path / "p"), "--r", "4", "--roles", "q,down",
                 "--out", str(tmp_path / "svd"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'svd'}/svd.csv" in out and "scale_mean" in out and "| down |" in out


def test_shipped_recipes_are_listed_and_run_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    from rwedit.evals.core import load_recipe
    from rwedit.recipes import find, shipped

    monkeypatch.chdir(tmp_path)  # no recipes/ folder here
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in ("control-experiment", "svd-structure", "quickstart", "organism", "edit-example"):
        assert name in out
    assert "The causal control experiment of the read/write (RW) hypothesis" in out and "DESIGN" not in out
    kind, recipe = load_recipe("svd-structure")
    assert kind.name == "svd-structure" and recipe.experiment == "svd-structure"
    assert find("control-experiment") == shipped()["control-experiment"]
    assert main(["run", "no-such-recipe"]) == 2
    assert "no shipped recipe of that name" in capsys.readouterr().err
    # a path is a path: one that does not exist is never silently the shipped recipe of the same name
    for path in ("control-experiment.yaml", "../../nowhere/control-experiment", "recipes/control-experiment.yaml"):
        assert main(["run", path, "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err
        assert "file not found" in err and "run as `control-experiment`" in err, err
    assert not (tmp_path / "never").exists()


def test_the_zoo_lists_its_pairs_and_series_with_their_cached_state(tmp_path, monkeypatch, capsys):
    """At least ten documented pairs; an entry whose checkpoints are in the local Hub cache shows as cached
    (a cache laid out in tmp_path), the others not; a zoo pair name runs the quickstart's pair, an unknown one
    is refused with the names."""
    import huggingface_hub

    from rwedit.apps.zoo import load_zoo

    zoo = load_zoo()
    pairs = {n: e for n, e in zoo.items() if e.kind == "pair"}
    assert len(pairs) >= 10 and any(e.kind == "series" for e in zoo.values())
    assert all(e.separates and "huggingface.co/" in e.source for e in zoo.values())
    for repo in ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        folder = tmp_path / f"models--{repo.replace('/', '--')}"
        (folder / "snapshots" / ("d" * 40)).mkdir(parents=True)
        (folder / "snapshots" / ("d" * 40) / "config.json").write_text("{}")
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text("d" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert main(["zoo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("smollm2-135m-instruct") and "[pair, cached]" in line for line in lines)
    assert any(line.startswith("smollm2-360m-instruct") and "[pair, not cached]" in line for line in lines)
    assert main(["quickstart", "--pair", "smollm-135", "--out", str(tmp_path / "q")]) == 2
    assert "did you mean 'smollm2-135m-instruct'" in capsys.readouterr().err
