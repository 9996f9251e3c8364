"""Direction cards: what a direction *is*, in words.

A read-side direction (in a module's input space) is shown by the calibration positions whose input projects
most on it, both signs, each as its token in a window of context, and by the share of the input's second
moment it carries. A direction in the residual stream (the input of q/k/v/up/gate, the output of o/down, a
prediction direction) is also read through the unembedding (the logit lens, the final norm's gain folded in
where the architecture has one): the tokens it promotes and suppresses.

The contexts come from one extra pass over the calibration tokens (the directions are known only after the
statistics), keeping a running top-k per direction and sign: memory is O(k · directions), whatever the
number of tokens.
"""

from __future__ import annotations

import hashlib
import html
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from rwedit.lazy import no_grad, torch
from tqdm.auto import tqdm

from rwedit.architectures import INPUT_GROUP, READ_ROLES, WRITE_ROLES, get_weight, model_layout
from rwedit.data import batches
from rwedit.errors import ConfigError, DataError
from rwedit.models import execution_device, hooks_pass
from rwedit.outputs import dumps, write_text
from rwedit.probes.svd import top_svd

#: what each kind of direction is, for the cards' captions
KINDS = {
    "activation": "principal direction of the module's input activations (read side)",
    "delta_right": "top right singular direction of ΔW (the input side the update reads)",
    "delta_left": "top left singular direction of ΔW (the output side the update writes)",
    "prediction": "top singular direction of the unembedding W_U (the prediction subspace)",
    "edit_v": "the edit's input direction v",
    "edit_b": "the edit's output direction b",
}


@dataclass(frozen=True)
class Direction:
    """A unit vector to explain: where it lives (``layer``, ``role``, ``side``) and what it is (``kind``,
    ``index`` among its kind, ``value``: eigenvalue or singular value where it has one, ``label``: which edit
    or control it belongs to, for an edit's directions)."""

    kind: str
    layer: int | None
    role: str
    side: str  # "read": the role's input space; "write": its output space
    index: int
    vector: torch.Tensor = field(repr=False, compare=False)
    value: float | None = None
    label: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"direction kind {self.kind!r}: kinds are {', '.join(KINDS)}")
        if self.side not in ("read", "write"):
            raise ConfigError(f"direction side {self.side!r}: read or write")

    @property
    def in_residual_stream(self) -> bool:
        """Whether the vector lives in the residual stream, where the logit lens reads it."""
        return self.role == "unembed" or (self.role in READ_ROLES and self.side == "read") or \
            (self.role in WRITE_ROLES and self.side == "write")

    @property
    def reads_input(self) -> bool:
        """Whether the vector lives in a layer module's input space, where calibration contexts drive it."""
        return self.side == "read" and self.role in INPUT_GROUP and self.layer is not None


@dataclass(frozen=True)
class Context:
    """One calibration position: its projection on the direction, its token and a window around it
    (``left``, ``token``, ``right`` as text, so a page can highlight the token)."""

    value: float
    sequence: int
    position: int
    token: str
    left: str
    right: str


@dataclass(frozen=True)
class Card:
    """A direction in words: its top contexts (both signs) and second-moment share where it reads an input;
    the tokens it promotes and suppresses where it lives in the residual stream."""

    direction: Direction
    positive: list[Context] = field(default_factory=list)
    negative: list[Context] = field(default_factory=list)
    share: float | None = None  # uᵀ E[a aᵀ] u / tr E[a aᵀ]: the share of the input's second moment along u
    promoted: list[tuple[str, float]] = field(default_factory=list)
    suppressed: list[tuple[str, float]] = field(default_factory=list)

    def row(self) -> dict:
        """One flat, JSON-ready row (``directions.jsonl``)."""
        d = self.direction
        return {"kind": d.kind, "layer": d.layer, "role": d.role, "side": d.side, "index": d.index,
                "value": d.value, "label": d.label, "share": self.share,
                "top_contexts": [asdict(c) for c in self.positive],
                "bottom_contexts": [asdict(c) for c in self.negative],
                "promoted": [{"token": t, "logit": v} for t, v in self.promoted],
                "suppressed": [{"token": t, "logit": v} for t, v in self.suppressed]}

    def lines(self) -> list[str]:
        """The card as a few lines of text (what ``rwedit explain`` prints)."""
        return card_lines(self.row())

    @classmethod
    def from_row(cls, direction: Direction, row: dict) -> "Card":
        """The card of ``direction`` read back from its :meth:`row` (the cards' cache)."""
        return cls(direction, [Context(**c) for c in row["top_contexts"]], [Context(**c) for c in row["bottom_contexts"]],
                   row["share"], [(t["token"], t["logit"]) for t in row["promoted"]],
                   [(t["token"], t["logit"]) for t in row["suppressed"]])


def _heading(row: dict) -> tuple[str, str]:
    """A card's title (where, what, its value) and its share of the input's second moment ('' without one)."""
    where = f"layer {row['layer']} {row['role']}" if row.get("layer") is not None else row["role"]
    value = f" (value {row['value']:.4g})" if row.get("value") is not None else ""
    label = f" of {row['label']}" if row.get("label") else ""
    share = f" · {100 * row['share']:.1f}% of the input's second moment" if row.get("share") is not None else ""
    return f"{where} · {row['kind']} #{row['index']}{label}{value}", share


def _nothing_shown(row: dict) -> str:
    """What a card without contexts or tokens says instead ('' when it has either)."""
    if any(row.get(k) for k in ("top_contexts", "bottom_contexts", "promoted")):
        return ""
    space = "input" if row["side"] == "read" else "output"
    return (f"nothing to show: {row['role']}'s {space} space is neither a calibration input the pass read nor the "
            f"residual stream the unembedding reads")


def card_lines(row: dict) -> list[str]:
    """A card (a ``directions.jsonl`` row) as a few lines of text: where and what, the top contexts of each
    sign with the token in brackets, the tokens promoted and suppressed."""
    title, share = _heading(row)
    out = [title + share]
    for sign, key in (("+", "top_contexts"), ("−", "bottom_contexts")):
        ctx = row.get(key) or []
        if ctx:
            out.append(f"  {sign} " + " | ".join(f"…{c['left']}[{c['token']}]{c['right']}… ({c['value']:+.3g})"
                                               for c in ctx[:3]))
    if row.get("promoted"):
        out.append("  promotes:   " + ", ".join(f"{t['token']!r} {t['logit']:+.3g}" for t in row["promoted"]))
        out.append("  suppresses: " + ", ".join(f"{t['token']!r} {t['logit']:+.3g}" for t in row["suppressed"]))
    return out + ([f"  ({_nothing_shown(row)})"] if _nothing_shown(row) else [])


def cards_html(rows: Sequence[dict]) -> str:
    """Cards (``directions.jsonl`` rows) as an HTML section for a report page: contexts with the token
    highlighted, the tokens each promotes and suppresses ('' without cards)."""
    if not rows:
        return ""
    e = html.escape
    cards = []
    for row in rows:
        title, share = _heading(row)
        out = [f'<div class="card"><h4>{e(title)}</h4><div class="muted">{e(row["side"])} side{e(share)}</div>']
        for cls, key in (("pos", "top_contexts"), ("neg", "bottom_contexts")):
            out += [f'<div class="ctx {cls}">…{e(c["left"])}<span class="hl">{e(c["token"])}</span>{e(c["right"])}… '
                    f'<span class="muted">{c["value"]:+.3g}</span></div>' for c in row.get(key) or []]
        for label, key in (("promotes", "promoted"), ("suppresses", "suppressed")):
            if row.get(key):
                toks = ", ".join(f'<span class="tok">{e(repr(t["token"]))}</span> {t["logit"]:+.3g}' for t in row[key])
                out.append(f"<div><b>{label}:</b> {toks}</div>")
        if _nothing_shown(row):
            out.append(f'<div class="muted">{e(_nothing_shown(row))}</div>')
        cards.append("\n".join(out) + "</div>")
    return '<h2>Direction cards</h2><div class="cards">' + "\n".join(cards) + "</div>"


def read_cards(path: str | Path, index: int | None = None) -> list[dict]:
    """The rows of a ``directions.jsonl`` (none when it is absent), only those of ``index`` when given."""
    path = Path(path)
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    return [r for r in rows if index is None or r["index"] == index]


def cards_section(rows: Sequence[dict], title: str, intro: str) -> list[str]:
    """A report's Markdown section of cards: its heading, a sentence saying what they are, and each card's
    lines (:func:`card_lines`) in a code block; none without cards."""
    if not rows:
        return []
    return ["", f"## {title}", "", intro, "", "```"] + [x for r in rows for x in card_lines(r)] + ["```"]


def activation_directions(stats, layer: int, role: str, m: int = 4, centred: bool = False) -> list[Direction]:
    """The top-``m`` principal directions of a role's input activations (``E[a aᵀ]`` eigenvectors, the
    statistics' own decomposition), with their eigenvalues."""
    sp = stats.spectrum(layer, role, centred, top=m)
    m = min(m, sp.n_top)
    return [Direction("activation", layer, role, "read", i, sp.eigenvectors[:, i].clone(), float(sp.eigenvalues[i]))
            for i in range(m)]


def delta_directions(delta: torch.Tensor, layer: int | None, role: str, m: int = 4) -> list[Direction]:
    """The top-``m`` right (input side, read) and left (output side, write) singular directions of ``ΔW``
    (d_out × d_in), with their singular values, numerical rank only; each pair's sign fixed so its right
    vector's largest entry is positive (an SVD fixes it only up to a shared sign). Where min(d) > 8m the top-m
    triplets come from the certified randomized SVD (:func:`~rwedit.probes.svd.top_svd`, ``auto``: the full one
    only where it cannot certify): a card shows a few directions, and a full SVD per matrix was most of the report's
    time at Qwen2.5-0.5B's shapes."""
    W = delta.detach()
    r = min(m, *W.shape)
    if r == 0 or not bool(W.any()):
        return []
    U, S, V = top_svd(W, r, "full" if min(W.shape) <= 8 * r else "auto")
    out = []
    for i in range(int((S > S[0] * 1e-12).sum())):  # numerical rank: no noise directions
        u, v = U[:, i], V[:, i]
        sign = 1.0 if float(v[v.abs().argmax()]) >= 0 else -1.0
        out += [Direction("delta_right", layer, role, "read", i, sign * v, float(S[i])),
                Direction("delta_left", layer, role, "write", i, sign * u, float(S[i]))]
    return out


def prediction_directions(spectrum, m: int = 4) -> list[Direction]:
    """The top-``m`` directions of the prediction subspace (a :class:`~rwedit.probes.subspaces.Spectrum` of
    ``W_Uᵀ W_U``), with their eigenvalues (squared singular values of ``W_U``)."""
    m = min(m, spectrum.n_top)
    return [Direction("prediction", None, "unembed", "write", i, spectrum.eigenvectors[:, i].clone(),
                      float(spectrum.eigenvalues[i])) for i in range(m)]


def edit_directions(edits: Iterable, label: str | None = None, index: int = 0) -> list[Direction]:
    """The directions of rank-1 edits ``ΔW = α b vᵀ`` (anything with ``layer``, ``role``, ``v``, ``b``, e.g. the
    editor's ``RankOneEdit``): v on the read side (the role's input space: calibration contexts, second-moment
    share; the lens too where the role reads the residual stream), b on the write side (the lens where the role
    writes into the residual stream); v's eigenvalue as its value where its provenance has one."""
    out = []
    for e in edits:
        value = (getattr(e, "provenance", None) or {}).get("v_eigenvalue")
        out += [Direction("edit_v", e.layer, e.role, "read", index, e.v.detach().clone(), value, label),
                Direction("edit_b", e.layer, e.role, "write", index, e.b.detach().clone(), None, label)]
    return out


def final_norm_gain(model: torch.nn.Module) -> torch.Tensor | None:
    """The final norm's per-channel gain (None where the architecture's final norm has no weight)."""
    layout = model_layout(model)
    name = layout.spec.final_norm
    module = model.get_submodule(name) if name else None
    weight = getattr(module, "weight", None) if module is not None else None
    return layout.final_norm_gain(weight.detach()) if weight is not None else None


def _token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([int(token_id)]) if tokenizer is not None else f"<{int(token_id)}>"


def unembedding(model: torch.nn.Module, fold_norm: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A loaded model's ``W_U`` (vocab × hidden) and its final norm's gain (None when not folded or absent)."""
    W_U = get_weight(model, None, "unembed").detach().float().cpu()
    return W_U, (final_norm_gain(model) if fold_norm else None)


@no_grad
def logit_lens(vectors: torch.Tensor, unembed: torch.Tensor, gain: torch.Tensor | None = None, tokenizer=None,
               top: int = 8) -> list[tuple[list[tuple[str, float]], list[tuple[str, float]]]]:
    """For each row of ``vectors`` (m × hidden, residual-stream directions): the ``top`` tokens it promotes
    and suppresses, ``W_U (γ ⊙ u)`` with γ the final norm's gain (none: ``gain`` None)."""
    W_U = unembed.detach().float().cpu()
    if vectors.dim() != 2 or vectors.shape[1] != W_U.shape[1]:
        raise ConfigError(f"logit lens: directions must be m x {W_U.shape[1]} (the residual stream), got "
                          f"{tuple(vectors.shape)}")
    u = vectors.detach().float().cpu()
    if gain is not None:
        u = u * gain.float().cpu()
    k, out = min(top, W_U.shape[0]), []
    for rows in u.split(LENS_ROWS):  # m x vocab logits a block of rows at a time (all: 1 GB at 1500 x 152k)
        logits = rows @ W_U.T
        hi, lo = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
        out += [([(_token_text(tokenizer, i), float(v)) for v, i in zip(hi.values[j], hi.indices[j])],
                 [(_token_text(tokenizer, i), float(v)) for v, i in zip(lo.values[j], lo.indices[j])])
                for j in range(logits.shape[0])]
    return out


#: directions per block of the logit lens's products
LENS_ROWS = 64


class _TopK:
    """A running top-k of values (with their flat positions) for each of m columns, both signs."""

    def __init__(self, m: int, k: int):
        self.k = k
        self.hi_v = torch.full((0, m), float("-inf"), dtype=torch.float64)
        self.hi_i = torch.zeros((0, m), dtype=torch.int64)
        self.lo_v, self.lo_i = self.hi_v.clone(), self.hi_i.clone()

    @staticmethod
    def _merge(vals, idx, new_v, new_i, k):
        v, i = torch.cat([vals, new_v]), torch.cat([idx, new_i])
        top = v.topk(min(k, v.shape[0]), dim=0)
        return top.values, i.gather(0, top.indices)

    def update(self, proj: torch.Tensor, first: int) -> None:
        """``proj``: n × m projections of the positions ``first … first + n - 1``."""
        pos = torch.arange(first, first + proj.shape[0], dtype=torch.int64)[:, None].expand_as(proj)
        p = proj.to(torch.float64)
        self.hi_v, self.hi_i = self._merge(self.hi_v, self.hi_i, p, pos, self.k)
        lo_v, self.lo_i = self._merge(-self.lo_v, self.lo_i, -p, pos, self.k)
        self.lo_v = -lo_v


@no_grad
def contexts(model: torch.nn.Module, token_ids: torch.Tensor, directions: Sequence[Direction], tokenizer=None,
             top: int = 5, window: int = 6, batch_size: int = 8, progress: bool = True) -> dict[int, tuple]:
    """One pass over ``token_ids`` (n × seq_len): for each read-side direction (by its index in
    ``directions``) its top positive and negative contexts and its second-moment share. Directions of one
    (layer, input group) share one hook and one matrix product."""
    if token_ids.numel() == 0:
        raise DataError("no calibration tokens to find the directions' contexts in: the calibration data is empty")
    layout = model_layout(model)
    groups: dict[tuple[int, str], list[int]] = {}
    for j, d in enumerate(directions):
        if d.reads_input:
            groups.setdefault((d.layer, INPUT_GROUP[d.role]), []).append(j)
    if not groups:
        return {}
    mats, tops, sq, tot = {}, {}, {}, {}
    hooks, position = [], {"first": 0}
    for key, js in groups.items():
        layer, group = key
        role = next(directions[j].role for j in js)
        module = model.get_submodule(layout.view(layer, role).module)
        dev = execution_device(module)
        U = torch.stack([directions[j].vector.detach().double().flatten() for j in js], dim=1)
        mats[key] = (U / U.norm(dim=0, keepdim=True)).to(dev)
        tops[key], sq[key], tot[key] = _TopK(len(js), top), torch.zeros(len(js), dtype=torch.float64), 0.0

        def hook(mod, args, key=key, dev=dev):
            a = args[0].detach().reshape(-1, args[0].shape[-1]).to(device=dev, dtype=torch.float64)
            if a.shape[1] != mats[key].shape[0]:
                raise ConfigError(f"layer {key[0]} {key[1]}: the directions have {mats[key].shape[0]} entries, the "
                                  f"module's input has {a.shape[1]}")
            proj = a @ mats[key]
            tops[key].update(proj.cpu(), position["first"])
            sq[key] += (proj ** 2).sum(0).cpu()
            tot[key] += float((a ** 2).sum())
        hooks.append(module.register_forward_pre_hook(hook))
    seq_len = token_ids.shape[1]
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=token_ids.numel(), desc="direction contexts", unit="tok", disable=not progress) as bar:
            for batch in batches(token_ids, batch_size):
                hooks_pass(model, batch)
                position["first"] += batch.numel()
                bar.update(batch.numel())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    flat = token_ids.reshape(-1)

    def ctx(value: float, pos: int) -> Context:
        s, p = divmod(int(pos), seq_len)
        row = token_ids[s]
        text = lambda ids: tokenizer.decode([int(i) for i in ids]) if tokenizer is not None else \
            " ".join(f"<{int(i)}>" for i in ids)
        return Context(float(value), s, p, _token_text(tokenizer, flat[pos]), text(row[max(0, p - window):p]),
                       text(row[p + 1:p + 1 + window]))

    out = {}
    for key, js in groups.items():
        t = tops[key]
        for c, j in enumerate(js):
            pos = [ctx(v, i) for v, i in zip(t.hi_v[:, c].tolist(), t.hi_i[:, c].tolist()) if v > 0]
            neg = [ctx(v, i) for v, i in zip(t.lo_v[:, c].tolist(), t.lo_i[:, c].tolist()) if v < 0]
            out[j] = (pos, neg, float(sq[key][c] / tot[key]) if tot[key] > 0 else None)
    return out


def explain(model: torch.nn.Module | None, directions: Sequence[Direction], token_ids: torch.Tensor | None = None,
            tokenizer=None, top: int = 5, lens_top: int = 8, progress: bool = True,
            unembed: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> list[Card]:
    """The card of every direction: contexts from one pass of ``model`` over ``token_ids`` (read side; skipped
    when either is None) and the logit lens of residual-stream directions through ``unembed`` (``(W_U, gain)``;
    default: the model's, :func:`unembedding`)."""
    found = contexts(model, token_ids, directions, tokenizer, top=top, progress=progress) \
        if token_ids is not None and model is not None else {}
    lens_idx = [j for j, d in enumerate(directions) if d.in_residual_stream]
    W_U, gain = unembed if unembed is not None else unembedding(model)
    lens = dict(zip(lens_idx, logit_lens(torch.stack([directions[j].vector.flatten() for j in lens_idx]), W_U, gain,
                                         tokenizer, top=lens_top))) if lens_idx else {}
    cards = []
    for j, d in enumerate(directions):
        pos, neg, share = found.get(j, ([], [], None))
        promoted, suppressed = lens.get(j, ([], []))
        cards.append(Card(d, pos, neg, share, promoted, suppressed))
    return cards


#: bumped when what a card holds changes, so cached cards of an older form are not reused
CARDS_VERSION = 1


def _sample_bytes(t: torch.Tensor) -> bytes:
    """A strided sample of a tensor's values (its identity in a cache key, cheap for a large W_U)."""
    flat = t.detach().reshape(-1)
    return str(tuple(t.shape)).encode() + flat[::max(1, flat.numel() // 65536)].double().cpu().numpy().tobytes()


def cached_explain(stats, directions: Sequence[Direction], load: Callable[[], tuple] | None = None, *,
                   unembed: tuple[torch.Tensor, torch.Tensor | None], tokenizer=None, top: int = 5, lens_top: int = 8,
                   progress: bool = True) -> list[Card]:
    """:func:`explain`, cached next to the activation statistics ``stats`` were loaded from or saved to (their
    key: model and calibration tokens) under a key of the directions, the card settings and the lens's
    ``unembed``: a warm rerun neither reloads the model nor passes over the calibration tokens again.
    ``load()`` gives ``(model, tokenizer, token_ids)`` for the pass (None: the lens alone, with ``tokenizer``);
    it is called only on a miss. Without a statistics cache (``stats`` None or unsaved) nothing is cached."""
    folder = ((stats.meta.get("cache") or {}).get("path") if stats is not None else None)
    path = None
    if folder and load is not None:
        h = hashlib.sha256(json.dumps({"v": CARDS_VERSION, "top": top, "lens_top": lens_top}).encode())
        for d in directions:
            h.update(json.dumps([d.kind, d.layer, d.role, d.side, d.index, d.value, d.label]).encode())
            h.update(_sample_bytes(d.vector) if d.vector.numel() > 65536 else d.vector.double().cpu().numpy().tobytes())
        for t in unembed:
            h.update(b"-" if t is None else _sample_bytes(t))
        path = Path(folder) / "cards" / f"{h.hexdigest()[:24]}.jsonl"
        rows = read_cards(path)
        if len(rows) == len(directions) and all(
                [r[k] for k in ("kind", "layer", "role", "side", "index")] == [d.kind, d.layer, d.role, d.side, d.index]
                for r, d in zip(rows, directions)):
            return [Card.from_row(d, r) for d, r in zip(directions, rows)]
    model, tokenizer, ids = load() if load is not None else (None, tokenizer, None)
    cards = explain(model, directions, ids, tokenizer, top=top, lens_top=lens_top, progress=progress, unembed=unembed)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, "".join(dumps(c.row()) + "\n" for c in cards))
        except OSError as e:  # a read-only shared cache: the cards are still right, only not kept
            warnings.warn(f"direction cards not cached in {path.parent}: {e}")
    return cards


def cards_frame(cards: Sequence[Card]):
    """The cards as a DataFrame (one row per direction; contexts and tokens as lists of dicts)."""
    import pandas as pd  # only here: the plan imports this module and not pandas

    return pd.DataFrame([c.row() for c in cards])


__all__ = ["CARDS_VERSION", "Card", "Context", "Direction", "KINDS", "activation_directions", "cached_explain", "card_lines",
           "cards_frame", "cards_html", "cards_section", "contexts", "delta_directions", "edit_directions", "explain",
           "final_norm_gain", "logit_lens", "prediction_directions", "read_cards", "unembedding"]
