"""Real headless Chromium (Debian's package, driven by Playwright) and a real uvicorn server."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, sync_playwright

from drip.settings import Settings
from tests.factories import tick
from tests.mailserver import free_port
from tests.waiting import wait_until

CHROMIUM = "/usr/bin/chromium"
#: As root, without a sandbox; no background traffic to the (closed) internet.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def run_tick(settings: Settings) -> None:
    """A scheduler pass in its own thread: Playwright's sync API holds this thread's loop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(tick, settings).result(timeout=60)


@contextmanager
def serving(app: FastAPI, port: int | None = None) -> Iterator[str]:
    """Run `app` under uvicorn in a background thread (on `port`, else a free one); yields
    its base URL."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(
        lambda: server.started,
        10,
        "uvicorn to start",
        every=0.02,
        abort=lambda: None if thread.is_alive() else "its thread ended",
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
