"""A real headless browser for tests that check what a page renders: Debian's chromium
(`make test` installs it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def rendered_dom(page: Path) -> str:
    """The DOM chromium builds from ``page`` (after its scripts ran), as HTML."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "no chromium on PATH: `make browser` (Debian: apt-get install chromium)"
    # --no-sandbox: CI runs the tests as root, where chromium's sandbox refuses to start.
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
