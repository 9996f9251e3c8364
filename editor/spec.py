"""Edit specifications: what to edit, which directions, which closed form, which matched controls.

The YAML form mirrors the dataclasses one to one::

    model: path/or/hub-id
    post: path/or/hub-id              # needed by b: delta
    calibration: {data: wikitext.txt.gz, tokens: 50000, seq_len: 256}
    edit: {layers: [2], role: q, v: "principal[0]", b: gradient, objective: preference,
           data: pairs.jsonl, data_limit: 256}
    alpha: [0.5, 1.0, 2.0]            # signed; ||ΔW||_F = |alpha| for every edit and control
    controls: {random: 5, lowvar: 1, write: o}
    seed: 0
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from rwedit.architectures import READ_ROLES, ROLES, WRITE_ROLES
from rwedit.errors import SpecError  # noqa: F401  (re-exported)

_DIRECTION = re.compile(r"^(principal|lowvar)(?:\[(\d+)\])?$|^(random|given)$")


@dataclass(frozen=True)
class CalibrationSpec:
    data: str
    tokens: int = 50_000
    seq_len: int = 256
    batch_size: int = 8
    field: str | None = None


@dataclass(frozen=True)
class EditTarget:
    """Where the edit goes and how its two directions are chosen."""

    layers: tuple[int, ...]
    role: str
    v: str = "principal[0]"  # principal[i] | lowvar[i] | random | given
    b: str = "gradient"  # delta | gradient | given
    objective: str = "preference"  # for b: gradient — preference | ce
    data: str | None = None  # pairs (preference) or text (ce) for b: gradient
    data_limit: int = 256
    max_len: int = 256
    v_given: tuple[float, ...] | None = None
    b_given: tuple[float, ...] | None = None
    centred: bool = False  # principal/lowvar from the centred covariance

    def direction(self) -> tuple[str, int]:
        m = _DIRECTION.match(self.v)
        if not m:
            raise SpecError(f"edit.v = {self.v!r}: use principal[i], lowvar[i], random or given")
        if m.group(3):
            return m.group(3), 0
        return m.group(1), int(m.group(2) or 0)


@dataclass(frozen=True)
class Controls:
    """Matched controls generated from the same spec (same layers, |alpha| and b rule)."""

    random: int = 5  # number of random-v seeds
    lowvar: int = 1  # number of lowest-variance directions (lowvar[0..n-1])
    write: str | None = "o"  # write-pathway role for the write control (o or down), or null


@dataclass(frozen=True)
class EditSpec:
    model: str
    edit: EditTarget
    alpha: tuple[float, ...] = (1.0,)
    post: str | None = None
    calibration: CalibrationSpec | None = None
    controls: Controls = field(default_factory=Controls)
    seed: int = 0
    name: str = "edit"

    def __post_init__(self):
        e = self.edit
        if e.role not in ROLES or e.role == "unembed":
            raise SpecError(f"edit.role = {e.role!r}: choose one of {', '.join(r for r in ROLES if r != 'unembed')} "
                            f"(the unembedding is not edited: it is tied in many models)")
        kind, _ = e.direction()
        if not e.layers:
            raise SpecError("edit.layers is empty: give at least one layer index")
        if not self.alpha or any(a == 0 for a in self.alpha):
            raise SpecError(f"alpha = {list(self.alpha)}: every alpha must be non-zero (||ΔW||_F = |alpha|)")
        if e.b not in ("delta", "gradient", "given"):
            raise SpecError(f"edit.b = {e.b!r}: use delta, gradient or given")
        if e.b == "delta" and not self.post:
            raise SpecError("edit.b = delta needs `post:` (the observed post-trained checkpoint)")
        if e.b == "gradient" and not e.data:
            raise SpecError("edit.b = gradient needs edit.data (preference pairs or target text)")
        if e.b == "gradient" and e.objective not in ("preference", "ce"):
            raise SpecError(f"edit.objective = {e.objective!r}: use preference or ce")
        if e.b == "given" and not e.b_given:
            raise SpecError("edit.b = given needs edit.b_given (the output direction as a list of numbers)")
        if kind == "given" and not e.v_given:
            raise SpecError("edit.v = given needs edit.v_given (the input direction as a list of numbers)")
        if kind in ("principal", "lowvar") or self.controls.lowvar:
            if self.calibration is None:
                raise SpecError(f"v = {e.v} (and lowvar controls) need `calibration:` data for the activation "
                                f"subspace; add calibration: {{data: FILE}} or set controls.lowvar: 0")
        if self.controls.write is not None and self.controls.write not in WRITE_ROLES:
            raise SpecError(f"controls.write = {self.controls.write!r}: use one of {WRITE_ROLES} or null")
        if self.controls.write is not None and e.role not in READ_ROLES:
            raise SpecError(f"controls.write compares a read-pathway edit with a write-pathway one, but edit.role "
                            f"= {e.role!r} is already a writer; set controls.write: null")
        if self.controls.write is not None and e.b == "given":
            raise SpecError("controls.write needs a closed-form b rule (delta or gradient), not b: given")
        if self.controls.random < 0 or self.controls.lowvar < 0:
            raise SpecError("controls.random and controls.lowvar must be >= 0")

    # --- YAML ---

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_dir: str | Path | None = None) -> "EditSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SpecError(f"unknown spec keys {sorted(unknown)}; known keys are {sorted(known)}")
        if "model" not in d or "edit" not in d:
            raise SpecError("a spec needs at least `model:` and `edit:`")
        d = dict(d)
        e = dict(d["edit"])
        bad = set(e) - {f.name for f in fields(EditTarget)}
        if bad:
            raise SpecError(f"unknown edit keys {sorted(bad)}; known: {[f.name for f in fields(EditTarget)]}")
        layers = e.get("layers", e.pop("layer", None))
        e["layers"] = tuple([layers] if isinstance(layers, int) else layers or ())
        for k in ("v_given", "b_given"):
            if e.get(k) is not None:
                e[k] = tuple(float(x) for x in e[k])
        if base_dir is not None and e.get("data"):
            e["data"] = _resolve(e["data"], base_dir)
        d["edit"] = EditTarget(**e)
        a = d.get("alpha", (1.0,))
        d["alpha"] = tuple(float(x) for x in (a if isinstance(a, (list, tuple)) else [a]))
        if d.get("calibration") is not None:
            c = dict(d["calibration"])
            if base_dir is not None:
                c["data"] = _resolve(c["data"], base_dir)
            d["calibration"] = CalibrationSpec(**c)
        d["controls"] = Controls(**(d.get("controls") or {}))
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "EditSpec":
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"spec file {path} not found") from None
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: expected a YAML mapping at the top level")
        return cls.from_dict(raw, base_dir=path.parent)

    def to_dict(self) -> dict:
        return asdict(self)


def _resolve(p: str, base_dir: str | Path) -> str:
    """Paths in a spec are relative to the spec file (unless absolute, bundled:, or not existing there)."""
    if p.startswith("bundled:"):
        return p
    cand = Path(base_dir) / p
    return str(cand) if not Path(p).is_absolute() and cand.exists() else p
