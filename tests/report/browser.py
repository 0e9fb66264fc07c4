"""Headless Chromium fixtures: HTML reports are checked as a browser renders them.

Imported by the conftest of every test folder that opens report pages (tests/report, tests/measure).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["chromium", "render_dom"]

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium (``make test`` installs it via the Makefile ``browser`` target)."""
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        pytest.skip("chromium is not installed (run `make browser`, or apt-get install chromium): "
                    "HTML reports cannot be rendered in a real browser here")
    return exe


@pytest.fixture
def render_dom(chromium, tmp_path):
    """Load an HTML file in headless Chromium; return the rendered DOM (``--dump-dom``) as text."""

    def render(html_path: Path, screenshot: Path | None = None) -> str:
        profile = tmp_path / f"chromium-profile-{html_path.stem}"
        url = Path(html_path).resolve().as_uri()
        args = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        proc = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if screenshot is not None:
            shot = subprocess.run([*args, "--window-size=1200,1600", f"--screenshot={screenshot}", url],
                                  capture_output=True, text=True, timeout=120)
            assert shot.returncode == 0, shot.stderr[-2000:]
        return proc.stdout

    return render
