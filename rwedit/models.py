"""Loading a model and its tokenizer from a resolved checkpoint folder (no second Hub lookup), whole on one
device or placed across devices (:class:`Placement`: accelerate's device map, memory caps, disk offload)."""

from __future__ import annotations

import difflib
import itertools
import json
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator

from rwedit.lazy import torch

from rwedit.checkpoints import DTYPE_BYTES, Checkpoint, HeaderConfig
from rwedit.config import Config, option
from rwedit.errors import CheckpointError, ConfigError, DeviceError
from rwedit.runtime import count_tokens, release_memory

DTYPES = tuple(DTYPE_BYTES)
#: device-map strategies accelerate computes itself (transformers' ``from_pretrained`` passes them on)
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device(device: str) -> str:
    """``device`` if the installed torch can run on it (``auto`` always can: accelerate places the model);
    otherwise a :class:`DeviceError` saying what this torch offers (cpu is known without importing torch)."""
    if device in ("auto", "cpu"):
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device {device!r} is not a device name; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r}: this torch ({torch.__version__}) has no usable CUDA "
                              f"(CPU-only build or no GPU visible); run on cpu, or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {device!r}: MPS is not available here; run on cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {device!r}: rwedit runs on cpu, cuda or mps (or auto)")
    return device


def _map_device(value, where: str):
    """One target of a device map or memory cap: a GPU ordinal, ``cpu``, ``disk`` or a device this torch
    has; anything else is a :class:`DeviceError` saying what is accepted."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DeviceError(f"{where}: {value!r} is not a device; use a GPU number, cuda:N, cpu or disk")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int):
        check_device(f"cuda:{value}")
        return value
    if value in ("cpu", "disk"):
        return value
    check_device(value)
    return value


def _json_or(text: str, what: str, example: str) -> dict | None:
    """``text`` read as a JSON object when it looks like one (None otherwise); bad JSON is a ConfigError."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{what} {text!r} is not valid JSON ({e}); write e.g. {example}") from None
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{what} {text!r}: expected a non-empty JSON object, e.g. {example}")
    return value


DEVICE_MAP_EXAMPLE = '\'{"model.embed_tokens": "cpu", "model.layers.0": 0, "model.layers.1": "disk", "lm_head": "cpu"}\''
MAX_MEMORY_EXAMPLE = "'0=20GiB,cpu=64GiB' or '{\"0\": \"20GiB\", \"cpu\": \"64GiB\"}'"


def parse_device_map(value) -> str | dict | None:
    """A device map as accelerate takes it: a strategy (``auto``, ``balanced``, ``balanced_low_0``,
    ``sequential``) or a mapping module name -> device (GPU number, ``cuda:N``, ``cpu``, ``disk``), given as a
    dict or as JSON text; None stays None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in DEVICE_MAP_STRATEGIES):
        return value if value is None else value.strip().lower()
    if isinstance(value, str):
        parsed = _json_or(value, "device_map", DEVICE_MAP_EXAMPLE)
        if parsed is None:
            raise ConfigError(f"device_map {value!r}: use {', '.join(DEVICE_MAP_STRATEGIES)}, or a JSON map of module "
                              f"names to devices, e.g. {DEVICE_MAP_EXAMPLE}")
        value = parsed
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"device_map {value!r}: expected a strategy name or a non-empty map of module names to "
                          f"devices, e.g. {DEVICE_MAP_EXAMPLE}")
    return {str(k): _map_device(v, f"device_map[{k!r}]") for k, v in value.items()}


def parse_max_memory(value) -> dict | None:
    """Memory caps per device as accelerate takes them ({0: "20GiB", "cpu": "64GiB"}): from a dict, JSON text
    or ``DEVICE=SIZE,...``; GPU keys become ints, every size must be a number of bytes or read as one
    ("20GiB", "500MB")."""
    if value is None:
        return None
    if isinstance(value, str):
        parsed = _json_or(value, "max_memory", MAX_MEMORY_EXAMPLE)
        if parsed is None:
            parsed = {}
            for part in (x.strip() for x in value.split(",") if x.strip()):
                key, eq, size = part.partition("=")
                if not eq or not key.strip() or not size.strip():
                    raise ConfigError(f"max_memory {value!r}: write DEVICE=SIZE pairs, e.g. {MAX_MEMORY_EXAMPLE}")
                parsed[key.strip()] = size.strip()
        value = parsed
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"max_memory {value!r}: expected a map of devices to sizes, e.g. {MAX_MEMORY_EXAMPLE}")
    from accelerate.utils import convert_file_size_to_int

    out = {}
    for k, size in value.items():
        key = _map_device(k, f"max_memory[{k!r}]")
        try:
            ok = not isinstance(size, bool) and convert_file_size_to_int(size) > 0
        except (ValueError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise ConfigError(f"max_memory[{k!r}] = {size!r} is not a size; write bytes or e.g. 20GiB, 500MB")
        out[key] = size
    return out


@dataclass(frozen=True)
class Placement(Config):
    """Where a model's weights live when it is loaded, passed to ``from_pretrained`` (accelerate) unchanged:
    one definition for the command-line flags and the recipe's ``placement:`` section."""

    device_map: str | dict | None = option(None, help="accelerate device map: auto, balanced, balanced_low_0, "
                                           "sequential, or a JSON map of module names to devices (GPU number, "
                                           "cpu, disk); unset: the whole model on `device` (--device)")
    max_memory: str | dict | None = option(None, help="memory cap per device for a computed device map, e.g. "
                                           "0=20GiB,1=20GiB,cpu=64GiB (or the same as JSON)")
    offload_folder: str | None = option(None, help="folder for weights the device map sends to disk (needed "
                                        "when it holds 'disk'; weights already in safetensors are read in place)")
    dtype: str | None = option(None, help="dtype of the loaded weights: float32, bfloat16, float16, float64 "
                               "(unset: the command's own, float32 unless it says otherwise)")

    def __post_init__(self):
        object.__setattr__(self, "device_map", parse_device_map(self.device_map))
        object.__setattr__(self, "max_memory", parse_max_memory(self.max_memory))
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if isinstance(self.device_map, dict) and "disk" in self.device_map.values() and not self.offload_folder:
            raise ConfigError("device_map sends modules to 'disk': give offload_folder (--offload-folder DIR), "
                              "where accelerate keeps them")
        if self.max_memory is not None and isinstance(self.device_map, dict):
            raise ConfigError("max_memory caps a computed device map (auto, balanced, sequential); an explicit "
                              "map places every module itself: drop one of them")
        folder = self.offload_folder
        if folder is not None and os.path.exists(os.path.expanduser(str(folder))) and not os.path.isdir(
                os.path.expanduser(str(folder))):
            raise ConfigError(f"offload_folder {folder!r} is a file; give a folder (made when missing) where "
                              f"accelerate keeps the weights sent to disk")

    def check(self, device: str, config=None) -> None:
        """What loading the model with this placement on ``device`` would refuse, before any weight is read:
        a device and a device map that both place the model, memory caps or an offload folder without a map,
        and (given the model's ``config``) a device map naming modules the model does not have or leaving
        some of its parameters without a device."""
        if self.dispatched and device not in ("cpu", "auto"):
            raise DeviceError(f"device {device!r} and device_map {self.device_map!r} both say where the model goes: "
                              f"give the devices in the device map (or max_memory) and leave device at cpu")
        if self.device_map is None and device != "auto" and (self.max_memory or self.offload_folder):
            raise ConfigError("max_memory and offload_folder place a model across devices: give a device map too "
                              "(--device-map auto, or a JSON map)")
        if config is None or not isinstance(self.device_map, dict):
            return
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config.transformers() if isinstance(config, HeaderConfig) else config)
        modules = {name for name, _ in model.named_modules()}
        unknown = [k for k in self.device_map if k not in modules]  # "" (the whole model) is the first module
        if unknown:
            near = difflib.get_close_matches(unknown[0], sorted(modules), n=1)
            raise ConfigError(f"device_map names {len(unknown)} module(s) the model does not have: {unknown[0]!r}"
                              f"{f' (did you mean {near[0]!r}?)' if near else ''}; its modules are like "
                              f"{', '.join(sorted(modules - {''})[:4])}")
        left = [] if "" in self.device_map else [n for n, _ in model.named_parameters()
                                                 if not any(n == k or n.startswith(k + ".") for k in self.device_map)]
        if left:
            raise ConfigError(f"device_map gives no device to {len(left)} parameter(s) of the model, e.g. {left[0]!r}: "
                              f"name their modules (or add \"\": DEVICE for everything not named)")

    @property
    def dispatched(self) -> bool:
        """Whether accelerate places the model (a device map is given)."""
        return self.device_map is not None


def context_window(model_or_config) -> int | None:
    """The number of positions a model was built for (None when its config does not say)."""
    config = getattr(model_or_config, "config", model_or_config)
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_window(model_or_config, length: int, setting: str) -> None:
    """Refuse a sequence length past the model's context window (positions it never saw, or an index
    error for learned position embeddings), naming the setting to change."""
    window = context_window(model_or_config)
    if window is not None and length > window:
        raise ConfigError(f"{setting} = {length} tokens is longer than the model's context window of {window} "
                          f"positions; set {setting} to at most {window}")


def local_device(device: str) -> str:
    """``cuda`` under a launcher that starts one process per GPU (torchrun, accelerate launch: ``LOCAL_RANK``)
    is that process's own GPU, ``cuda:LOCAL_RANK`` (modulo the GPUs visible); any other device is unchanged."""
    rank = os.environ.get("LOCAL_RANK")
    if device != "cuda" or rank is None or not rank.isdigit():
        return device
    count = torch.cuda.device_count()
    return f"cuda:{int(rank) % count}" if count > 1 else device


def load_model_and_tokenizer(ckpt: Checkpoint, device: str = "cpu", dtype: str = "float32",
                             placement: Placement | None = None):
    """``(model.eval(), tokenizer)``: the whole model on ``device``, or placed by ``placement`` (its device
    map, memory caps and offload folder go to ``from_pretrained`` unchanged; its dtype, when set, replaces
    ``dtype``). ``device="auto"`` is ``device_map="auto"``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placement = placement or Placement()
    check_device(device)
    device = local_device(device)
    dtype = placement.dtype or dtype
    if dtype not in DTYPES:
        raise DeviceError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    device_map = placement.device_map or ("auto" if device == "auto" else None)
    placement.check(device, ckpt.config)
    try:
        tok = AutoTokenizer.from_pretrained(ckpt.path)
    except Exception as e:
        raise CheckpointError(f"{ckpt.source}: no usable tokenizer in {ckpt.path} ({type(e).__name__}); "
                         f"save one with tokenizer.save_pretrained(folder)") from None
    kwargs = {} if device_map is None else {"device_map": device_map}
    if placement.max_memory is not None:
        kwargs["max_memory"] = placement.max_memory
    if placement.offload_folder is not None:
        kwargs["offload_folder"] = placement.offload_folder
    release_memory()  # what was freed before goes back first: the load is a run's largest allocation
    model = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=getattr(torch, dtype), **kwargs)
    if device_map is None:
        model.to(device)
    check_finite_weights(model, ckpt.source)
    count_tokens(model)  # the forward tokens of a run's stages (rwedit.runtime.recording)
    return model.eval(), tok


def check_finite_weights(model: torch.nn.Module, source: str) -> None:
    """Refuse a model with a NaN/Inf weight (it would be scored, and e.g. an argmax-based task could report
    perfect accuracy), naming the first such parameter."""
    from rwedit.checkpoints import check_finite

    for name, p in named_weights(model):
        check_finite(p.detach(), f"{source}: parameter {name!r}")


# --- a model placed across devices -------------------------------------------------------------------

def execution_device(module: torch.nn.Module) -> torch.device:
    """Where ``module`` computes: its accelerate hook's execution device when it has one (an offloaded
    module's own parameters sit on the meta device), else the device of its first real parameter or buffer."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", (hook,)):  # a SequentialHook holds several
        dev = getattr(h, "execution_device", None)
        if dev is not None:
            return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a model's input ids go: the execution device of its input embedding (the first parameter of a
    dispatched model may be offloaded)."""
    return execution_device(model.get_input_embeddings())


def hooks_pass(model: torch.nn.Module, input_ids: torch.Tensor) -> None:
    """A forward pass run for its hooks on the layers' inputs: the unembedding's logits for the last position
    only, where the model's forward takes ``logits_to_keep`` (all positions' logits at a 152k vocabulary are
    batch × seq × 152k floats, a quarter of the pass's arithmetic). Hooks on the unembedding's own input
    would see that one position: the callers hook layer modules only."""
    keep = {"logits_to_keep": 1} if keeps_logits(model) else {}
    model(input_ids=input_ids.to(input_device(model)), use_cache=False, **keep)


def keeps_logits(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (the logits of the last n positions only)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper passes kwargs on
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def named_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``model.named_parameters()`` (same names, same order) with offloaded weights read from their offload
    store, one module at a time, so a model placed across devices and disk yields the values the whole model
    holds."""
    from accelerate.utils import align_module_device, has_offloaded_params

    names = [n for n, _ in model.named_parameters()]
    for owner, group in itertools.groupby(names, key=lambda n: n.rpartition(".")[0]):
        module = model.get_submodule(owner)
        with align_module_device(module) if has_offloaded_params(module) else nullcontext():
            for name in group:
                yield name, getattr(module, name.rpartition(".")[2])
