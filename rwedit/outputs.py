"""Everything rwedit writes goes through here: folders appear whole or not at all (written into a temporary
sibling, renamed into place), files are replaced atomically, JSON is strict (``null`` with a reason, never
``NaN``), modes follow the umask. ``--overwrite`` replaces only a folder rwedit wrote (:data:`MARKER`); an
output is never an input, nor inside or around one; a symlinked output folder is written through.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from rwedit.errors import CacheError, ConfigError, DiskFullError, OutputExistsError


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
    except BaseException as e:
        written = folder_bytes(tmp) if is_disk_full(e) else 0
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full(target, written, e, more=True) from None
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


# --- sizes and full disks ---------------------------------------------------------------------------------


def readable_bytes(n: float) -> str:
    """A size in the unit that reads best, three significant digits: ``512 B``, ``3.1 KiB``, ``611 GiB`` (never
    ``0.00 GiB``)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if unit == "B" and abs(n) < 1000:
            return f"{n:.0f} B"
        if abs(n) < 1000 or unit == "TiB":
            return f"{n:.3g} {unit}" if abs(n) < 1000 else f"{n:,.0f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def folder_bytes(folder: Path) -> int:
    """The bytes of the files under ``folder`` (0 when it is gone)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).exists() else 0


def free_bytes(path: str | Path) -> int:
    """Free bytes on the disk of ``path`` (of its nearest existing parent when it is not made yet)."""
    path = Path(path)
    return shutil.disk_usage(next((p for p in (path, *path.parents) if p.exists()), Path("."))).free


def is_disk_full(e: BaseException) -> bool:
    """A write failed for lack of space (``ENOSPC``, a quota), as an OSError or as a library's own error
    (safetensors reports ``No space left on device (os error 28)``)."""
    return (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
        s in str(e) for s in ("No space left on device", "os error 28", "Disk quota exceeded"))


def disk_full(where: str | Path, need: int, e: BaseException, more: bool = False,
              hint: str = "free space there, or write to another disk") -> DiskFullError:
    """The :class:`DiskFullError` of a write into ``where`` that failed for lack of space: it needs ``need`` bytes
    (``more``: at least that, the amount written when the disk filled) and the disk has what it has free."""
    need_text = f"more than {readable_bytes(need)}" if more else f"~{readable_bytes(need)}"
    return DiskFullError(f"{where}: no space left on its disk ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                         f"writing it needs {need_text}, and {readable_bytes(free_bytes(where))} is free there: {hint}")


# --- tensors written one at a time -----------------------------------------------------------------------------

#: safetensors' names of the dtypes :func:`write_safetensors` writes
SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                      "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def write_safetensors(path: str | Path, entries: Iterable[tuple[str, Any, tuple[int, ...], Any]],
                      metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file from ``(name, torch dtype, shape, make)`` entries, calling each ``make()`` only
    when its bytes are written and dropping the tensor after: the file's tensors are never all in memory at
    once (safetensors' ``save_file`` first copies every tensor into one bytes object, doubling the peak).
    Returns the bytes the file takes; ``make()`` must give a tensor of the dtype and shape declared."""
    import torch

    entries = list(entries)
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape, _ in entries:
        n = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES[str(dtype).removeprefix("torch.")], "shape": list(shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for name, dtype, shape, make in entries:
            t = make()
            if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                raise ValueError(f"{name}: made {t.dtype} {tuple(t.shape)}, declared {dtype} {tuple(shape)}")
            f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # a view: no copy
            del t
    return 8 + len(text) + offset


# --- cache entries that check themselves ----------------------------------------------------------------------

#: the file a cache entry's checksums are written to, after every other file of the entry
CHECKSUMS = "checksums.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(folder: str | Path) -> None:
    """Record the size and sha256 of every file under a cache entry ``folder`` in :data:`CHECKSUMS`, written
    last: an entry without it, or whose files no longer match it, is not used (:func:`entry_problem`)."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in (CHECKSUMS, MARKER)}
    write_json(folder / CHECKSUMS, {"files": files})


def entry_problem(folder: str | Path) -> str | None:
    """What is wrong with a cache entry's files against its :data:`CHECKSUMS` (None: each is there with the size
    and sha256 it was written with). Reads every file once."""
    folder = Path(folder)
    try:
        recorded = json.loads((folder / CHECKSUMS).read_text())["files"]
        items = [(str(name), int(want["bytes"]), str(want["sha256"])) for name, want in recorded.items()]
    except FileNotFoundError:
        return f"it has no {CHECKSUMS} (it was cut short while written, or written before cache entries carried checksums)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"its {CHECKSUMS} cannot be read ({type(e).__name__}: {e})"
    for name, size, sha in items:
        f = folder / name
        try:
            if f.stat().st_size != size:
                return f"{name} has {f.stat().st_size} bytes, not the {size} it was written with (truncated or changed)"
            if _sha256(f) != sha:
                return f"{name} does not match its checksum (changed or damaged since it was written)"
        except OSError as e:
            return f"{name} cannot be read ({e.strerror or e})"
    return None


def set_aside(folder: str | Path, problem: str) -> Path:
    """Move a damaged cache entry out of the way, kept for a look (``NAME.damaged-TIME``) and never used again;
    a :class:`CacheError` naming it to delete when it cannot be moved."""
    folder = Path(folder)
    aside = folder.with_name(f"{folder.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.replace(folder, aside)
    except OSError as e:
        raise CacheError(f"cache entry {folder} is damaged ({problem}) and cannot be moved aside ({e.strerror or e}); "
                         f"delete it and run again") from None
    return aside


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


__all__ = ["CHECKSUMS", "atomic_folder", "check_output_folder", "disk_full", "dumps", "entry_problem", "folder_bytes",
           "follow_umask", "free_bytes", "is_disk_full", "json_safe", "make_folder", "readable_bytes", "set_aside",
           "umask_mode", "write_checksums", "write_json", "write_text"]
