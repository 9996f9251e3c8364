"""Checkpoint sources (local folder or Hub id) and a lazy, streaming pair iterator.

Tensors are read one at a time with ``safetensors.safe_open`` (memory-mapped), so a pass over two
checkpoints holds O(largest tensor) in memory, never two models.  Everything that can be checked
from headers (architecture, layer count, every role's shape) is checked before the first heavy step.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors import safe_open

from rwedit.architectures import Layout, RoleView
from rwedit.errors import (  # noqa: F401  (re-exported)
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    NonFiniteWeightError,
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
            f"is wrong). Download it where the Hub is reachable (`huggingface-cli download {repo_id}`) and "
            f"pass the local folder instead, e.g. --base /path/to/{repo_id.split('/')[-1]}."
        ) from None


def _tensor_files(path: Path) -> tuple[str, list[Path]]:
    """The weight files of a checkpoint folder and their format ("safetensors" or "pickle")."""
    st = sorted(path.glob("*.safetensors"))
    if st:
        index = path / "model.safetensors.index.json"
        if index.exists():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            st = [path / n for n in names]
        return "safetensors", st
    pk = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and "optimizer" not in p.name
                and "training_args" not in p.name and "scheduler" not in p.name and "rng_state" not in p.name)
    if pk:
        return "pickle", pk
    raise CheckpointError(
        f"{path} holds no weights: expected *.safetensors (or, with allow_pickle, pytorch_model*.bin)"
    )


@dataclass
class Checkpoint:
    """One model checkpoint on disk: its config, layout and a lazy index of its tensors."""

    source: str
    path: Path
    config: object
    layout: Layout
    format: str
    files: list[Path]
    _where: dict[str, Path] = field(default_factory=dict, repr=False)
    _shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    _dtypes: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def open(
        cls,
        source: str | os.PathLike,
        revision: str | None = None,
        allow_pickle: bool = False,
        cache_dir: str | None = None,
    ) -> "Checkpoint":
        """Resolve a local folder or Hub id (``org/name`` or ``org/name@revision``) to a checkpoint.

        Pickle weights (``*.bin``) can execute code when loaded and are refused unless
        ``allow_pickle=True``.
        """
        src = str(source)
        path = Path(src).expanduser()
        if path.is_dir():
            pass
        elif path.exists():
            raise CheckpointError(f"{src} is a file; give the checkpoint folder that holds config.json")
        elif _HUB_ID.match(src) and not src.startswith((".", "/", "~")):
            repo_id, _, rev = src.partition("@")
            path = _hub_snapshot(repo_id, revision or rev or None, allow_pickle, cache_dir)
        else:
            raise CheckpointNotFoundError(f"checkpoint folder {src!r} does not exist")
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} has no config.json: is it a Hugging Face model folder?")
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
        layout = Layout.from_config(config)
        fmt, files = _tensor_files(path)
        if fmt == "pickle" and not allow_pickle:
            raise CheckpointError(
                f"{src} has only pickle weights ({files[0].name}): loading them can execute arbitrary code. "
                f"Convert them to safetensors, or pass allow_pickle=True (CLI: --allow-pickle) if you trust "
                f"the source."
            )
        ckpt = cls(src, path, config, layout, fmt, files)
        ckpt._index()
        return ckpt

    def _index(self) -> None:
        for f in self.files:
            if self.format == "safetensors":
                with safe_open(f, framework="pt") as h:
                    for k in h.keys():
                        sl = h.get_slice(k)
                        self._where[k], self._shapes[k], self._dtypes[k] = f, tuple(sl.get_shape()), sl.get_dtype()
            else:
                sd = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
                for k, t in sd.items():
                    self._where[k], self._shapes[k], self._dtypes[k] = f, tuple(t.shape), str(t.dtype)
                del sd

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

    def matrix(self, view: RoleView, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """A role's ``W`` (d_out x d_in) from its stored tensor. The last stored tensor read is kept, so
        the roles of one fused tensor read it once; the one before is dropped first (O(one tensor))."""
        key = (view.param, dtype)
        if self._last is None or self._last[0] != key:
            self._last = None
            self._last = (key, self.read(view.param, dtype))
        return view.extract(self._last[1])

    def read(self, param: str, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """One tensor, converted to ``dtype`` (``None`` keeps the stored dtype)."""
        name = self.ckpt.find(param)
        f = self.ckpt._where[name]
        if self.ckpt.format == "safetensors":
            # open per tensor: a handle kept open keeps every page it touched mapped, so a pass over a
            # 4 GB pair would end with 4 GB of file-backed RSS; reopening costs one header parse
            with safe_open(f, framework="pt") as h:
                t = h.get_tensor(name)
        else:
            if self._pickle is None or self._pickle[0] != f:
                self._pickle = (f, torch.load(f, map_location="cpu", mmap=True, weights_only=True))
            t = self._pickle[1][name]
        if dtype is not None and t.dtype != dtype:
            t = t.to(dtype)
        # a sum is NaN/Inf when any entry is (or, rarely, when it overflows: then the exact test decides);
        # it costs ~1/30 of an elementwise isfinite pass
        if (self.check_finite and t.is_floating_point() and not bool(torch.isfinite(t.sum()))
                and not bool(torch.isfinite(t).all())):
            n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise NonFiniteWeightError(
                f"{self.ckpt.source}: tensor {name!r} contains {n_nan} NaN and {n_inf} Inf values "
                f"(after conversion to {dtype}); fix or re-export the checkpoint, or pass check_finite=False "
                f"to skip this check"
            )
        return t


# --- pairs -----------------------------------------------------------------------------------


@dataclass
class RolePair:
    """One role of one layer in both checkpoints, as ``d_out x d_in`` matrices."""

    layer: int | None
    role: str
    base: torch.Tensor
    post: torch.Tensor
    view: RoleView

    @property
    def delta(self) -> torch.Tensor:
        return self.post - self.base


class CheckpointPair:
    """Two checkpoints of one architecture, walked role by role and layer by layer."""

    def __init__(self, base: Checkpoint | str, post: Checkpoint | str, allow_pickle: bool = False):
        self.base = base if isinstance(base, Checkpoint) else Checkpoint.open(base, allow_pickle=allow_pickle)
        self.post = post if isinstance(post, Checkpoint) else Checkpoint.open(post, allow_pickle=allow_pickle)
        self.layout = self.base.layout
        self.validate()

    def validate(self, roles: Iterable[str] | None = None) -> None:
        """Fail before any heavy work, naming the first mismatch between the two checkpoints."""
        b, p = self.base, self.post
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

    def __iter__(self) -> Iterator[RolePair]:
        return self.iter_roles()

    def iter_roles(
        self,
        roles: Iterable[str] | None = None,
        layers: Iterable[int] | None = None,
        dtype: torch.dtype | None = torch.float32,
        check_finite: bool = True,
    ) -> Iterator[RolePair]:
        """Yield :class:`RolePair` for each (layer, role); a fused tensor is read once per layer."""
        views = self.layout.views(roles, layers)
        with TensorReader(self.base, check_finite) as rb, TensorReader(self.post, check_finite) as rp:
            for view in views:
                yield RolePair(view.layer, view.role, rb.matrix(view, dtype), rp.matrix(view, dtype), view)
