"""Text sources for calibration and behaviour: local files, `datasets` datasets, preference pairs.

Everything returns plain Python lists or tensors so that the provenance (source, count, hash) can be
recorded next to every statistic computed from it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from rwedit.errors import DataError  # noqa: F401  (re-exported)


def _open_text(path: Path) -> io.TextIOBase:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz"))


def read_texts(source: str | Path, field: str | None = None, limit: int | None = None, split: str = "train") -> list[str]:
    """Non-empty texts from a ``.txt[.gz]`` file (one per line), a ``.jsonl[.gz]`` file (``field``,
    default ``text``, or ``chosen`` for preference data), a folder saved by ``datasets``, or a
    ``datasets`` Hub name when the Hub is reachable."""
    from rwedit.bundled import resolve

    source = resolve(source)
    path = Path(str(source)).expanduser()
    texts: list[str] = []
    if path.is_file():
        with _open_text(path) as f:
            if _is_jsonl(path):
                for i, line in enumerate(f):
                    if not line.strip():
                        continue
                    rec = json.loads(line)
                    key = field or next((k for k in ("text", "chosen") if k in rec), None)
                    if key is None or key not in rec:
                        raise DataError(f"{path}: line {i + 1} has no field {field or 'text'!r}; fields are {sorted(rec)}")
                    texts.append(rec[key])
                    if limit and len(texts) >= limit:
                        break
            else:
                for line in f:
                    if line.strip():
                        texts.append(line.strip())
                        if limit and len(texts) >= limit:
                            break
    elif path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
        texts = [t for t in ds[field or "text"][: limit or None] if t and t.strip()]
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


def pack_tokens(
    tokenizer,
    texts: Sequence[str],
    seq_len: int,
    token_budget: int,
) -> torch.Tensor:
    """Tokenise ``texts``, join them with EOS and cut the stream into rows of ``seq_len`` tokens.

    Returns a ``(n_rows, seq_len)`` LongTensor holding at most ``token_budget`` tokens; packing means
    no padding, so every position is a real token and statistics need no mask.
    """
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
        raise DataError(f"preference data {path} not found")
    out = []
    with _open_text(path) as f:
        for i, line in enumerate(f):
            if not line.strip() or (indices is not None and i not in indices):
                continue
            r = json.loads(line)
            out.append(PreferencePair(r["prompt"], r["chosen"], r["rejected"]) if "prompt" in r
                       else split_hh(r["chosen"], r["rejected"]))
            if limit and len(out) >= limit:
                break
    if not out:
        raise DataError(f"{path}: no preference pairs")
    return out


# --- a small tokenizer for offline models ----------------------------------------------------


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int = 4096, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer on ``texts`` (offline) and wrap it for transformers.

    Special tokens: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2 (the same ids go into model configs).
    """
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
