"""A page opened in real headless Chromium (Debian's package, which `make test` installs): what it rendered,
measured by the browser itself, and a screenshot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

# no network, no first-run work: the machine's closed network refuses Chromium's background connections
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=10000")

# appended to a copy of the page: after load, what each image decoded to and where the table and headings
# were laid out, written into the DOM that --dump-dom prints
MEASURE = """<script>window.addEventListener("load", () => {
  const box = e => { const r = e.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; };
  const out = {images: [...document.images].map(i => ({id: i.id, complete: i.complete, width: i.naturalWidth,
                                                        shown: box(i)})),
               tables: [...document.querySelectorAll("table")].map(t => ({rows: t.rows.length, shown: box(t)})),
               headings: [...document.querySelectorAll("h1, h2")].map(h => h.textContent)};
  const pre = document.createElement("pre"); pre.id = "measured"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise RuntimeError("no Chromium on this machine: `make test` installs Debian's chromium package")
    return found


def rendered(page: Path, work: Path) -> dict:
    """What Chromium laid out for `page` (images decoded, tables, headings) and a screenshot's path."""
    work.mkdir(parents=True, exist_ok=True)
    measured = work / f"measured-{page.name}"
    measured.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    common = [chromium(), *FLAGS, f"--user-data-dir={work / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", measured.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, flags=re.S)
    if not found:
        raise AssertionError(f"the page's measuring script never ran: {dom[:300]!r}")
    out = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                     .replace("&gt;", ">"))
    shot = work / f"{page.stem}.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    out["screenshot"] = shot
    return out


def dom(url: str, work: Path) -> str:
    """The DOM Chromium holds once `url` has loaded and its scripts have run (a single-page app's, too)."""
    work.mkdir(parents=True, exist_ok=True)
    return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={work / 'profile'}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120, check=True).stdout
