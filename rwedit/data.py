"""Text sources for calibration and behaviour (local files, `datasets` datasets, preference pairs) as plain lists
or tensors, so that their provenance (source, count, hash) is recorded next to every statistic."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from rwedit.lazy import torch

from rwedit.config import Config, option
from rwedit.errors import DataError, DataNotFoundError
from rwedit.models import Placement


def _open_text(path: Path) -> io.TextIOBase:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz"))


_FILE_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".json", ".json.gz", ".gz", ".csv", ".parquet")


def looks_like_path(source: str) -> bool:
    """A source meant as a local file or folder (so "not found" is the message, not "unreachable Hub")."""
    return source.startswith((".", "/", "~")) or source.endswith(_FILE_SUFFIXES) or source.count("/") > 1


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a text file (gzip by suffix); undecodable or damaged files are a
    :class:`DataError` naming the file and line."""
    n = 0
    try:
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                yield n, line
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: line {n + 1} is not UTF-8 text ({e.reason}); convert the file to UTF-8") from None
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot be read after line {n} ({e}); is the file damaged or not really "
                        f"{'gzip' if path.suffix == '.gz' else 'text'}?") from None


def _records(path: Path, expected: str, indices: range | None = None) -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` of a JSON-lines file (only the 0-based line ``indices``, when given: the others
    are not parsed); a line that is not a JSON object is a :class:`DataError` naming the file, the line and what
    a record should hold (``expected``)."""
    for n, line in _lines(path):
        if indices is not None and n - 1 not in indices:
            if n - 1 >= indices.stop:
                return
            continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {n} is not valid JSON ({e.msg}, column {e.colno}); each line must be "
                            f"one JSON object with {expected}") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}: line {n} is a JSON {type(rec).__name__}, not an object with {expected}")
        yield n, rec


def read_texts(source: str | Path, field: str | None = None, limit: int | None = None, split: str = "train") -> list[str]:
    """Non-empty texts from a ``.txt[.gz]`` file (one per line), a ``.jsonl[.gz]`` file (``field``,
    default ``text``, or ``chosen`` for preference data), a folder saved by ``datasets``, or a
    ``datasets`` Hub name when the Hub is reachable."""
    from rwedit.bundled import resolve

    source = resolve(source)
    path = Path(str(source)).expanduser()
    texts: list[str] = []
    if path.is_file():
        if _is_jsonl(path):
            for n, rec in _records(path, f"a text field ({field or 'text'!r})"):
                key = field or next((k for k in ("text", "chosen") if k in rec), None)
                if key is None or key not in rec:
                    raise DataError(f"{path}: line {n} has no field {field or 'text'!r}; its fields are "
                                    f"{sorted(rec)} (choose one with --field / calibration.field)")
                if not isinstance(rec[key], str):
                    raise DataError(f"{path}: line {n}: field {key!r} holds a {type(rec[key]).__name__}, not text")
                texts.append(rec[key])
                if limit and len(texts) >= limit:
                    break
        else:
            for _, line in _lines(path):
                if line.strip():
                    texts.append(line.strip())
                    if limit and len(texts) >= limit:
                        break
    elif path.is_dir():
        texts = _dataset_folder_texts(path, field, limit, split)
    elif looks_like_path(str(source)):
        raise DataNotFoundError(f"{source}: no such file or folder (check the path; relative paths in a recipe are read "
                        f"next to the recipe file)")
    else:
        import datasets

        try:
            ds = datasets.load_dataset(str(source), split=split)
        except Exception as e:
            raise DataError(
                f"calibration data {str(source)!r} is neither a local file/folder nor a loadable dataset "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Pass a local .txt/.jsonl file "
                f"or a folder saved with datasets' save_to_disk."
            ) from None
        texts = [t for t in ds[field or "text"][: limit or None] if t and t.strip()]
    if not texts:
        raise DataError(f"{source}: no non-empty texts found; check the path and the field name")
    return texts


def _dataset_folder_texts(path: Path, field: str | None, limit: int | None, split: str) -> list[str]:
    """Texts of a folder written by ``datasets``' ``save_to_disk``; an empty or foreign folder, a missing
    split or column is a :class:`DataError` that names what is there."""
    import datasets

    if not any(path.iterdir()):
        raise DataError(f"{path} is an empty folder; give a text/jsonl file or a folder written by "
                        f"datasets' save_to_disk")
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"{path} is not a folder written by datasets' save_to_disk ({str(e).splitlines()[0]}); "
                        f"give a .txt/.jsonl file or such a folder") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split {split!r}; splits: {', '.join(ds)}")
        ds = ds[split]
    col = field or "text"
    if col not in ds.column_names:
        raise DataError(f"{path}: no column {col!r}; columns: {', '.join(ds.column_names)} (choose one with "
                        f"--field / calibration.field)")
    return [t for t in ds[col][: limit or None] if isinstance(t, str) and t.strip()]


def pack_tokens(
    tokenizer,
    texts: Sequence[str],
    seq_len: int,
    token_budget: int,
) -> torch.Tensor:
    """``texts`` tokenised, joined with EOS and cut into a ``(n_rows, seq_len)`` LongTensor of at most
    ``token_budget`` tokens: no padding, so every position is a real token and statistics need no mask."""
    if seq_len < 1 or token_budget < seq_len:
        raise DataError(f"need seq_len >= 1 and token_budget >= seq_len (got {seq_len}, {token_budget})")
    sep = tokenizer.eos_token_id
    stream: list[int] = []
    want = (token_budget // seq_len) * seq_len
    for t in texts:
        stream.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if sep is not None:
            stream.append(sep)
        if len(stream) >= want:
            break
    n = min(len(stream), want) // seq_len
    if n == 0:
        raise DataError(
            f"the texts give {len(stream)} tokens, fewer than one sequence of {seq_len}; "
            f"use more text or a shorter seq_len"
        )
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def batches(ids: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, ids.shape[0], batch_size):
        yield ids[i:i + batch_size]


def tensor_hash(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (e.g. the exact token ids a statistic was computed from)."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


# --- preference pairs ------------------------------------------------------------------------

ASSISTANT = "\n\nAssistant:"


@dataclass(frozen=True)
class PreferencePair:
    """A dialogue prompt and two responses; ``chosen`` is the preferred one."""

    prompt: str
    chosen: str
    rejected: str


def split_hh(chosen: str, rejected: str) -> PreferencePair:
    """Split an hh-rlhf record at the last ``Assistant:`` turn into (prompt, chosen, rejected)."""
    i = chosen.rfind(ASSISTANT)
    if i < 0:
        raise DataError("hh-rlhf record without an 'Assistant:' turn")
    cut = i + len(ASSISTANT)
    prompt = chosen[:cut]
    if not rejected.startswith(prompt):
        j = rejected.rfind(ASSISTANT)
        return PreferencePair(prompt, chosen[cut:], rejected[j + len(ASSISTANT):])
    return PreferencePair(prompt, chosen[cut:], rejected[cut:])


def read_pairs(path: str | Path, limit: int | None = None, indices: range | None = None) -> list[PreferencePair]:
    """Preference pairs from a jsonl[.gz] file with either ``prompt/chosen/rejected`` or hh-rlhf's
    ``chosen/rejected`` full transcripts; ``indices`` keeps only those line indices (a fixed split)."""
    from rwedit.bundled import resolve

    path = Path(resolve(path))
    if not path.is_file():
        raise DataError(f"preference data {path} not found" + (" (it is a folder: give the .jsonl file)"
                                                               if path.is_dir() else ""))
    expected = "`prompt`, `chosen`, `rejected` (or hh-rlhf's `chosen`, `rejected` transcripts)"
    out = []
    for n, r in _records(path, expected, indices):
        need = ("prompt", "chosen", "rejected") if "prompt" in r else ("chosen", "rejected")
        lacking = [k for k in need if not isinstance(r.get(k), str)]
        if lacking:
            raise DataError(f"{path}: line {n} lacks text field(s) {', '.join(lacking)}; a pair needs {expected}; "
                            f"this line has {sorted(r)}")
        try:
            out.append(PreferencePair(r["prompt"], r["chosen"], r["rejected"]) if "prompt" in r
                       else split_hh(r["chosen"], r["rejected"]))
        except DataError as e:
            raise DataError(f"{path}: line {n}: {e}") from None
        if limit and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{path}: no preference pairs")
    return out


# --- a small tokenizer for offline models ----------------------------------------------------


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int = 4096, min_frequency: int = 2):
    """A byte-level BPE tokenizer trained on ``texts`` (offline) for transformers: ``<pad>`` 0, ``<bos>`` 1,
    ``<eos>`` 2 (the ids model configs use)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


@dataclass(frozen=True)
class CalibrationSettings(Config):
    """Where activation statistics come from (recorded in every result; ``calibration:``, ``--calib*``)."""

    data: str = option(path=True, help="calibration text: .txt[.gz] (one text per line), .jsonl[.gz] (field "
                       "'text' or 'chosen'), a datasets folder, a dataset name, or bundled:NAME")
    tokens: int = option(50_000, help="token budget of the calibration set")
    seq_len: int = option(256, help="calibration sequence length (tokens)")
    batch_size: int = option(8, help="sequences per forward pass")
    field: str | None = option(None, help="jsonl/dataset field holding the text")
    device: str = option("cpu", help="device of the calibration forward passes (cpu, cuda, auto)")
    dtype: str = option("float32", help="the model's dtype during the calibration passes")
    placement: Placement | None = option(None, help="the model placed across devices for the calibration passes "
                                         "(device_map, max_memory, offload_folder, dtype); unset: whole on device")
