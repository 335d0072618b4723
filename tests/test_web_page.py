"""The status page in a real browser: headless Chromium, driven by selenium through
Debian's chromedriver, against real daemons on a real etcd. A child started with
ringctl appears, and a node killed with SIGKILL turns offline, without a reload."""

from __future__ import annotations

import os
import shutil
import signal
from typing import TYPE_CHECKING

import psutil
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from ringd.testing import kill_pids, wait_gone

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from .conftest import Cluster

INSTALL = "apt-get install -y chromium chromium-driver"
# No network here, and none wanted: nothing in the background may reach out.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
]


@pytest.fixture
def browser(short_tmp: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium; it, chromedriver and every process they started are
    killed by pid at the end."""
    driver_path = shutil.which("chromedriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if driver_path is None or chromium is None:
        pytest.fail(f"chromium and chromedriver are needed for this test: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = str(short_tmp / "chromium-profile")  # also marks its processes (crashpad)
    for arg in [*CHROMIUM_ARGS, f"--user-data-dir={profile}"]:
        options.add_argument(arg)
    service = Service(executable_path=driver_path, log_output=str(short_tmp / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    assert service.process is not None
    root = service.process.pid
    try:
        yield driver
    finally:
        started = {root, *browser_pids(profile)}
        try:
            started |= {p.pid for p in psutil.Process(root).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
        try:
            driver.quit()
        finally:
            left = wait_gone(started | browser_pids(profile), 10)
            kill_pids(left)
            assert not wait_gone(left, 10), f"browser processes left: {left}"


def browser_pids(profile: str) -> set[int]:
    """Chromium's processes started with ``profile`` in their command line (the
    crash handler leaves the process tree)."""
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        if any(profile in arg for arg in process.info["cmdline"] or ()):
            found.add(process.pid)
    return found


def cell(driver: webdriver.Chrome, row: str, column: str) -> str | None:
    """The text of a cell of the page's tables, None while the row is not there."""
    try:
        return driver.find_element(By.CSS_SELECTOR, f"tr[{row}] td.{column}").text
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def test_the_page_follows_the_cluster_live(
    cluster: Cluster, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    a = cluster.daemon("a", start=False)
    a.extra_args = ["--web-address", "127.0.0.1:0"]
    a.start()
    b = cluster.daemon("b")
    url = a.call("status")["web"]
    wait = WebDriverWait(browser, 20, poll_frequency=0.1)

    browser.get(url)
    wait.until(lambda d: cell(d, 'data-node="b"', "status") == "online")
    browser.execute_script("window.ringdTestMarker = 'no reload since'")

    started = a.ctl(
        "start-child", "web1", "--env", f"TEST_CLUSTER={cluster.name}", "--wait",
        "--", "sleep", "600",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    wait.until(lambda d: cell(d, 'data-instance="web1"', "state") == "running")
    node = cell(browser, 'data-instance="web1"', "node")
    assert node in ("a", "b")
    assert cell(browser, 'data-instance="web1"', "pid") == str(a.call("find", id="web1")["pid"])

    assert b.process is not None
    os.kill(b.process.pid, signal.SIGKILL)  # its lease (TTL 2 s) expires
    b.process.wait(timeout=10)
    wait.until(lambda d: cell(d, 'data-node="b"', "status") == "offline")
    # web1 runs on a now, wherever it ran before.
    wait.until(lambda d: cell(d, 'data-instance="web1"', "node") == "a")
    wait.until(lambda d: cell(d, 'data-instance="web1"', "state") == "running")
    events = browser.find_element(By.ID, "events").text
    assert "node b: online -> offline" in events, events
    assert browser.execute_script("return window.ringdTestMarker") == "no reload since"

    shot = tmp_path / "status-page.png"  # kept by pytest (its last three runs)
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
