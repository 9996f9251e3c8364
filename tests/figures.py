"""Checks a reader's eye makes of a figure, as tests: text that overlaps other text, the intervals actually
drawn, ticks that are not whole numbers. ``capture`` keeps the figures a module's plot functions save."""

from __future__ import annotations

from itertools import combinations

import numpy as np
from matplotlib.container import ErrorbarContainer
from matplotlib.text import Text


def capture(monkeypatch, module) -> list:
    """The figures ``module``'s plot functions pass to its ``save_figure`` from now on (still saved)."""
    figures, real = [], module.save_figure
    monkeypatch.setattr(module, "save_figure", lambda fig, path, **kw: figures.append(fig) or real(fig, path, **kw))
    return figures


def _in_view(ax, labels, locs, lim) -> list[Text]:
    lo, hi = sorted(lim)
    return [t for t, x in zip(labels, locs) if lo - 1e-9 <= x <= hi + 1e-9]


def renderer(fig):
    """A drawn renderer of ``fig`` (an Agg canvas: a saved and closed figure has none of its own)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def texts(fig) -> list[Text]:
    """Every visible, non-empty piece of text a reader sees: the figure's, each axes' titles, axis labels,
    tick labels inside the view, legend entries (the axes' and the figure's)."""
    found = list(fig.texts) + [t for leg in fig.legends for t in leg.get_texts()] + [t for t in (getattr(fig, "_suptitle", None), getattr(fig, "_supxlabel", None),
                                           getattr(fig, "_supylabel", None)) if t is not None]
    for ax in fig.axes:
        found += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        found += _in_view(ax, ax.get_xticklabels(), ax.get_xticks(), ax.get_xlim())
        found += _in_view(ax, ax.get_yticklabels(), ax.get_yticks(), ax.get_ylim())
        if ax.get_legend() is not None:
            found += ax.get_legend().get_texts()
    return [t for t in dict.fromkeys(found) if t.get_visible() and t.get_text().strip()]


def text_overlaps(fig, pad: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of texts whose boxes overlap on the rendered figure (boxes shrunk by ``pad`` pixels)."""
    r = renderer(fig)
    boxes = [(t.get_text(), t.get_window_extent(r).padded(-pad)) for t in texts(fig)]
    return [(a, b) for (a, x), (b, y) in combinations(boxes, 2) if x.overlaps(y)]


def drawn_intervals(ax) -> list[tuple[float, float]]:
    """The (low, high) of every error bar drawn on ``ax`` (vertical or horizontal), NaN ones left out."""
    out = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            for coll in c.lines[2]:
                for seg in coll.get_segments():
                    seg = np.asarray(seg)
                    if seg.shape == (2, 2) and np.isfinite(seg).all():
                        axis = 1 if seg[0, 0] == seg[1, 0] else 0
                        out.append((float(seg[:, axis].min()), float(seg[:, axis].max())))
    return out


def whole_ticks(axis) -> bool:
    """Whether every tick inside the view of a matplotlib axis (``ax.xaxis``) sits on a whole number."""
    lo, hi = sorted(axis.get_view_interval())
    locs = [x for x in axis.get_majorticklocs() if lo - 1e-9 <= x <= hi + 1e-9]
    return bool(locs) and all(abs(x - round(x)) < 1e-9 for x in locs)
