"""build/report.html in a real browser: headless Chromium renders the smoke build's page to a screenshot with no
console message (the page has no script, so any message is an error), and the screenshot is not blank."""
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install "
                                                          "chromium; make test installs it where it can)")
# Headless, offline and without a profile: nothing but the page is loaded.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0")


def render(page, screenshot, profile, size=(1200, 3000)) -> list[str]:
    """Screenshot `page` with Chromium; returns the console messages it logged."""
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                             f"--screenshot={screenshot}", page.resolve().as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and screenshot.is_file(), f"chromium failed:\n{result.stderr[-3000:]}"
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def test_console_messages_are_caught(tmp_path):
    """The check below can fail: a page whose script errors is reported."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>undefined_function()</script></body></html>")
    messages = render(page, tmp_path / "broken.png", tmp_path / "profile", size=(400, 300))
    assert any("undefined_function is not defined" in line for line in messages)


def test_report_renders_without_console_errors(smoke_build, tmp_path):
    screenshot = tmp_path / "report.png"
    messages = render(smoke_build / "build" / "report.html", screenshot, tmp_path / "profile")
    assert messages == []
    pixels = np.asarray(Image.open(screenshot).convert("L"))
    assert pixels.shape == (3000, 1200)
    # text, tables and pictures: a good share of non-white pixels, and not one flat colour
    assert (pixels < 200).mean() > 0.02 and pixels.std() > 20
