"""Everything rwedit writes goes through here: folders appear whole or not at all, files are replaced
atomically, JSON is strict (``null`` with a reason, never ``NaN``), and folders get the user's umask.

A command writes into a temporary sibling of its output folder and renames it into place when it has
finished, so an interrupted or failed command leaves the old folder (or nothing) behind, never a
half-written one. ``--overwrite`` replaces an old folder whole; without it an existing, non-empty
output folder is refused before any work starts (:func:`check_output_folder`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rwedit.errors import OutputExistsError


def umask_mode(kind: int = 0o777) -> int:
    """The mode a new folder (``0o777``) or file (``0o666``) gets under the process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return kind & ~mask


def make_folder(path: str | Path) -> Path:
    """``mkdir -p`` (the umask applies, as for any tool)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_output_folder(target: str | Path, overwrite: bool = False, flag: str = "--out") -> Path:
    """Refuse an existing non-empty ``target`` unless ``overwrite`` (called before any heavy work)."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target} is a file; give a folder for {flag}")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputExistsError(f"{target} already exists and is not empty; choose another {flag}, or pass "
                                f"--overwrite to replace it whole")
    return target


@contextmanager
def atomic_folder(target: str | Path, overwrite: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; on success it replaces ``target`` whole.

    An existing non-empty ``target`` is refused unless ``overwrite``. On any error (or Ctrl-C) the
    temporary folder is removed and ``target`` is untouched."""
    target = check_output_folder(target, overwrite, flag)
    make_folder(target.parent)
    _remove_stale_partials(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-{os.getpid()}-"))
    os.chmod(tmp, umask_mode())  # mkdtemp makes 0700; a results folder is shared like any other
    try:
        yield tmp
        follow_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def follow_umask(folder: Path) -> None:
    """Give every file and folder under ``folder`` the umask's mode (some writers, safetensors among them,
    create files 0600)."""
    files, dirs = umask_mode(0o666), umask_mode(0o777)
    for p in folder.rglob("*"):
        os.chmod(p, dirs if p.is_dir() else files)


def _remove_stale_partials(target: Path) -> None:
    """Remove temporary folders of ``target`` left by a process that was killed (``kill -9``, power loss):
    their name carries the writer's pid, and a pid that no longer runs here cannot finish them."""
    for tmp in target.parent.glob(f".{target.name}.partial-*"):
        pid = tmp.name[len(f".{target.name}.partial-"):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_text(path: str | Path, text: str) -> Path:
    """Replace ``path`` with ``text`` atomically (a reader sees the old file or the new one)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def json_safe(obj: Any, reasons: dict[str, str] | None = None, where: str = "") -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (and numpy/torch scalars made plain);
    ``reasons`` collects ``{dotted key: "nan" | "inf" | "-inf"}`` for each replacement."""
    if isinstance(obj, dict):
        return {k: json_safe(v, reasons, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, reasons, f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        obj = obj.item()  # numpy / torch scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        if reasons is not None:
            reasons[where] = str(obj).lower()
        return None
    return obj


def dumps(obj: Any, *, indent: int | None = None, null_reasons: bool = True) -> str:
    """Strict JSON of ``obj``. Non-finite numbers become ``null``; with ``null_reasons`` a dict gets a
    ``"null_reasons"`` entry naming each such key and what it was, so a reader knows why it is empty."""
    reasons: dict[str, str] = {}
    safe = json_safe(obj, reasons)
    if reasons and null_reasons and isinstance(safe, dict):
        safe["null_reasons"] = {k: f"not finite ({v})" for k, v in reasons.items()}
    return json.dumps(safe, indent=indent, default=str, allow_nan=False)


def write_json(path: str | Path, obj: Any) -> Path:
    """Strict, indented JSON written atomically (see :func:`dumps`)."""
    return write_text(path, dumps(obj, indent=2) + "\n")


__all__ = ["atomic_folder", "check_output_folder", "dumps", "follow_umask", "json_safe", "make_folder", "umask_mode",
           "write_json", "write_text"]
