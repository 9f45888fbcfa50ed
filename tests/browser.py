"""Open a page in headless Chromium (Debian `chromium`) the way a person would, and check it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def check_page(html: Path, work: Path, *, height: int = 2000) -> Path:
    """Assert every image of ``html`` loaded, no script error or console message occurred (CSP violations and
    failed loads are console messages), and a screenshot is not blank; return the screenshot."""
    from PIL import Image

    assert CHROMIUM is not None, "chromium is not installed"
    url = html.resolve().as_uri()
    dom = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile1'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    html_tag = re.search(r"<html[^>]*>", dom.stdout)
    assert html_tag, dom.stdout[:500]
    n_img = len(re.findall(r"<img ", dom.stdout))
    assert n_img > 0
    assert f'data-images-ok="{n_img}/{n_img}"' in html_tag.group(0), html_tag.group(0)
    assert 'data-js-errors="0"' in html_tag.group(0)
    assert not re.search(r"<img [^>]*data-broken=", dom.stdout)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console

    shot = work / "shot.png"
    res = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile2'}", f"--screenshot={shot}",
         f"--window-size=1280,{height}", url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (height, 1280)
    assert pixels.std() > 10  # not a blank page
    assert (pixels < 100).mean() > 0.01  # the dark header and text are there
    return shot
