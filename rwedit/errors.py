"""One error base for everything rwedit refuses: the CLI prints a :class:`RweditError`'s message (what was wrong,
what to do) instead of a traceback; each subclass is also the built-in exception a caller expects (``ValueError``,
``FileNotFoundError``, ``RuntimeError``)."""

from __future__ import annotations


class RweditError(Exception):
    """Base of every error rwedit raises on purpose; the message is meant for the user."""


class ConfigError(RweditError, ValueError):
    """A YAML recipe, spec or command-line setting is malformed; the message names the key and the fix."""


class SpecError(ConfigError):
    """An edit specification or experiment recipe is invalid; the message names the field and the fix."""


class OrganismError(ConfigError):
    """A bad organism setting or a failed training stage; the message says what to change."""


class NotRegisteredError(ConfigError, KeyError):
    """A name that no registry holds (an experiment kind, a backend, a subcommand); the message names the
    closest and the registered ones. Also a ``KeyError``: a registry is a mapping."""

    __str__ = Exception.__str__  # KeyError's would quote the message


class AlreadyRegisteredError(ConfigError):
    """A second entry under a registered name, without ``replace=True``."""


class UnsupportedArchitectureError(NotRegisteredError):
    """A ``model_type`` that has no registry entry."""


class CheckpointError(RweditError, ValueError):
    """A checkpoint cannot be used as asked; the message says what was wrong and what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """Neither a local folder nor a reachable (or cached) Hub repository."""


class CheckpointMismatchError(CheckpointError):
    """Two checkpoints of a pair differ in architecture, layer count or a tensor shape."""


class NonFiniteError(RweditError, ValueError):
    """A NaN or Inf where a number must be finite (a score, a statistic, a gradient); the message names it."""


class NonFiniteWeightError(NonFiniteError, CheckpointError):
    """A weight tensor contains NaN or Inf."""


class DeviceError(ConfigError):
    """A device the installed torch cannot use."""


class OutputExistsError(RweditError, FileExistsError):
    """An output folder exists already; nothing is written unless ``--overwrite`` is given."""


class DiskFullError(RweditError, OSError):
    """A write failed for lack of disk space; the message names the path, the space needed and what is free."""


class CacheError(RweditError, RuntimeError):
    """A cache entry is damaged and cannot be set aside; the message names the path to delete."""


class DataError(RweditError, ValueError):
    """A data source is missing, empty or malformed; the message says which and what to do."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file (a bundled name, a path) that does not exist."""


class ExperimentError(RweditError, RuntimeError):
    """The experiment folder and the request do not fit together; the message says what to do."""


class StoreLockedError(ExperimentError):
    """Another process is writing the same results store; the message names it."""


class ExportError(RweditError, RuntimeError):
    """An export or upload failed; local files are left as they were."""


class AdapterMismatchError(RweditError, ValueError):
    """An adapter is applied to a model other than the one it was made for."""


class AdapterNotAppliedError(ExperimentError):
    """A condition's adapter leaves the scoring backend's outputs unchanged (not applied, or zero weights)."""


__all__ = ["RweditError", "ConfigError", "SpecError", "OrganismError", "UnsupportedArchitectureError",
           "NotRegisteredError", "AlreadyRegisteredError", "CheckpointError", "CheckpointNotFoundError",
           "CheckpointMismatchError", "NonFiniteError", "NonFiniteWeightError", "DeviceError", "OutputExistsError",
           "DiskFullError", "CacheError", "DataError", "DataNotFoundError", "ExperimentError", "StoreLockedError",
           "ExportError", "AdapterMismatchError", "AdapterNotAppliedError"]
