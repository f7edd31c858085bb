"""deploy/: the systemd units parse, and the nginx and Caddy examples, in front of a real
`drip serve`, hand drip the reader's address and not one a visitor forged."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select

from drip.db import read_scope
from drip.models import Subscriber
from drip.settings import Settings
from drip.subscribers import confirm_salt
from drip.tokens import make_token
from tests.mailserver import free_port
from tests.processes import drip_serve, serving

pytestmark = pytest.mark.process

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
FORM = {"email": "ann@example.com", "name": "Ann", "consent": "yes", "website": ""}
#: The reader, as the proxy sees them: another loopback address than the proxy's own
#: 127.0.0.1, which is the trusted one.
READER = "127.0.0.2"


def test_the_units_are_hardened_and_share_one_environment_file() -> None:
    assert {u.name for u in UNITS} == {
        "drip-serve.service",
        "drip-worker@.service",
        "drip-inbound.service",
    }
    for unit in UNITS:
        text = unit.read_text()
        for line in (
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "StateDirectory=drip",
            "EnvironmentFile=/etc/drip/drip.env",
            "Restart=on-failure",
            "User=drip",
        ):
            assert re.search(f"^{re.escape(line)}$", text, re.M), f"{unit.name}: no {line}"
    env = (DEPLOY / "drip.env.example").read_text()
    assert "DRIP_TRUSTED_PROXIES=127.0.0.1\n" in env
    assert "DRIP_DATABASE_URL=sqlite:////var/lib/drip/" in env


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)
def test_the_units_parse_with_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify also checks that ExecStart= exists: point it at this drip.
    drip = Path(sys.executable).parent / "drip"
    assert drip.exists(), drip
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/drip/venv/bin/drip", str(drip)))
        copies.append(str(copy))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *copies],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # An unknown or misspelt key is only a warning: none may name our units.
    ours = [line for line in output.splitlines() if str(tmp_path) in line]
    assert not ours, output


def proxy_block() -> str:
    """The `location / { ... }` block of deploy/nginx/drip.conf, as written there."""
    text = (DEPLOY / "nginx" / "drip.conf").read_text()
    found = re.search(r"^    location / \{\n.*?^    \}\n", text, re.M | re.S)
    assert found, "deploy/nginx/drip.conf has no `location / {` block"
    assert "proxy_pass http://127.0.0.1:8000;" in found.group(0)
    return found.group(0)


@contextmanager
def nginx(tmp_path: Path, upstream: int) -> Iterator[str]:
    """nginx in the foreground with the example's proxy block, plain HTTP on loopback."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    root = tmp_path / "nginx"
    root.mkdir()
    location = proxy_block().replace("127.0.0.1:8000", f"127.0.0.1:{upstream}")
    temp = "\n".join(
        f"    {kind}_temp_path {root / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    (root / "nginx.conf").write_text(
        f"daemon off;\nmaster_process off;\npid {root / 'nginx.pid'};\n"
        f"error_log {root / 'error.log'} info;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        f"    access_log {root / 'access.log'};\n{temp}\n"
        f"    server {{\n        listen 127.0.0.1:{port};\n        server_name localhost;\n"
        f"{location}    }}\n}}\n"
    )
    base = f"http://127.0.0.1:{port}"
    command = [binary, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", "stderr"]
    with serving(command, f"{base}/healthz", root / "nginx.log", stop=signal.SIGQUIT):
        yield base


def caddy_site() -> str:
    """The site block of deploy/caddy/Caddyfile, as written there."""
    text = (DEPLOY / "caddy" / "Caddyfile").read_text()
    found = re.search(r"^course\.example\.com \{\n.*?^\}\n", text, re.M | re.S)
    assert found, "deploy/caddy/Caddyfile has no `course.example.com {` block"
    assert "reverse_proxy 127.0.0.1:8000" in found.group(0)
    return found.group(0)


@contextmanager
def caddy(tmp_path: Path, upstream: int) -> Iterator[str]:
    """Caddy with the example's site block, served as plain HTTP on loopback."""
    port = free_port()
    root = tmp_path / "caddy"
    root.mkdir()
    site = (
        caddy_site()
        .replace("course.example.com", f"http://127.0.0.1:{port}")
        .replace("127.0.0.1:8000", f"127.0.0.1:{upstream}")
    )
    (root / "Caddyfile").write_text("{\n\tadmin off\n}\n\n" + site)
    base = f"http://127.0.0.1:{port}"
    command = ["caddy", "run", "--adapter", "caddyfile", "--config", str(root / "Caddyfile")]
    # Caddy keeps state under $HOME and the XDG folders: the test's own, not the machine's.
    env = {
        **os.environ,
        "HOME": str(root),
        "XDG_DATA_HOME": str(root),
        "XDG_CONFIG_HOME": str(root),
    }
    with serving(command, f"{base}/healthz", root / "caddy.log", env=env):
        yield base


PROXIES = {"nginx": (nginx, "/usr/sbin/nginx"), "caddy": (caddy, "/usr/bin/caddy")}


@pytest.mark.parametrize("proxy", sorted(PROXIES))
def test_a_signup_through_the_proxy_example_records_the_readers_address(
    proxy: str, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    start, binary = PROXIES[proxy]
    if shutil.which(proxy) is None and not Path(binary).exists():
        pytest.fail(f"{proxy} is not installed: make test installs it (scripts/system-packages.sh)")
    env = {"DRIP_TRUSTED_PROXIES": "127.0.0.1"}
    with drip_serve(settings, tmp_path / "serve.log", **env) as direct:
        upstream = int(direct.rsplit(":", 1)[1])
        with (
            start(tmp_path, upstream) as base,
            httpx.Client(
                base_url=base,
                transport=httpx.HTTPTransport(local_address=READER),
                timeout=10,
            ) as reader,
        ):
            # The visitor forges X-Forwarded-For; the proxy replaces or appends what it saw.
            forged = {"X-Forwarded-For": "6.6.6.6"}
            assert reader.post("/subscribe", data=FORM, headers=forged).status_code == 303
            token = _confirm_token(settings, engine, "ann@example.com")
            assert reader.post(f"/confirm/{token}", headers=forged).status_code == 200
            # Straight to drip, not through a trusted proxy, the same header counts for nothing.
            direct_form = FORM | {"email": "bob@example.com"}
            with httpx.Client(
                base_url=direct, transport=httpx.HTTPTransport(local_address=READER), timeout=10
            ) as bypass:
                assert (
                    bypass.post("/subscribe", data=direct_form, headers=forged).status_code == 303
                )
                token = _confirm_token(settings, engine, "bob@example.com")
                assert bypass.post(f"/confirm/{token}", headers=forged).status_code == 200
    with read_scope(engine) as session:
        consent = dict(session.execute(select(Subscriber.email, Subscriber.consent_ip)).all())
    assert consent["ann@example.com"] == READER
    assert consent["bob@example.com"] == READER


def _confirm_token(settings: Settings, engine: Engine, email: str) -> str:
    with read_scope(engine) as session:
        sub = session.execute(select(Subscriber).where(Subscriber.email == email)).scalar_one()
    return make_token(settings.require_secret(), confirm_salt(sub), "confirm")
