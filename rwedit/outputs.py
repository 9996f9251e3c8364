"""Everything rwedit writes goes through here: folders appear whole or not at all (written into a temporary
sibling, renamed into place), files are replaced atomically, JSON is strict (``null`` with a reason, never
``NaN``), modes follow the umask. ``--overwrite`` replaces only a folder rwedit wrote (:data:`MARKER`); an
output is never an input, nor inside or around one; a symlinked output folder is written through.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from rwedit.errors import ConfigError, OutputExistsError


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


#: the file every folder written whole by rwedit carries: ``--overwrite`` replaces only such a folder
MARKER = ".rwedit-output"

def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def input_clash(target: str | Path, inputs: Iterable[str | Path | None]) -> str | None:
    """How ``target`` would overwrite one of ``inputs`` (it is one, holds one, or lies inside one), or None.
    Inputs that are not local paths (Hub ids, absent files) cannot clash and are skipped."""
    t = _real(target)
    for given in inputs:
        if given is None or not str(given) or not os.path.exists(os.path.expanduser(str(given))):
            continue
        p = _real(given)
        if t == p:
            return f"{target} is an input of this command ({given})"
        if t in p.parents:
            return f"{target} holds an input of this command ({given}); replacing it would delete that input"
        if p in t.parents:
            return f"{target} lies inside an input of this command ({given}); writing there would change that input"
    return None


def default_run_folder(name: str) -> Path:
    """``runs/NAME``, the folder a run writes without ``--out``: ``name`` is a name, never a path (a separator,
    ``..`` or an absolute path would write outside ``runs/``)."""
    text = str(name)
    if not text or text in (".", "..") or "/" in text or "\\" in text or os.sep in text or text.startswith("~"):
        raise ConfigError(f"recipe name {text!r}: a name, not a path (no '/', '\\', '..' or '~'): it names the "
                          f"default output folder runs/NAME; give the folder with --out instead")
    return Path("runs") / text


def check_not_input(target: str | Path, inputs: Iterable[str | Path | None], flag: str = "--out") -> Path:
    """Refuse an output ``target`` that is, holds or lies inside one of ``inputs`` (with or without
    ``--overwrite``): also for folders a command fills in place, such as a resumable series."""
    clash = input_clash(target, inputs)
    if clash:
        raise OutputExistsError(f"{clash}; choose another {flag} (rwedit never writes over its inputs, "
                                f"with or without --overwrite)")
    return Path(target)


def check_output_folder(target: str | Path, overwrite: bool = False, flag: str = "--out",
                        inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse ``target`` before any heavy work: when it is, holds or lies inside one of ``inputs`` (always), when
    it exists non-empty (unless ``overwrite``), and when ``overwrite`` would replace a folder rwedit did not
    write (no :data:`MARKER`): a mistyped ``--out`` must never delete a model, data or a finished run."""
    target = check_not_input(target, inputs, flag)
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target} is a file; give a folder for {flag}")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{target} already exists and is not empty; choose another {flag}, or pass "
                                    f"--overwrite to replace it whole")
        if not (target / MARKER).exists():
            files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
            shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
            raise OutputExistsError(f"{target} was not written by rwedit (it has no {MARKER} file), so "
                                    f"--overwrite will not replace it: it would delete {len(files)} file(s) "
                                    f"({shown or 'empty folders'}). Choose another {flag}, or remove that "
                                    f"folder yourself if it is really meant to go")
    return target


@contextmanager
def atomic_folder(target: str | Path, overwrite: bool = False, flag: str = "--out",
                  inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a temporary folder next to ``target`` (checked by :func:`check_output_folder`); on success it replaces
    ``target`` (a symlink's destination) whole, marked as rwedit's; on any error it is removed."""
    target = check_output_folder(target, overwrite, flag, inputs)
    if target.is_symlink():
        target = _real(target)
    make_folder(target.parent)
    _remove_stale_partials(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-{os.getpid()}-"))
    os.chmod(tmp, umask_mode())  # mkdtemp makes 0700; a results folder is shared like any other
    try:
        yield tmp
        (tmp / MARKER).write_text("written whole by rwedit; `--overwrite` may replace this folder\n")
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
