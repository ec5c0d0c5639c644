"""report.html in a real browser: headless Chromium over the DevTools protocol.

Checks that every figure decoded (``naturalWidth > 0``), that the page logged no console error, threw
no exception and fetched nothing from the network, and saves a full-page screenshot (kept in
``$MEDRES_SCREENSHOT_DIR`` when set, else in pytest's tmp_path).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import websocket  # websocket-client (the dev extra) drives Chromium's DevTools protocol

pytestmark = pytest.mark.browser

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):  # CI installs Chromium (.ci/run): a missing browser there is a failure
        pytest.fail("Chromium is not installed, but .ci/run should have installed it")
    pytest.skip("Chromium is not installed (apt-get install -y chromium)")


class DevTools:
    """A minimal DevTools-protocol session on one page."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(method)
            self.events.append(json.loads(self.ws.recv()))


@pytest.fixture
def browser(tmp_path):
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [_chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("Chromium did not start its DevTools endpoint")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        session = DevTools(page["webSocketDebuggerUrl"])
        yield session
        session.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_report_renders_in_chromium(bundle_dir, browser, tmp_path):
    for domain in ("Runtime", "Log", "Page", "Network"):
        browser.send(f"{domain}.enable")
    browser.send(
        "Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False
    )
    browser.send("Page.navigate", url=(bundle_dir / "report.html").resolve().as_uri())
    browser.wait_for("Page.loadEventFired")
    state = browser.send(
        "Runtime.evaluate",
        returnByValue=True,
        expression="""JSON.stringify({
        images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth})),
        title: document.title,
        auroc: (document.getElementById('pooled-auroc') || {}).textContent,
        height: document.documentElement.scrollHeight})""",
    )["result"]["value"]
    state = json.loads(state)
    assert len(state["images"]) >= 8
    broken = [i["alt"] for i in state["images"] if not (i["complete"] and i["w"] > 0)]
    assert broken == [], f"figures that did not load: {broken}"
    assert state["title"].startswith("medres cohort evaluation")
    assert state["auroc"] and float(state["auroc"]) > 0.5

    errors = [
        e
        for e in browser.events
        if e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert errors == [], errors
    fetched = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert all(u.startswith(("file:", "data:")) for u in fetched), fetched

    shot = browser.send(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": 1280, "height": min(state["height"], 12000), "scale": 1},
    )
    out = Path(os.environ.get("MEDRES_SCREENSHOT_DIR", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    png = out / "report_screenshot.png"
    png.write_bytes(base64.b64decode(shot["data"]))
    assert png.stat().st_size > 50_000


def test_every_table_fits_a_1400_px_window(bundle_dir, browser):
    """No table scrolls sideways (the per-fold table's NPV, F1, MCC and threshold stay on screen)."""
    browser.send("Page.enable")
    browser.send(
        "Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False
    )
    browser.send("Page.navigate", url=(bundle_dir / "report.html").resolve().as_uri())
    browser.wait_for("Page.loadEventFired")
    widths = json.loads(browser.send(
        "Runtime.evaluate",
        returnByValue=True,
        expression="JSON.stringify(Array.from(document.querySelectorAll('.tablewrap'))"
                   ".map(w => [w.scrollWidth, w.clientWidth]))",
    )["result"]["value"])
    assert len(widths) >= 5
    assert [w for w in widths if w[0] > w[1]] == []
