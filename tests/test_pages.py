"""Reports as self-contained pages: figures embedded, nothing fetched, tables sortable, direction cards with
the driving token highlighted; opened in headless Chromium as a reader would (the checker itself is shown
to catch a broken image and a script error)."""

from __future__ import annotations

import matplotlib
import pytest

from browser import open_page
from rwedit.pages import render, write_pages
from rwedit.probes.directions import cards_html

matplotlib.use("Agg")

CARD = {"kind": "activation", "layer": 0, "role": "q", "side": "read", "index": 0, "value": 3.2, "share": 0.12,
        "top_contexts": [{"value": 2.0, "sequence": 0, "position": 3, "token": " <cat>", "left": "the",
                          "right": " sat"}], "bottom_contexts": [],
        "promoted": [{"token": " dog", "logit": 1.2}], "suppressed": [{"token": " x", "logit": -1.0}]}


@pytest.fixture
def report(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([1, 2, 3])
    fig.savefig(tmp_path / "fig.png")
    plt.close(fig)
    lines = ["# A report", "", "## Findings", "", "| claim | verdict | effect |", "|---|---|---|",
             "| a | **yes** | 0.1 [0.02, 0.2] |", "| b | no | −0.3 [−0.5, −0.1] |", "", "![fig](fig.png)"]
    md = write_pages(tmp_path, lines, extra_html=cards_html([CARD]))
    return md, tmp_path / "report.html"


def test_the_page_is_self_contained_and_says_what_the_markdown_says(report):
    md, page = report
    text = page.read_text()
    assert md.read_text().startswith("# A report") and "<title>A report</title>" in text
    assert 'src="data:image/png;base64,' in text and 'src="fig.png"' not in text
    assert "http://" not in text and "https://" not in text
    assert "<th>verdict</th>" in text and "<strong>yes</strong>" in text
    assert '<span class="hl"> &lt;cat&gt;</span>' in text  # the card's token highlighted, escaped


def test_a_missing_figure_stays_a_named_relative_link(tmp_path):
    text = render("![absent](absent.png)", tmp_path, "t")
    assert 'src="absent.png"' in text and 'alt="absent"' in text


def test_chromium_opens_the_page_with_everything_loaded(report, tmp_path):
    _, page = report
    met = open_page(page, tmp_path)
    assert met["console_errors"] == [] and met["broken"] == [] and met["external"] == []
    assert met["images"] == 1 and 0 <= met["first_table_top"] < 800 and met["screenshot"] is not None


def test_the_browser_check_catches_a_broken_image_and_a_script_error(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(render("# bad\n\n![gone](gone.png)\n", tmp_path, "bad").replace(
        "</body>", "<script>undefined_function_call();</script></body>"))
    met = open_page(page, tmp_path)
    assert met["broken"] == ["gone"] and met["console_errors"], met
