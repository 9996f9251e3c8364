"""Activation statistics: second moments ``E[a aᵀ]`` of each reader's actual inputs, with provenance.

Forward pre-hooks on the modules of the chosen roles sum ``a aᵀ`` and ``a`` over a calibration set.
Roles that read the same tensor (q/k/v read the attention input, gate/up the MLP input) share one
hook and one matrix.  Results are saved as safetensors + JSON and reused only when the model, the
exact token ids and the settings all match (a content-addressed cache key).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from rwedit.lazy import LazyModule, no_grad, torch
from safetensors import safe_open
from tqdm.auto import tqdm

# INPUT_GROUP / GROUP_ROLE (which roles read one input tensor) live in the registry; importable from here too
from rwedit.architectures import GROUP_ROLE, INPUT_GROUP, LAYER_ROLES, Layout, model_layout
from rwedit.data import batches, tensor_hash
from rwedit.config import Config, option
from rwedit.errors import CacheError, ConfigError, DataError, DiskFullError, NonFiniteError
from rwedit.models import execution_device, hooks_pass, named_weights
from rwedit.outputs import (SAFETENSORS_DTYPES, disk_full, entry_problem, follow_umask, is_disk_full, set_aside,
                            umask_mode, write_checksums, write_safetensors)
from rwedit.probes.subspaces import MatrixOverwritten, Spectrum, eig_subspace
from rwedit.runtime import cache_root

STATS_VERSION = 3  # 2: spectra stored with the sums; 3: float32 partial sums over 1024 tokens, first moment likewise

#: by module, at first use: a test's patch of load_file is not frozen in here
safetensors_torch = LazyModule("safetensors.torch")


@dataclass(frozen=True)
class StatsSettings(Config):
    """What a statistic depends on besides the model and the tokens (recorded in every result)."""

    roles: tuple[str, ...] = option(("q", "o", "up", "down"), help="roles whose inputs are collected")
    layers: tuple[int, ...] | None = option(None, help="layers (default: all)")
    dtype: str = option("float64", help="float64: a aᵀ in float32 over blocks of 1024 tokens, each block summed into "
                        "float64 (|error| ≤ 1024·2⁻²⁴·√(C_ii C_jj), ~2e-7 measured; float64 inputs stay exact); "
                        "mixed: each forward pass's a aᵀ in float32 (bound: its tokens·2⁻²⁴), summed in float64; "
                        "float32: all in float32")
    seq_len: int = option(256, help="tokens per sequence")
    batch_size: int = option(8, help="sequences per forward pass")

    def __post_init__(self):
        if self.dtype not in ("float64", "mixed", "float32"):
            raise ConfigError(f"StatsSettings.dtype must be float64, mixed or float32, not {self.dtype!r}")


#: eigenvectors kept per end of each spectrum in memory and in the cache (eigenvalues are kept in full)
SPECTRUM_KEEP = 256
#: float64 mode: tokens per float32 partial sum of a aᵀ (and of a), each added into the float64 sums; an entry's error
#: is at most that many × 2⁻²⁴ of √(C_ii C_jj) (Higham's γ_n, n terms). Shorter blocks cost more float64 additions:
#: one 2048-token forward of a 2048-wide input, 1 thread: 0.69 (one block), 0.72 (1024), 0.83 (512), 0.97 (256) of
#: one whole float32 a aᵀ product
F32_TOKENS = 1024
#: column blocks of a aᵀ's upper block triangle, the only part computed and held ((B + 1) / 2B of the matrix: 0.53 at
#: 16). Held in float64 for every hooked input at once, it is most of the probe's memory above the model: 16 blocks
#: hold 150 MB less than 8 at the 0.5B study's shapes, in the same time (a 4096-token collection, 7 roles:
#: 22.6 and 25.0 s at 8, 27.8 and 22.7 s at 16)
_TRIANGLE_BLOCKS = 16


class _Outer:
    """The running sums Σ a aᵀ and Σ a of one hooked input (d wide): a aᵀ's upper block triangle only, as
    contiguous row blocks in ``dtype``, each block's product in the input's dtype (over ``tokens`` rows at a time;
    None: all) and added in; :meth:`matrix` mirrors it into the symmetric d × d matrix once at the end."""

    def __init__(self, d: int, dtype: torch.dtype, device, tokens: int | None = None):
        c = -(-d // _TRIANGLE_BLOCKS)
        self.cuts = [(i, min(i + c, d)) for i in range(0, d, c)]
        self.rows = [torch.zeros(j - i, d - i, dtype=dtype, device=device) for i, j in self.cuts]
        self.first = torch.zeros(d, dtype=dtype, device=device)
        self.tokens = tokens

    def add(self, a: torch.Tensor) -> None:
        step = self.tokens or a.shape[0]
        for s in range(0, a.shape[0], step):
            x = a[s:s + step]
            for (i, j), row in zip(self.cuts, self.rows):
                if row.dtype == x.dtype:
                    row.addmm_(x[:, i:j].T, x[:, i:])
                else:
                    row += x[:, i:j].T @ x[:, i:]
            self.first += x.T @ x.new_ones(x.shape[0])  # a matrix-vector product: a cast-and-sum costs far more

    def matrix(self) -> torch.Tensor:
        """The symmetric d × d sum, each row block's upper triangle mirrored (a diagonal block's lower triangle
        is its upper's mirror up to rounding: the upper one is kept). Built anew on every call: the statistics
        hold the triangle (half the memory) and make one input's full matrix at a time."""
        d = self.first.shape[0]
        full = torch.empty(d, d, dtype=self.first.dtype, device=self.first.device)
        for (i, j), row in zip(self.cuts, self.rows):
            diag = row[:, :j - i].triu()
            full[i:j, i:j] = diag + diag.triu(1).T
            full[i:j, j:] = row[:, j - i:]
            full[j:, i:j] = row[:, j - i:].T
        return full

    def finite(self) -> bool:
        """Whether every entry is finite: one sum per row block (a NaN/Inf entry makes it NaN/Inf), not an
        elementwise test of d² entries."""
        return all(math.isfinite(float(r.sum())) for r in self.rows)

    def cpu(self) -> "_Outer":
        self.rows, self.first = [r.cpu() for r in self.rows], self.first.cpu()
        return self


class _Matrices(Mapping):
    """The sums by (layer, input group) as ``_index`` holds them (accumulators, names in a file), each d x d
    matrix made only when read; ``in``, iteration and ``len`` look at the index alone."""

    _index: dict

    def __contains__(self, key) -> bool:
        return key in self._index

    def __iter__(self):
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


class _Sums(_Matrices):
    """The Σ a aᵀ of each hooked input as the upper block triangles collected, each full matrix made when read."""

    def __init__(self, outers: Mapping[tuple[int, str], _Outer]):
        self._index = dict(outers)

    def __getitem__(self, key):
        return self._index[key].matrix()

    def spec(self, key) -> tuple[torch.dtype, tuple[int, int]]:
        """The dtype and shape of ``self[key]``, without making it."""
        d = self._index[key].first.shape[0]
        return self._index[key].first.dtype, (d, d)


class _LazyTensors(_Matrices):
    """Read-on-access view of the sums in a stats file, so loading never holds every d x d matrix."""

    def __init__(self, path: Path, names: dict[tuple[int, str], str]):
        self._path, self._index = path, names

    @classmethod
    def open(cls, path: Path) -> "_LazyTensors":
        """The sums (``LAYER.GROUP.sum_aaT``) of the stats file ``path``."""
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
        return cls(path, {_entry_key(n): n for n in keys if n.endswith(".sum_aaT")})

    def __getitem__(self, key):
        with safe_open(self._path, framework="pt") as f:
            return f.get_tensor(self._index[key])

    def spec(self, key) -> tuple[torch.dtype, tuple[int, ...]]:
        """The dtype and shape of ``self[key]``, without reading it."""
        with safe_open(self._path, framework="pt") as f:
            t = f.get_slice(self._index[key])
            return getattr(torch, _TORCH_DTYPE[t.get_dtype()]), tuple(t.get_shape())


def _entry_key(name: str) -> tuple[int, str]:
    """(layer, input group) of a stats file's tensor ``LAYER.GROUP.WHAT``."""
    layer, group, _ = name.split(".", 2)
    return int(layer), group


#: safetensors' dtype names -> torch's
_TORCH_DTYPE = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def _spec(tensors: Mapping, key) -> tuple[torch.dtype, tuple[int, ...]]:
    """The dtype and shape of ``tensors[key]``: without making or reading it where the mapping can tell."""
    if hasattr(tensors, "spec"):
        return tensors.spec(key)
    t = tensors[key]
    return t.dtype, tuple(t.shape)


@dataclass
class ActivationStats:
    """Sums of ``a aᵀ`` and ``a`` per (layer, input group), with the count and provenance.

    Eigen-decompositions are computed once per (layer, group, centring), kept truncated to the top and
    bottom `SPECTRUM_KEEP` eigenvectors, and saved with the sums, so a later probe reuses them."""

    sums: Mapping[tuple[int, str], torch.Tensor]
    firsts: Mapping[tuple[int, str], torch.Tensor]
    n_tokens: int
    meta: dict = field(default_factory=dict)
    spectra: dict[tuple[int, str, bool], Spectrum] = field(default_factory=dict, repr=False)

    def _key(self, layer: int, role: str) -> tuple[int, str]:
        key = (int(layer), INPUT_GROUP[role])
        if key not in self.sums:
            have = sorted({f"{g}@{l}" for l, g in self.sums})
            raise KeyError(f"no activation statistics for role {role!r} at layer {layer}; collected: {have}")
        return key

    def mean(self, layer: int, role: str) -> torch.Tensor:
        return self.firsts[self._key(layer, role)] / self.n_tokens

    def second_moment(self, layer: int, role: str, centred: bool = False) -> torch.Tensor:
        """``E[a aᵀ]`` (uncentred, the default) or the covariance ``E[a aᵀ] − μ μᵀ`` (centred)."""
        key = self._key(layer, role)
        m = self.sums[key] / self.n_tokens
        if centred:
            mu = self.firsts[key] / self.n_tokens
            m = m - torch.outer(mu, mu)
        return m

    def spectrum(self, layer: int, role: str, centred: bool = False, top: int | None = None,
                 bottom: int = 0) -> Spectrum:
        """Eigen-decomposition of the (centred) second moment holding at least `top` leading and `bottom`
        trailing eigenvectors (``top=None``: all of them).  Reuses the stored decomposition when it has
        enough columns; otherwise decomposes it again, computing only the eigenvectors it keeps (`SPECTRUM_KEEP`
        or more per end, all when ``top`` is None: :func:`~rwedit.probes.subspaces.eig_subspace`'s ``keep``)."""
        key = (*self._key(layer, role), bool(centred))
        sp = self.spectra.get(key)
        d = sp.d if sp is not None else None
        need_top = d if top is None else top
        if sp is None or need_top is None or sp.n_top < min(need_top, sp.d) or sp.n_bottom < min(bottom, sp.d):
            keep = max(SPECTRUM_KEEP, top or 0, bottom)
            try:  # a matrix made for it: LAPACK may work in it
                sp = eig_subspace(self.second_moment(layer, role, centred), keep=None if top is None else keep,
                                  overwrite=True)
            except MatrixOverwritten:  # the kept solver failed on it: the full decomposition of a fresh one
                sp = eig_subspace(self.second_moment(layer, role, centred), keep=None if top is None else keep)
            self.spectra[key] = sp.truncated(keep)
        return sp

    def precompute_spectra(self, centred: bool = False, progress: bool = True) -> None:
        """Decompose every collected input once (what `save` then stores for later probes)."""
        for layer, group in tqdm(sorted(self.sums), desc="eigendecompositions", disable=not progress):
            self.spectrum(layer, GROUP_ROLE[group], centred, top=0)

    def has(self, layer: int, role: str) -> bool:
        return (int(layer), INPUT_GROUP.get(role, "")) in self.sums

    # --- persistence ---

    def save(self, folder: str | Path) -> Path:
        """Write ``stats.safetensors`` (sums) and ``spectra.safetensors`` (the decompositions computed so
        far, truncated) + ``stats.json``, then their checksums (:func:`~rwedit.outputs.write_checksums`), into a
        temporary folder renamed into place. A full disk is a :class:`~rwedit.errors.DiskFullError` naming the
        folder and the bytes it needs; nothing is left behind."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp"))
        try:
            self._write(tmp)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(e):
                specs = [_spec(m, k) for m in (self.sums, self.firsts) for k in m]
                need = sum(math.prod(shape) * dtype.itemsize for dtype, shape in specs) + sum(
                    t.numel() * t.element_size() for sp in self.spectra.values()
                    for t in (sp.eigenvalues, sp.eigenvectors, sp.low_vectors) if t is not None)
                raise disk_full(folder, need, e, hint="free space there, or give --cache-dir (or RWEDIT_CACHE) on "
                                                      "another disk") from None
            raise
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return folder

    def _write(self, tmp: Path) -> None:
        os.chmod(tmp, umask_mode())  # mkdtemp makes 0700 (and safetensors 0600): a shared cache follows the umask
        entries = []  # written one matrix at a time: the sums are never all full, nor all copied, at once
        for key in self.sums:
            name = f"{key[0]}.{key[1]}"
            entries += [(f"{name}.sum_aaT", *_spec(self.sums, key), lambda key=key: self.sums[key]),
                        (f"{name}.sum_a", self.firsts[key].dtype, tuple(self.firsts[key].shape),
                         lambda key=key: self.firsts[key])]
        write_safetensors(tmp / "stats.safetensors", entries)
        spectra = []
        for (layer, group, centred), sp in self.spectra.items():
            name = f"{layer}.{group}.{'centred' if centred else 'raw'}"
            for what, t in (("eigenvalues", sp.eigenvalues), ("top", sp.eigenvectors), ("bottom", sp.low_vectors)):
                if t is not None:
                    spectra.append((f"{name}.{what}", t.dtype, tuple(t.shape), lambda t=t: t))
        if spectra:
            write_safetensors(tmp / "spectra.safetensors", spectra)
        (tmp / "stats.json").write_text(json.dumps({**self.meta, "n_tokens": self.n_tokens}, indent=2))
        write_checksums(tmp)
        follow_umask(tmp)

    @classmethod
    def load(cls, folder: str | Path) -> "ActivationStats":
        """Open saved statistics: the mean vectors and stored spectra in memory, the d x d sums read
        only when a decomposition has to be recomputed. Every file is checked against the checksums written
        with it first: a changed, truncated or unreadable one is a :class:`~rwedit.errors.CacheError` naming it."""
        folder = Path(folder)
        problem = entry_problem(folder)
        if problem is None:
            try:
                return cls._read(folder)
            except Exception as e:  # noqa: BLE001 — files that match their checksums but do not parse
                problem = f"it cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        raise CacheError(f"activation statistics {folder}: {problem}; delete it (a cache entry is recomputed)")

    @classmethod
    def _read(cls, folder: Path) -> "ActivationStats":
        meta = json.loads((folder / "stats.json").read_text())
        sums = _LazyTensors.open(folder / "stats.safetensors")
        with safe_open(folder / "stats.safetensors", framework="pt") as f:
            firsts = {_entry_key(n): f.get_tensor(n) for n in f.keys() if n.endswith(".sum_a")}
        spectra: dict[tuple[int, str, bool], Spectrum] = {}
        if (folder / "spectra.safetensors").exists():
            raw = safetensors_torch.load_file(folder / "spectra.safetensors")
            for name in raw:
                layer, group, kind, what = name.split(".")
                if what == "eigenvalues":
                    spectra[(int(layer), group, kind == "centred")] = Spectrum(
                        raw[name], raw[f"{layer}.{group}.{kind}.top"], raw.get(f"{layer}.{group}.{kind}.bottom"))
        return cls(sums, firsts, int(meta.pop("n_tokens")), meta,
                   spectra)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A cheap identity of a model's weights: config plus a strided sample of every parameter (offloaded
    weights read from their store: a dispatched model has the fingerprint of the model held whole)."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, p in named_weights(model):
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()


def _hook_targets(layout: Layout, roles: Sequence[str], layers: Iterable[int]) -> dict[tuple[int, str], str]:
    """(layer, input group) -> module path to hook (the first role of the group present)."""
    targets: dict[tuple[int, str], str] = {}
    for layer in layers:
        for role in roles:
            if role not in INPUT_GROUP:
                raise ValueError(f"activation statistics exist for layer roles {LAYER_ROLES}, not {role!r}")
            key = (layer, INPUT_GROUP[role])
            if key not in targets:
                targets[key] = layout.view(layer, role).module
    return targets


@no_grad
def collect_activation_stats(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    settings: StatsSettings = StatsSettings(),
    source: str = "",
    progress: bool = True,
) -> ActivationStats:
    """Run ``model`` over packed ``token_ids`` (n × seq_len) and sum each hooked input's ``a aᵀ``.

    Accumulators live on each hooked module's execution device (a model placed across GPUs, CPU and disk
    by accelerate gives the statistics of the model held whole) in ``settings.dtype``.
    """
    layout = model_layout(model)
    roles = tuple(r for r in settings.roles if layout.has_role(r) and r != "unembed")
    layers = tuple(range(layout.n_layers)) if settings.layers is None else tuple(settings.layers)
    targets = _hook_targets(layout, roles, layers)
    acc_dtype = torch.float32 if settings.dtype == "float32" else torch.float64
    tokens = F32_TOKENS if settings.dtype == "float64" else None  # rows per float32 partial sum
    outers: dict[tuple[int, str], _Outer] = {}

    def make_hook(key, device):
        def hook(module, args):
            # a pre-hook sees the input where the previous module left it (accelerate moves it only inside
            # the module's forward): bring it to the accumulator, on the module's execution device; products in
            # float32 (float64 only for a float64 model in float64 mode), sums in acc_dtype
            x = args[0].detach()
            prod = torch.float64 if x.dtype == torch.float64 and settings.dtype == "float64" else torch.float32
            a = x.reshape(-1, x.shape[-1]).to(device=device, dtype=prod)
            if key not in outers:
                outers[key] = _Outer(a.shape[1], acc_dtype, device, tokens)
            outers[key].add(a)
        return hook

    handles = []
    for key, path in targets.items():
        module = model.get_submodule(path)
        handles.append(module.register_forward_pre_hook(make_hook(key, execution_device(module))))
    n_tokens = 0
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=token_ids.numel(), desc="activation stats", unit="tok", disable=not progress) as bar:
            for batch in batches(token_ids, settings.batch_size):
                hooks_pass(model, batch)
                n_tokens += batch.numel()
                bar.update(batch.numel())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n_tokens == 0:
        raise DataError("no calibration tokens: the calibration data gave no sequences (is it empty, or shorter "
                        "than one sequence?)")
    for (layer, group), o in outers.items():
        if not o.cpu().finite():  # an overflow in the forward pass, not in the weights
            raise NonFiniteError(f"activation statistics of layer {layer} {group} inputs are not finite: the model "
                                 f"overflowed on the calibration data (dtype {model.dtype}). Use "
                                 f"float32, or check the data; nothing was cached")
    meta = {
        "version": STATS_VERSION,
        "source": source,
        "n_sequences": int(token_ids.shape[0]),
        "tokens_sha256": tensor_hash(token_ids),
        "settings": {**asdict(settings), "roles": list(roles), "layers": list(layers)},
        "model_fingerprint": model_fingerprint(model),
        "model_type": model.config.model_type,
        "seconds": round(time.perf_counter() - t0, 3),
        "accumulation": f"sums of a a^T in {settings.dtype} (products in float32"
                        f"{f' over {F32_TOKENS}-token blocks, float64 for float64 inputs' if tokens else ''}); "
                        f"centring is chosen when the statistic is read",
    }
    return ActivationStats(_Sums(outers), {k: o.first for k, o in outers.items()}, n_tokens, meta)


def cache_key(model: torch.nn.Module, token_ids: torch.Tensor, settings: StatsSettings) -> str:
    payload = json.dumps({"v": STATS_VERSION, "model": model_fingerprint(model), "tokens": tensor_hash(token_ids),
                          "settings": asdict(settings)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    return cache_root() / "stats"


def lookup_activation_stats(model: torch.nn.Module, token_ids: torch.Tensor, settings: StatsSettings = StatsSettings(),
                            cache_dir: str | Path | None = None) -> tuple[Path, ActivationStats | None, dict]:
    """The cache entry for exactly this model, these tokens and settings, its statistics when it holds them, and
    a note for the entry's record (a damaged entry is named, set aside and noted: it is recomputed)."""
    folder = Path(cache_dir or default_cache_dir()) / cache_key(model, token_ids, settings)
    note = {}
    if folder.exists():
        try:
            stats = ActivationStats.load(folder)
            stats.meta["cache"] = {"path": str(folder), "hit": True}
            return folder, stats, note
        except CacheError as e:  # checked against its checksums: a damaged entry is named, set aside, recomputed
            aside = set_aside(folder, str(e))
            note = {"set_aside": str(aside), "why": str(e)}
            print(f"rwedit: {e}\n  moved to {aside}; recomputing the statistics", file=sys.stderr, flush=True)
    return folder, None, note


def store_activation_stats(stats: ActivationStats, folder: Path, note: dict | None = None,
                           progress: bool = True) -> ActivationStats:
    """Decompose every input of freshly collected ``stats`` and write them into the cache entry ``folder``; from
    then on their sums are read from it, not held. A full disk is said and the statistics serve this run. The
    model is not needed: a caller that loaded it for the statistics alone drops it first."""
    note = dict(note or {})
    stats.precompute_spectra(progress=progress)
    try:
        stats.save(folder)
        stats.sums = _LazyTensors.open(folder / "stats.safetensors")
    except DiskFullError as e:  # the statistics are in memory: this run goes on, only their reuse is lost
        print(f"rwedit: the activation statistics were not cached: {e}", file=sys.stderr, flush=True)
        note["not_written"] = str(e)
    stats.meta["cache"] = {"path": str(folder), "hit": False, **note}
    return stats


def cached_activation_stats(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    settings: StatsSettings = StatsSettings(),
    source: str = "",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> ActivationStats:
    """Load the statistics for exactly this model, these tokens and settings, or collect and save them."""
    folder, stats, note = lookup_activation_stats(model, token_ids, settings, cache_dir)
    if stats is None:
        stats = store_activation_stats(collect_activation_stats(model, token_ids, settings, source, progress), folder,
                                       note, progress)
    return stats
