"""Checkpoint sources (local folder or Hub id) and a lazy, streaming pair iterator.

Tensors are read one at a time with ``safetensors.safe_open`` (memory-mapped), so a pass over two
checkpoints holds O(largest tensor) in memory, never two models.  Everything that can be checked
from headers (architecture, layer count, every role's shape) is checked before the first heavy step.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterable, Iterator, Mapping

from rwedit.lazy import as_dtype, torch
from safetensors import safe_open

from rwedit.architectures import Layout, RoleView
from rwedit.lowrank import LowRankDelta
from rwedit.runtime import runtime
from rwedit.config import changed_keys
from rwedit.errors import (
    RweditError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ConfigError,
    NonFiniteWeightError,
    OutputExistsError,
)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?(@[\w.\-/]+)?$")


# --- sources ---------------------------------------------------------------------------------


def _hub_snapshot(repo_id: str, revision: str | None, allow_pickle: bool, cache_dir: str | None) -> Path:
    """Download (or find in the local HF cache) the weights and configs of a Hub repository."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"]
    if allow_pickle:
        patterns += [f"*{s}" for s in PICKLE_SUFFIXES]
    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir))
    except Exception as e:  # offline, unknown repo, gated, bad revision: all end here
        raise CheckpointNotFoundError(
            f"could not get Hub checkpoint {where!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n"
            f"It is not in the local Hugging Face cache and the Hub could not be reached (or the id/revision "
            f"is wrong). Download it where the Hub is reachable (`hf download {repo_id}`) and "
            f"pass the local folder instead, e.g. --base /path/to/{repo_id.split('/')[-1]}."
        ) from None


def _tensor_files(path: Path) -> tuple[str, list[Path]]:
    """The weight files of a checkpoint folder and their format ("safetensors" or "pickle")."""
    st = sorted(path.glob("*.safetensors"))
    if st:
        index = path / "model.safetensors.index.json"
        if index.exists():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise CheckpointError(f"{index} is not a safetensors index (JSON with a `weight_map`); "
                                      f"re-download the checkpoint or delete the index") from None
            st = [path / n for n in names]
            absent = [p.name for p in st if not p.exists()]
            if absent:
                raise CheckpointError(f"{path}: the index names shard(s) that are not there: {', '.join(absent[:3])}; "
                                      f"the download is incomplete: download the checkpoint again")
        return "safetensors", st
    pk = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and "optimizer" not in p.name
                and "training_args" not in p.name and "scheduler" not in p.name and "rng_state" not in p.name)
    if pk:
        return "pickle", pk
    raise CheckpointError(
        f"{path} holds no weights: expected *.safetensors (or, with allow_pickle, pytorch_model*.bin)"
    )


#: torch's float dtypes by name and their bytes per element: what a model loads in, what a checkpoint stores
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
#: safetensors' names of them
_STORED_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


class _StoredDtypes(Mapping):
    """safetensors' float dtype names -> torch's dtypes, torch imported at the first lookup."""

    def __getitem__(self, name: str):
        return getattr(torch, _STORED_NAMES[name])

    def __iter__(self):
        return iter(_STORED_NAMES)

    def __len__(self) -> int:
        return len(_STORED_NAMES)


_STORED_DTYPES = _StoredDtypes()
#: the torch names a pickle index records for them
_DTYPE_NAMES = {f"torch.{t}": name for name, t in _STORED_NAMES.items()}


def check_finite(t: torch.Tensor, what: str, note: str = "") -> None:
    """Refuse a weight tensor with NaN/Inf entries, naming it (``what``) and counting them. A sum is NaN/Inf
    when any entry is (or, rarely, when it overflows: then the exact test decides); it costs ~1/30 of an
    elementwise isfinite pass."""
    if t.is_floating_point() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        raise NonFiniteWeightError(
            f"{what} contains {n_nan} NaN and {n_inf} Inf values{note}. rwedit does not probe, edit or score "
            f"non-finite weights: fix or re-export the checkpoint (a training run that diverged, or a failed "
            f"conversion)")


class HeaderConfig(dict):
    """A ``config.json`` read as JSON (importing transformers' config classes costs seconds): its keys as
    attributes. Used when the file states every size rwedit reads of a config for a model type the architecture
    registry knows, and the role tensors have the shapes it implies; anything else is read by transformers."""

    #: the sizes, each under any of its names, that must be stated (not left to a config class's defaults)
    STATED = (("model_type",), ("hidden_size", "n_embd"), ("num_attention_heads", "n_head"),
              ("num_hidden_layers", "n_layer"), ("vocab_size",), ("tie_word_embeddings",),
              ("intermediate_size", "n_inner"), ("max_position_embeddings", "n_positions"))

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict:
        return dict(self)

    def transformers(self):
        """The same config as transformers' class of its model type (for what needs one: building the model)."""
        from transformers import AutoConfig

        d = dict(self)
        return AutoConfig.for_model(d.pop("model_type"), **d)

    @classmethod
    def of(cls, raw: dict) -> "HeaderConfig | None":
        from rwedit.architectures import supported_model_types

        stated = all(any(k in raw for k in names) for names in cls.STATED)
        return cls(raw) if stated and raw["model_type"] in supported_model_types() else None


def _read_config(path: Path, transformers: bool = False):
    """The folder's config (a :class:`HeaderConfig` where it suffices, else transformers' unless ``transformers``
    forces it); a damaged ``config.json`` or an unknown model type is a :class:`CheckpointError` that names the
    folder."""
    try:
        raw = json.loads((path / "config.json").read_text())
    except ValueError as e:
        raise CheckpointError(f"{path / 'config.json'} is not valid JSON ({e}); re-download the checkpoint") from None
    light = None if transformers or not isinstance(raw, dict) else HeaderConfig.of(raw)
    if light is not None:
        return light
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path / 'config.json'}: transformers cannot read it ({first}); is the "
                              f"model_type supported by the installed transformers?") from None


@contextmanager
def _open_safetensors(f: Path, framework: str = "pt"):
    """``safe_open`` of one file; an empty, truncated or corrupt file is a :class:`CheckpointError` naming it.
    ``framework="numpy"`` for its header alone: torch's is imported by safetensors at the open."""
    try:
        h = safe_open(f, framework=framework)
    except Exception as e:  # noqa: BLE001 — SafetensorError and OSError alike
        size = f.stat().st_size if f.exists() else 0
        what = "is empty" if size == 0 else f"is not a readable safetensors file ({size} bytes; {e})"
        raise CheckpointError(f"{f} {what}: the download or copy was cut short or the file is corrupt; "
                              f"download or copy it again") from None
    with h:
        yield h


def _load_pickle(f: Path) -> dict:
    """A pickle weight file with ``weights_only=True`` (no code runs); anything else is refused, named."""
    import pickle

    try:
        return torch.load(f, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{f}: torch refused to unpickle it with weights_only=True ({str(e).splitlines()[0]}); "
                              f"it holds more than tensors. Convert it to safetensors where you trust it "
                              f"(model.save_pretrained(folder, safe_serialization=True))") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{f} cannot be read as a torch weight file ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                              f"it is damaged or truncated: download or copy it again") from None


_SNAPSHOT = re.compile(r"models--(?P<repo>[^/]+?)/snapshots/(?P<commit>[0-9a-f]{40})/?$")


def hub_origin(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(org/name, commit)`` when ``path`` is a snapshot folder of the Hugging Face cache
    (``…/models--org--name/snapshots/<commit>``), i.e. the model came from the Hub; None for other paths."""
    m = _SNAPSHOT.search(str(path).replace(os.sep, "/"))
    return (m["repo"].replace("--", "/", 1), m["commit"]) if m else None


@dataclass
class Checkpoint:
    """One model checkpoint on disk: its config, layout and a lazy index of its tensors."""

    #: as a post: its delta is its own stored tensors minus the base's (see :mod:`rwedit.stream`)
    delta_form: ClassVar[str] = "stored"
    source: str
    path: Path
    config: object
    layout: Layout
    format: str
    files: list[Path]
    _where: dict[str, Path] = field(default_factory=dict, repr=False)
    _shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    _dtypes: dict[str, str] = field(default_factory=dict, repr=False)
    _offsets: dict[str, int] = field(default_factory=dict, repr=False)
    _json: dict[str, object] = field(default_factory=dict, repr=False)

    @classmethod
    def open(
        cls,
        source: str | os.PathLike,
        revision: str | None = None,
        allow_pickle: bool | None = None,
        cache_dir: str | None = None,
    ) -> "Checkpoint":
        """Resolve a local folder or Hub id (``org/name`` or ``org/name@revision``) to a checkpoint.

        Pickle weights (``*.bin``) can execute code when loaded and are refused unless
        ``allow_pickle=True`` (None: the run-wide setting of :mod:`rwedit.runtime`, default no).
        """
        allow_pickle = runtime().allow_pickle if allow_pickle is None else allow_pickle
        src = str(source)
        path = Path(src).expanduser()
        if path.is_dir():
            pass
        elif path.exists():
            raise CheckpointError(f"{src} is a file; give the checkpoint folder that holds config.json")
        elif _HUB_ID.match(src) and not src.startswith((".", "/", "~")) and Path(src.split("/")[0]).is_dir():
            # `pair/bse` where ./pair is a folder: a mistyped local path, not a Hub id
            parent = Path(src.split("@")[0]).parent
            near = difflib.get_close_matches(Path(src).name, [p.name for p in parent.iterdir() if p.is_dir()], n=1)
            hint = f" (did you mean {str(parent / near[0])!r}?)" if near else ""
            raise CheckpointNotFoundError(
                f"checkpoint folder {src!r} does not exist{hint}; ./{src.split('/')[0]} is a local folder, so this "
                f"is read as a local path. For the Hub repository of that name, run from another directory")
        elif _HUB_ID.match(src) and not src.startswith((".", "/", "~")):
            repo_id, _, rev = src.partition("@")
            path = _hub_snapshot(repo_id, revision or rev or None, allow_pickle, cache_dir)
        else:
            raise CheckpointNotFoundError(f"checkpoint folder {src!r} does not exist")
        if not (path / "config.json").exists():
            hint = (" It holds adapter_config.json: it is a PEFT adapter, not a model; give the base model "
                    "(adapters are applied by `rwedit apply` and `rwedit eval`, and probed as `--post` of their base)"
                    if (path / "adapter_config.json").exists() else " Is it a Hugging Face model folder?")
            raise CheckpointError(f"{path} has no config.json.{hint}")
        config = _read_config(path)
        layout = Layout.from_config(config)
        fmt, files = _tensor_files(path)
        if fmt == "pickle" and not allow_pickle:
            raise CheckpointError(
                f"{src} has only pickle weights ({files[0].name}): loading them can execute arbitrary code. "
                f"Convert them to safetensors (model.save_pretrained(folder) writes them), or, if you trust "
                f"the source, pass --allow-pickle (Python: allow_pickle=True)."
            )
        ckpt = cls(src, path, config, layout, fmt, files)
        ckpt._index()
        if isinstance(config, HeaderConfig) and not ckpt._fits():  # a size its config class derives: ask it
            ckpt.config = _read_config(path, transformers=True)
            ckpt.layout = Layout.from_config(ckpt.config)
        return ckpt

    def _fits(self) -> bool:
        """Whether every role tensor is stored with the shape the layout implies."""
        try:
            for view in self.layout.views():
                view.check_stored(self.shape(view.param))
        except RweditError:
            return False
        return True

    def _index(self) -> None:
        for f in self.files:
            if self.format == "safetensors":
                with _open_safetensors(f, "numpy") as h:
                    for k in h.keys():
                        sl = h.get_slice(k)
                        self._where[k], self._shapes[k], self._dtypes[k] = f, tuple(sl.get_shape()), sl.get_dtype()
            else:
                sd = _load_pickle(f)
                for k, t in sd.items():
                    self._where[k], self._shapes[k], self._dtypes[k] = f, tuple(t.shape), str(t.dtype)
                del sd

    def data_offset(self, name: str) -> int:
        """Byte offset of a stored tensor's data in its safetensors file, from the file's header (which
        :meth:`_index` already checked): positioned reads of row blocks start there."""
        if name not in self._offsets:
            f = self._where[name]
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
            self._offsets.update({k: 8 + n + v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"})
        return self._offsets[name]

    def dtype(self, param: str) -> str:
        """The stored dtype of a model parameter's tensor (``F32``, ``BF16`` ... for safetensors)."""
        stored = self._dtypes[self.find(param)]
        return _DTYPE_NAMES.get(stored, stored)

    def tokenizer_file(self, name: str):
        """A tokenizer JSON file of the folder, parsed once (a tokenizer.json is megabytes)."""
        if name not in self._json:
            self._json[name] = json.loads((self.path / name).read_text())
        return self._json[name]

    def tokenizer_vocab(self) -> dict[str, int] | None:
        """The token → id map of the checkpoint's tokenizer files (None when it ships none that can be read
        without loading the tokenizer): ``tokenizer.json``'s model vocab, else ``vocab.json``."""
        for name, get in (("tokenizer.json", lambda d: d.get("model", {}).get("vocab")), ("vocab.json", lambda d: d)):
            f = self.path / name
            if f.exists():
                try:
                    vocab = get(self.tokenizer_file(name))
                except (ValueError, AttributeError):
                    raise CheckpointError(f"{f} is not valid JSON; the tokenizer files are damaged") from None
                if isinstance(vocab, dict):
                    return vocab
                if isinstance(vocab, list):  # unigram models: [[piece, score], ...]
                    return {str(p[0]): i for i, p in enumerate(vocab)}
        return None

    @property
    def model_type(self) -> str:
        return self.config.model_type

    def keys(self) -> list[str]:
        return list(self._where)

    def find(self, param: str) -> str:
        """The on-disk name of a model parameter (handles dropped base prefixes and renamed modules)."""
        for name in self.layout.checkpoint_names(param):
            if name in self._where:
                return name
        raise CheckpointError(
            f"{self.source}: tensor {param!r} not found (looked for {self.layout.checkpoint_names(param)}); "
            f"the checkpoint does not match its config's architecture {self.model_type!r}"
        )

    def shape(self, param: str) -> tuple[int, ...]:
        return self._shapes[self.find(param)]

    def element_counts(self) -> list[int]:
        """The number of elements of each stored tensor, from the file headers (nothing is read)."""
        return [math.prod(shape) for shape in self._shapes.values()]

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


class TensorReader:
    """Reads tensors of one checkpoint lazily, one at a time (memory O(one tensor), not O(checkpoint))."""

    def __init__(self, ckpt: Checkpoint, check_finite: bool = True):
        self.ckpt, self.check_finite = ckpt, check_finite
        self._pickle: tuple[Path, dict] | None = None
        self._last: tuple[tuple[str, torch.dtype | None], torch.Tensor] | None = None

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc) -> None:
        self._pickle = self._last = None

    def matrix(self, view: RoleView, dtype: torch.dtype | str | None = "float32") -> torch.Tensor:
        """A role's ``W`` (d_out x d_in) from its stored tensor. The last stored tensor read is kept, so
        the roles of one fused tensor read it once; the one before is dropped first (O(one tensor))."""
        key = (view.param, dtype)
        if self._last is None or self._last[0] != key:
            self._last = None
            self._last = (key, self.read(view.param, dtype))
        return view.extract(self._last[1])

    def read(self, param: str, dtype: torch.dtype | str | None = "float32") -> torch.Tensor:
        """One tensor, converted to ``dtype`` (``None`` keeps the stored dtype)."""
        dtype = as_dtype(dtype)
        name = self.ckpt.find(param)
        f = self.ckpt._where[name]
        if self.ckpt.format == "safetensors":
            # open per tensor: a handle kept open keeps every page it touched mapped, so a pass over a
            # 4 GB pair would end with 4 GB of file-backed RSS; reopening costs one header parse
            with _open_safetensors(f) as h:
                try:
                    t = h.get_tensor(name)
                except Exception as e:  # noqa: BLE001 — a damaged file; say which
                    raise CheckpointError(f"{f}: tensor {name!r} cannot be read ({e}); the file is damaged or "
                                          f"truncated: download or copy it again") from None
        else:
            if self._pickle is None or self._pickle[0] != f:
                self._pickle = (f, _load_pickle(f))
            t = self._pickle[1][name]
        if dtype is not None and t.dtype != dtype:
            t = t.to(dtype)
        if self.check_finite:
            check_finite(t, f"{self.ckpt.source}: tensor {name!r}", f" (after conversion to {dtype})")
        return t


# --- pairs -----------------------------------------------------------------------------------


class RolePair:
    """One role of one layer in both checkpoints, as ``d_out x d_in`` matrices. With an adapter post the
    delta is known exactly in factor form (``low_rank``) and ``post`` is formed only when asked for."""

    def __init__(self, layer: int | None, role: str, base: torch.Tensor, post: torch.Tensor | None, view: RoleView,
                 low_rank: LowRankDelta | None = None):
        self.layer, self.role, self.base, self.view, self.low_rank = layer, role, base, view, low_rank
        self._post = post

    @property
    def delta(self) -> torch.Tensor:
        """ΔW = post − base as a dense matrix (the exact product of the factors for an adapter post)."""
        if self.low_rank is not None:
            return self.low_rank.dense(self.base.dtype)
        return self._post - self.base

    @property
    def post(self) -> torch.Tensor:
        if self._post is None:
            self._post = self.base + self.delta
        return self._post


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<which>lora_A|lora_B)(?:\.[^.]+)?\.weight$")


def _pattern_value(patterns: dict | None, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the end of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _regex(path: Path, key: str, pattern) -> None:
    """A pattern of adapter_config.json that PEFT compiles: a string that is a regular expression."""
    try:
        re.compile(pattern)
    except (re.error, TypeError) as e:
        raise CheckpointError(f"{path}/adapter_config.json: {key} {pattern!r} is not a regular expression ({e}); "
                              f"PEFT could not match it either: fix it or re-save the adapter") from None


def _check_lora_numbers(path: Path, config: dict) -> None:
    """``r``, ``lora_alpha`` and their per-module patterns: positive integers and finite positive numbers
    (PEFT refuses r <= 0 but not a NaN, zero or negative alpha, which scales every delta by it)."""
    for key, default, integer in (("r", 8, True), ("lora_alpha", 8, False)):
        pat = "rank_pattern" if key == "r" else "alpha_pattern"
        if not isinstance(config.get(pat) or {}, dict):
            raise CheckpointError(f"{path}/adapter_config.json: {pat} is {config[pat]!r}, not a mapping of module "
                                  f"patterns to values")
        for name, v in [(key, config.get(key, default))] + [(f"{pat}[{k!r}]", v) for k, v in (config.get(pat) or {}).items()]:
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not (number and math.isfinite(v) and v > 0 and (not integer or float(v).is_integer())):
                raise CheckpointError(
                    f"{path}/adapter_config.json: {name} = {v!r}; it must be a positive "
                    f"{'integer (the rank of the factors)' if integer else 'finite number (the delta is alpha/r·B·A)'}"
                    f": fix adapter_config.json or re-save the adapter")
        for k in config.get(pat) or {}:
            _regex(path, f"{pat} key", k)


def peft_targets(config: dict, module: str) -> bool:
    """Whether PEFT puts a LoRA on ``module`` (a module name of the model) under ``config``'s target_modules,
    exclude_modules and layers_to_transform / layers_pattern: :func:`peft.tuners.tuners_utils.
    check_target_module_exists` of peft 0.21, written out here so that opening a post needs no PEFT import."""
    ex = config.get("exclude_modules")
    if ex and (re.fullmatch(ex, module) if isinstance(ex, str) else
               module in ex or any(module.endswith(f".{e}") for e in ex)):
        return False
    targets = config.get("target_modules")
    if isinstance(targets, str):
        return targets == "all-linear" or re.fullmatch(targets, module) is not None
    if not targets:
        return False
    if module in targets:
        return True
    if not any(module.endswith(f".{t}") for t in targets):
        return False
    layers = config.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    patterns = config.get("layers_pattern") or []
    patterns = [patterns] if isinstance(patterns, str) else patterns
    found = (re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module) if not patterns else
             next((m for p in patterns if (m := re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", module))), None))
    if found is None:
        return False
    return int(found["idx"]) == layers if isinstance(layers, int) else int(found["idx"]) in layers


def _check_lora_targets(path: Path, config: dict, held: set[str], modules: Iterable[str], source: str) -> None:
    """The modules the adapter holds factors for are the role modules its config targets, as PEFT's loader sees
    them: a held module the config does not target is dropped by PEFT (its tensors become unexpected keys), a
    targeted module without factors gets a fresh LoRA (missing keys, PEFT #2118) — either way the model PEFT
    builds is not the delta read from the file."""
    targets = config.get("target_modules")
    if targets is None:
        raise CheckpointError(f"{path}/adapter_config.json has no target_modules; PEFT cannot tell which modules "
                              f"the factors belong to: re-save the adapter with save_pretrained")
    if isinstance(targets, str):
        _regex(path, "target_modules", targets)
    elif not (isinstance(targets, (list, tuple)) and all(isinstance(t, str) for t in targets)):
        raise CheckpointError(f"{path}/adapter_config.json: target_modules {targets!r} is neither a regular "
                              f"expression nor a list of module names")
    if isinstance(config.get("exclude_modules"), str):
        _regex(path, "exclude_modules", config["exclude_modules"])
    untargeted = sorted(m for m in held if not peft_targets(config, m))
    if untargeted:
        raise CheckpointError(
            f"{path}: the adapter holds factors for {len(untargeted)} module(s) its target_modules "
            f"{targets!r} do not name (e.g. {untargeted[0]!r}): PEFT would load the adapter without them, so its "
            f"model is not this file's delta. Fix target_modules in adapter_config.json or re-save the adapter")
    missing = sorted(m for m in modules if m not in held and peft_targets(config, m))
    if missing and targets != "all-linear":  # PEFT expands all-linear itself, the output layer left out
        raise CheckpointError(
            f"{path}: target_modules {targets!r} name {len(missing)} module(s) of {source} the adapter holds no "
            f"factors for (e.g. {missing[0]!r}): PEFT would give them a fresh LoRA of its own (a missing key), so "
            f"its model is not this file's delta. The adapter file is incomplete, or target_modules is wrong: "
            f"re-save the adapter")


@dataclass
class LoraPost:
    """A PEFT LoRA adapter as the post side of a pair: post = base + scale·B·A on each targeted module,
    computed per module from the adapter file — the merged model is never formed. Roles the adapter does not
    target have an exact zero delta. GPT-2's ``Conv1D`` (``fan_in_fan_out``) and fused modules (qkv_proj,
    c_attn, gate_up_proj) map to roles through the registry's views, as the base's own tensors do."""

    source: str
    path: Path
    base: Checkpoint
    config: dict
    #: module name -> (A: r × in, B: out × r, scale), float64
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    #: its delta is known in factor form, per role (:meth:`role_delta`); nothing of a post checkpoint is read
    delta_form: ClassVar[str] = "factored"

    @property
    def layout(self) -> Layout:
        return self.base.layout

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.glob("adapter_model.*"))

    @classmethod
    def open(cls, folder: str | os.PathLike, base: Checkpoint, allow_pickle: bool | None = None) -> "LoraPost":
        """Read ``folder``'s adapter_config.json and weights, refusing what is not a plain LoRA delta."""
        path = Path(folder)
        try:
            config = json.loads((path / "adapter_config.json").read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}/adapter_config.json cannot be read ({e})") from None
        kind = str(config.get("peft_type", "")).upper()
        if kind != "LORA":
            raise CheckpointError(f"{path} is a PEFT {kind or 'unknown'} adapter; as the post side rwedit takes LoRA "
                                  f"adapters (ΔW = scale·B·A). Merge it into the base (PeftModel.merge_and_unload) "
                                  f"and save the merged model, then compare with that")
        if config.get("use_dora"):
            raise CheckpointError(f"{path} is a DoRA adapter: its magnitude vector rescales whole columns of W + ΔW, "
                                  f"so its delta is not B·A. Merge it (PeftModel.merge_and_unload), save the merged "
                                  f"model and give that as --post")
        st, pt = path / "adapter_model.safetensors", path / "adapter_model.bin"
        if st.exists():
            with _open_safetensors(st) as h:
                weights = {k: h.get_tensor(k) for k in h.keys()}
        elif pt.exists():
            allow = runtime().allow_pickle if allow_pickle is None else allow_pickle
            if not allow:
                raise CheckpointError(f"{pt}: pickle weights can execute code when loaded; convert the adapter to "
                                      f"safetensors or pass --allow-pickle if you trust it")
            weights = _load_pickle(pt)
        else:
            raise CheckpointError(f"{path} holds adapter_config.json but no adapter_model.safetensors")
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in weights.items():
            if key.endswith(".base_layer.weight"):  # a copy of the base's own weight (PEFT saves it for tied ones)
                continue
            m = _LORA_KEY.match(key)
            if m is None:
                what = ("embedding LoRA" if "lora_embedding" in key else
                        "modules_to_save (whole replaced tensors)" if "modules_to_save" in key else "a tensor")
                raise CheckpointError(f"{path}: {key!r} is {what}, not a lora_A/lora_B factor; rwedit reads plain "
                                      f"LoRA adapters as the post side. Merge it (PeftModel.merge_and_unload), save the "
                                      f"merged model and give that as --post")
            check_finite(t, f"{path}: tensor {key!r}")
            parts.setdefault(m["module"], {})[m["which"]] = t.to(torch.float64)
        _check_lora_numbers(path, config)
        modules = {v.module: v for v in base.layout.views(None)}
        unknown = sorted(set(parts) - set(modules))
        if unknown:
            raise CheckpointError(f"{path}: the adapter targets {unknown[0]!r}, which is no role module of {base.source} "
                                  f"({base.layout.spec.name}); its role modules are like {next(iter(modules))!r}. Is "
                                  f"it an adapter of another model?")
        factors = {}
        alpha0, r0 = config.get("lora_alpha", 8), config.get("r", 8)
        for module, ab in parts.items():
            if set(ab) != {"lora_A", "lora_B"}:
                raise CheckpointError(f"{path}: module {module!r} has only {', '.join(ab)}; the adapter file is incomplete")
            A, B = ab["lora_A"], ab["lora_B"]
            view = modules[module]
            stored = base.shape(view.param)
            out_in = (stored[1], stored[0]) if view.transposed else tuple(stored)
            if A.shape[0] != B.shape[1] or (B.shape[0], A.shape[1]) != out_in:
                raise CheckpointError(f"{path}: LoRA factors of {module!r} give a {B.shape[0]}x{A.shape[1]} delta "
                                      f"(rank {A.shape[0]}), but {base.source} has a {out_in[0]}x{out_in[1]} weight "
                                      f"there: it is an adapter of another model")
            r = _pattern_value(config.get("rank_pattern"), module, r0)
            if A.shape[0] != r:
                raise CheckpointError(
                    f"{path}: adapter_config.json gives {module!r} rank r = {r}, but its factors have rank "
                    f"{A.shape[0]}: alpha/r would make every delta {A.shape[0] / r:g}x its size (PEFT refuses to load it: "
                    f"a size mismatch). Fix r (or rank_pattern) in adapter_config.json, or re-save the adapter")
            alpha = _pattern_value(config.get("alpha_pattern"), module, alpha0)
            factors[module] = (A, B, alpha / (math.sqrt(r) if config.get("use_rslora") else r))
        if not parts:
            raise CheckpointError(f"{path}: the adapter file holds no LoRA factors: the adapter is empty")
        _check_lora_targets(path, config, set(parts), modules, base.source)
        return cls(str(folder), path, base, config, factors)

    @property
    def zero(self) -> bool:
        """The delta is exactly zero: every module has an all-zero factor (PEFT's initial lora_B = 0)."""
        return all(not A.any() or not B.any() for A, B, _ in self.factors.values())

    def role_delta(self, view: RoleView) -> LowRankDelta | None:
        """The exact ΔW (d_out × d_in) of one role in factor form, or None where the adapter leaves it
        untouched: the module's forward map is scale·B·A (out × in, whatever the storage layout — Conv1D too),
        and a fused module's role is its rows of B."""
        f = self.factors.get(view.module)
        if f is None:
            return None
        A, B, scale = f
        U = scale * (B if view.rows is None else B.index_select(0, view.rows.to(B.device)))
        return LowRankDelta(U, A.T.contiguous())


def fingerprint(files: Iterable[Path]) -> str:
    """sha256 over each weight file's name, size and three 64 KiB samples (start, middle, end): cheap for a
    70B checkpoint and changed by any re-save (16 hex digits)."""
    h = hashlib.sha256()
    for f in sorted(files):
        if not f.exists():
            continue
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            for at in (0, max(0, size // 2 - 32768), max(0, size - 65536)):
                fh.seek(at)
                h.update(fh.read(65536))
    return h.hexdigest()[:16]


def source_info(src: "Checkpoint | LoraPost") -> dict:
    """What a result records of one source so that its numbers trace to exact weights: the reference as
    given, the resolved Hub commit (a model from the Hub cache) or a content fingerprint of the local
    files (sha256 over each weight file's size and three 64 KiB samples — start, middle, end: cheap for a
    70B checkpoint, and changed by any re-save), and for an adapter post its kind, ranks and module count."""
    files = [src.path / "adapter_model.safetensors"] if isinstance(src, LoraPost) else list(src.files)
    origin = hub_origin(src.path)
    out = {"ref": src.source, "path": str(src.path), "commit": origin[1] if origin else None,
           "hub_id": origin[0] if origin else None, "fingerprint": fingerprint(files)}
    if isinstance(src, LoraPost):
        out.update(kind="lora adapter over the base", rank=sorted({int(a.shape[0]) for a, _, _ in src.factors.values()}),
                   modules=len(src.factors))
    return out


def open_post(ref: str | os.PathLike | Checkpoint | LoraPost, base: Checkpoint,
              allow_pickle: bool | None = None) -> Checkpoint | LoraPost:
    """The post side of a pair: a checkpoint (folder or Hub id), or a LoRA adapter folder (one holding
    ``adapter_config.json``: base + that adapter)."""
    if isinstance(ref, (Checkpoint, LoraPost)):
        return ref
    path = Path(str(ref)).expanduser()
    if path.is_dir() and (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        return LoraPost.open(path, base, allow_pickle)
    return Checkpoint.open(ref, allow_pickle=allow_pickle)


# --- the posts of a probe: checked as a set before any is probed --------------------------------------------


def _source_key(ref: str) -> str:
    """What a reference denotes: a local folder's real path, else the Hub id (with revision) as given."""
    path = Path(str(ref)).expanduser()
    return os.path.realpath(path) if path.exists() else str(ref).rstrip("/")


def zero_delta(post: "Checkpoint | LoraPost", base: Checkpoint) -> str | None:
    """Why ``post``'s delta against ``base`` is exactly zero in every role (None when it is not): the base's own
    folder, role tensors equal to the base's bit for bit (read until the first that differs: one tensor for
    a fine-tune), or an adapter whose factors are all zero."""
    if isinstance(post, LoraPost):
        return "its LoRA factors are zero (lora_B = 0: an adapter saved before training?)" if post.zero else None
    if os.path.realpath(post.path) == os.path.realpath(base.path):
        return "it is the base's own folder"
    for param in dict.fromkeys(v.param for v in base.layout.views()):
        if not _same_stored(base, post, param):
            return None
    return "every role tensor equals the base's, bit for bit"


def _same_stored(a: Checkpoint, b: Checkpoint, param: str, block: int = 1 << 20) -> bool:
    """``param`` is stored with the same shape, dtype and bytes in both checkpoints: safetensors data compared in
    1 MiB blocks up to the first difference (a fine-tune differs in its first block), else both tensors read."""
    na, nb = a.find(param), b.find(param)
    if a._shapes[na] != b._shapes[nb] or a._dtypes[na] != b._dtypes[nb]:
        return False
    size = stored_itemsize(a._dtypes[na])
    if a.format != "safetensors" or b.format != "safetensors" or size is None:
        with TensorReader(a, False) as ra, TensorReader(b, False) as rb:
            return torch.equal(ra.read(param, None), rb.read(param, None))
    left = math.prod(a._shapes[na]) * size
    with open(a._where[na], "rb") as fa, open(b._where[nb], "rb") as fb:
        fa.seek(a.data_offset(na))
        fb.seek(b.data_offset(nb))
        while left > 0:
            n = min(block, left)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


def _step(ref: str) -> int | None:
    """The step a series member's name or revision ends in (``checkpoint-300``, ``org/run@step-300``)."""
    m = re.search(r"(\d+)$", str(ref).rstrip("/"))
    return int(m.group(1)) if m else None


def _check_series(spec, members: list) -> None:
    """A series is ordered by steps that mean something: a folder's model at its root is not beside its
    ``checkpoint-N`` folders, every member has a step (or none has: a list's own order), no step twice."""
    path = Path(str(spec)) if isinstance(spec, (str, os.PathLike)) else None
    if path is not None and path.is_dir():
        inner = sorted(p.name for p in path.iterdir() if (p / "config.json").exists() or (p / "adapter_config.json").exists())
        at_root = (path / "config.json").exists() or (path / "adapter_config.json").exists()
        if at_root and inner:
            raise ConfigError(
                f"--series {spec}: the folder holds a model at its root (the final one?) beside {len(inner)} checkpoint "
                f"folder(s) ({', '.join(inner[:3])}{', …' if len(inner) > 3 else ''}); read as one folder it would be "
                f"probed as a single member. Give the members as a list (comma list or YAML file), each with its "
                f"step as the trailing number of its name (the root model too: e.g. a link final-STEP to {path}, "
                f"made outside it), or leave the root model out")
        if not at_root:
            stepless = [n for n in inner if _step(n) is None]
            if stepless:
                raise ConfigError(f"--series {spec}: member folder(s) {', '.join(stepless[:3])} have no step (a "
                                  f"trailing number, as in checkpoint-300), so their place in the series is unknown; "
                                  f"rename them, or give the members as a list in the order you mean")
    refs = [ref for _, ref, _ in members]
    stepless = [r for r in refs if _step(r) is None]
    if stepless and len(stepless) < len(refs):
        raise ConfigError(f"--series: {', '.join(stepless[:3])} {'has' if len(stepless) == 1 else 'have'} no step (a "
                          f"trailing number in the name or revision) while the other members have one: the order "
                          f"cannot be known. Give every member a step, or none (then the list's order is the order)")
    steps: dict[int, str] = {}
    for _, ref, step in members:
        if step in steps and not stepless:
            raise ConfigError(f"--series: {steps[step]!r} and {ref!r} are both at step {step}; a series has one "
                              f"member per step")
        steps[step] = ref


def _like(then, now):
    """``then`` with only the keys ``now`` has (a member's meta.json adds its own findings to its settings)."""
    return {k: then.get(k) for k in now} if isinstance(then, dict) and isinstance(now, dict) else then


def _check_rerun(out: Path, members: list, base: Checkpoint, settings: dict) -> None:
    """A series resumed into ``out`` reuses the members probed there only when they were probed with these
    settings against this base; otherwise it is refused, naming the changed keys."""
    now = {"settings": settings, "base": fingerprint(base.files)}
    for name, ref, _ in members:
        meta_path = out / "members" / name / "meta.json"
        if not meta_path.exists():
            continue
        try:
            meta = json.loads(meta_path.read_text())
            then = {"settings": {k: _like(meta.get(k), v) for k, v in settings.items()},
                    "base": meta["sources"]["base"]["fingerprint"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise OutputExistsError(f"{meta_path} cannot be read ({type(e).__name__}: {e}); delete that member's "
                                    f"folder to probe it again") from None
        changed = changed_keys(then, now)
        if changed:
            raise OutputExistsError(
                f"{out} holds series members probed with other settings or another base (member {name!r}; changed: "
                f"{', '.join(k.removeprefix('settings.') for k in changed[:8])}); members of two probes must not mix "
                f"in one series: use another --out, or delete {out} to start over")


def check_members(members: list[tuple[str, str, int | None]], base: Checkpoint, request=None) -> list:
    """The posts (or series members) of a probe, checked as a set before the first is probed, and returned
    unchanged: no source twice; a series' steps (:func:`_check_series`); a post whose delta is exactly zero
    refused when the RSF grid is on (every cell would be 0/0); a series resumed into its folder only with
    its settings and base (:func:`_check_rerun`). ``request``: the probe's settings (its ``series``, ``out``,
    ``grid``, ``calibration``, ``svd``, ``norms``)."""
    series = getattr(request, "series", None)
    what = "series member" if series else "post"
    seen: dict[str, str] = {}
    for _, ref, _ in members:
        key = _source_key(ref)
        if key in seen:
            same = "" if str(seen[key]) == str(ref) else f" as {seen[key]!r}"
            raise ConfigError(f"{ref!r} is given twice{same} ({key}): each {what} once, or its rows would be "
                              f"counted twice")
        seen[key] = ref
    if series:
        _check_series(series, members)
        if getattr(request, "out", None):
            from dataclasses import asdict, is_dataclass

            settings = {k: asdict(v) if is_dataclass(v) else v for k in ("grid", "calibration", "svd", "norms")
                        for v in [getattr(request, k, None)]}
            _check_rerun(Path(request.out), members, base, settings)
    elif getattr(request, "grid", None) is not None:
        for name, ref, _ in members:
            why = zero_delta(open_post(ref, base), base)
            if why:
                raise CheckpointMismatchError(
                    f"post {ref!r} against base {base.source!r}: the delta is exactly zero ({why}), so the RSF "
                    f"grid (a share of ||ΔW||²) is 0/0 in every cell. Give the post-trained checkpoint; `rwedit "
                    f"deltas` and `rwedit svd` report such a pair as unchanged")
    return members


class CheckpointPair:
    """Two checkpoints of one architecture, walked role by role and layer by layer."""

    def __init__(self, base: Checkpoint | str, post: Checkpoint | LoraPost | str, allow_pickle: bool | None = None,
                 allow_dtype_mismatch: bool = False):
        self.base = base if isinstance(base, Checkpoint) else Checkpoint.open(base, allow_pickle=allow_pickle)
        self.post = open_post(post, self.base, allow_pickle)  # a checkpoint, or a LoRA adapter over the base
        self.layout = self.base.layout
        self.allow_dtype_mismatch = allow_dtype_mismatch
        #: (base dtype, post dtype) when the pair's role tensors are stored in different dtypes (allowed)
        self.dtype_mismatch: tuple[str, str] | None = None
        self.validate()

    def validate(self, roles: Iterable[str] | None = None) -> None:
        """Fail before any heavy work, naming the first mismatch between the two checkpoints (an adapter post
        was checked against the base when it was opened)."""
        b, p = self.base, self.post
        if isinstance(p, LoraPost):
            return
        if b.model_type != p.model_type:
            raise CheckpointMismatchError(
                f"architectures differ: base {b.source!r} is {b.model_type!r}, post {p.source!r} is {p.model_type!r}"
            )
        if b.layout.dims != p.layout.dims:
            for f in b.layout.dims.__dataclass_fields__:
                vb, vp = getattr(b.layout.dims, f), getattr(p.layout.dims, f)
                if vb != vp:
                    what = "layer counts" if f == "n_layers" else f"config {f}"
                    raise CheckpointMismatchError(
                        f"{what} differ: base {b.source!r} has {vb}, post {p.source!r} has {vp}"
                    )
        for view in self.layout.views(roles):
            sb, sp = b.shape(view.param), p.shape(view.param)
            if sb != sp:
                raise CheckpointMismatchError(
                    f"shapes differ at layer {view.layer} role {view.role!r} ({view.param}): "
                    f"base {sb}, post {sp}"
                )
            try:
                view.check_stored(sb, where=f"{b.source!r} and {p.source!r}: ")
            except ValueError as e:
                raise CheckpointMismatchError(str(e)) from None
            db, dp = b.dtype(view.param), p.dtype(view.param)
            if db != dp:
                if not self.allow_dtype_mismatch:
                    raise CheckpointMismatchError(
                        f"dtypes differ at layer {view.layer} role {view.role!r} ({view.param}): base {b.source!r} "
                        f"stores {db}, post {p.source!r} stores {dp}. Their difference would contain the rounding "
                        f"noise of the conversion (about 2^-8 of each weight for bfloat16) as if it were a "
                        f"post-training change. Compare checkpoints saved in one dtype, or pass "
                        f"--allow-dtype-mismatch (Python: allow_dtype_mismatch=True) to probe it anyway: the "
                        f"rounding-noise floor is then reported next to each delta")
                self.dtype_mismatch = (db, dp)
        self._check_tokenizers()

    def _check_tokenizers(self) -> None:
        """Base and post must map token ids to the same tokens (when both ship readable tokenizer files):
        otherwise the embedding and unembedding rows of the two mean different tokens."""
        vb, vp = self.base.tokenizer_vocab(), self.post.tokenizer_vocab()
        if vb is None or vp is None or vb == vp:
            return
        ib, ip = {i: t for t, i in vb.items()}, {i: t for t, i in vp.items()}
        differ = sorted(i for i in set(ib) & set(ip) if ib[i] != ip[i])
        if not differ and set(ib) <= set(ip):  # the post only added tokens (e.g. chat markers): same ids
            return
        example = f" (e.g. id {differ[0]}: {ib[differ[0]]!r} vs {ip[differ[0]]!r})" if differ else ""
        raise CheckpointMismatchError(
            f"tokenizers differ: {self.base.source!r} and {self.post.source!r} map {len(differ)} token id(s) to "
            f"different tokens{example} (vocabularies of {len(vb)} and {len(vp)}). The embedding and unembedding "
            f"rows of the two would mean different tokens: compare a model with its own post-trained version")

    def sources(self) -> dict:
        """:func:`source_info` of both sides (recorded in every probe's meta.json and every run.json)."""
        return {"base": source_info(self.base), "post": source_info(self.post)}

    def rounding_dtype(self) -> torch.dtype | None:
        """The coarser of the two stored dtypes when the pair is stored in two (None when in one)."""
        if self.dtype_mismatch is None:
            return None
        return max((_STORED_DTYPES.get(d, torch.float32) for d in self.dtype_mismatch), key=lambda t: torch.finfo(t).eps)

    def rounding_floor(self, base: torch.Tensor) -> float:
        """‖W − round(W)‖_F when the pair is stored in two dtypes: the delta a pure dtype conversion of the
        base would show (0.0 for a pair stored in one dtype)."""
        low = self.rounding_dtype()
        return 0.0 if low is None else float(torch.linalg.matrix_norm(base.float() - base.to(low).float()))

    def __iter__(self) -> Iterator[RolePair]:
        return self.iter_roles()

    def iter_roles(
        self,
        roles: Iterable[str] | None = None,
        layers: Iterable[int] | None = None,
        dtype: torch.dtype | str | None = "float32",
        check_finite: bool = True,
    ) -> Iterator[RolePair]:
        """Yield :class:`RolePair` for each (layer, role); a fused tensor is read once per layer."""
        for (rp,) in iter_posts(self.base, [self.post], self.layout.views(roles, layers), dtype, check_finite):
            yield rp


def iter_posts(base: Checkpoint, posts: list[Checkpoint | LoraPost], views: list[RoleView],
               dtype: torch.dtype | str | None = "float32", check_finite: bool = True) -> Iterator[tuple[RolePair, ...]]:
    """For each view, one :class:`RolePair` per post against the same base tensor, which is read once for all
    of them (many fine-tunes of one base); an adapter post reads nothing but its factors. Memory: the base
    tensor and one tensor per post at a time."""
    with ExitStack() as stack:
        rb = stack.enter_context(TensorReader(base, check_finite))
        readers = [None if isinstance(p, LoraPost) else stack.enter_context(TensorReader(p, check_finite)) for p in posts]
        for view in views:
            W = rb.matrix(view, dtype)
            out = []
            for post, reader in zip(posts, readers):
                if reader is not None:
                    out.append(RolePair(view.layer, view.role, W, reader.matrix(view, dtype), view))
                    continue
                d = post.role_delta(view) or LowRankDelta.zero(view.shape)  # base + scale·B·A, in factor form
                out.append(RolePair(view.layer, view.role, W, None, view, d))
            yield tuple(out)


# ==== header checks (`rwedit plan`): a checkpoint and a pair checked from their headers, no tensor read ====
# (kept apart from the reader and streaming code above; used by rwedit.apps.plan and the kinds' plan hooks)

#: files AutoTokenizer can build a tokenizer from; a run loads one with the base model
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def stored_itemsize(dtype: str) -> int | None:
    """Bytes per element of a stored float dtype (``F32``, ``BF16`` ... as the headers name them); None for
    a dtype that is not a float (quantized or integer weights)."""
    t = _STORED_NAMES.get(dtype)
    return None if t is None else DTYPE_BYTES[t]


def is_adapter(src: "Checkpoint | LoraPost") -> bool:
    """The source is an adapter over a base (a LoRA post), not a checkpoint of its own."""
    return isinstance(src, LoraPost)


def largest_role_tensor(ckpt: Checkpoint) -> tuple[int, int]:
    """(elements, stored bytes per element) of the largest stored tensor a role lives in (a fused tensor is
    read whole)."""
    return max((math.prod(ckpt.shape(v.param)), stored_itemsize(ckpt.dtype(v.param)) or 4)
               for v in ckpt.layout.views())


def check_headers(ckpt: Checkpoint, needs_tokenizer: bool = True) -> None:
    """One checkpoint's headers against its config and index: every role tensor is there with the shape the
    config implies and a float dtype, every tensor the index names is in the shard it names, and the folder
    holds a tokenizer (where the run loads one from it: the base) whose ids fit the embedding."""
    index = ckpt.path / "model.safetensors.index.json"
    if ckpt.format == "safetensors" and index.exists():  # the shards themselves were checked when it was opened
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        lost = [(k, f) for k, f in weight_map.items() if ckpt._where.get(k) is None or ckpt._where[k].name != f]
        if lost:
            k, f = lost[0]
            raise CheckpointError(f"{index}: {len(lost)} tensor(s) the index names are not in the shard it names, e.g. "
                                  f"{k!r} in {f}; the download is incomplete or the shards are of another save: "
                                  f"download the checkpoint again")
    for view in ckpt.layout.views():
        try:
            view.check_stored(ckpt.shape(view.param), where=f"{ckpt.source}: ")
        except ConfigError as e:
            raise CheckpointMismatchError(f"{e}; the checkpoint does not match its own config.json") from None
        dtype = ckpt.dtype(view.param)
        if stored_itemsize(dtype) is None:
            raise CheckpointError(f"{ckpt.source}: {view.param} is stored as {dtype}, not a float dtype (a quantized "
                                  f"checkpoint?); rwedit reads float weights (F32, BF16, F16): dequantize it and save "
                                  f"it with save_pretrained first")
    check_tokenizer_files(ckpt, needs_tokenizer)


def check_tokenizer_files(ckpt: Checkpoint, required: bool = True) -> None:
    """The folder ships tokenizer files (``required``: a run loads the tokenizer with the base model) and,
    where the vocabulary can be read from them, its largest id has a row in the embedding."""
    if not any((ckpt.path / f).exists() for f in TOKENIZER_FILES):
        if not required:
            return
        raise CheckpointError(f"{ckpt.source}: no tokenizer files in {ckpt.path} (looked for "
                              f"{', '.join(TOKENIZER_FILES)}); a run loads the tokenizer with the model: save one "
                              f"there with tokenizer.save_pretrained(folder)")
    vocab = ckpt.tokenizer_vocab()
    ids = set(vocab.values()) if vocab else set()
    added = ckpt.path / "tokenizer.json"
    if added.exists():
        ids |= {int(t["id"]) for t in ckpt.tokenizer_file("tokenizer.json").get("added_tokens") or [] if "id" in t}
    rows = ckpt.shape(ckpt.layout.view(None, "unembed").param)[0]
    if ids and max(ids) >= rows:
        raise CheckpointMismatchError(
            f"{ckpt.source}: the tokenizer has ids up to {max(ids)}, but the embedding has {rows} rows; it is the "
            f"tokenizer of another vocabulary (or the embedding was not resized after tokens were added)")


def check_pair_headers(base: Checkpoint, post: "Checkpoint | LoraPost") -> None:
    """Base and post from their headers: the pair checks (architecture, layer counts, each role's shape and
    stored dtype, tokenizers) and the shape of every other tensor both store (norms, embeddings)."""
    CheckpointPair(base, post)
    if is_adapter(post):
        return
    check_headers(post, needs_tokenizer=False)  # the run loads the base's tokenizer only
    for name in base.keys():
        sb, sp = base._shapes[name], post._shapes.get(name)
        if sp is not None and sb != sp:
            raise CheckpointMismatchError(f"shapes differ at {name}: base {base.source!r} {sb}, post {post.source!r} "
                                          f"{sp}; the two are not one model before and after post-training")
# ==== end of the header checks ==============================================================================
