"""Every Markdown report is also written as one self-contained HTML page: rendered from the same text with
markdown-it-py, figures embedded as data URIs, tables sortable, the findings first; a caller may append its own
HTML (the direction cards of :func:`rwedit.probes.directions.cards_html`).
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path
from typing import Iterable

from rwedit.outputs import write_text

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:0 auto;padding:12px 20px;color:#1b1f24}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.2em;margin-top:1.4em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f5f7;cursor:pointer;user-select:none;white-space:nowrap}th[data-dir=asc]:after{content:" ▲"}th[data-dir=desc]:after{content:" ▼"}
tr:nth-child(even) td{background:#fafbfc}img{max-width:100%;height:auto;border:1px solid #eee;margin:.4em 0}
code{background:#f3f5f7;padding:0 3px;border-radius:3px;font-size:90%}pre{background:#f6f8fa;padding:8px;overflow:auto}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 10px;width:360px;font-size:13px}
.card h4{margin:0 0 4px;font-size:13px}.ctx{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;margin:2px 0}
.hl{background:#ffe08a;font-weight:600;padding:0 1px}.neg .hl{background:#a8d4ff}.tok{font-family:ui-monospace,monospace}
.muted{color:#57606a}
"""

_SORT = """
document.querySelectorAll("table").forEach(function(t){t.querySelectorAll("th").forEach(function(th,i){
th.addEventListener("click",function(){var body=t.tBodies[0];if(!body)return;var rows=Array.from(body.rows);
var dir=th.dataset.dir==="asc"?"desc":"asc";t.querySelectorAll("th").forEach(function(h){delete h.dataset.dir});th.dataset.dir=dir;
function key(r){var s=(r.cells[i]||{}).textContent||"";var n=parseFloat(s.replace(/[−–]/g,"-").replace(/[^0-9eE+.\\-]/g,""));return isNaN(n)?s:n}
rows.sort(function(a,b){var x=key(a),y=key(b);var c=(typeof x==="number"&&typeof y==="number")?x-y:String(x).localeCompare(String(y));return dir==="asc"?c:-c});
rows.forEach(function(r){body.appendChild(r)})})})});
"""


def _renderer():
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table")


def _embed_images(body: str, folder: Path) -> str:
    """Replace each ``<img src="relative.png">`` of ``folder`` by a data URI (a missing file is left as is and
    named in its alt text, so the page says what is absent rather than showing a broken link silently)."""
    def sub(m: re.Match) -> str:
        src = html.unescape(m.group(2))
        path = (folder / src)
        if "://" in src or src.startswith("data:") or not path.is_file():
            return m.group(0)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = base64.b64encode(path.read_bytes()).decode()
        return f'{m.group(1)}data:{mime};base64,{data}{m.group(3)}'
    return re.sub(r'(<img src=")([^"]+)(")', sub, body)


def render(markdown: str, folder: str | Path, title: str, extra_html: str = "") -> str:
    """The self-contained page of a Markdown report whose relative figures live in ``folder``, with
    ``extra_html`` (e.g. :func:`rwedit.probes.directions.cards_html`) after it."""
    body = _embed_images(_renderer().render(markdown), Path(folder)) + extra_html
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{_STYLE}</style></head>"
            f"<body>{body}<script>{_SORT}</script></body></html>\n")


def write_pages(folder: str | Path, lines: Iterable[str], name: str = "report", title: str | None = None,
                extra_html: str = "") -> Path:
    """Write ``NAME.md`` (the lines) and ``NAME.html`` (the same, self-contained, ``extra_html`` after it) into
    ``folder``; returns the Markdown path."""
    folder = Path(folder)
    text = "\n".join(lines).rstrip("\n") + "\n"
    md = write_text(folder / f"{name}.md", text)
    first = next((ln[2:].strip() for ln in text.splitlines() if ln.startswith("# ")), name)
    write_text(folder / f"{name}.html", render(text, folder, title or first, extra_html))
    return md


def open_in_browser(page: str | Path) -> str:
    """Open ``page`` in the user's browser and say so; where there is no display (a server, a container) nothing
    is opened and the line names the file to open elsewhere (it is self-contained)."""
    import os
    import sys
    import webbrowser

    page = Path(page).resolve()
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return f"no display here, nothing opened: copy {page} anywhere and open it in a browser (it is self-contained)"
    try:
        opened = webbrowser.open(page.as_uri())
    except webbrowser.Error:
        opened = False
    return f"opened {page} in the browser" if opened else f"no browser found: open {page} in one"


__all__ = ["open_in_browser", "render", "write_pages"]
