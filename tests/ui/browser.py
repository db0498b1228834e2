"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol.

The Dagster UI is a React app that fills the page from GraphQL after the load event, so a page
counts as shown only once the texts a test expects are in the DOM; a screenshot is taken either
way (the evidence of a failure too).
"""

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect


class PageNotShown(AssertionError):
    """A page that failed to load or never showed the texts expected of it."""


class Chromium:
    """One headless browser with one tab; stop it with :meth:`close` (by its process id)."""

    def __init__(self, profile: Path, *, width: int = 1600, height: int = 1000):
        binary = shutil.which("chromium")
        if binary is None:
            raise RuntimeError("chromium is not installed: run `make browser` (Debian's package)")
        profile.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # CI runs as root
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",  # a free port; Chromium writes it to the profile
                "--remote-allow-origins=*",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            port = self._port(profile / "DevToolsActivePort")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
                [page] = [t for t in json.loads(answer.read()) if t["type"] == "page"][:1]
            self.socket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        except BaseException:
            self.close()
            raise
        self._ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _port(self, active_port: Path) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            if active_port.exists() and active_port.read_text().strip():
                return int(active_port.read_text().split()[0])
            time.sleep(0.2)
        raise RuntimeError("chromium did not open its DevTools port within 60 s")

    def call(self, method: str, **params) -> dict:
        """Send one DevTools command and return its result (events in between are skipped)."""
        ident = next(self._ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def text(self) -> str:
        answer = self.call("Runtime.evaluate", expression="document.body.innerText")
        return answer["result"].get("value") or ""

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def show(self, url: str, expected: list[str], screenshot: Path, *, timeout: float = 90) -> str:
        """Open ``url``, wait until every expected text is on the page, save a screenshot (and
        the page's text next to it).

        Returns the page's text. Raises ``PageNotShown`` naming the url, the missing texts and
        the screenshot when the navigation fails or the texts do not appear within ``timeout``.
        """
        navigation = self.call("Page.navigate", url=url)
        if navigation.get("errorText"):
            self.screenshot(screenshot)
            raise PageNotShown(f"{url}: {navigation['errorText']} (screenshot {screenshot})")
        return self.wait_for(expected, screenshot, timeout=timeout, what=url)

    def wait_for(
        self, expected: list[str], screenshot: Path, *, timeout: float = 90, what: str = "page"
    ) -> str:
        """Wait until every expected text is on the current page, then save the screenshot."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            missing = [e for e in expected if e not in text]
            if not missing or time.monotonic() > deadline:
                time.sleep(1.0)  # let the graph's layout and the images settle for the picture
                self.screenshot(screenshot)
                text = self.text()
                screenshot.with_suffix(".txt").write_text(text)
                if missing:
                    raise PageNotShown(
                        f"{what}: {missing} not shown after {timeout:g} s (screenshot "
                        f"{screenshot}); the page read: {text[:1500]!r}"
                    )
                return text
            time.sleep(1.0)

    def shortcut(self, key: str, code: str, *, alt: bool = False) -> None:
        """Press a keyboard shortcut on the page (``alt``: with the Alt key held)."""
        modifiers = 1 if alt else 0
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=code, modifiers=modifiers)

    def click(self, label: str) -> None:
        """Click the innermost element whose text is exactly ``label`` (a tab, a button)."""
        script = f"""(() => {{
            const label = {json.dumps(label)};
            const found = [...document.querySelectorAll('body *')].filter(
                e => e.innerText && e.innerText.trim() === label);
            if (!found.length) return false;
            found[found.length - 1].click();
            return true;
        }})()"""
        answer = self.call("Runtime.evaluate", expression=script, returnByValue=True)
        if not answer["result"].get("value"):
            raise PageNotShown(f"nothing labelled {label!r} to click on the page")

    def close(self) -> None:
        socket = getattr(self, "socket", None)
        if socket is not None:
            socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
