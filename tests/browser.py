"""Open an HTML page in headless Chromium as a reader would, and report what the reader met: console
errors, images that did not load, where the first table sits in a 1280×800 window; a screenshot is kept."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--window-size=1280,800", "--virtual-time-budget=5000"]

#: appended to a copy of the page: what the reader met, written where --dump-dom shows it
_PROBE = """<script>window.addEventListener("load",function(){var imgs=Array.from(document.images);
var t=document.querySelector("table");var r=t?t.getBoundingClientRect():null;
var out={images:imgs.length,broken:imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0)}).map(function(i){return i.alt||i.src.slice(0,40)}),
external:Array.from(document.querySelectorAll("[src],link[href]")).map(function(e){return e.getAttribute("src")||e.getAttribute("href")}).filter(function(s){return /^(https?:)?\\/\\//.test(s)}),
first_table_top:r?r.top:null,tables:document.querySelectorAll("table").length};
var pre=document.createElement("pre");pre.id="rwedit-probe";pre.textContent=JSON.stringify(out);document.body.appendChild(pre)});</script>"""


def need_chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    return CHROMIUM


def open_page(page: Path, workdir: Path) -> dict:
    """What a reader of ``page`` meets (see ``_PROBE``) plus ``console_errors`` and ``screenshot``."""
    chromium = need_chromium()
    probe = workdir / f"{page.stem}.probe.html"
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    profile = workdir / "chromium-profile"
    run = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="rwedit-probe">(.*?)</pre>', run.stdout, re.S)
    assert m, f"the page did not finish loading in Chromium:\n{run.stderr[-2000:]}"
    found = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    found["console_errors"] = [ln for ln in run.stderr.splitlines() if "CONSOLE" in ln and
                               re.search(r"Uncaught|Error", ln)]
    shot = workdir / f"{page.stem}.png"
    subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    found["screenshot"] = shot if shot.exists() else None
    return found
