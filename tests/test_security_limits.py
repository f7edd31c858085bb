"""Limits hold where tests/test_web.py and tests/test_admin.py do not look: per client
address, across addresses, and under a flood of addresses.

test_web.py proves the per-IP and per-address signup limits from one client, and
test_admin.py the growing login delays from one address; here, one client's abuse
must not shut the door on another, and changing IP must not get round a limit.
"""

from __future__ import annotations

import asyncio
import base64
import time
import warnings
from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy import Engine, select
from starlette.exceptions import StarletteDeprecationWarning

from drip.db import get_engine, read_scope, upgrade
from drip.models import MessageKind, OutboxMessage
from drip.settings import Settings, load_settings
from drip.web.admin import AdminGuard, build_admin_router
from drip.web.app import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

FORM = {"email": "ann@example.com", "name": "Ann", "consent": "yes", "website": ""}


def _from(app: FastAPI, ip: str) -> TestClient:
    return TestClient(app, follow_redirects=False, client=(ip, 40000))


def test_one_clients_signups_do_not_use_up_anothers(settings: Settings) -> None:
    """The per-IP limit is per IP: a bot that spends its ten posts a minute leaves a
    visitor from elsewhere able to sign up."""
    app = create_app(settings)
    bot = _from(app, "203.0.113.7")
    codes = [bot.post("/subscribe", data={"email": "nope"}).status_code for _ in range(11)]
    assert codes == [422] * 10 + [429]
    assert _from(app, "198.51.100.2").post("/subscribe", data=FORM).status_code == 303


def test_changing_ip_does_not_get_round_the_per_address_limit(
    settings: Settings, engine: Engine
) -> None:
    """An address signed up from four IPs within the hour: the fourth is refused, and the
    address gets one confirmation email, not one per post (no mail-bombing a victim)."""
    app = create_app(settings)
    codes = [
        _from(app, f"192.0.2.{n}").post("/subscribe", data=FORM).status_code for n in range(1, 5)
    ]
    assert codes == [303, 303, 303, 429]
    with read_scope(engine) as session:
        kinds = list(session.execute(select(OutboxMessage.kind)).scalars())
    assert kinds == [MessageKind.confirm]


def _basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}


async def _timed_get(app: FastAPI, ip: str, password: str) -> tuple[int, float]:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as client:
        started = time.monotonic()
        response = await client.get("/admin", headers=_basic(password))
        return response.status_code, time.monotonic() - started


def _admin_settings(tmp_path: Path) -> Settings:
    """The login is all these tests are about: one SQLite file serves the dashboard."""
    url = f"sqlite:///{tmp_path / 'admin.db'}"
    upgrade(get_engine(url))
    return load_settings(
        _env_file=None, database_url=url, admin_user="admin", admin_password="right-one"
    )


async def test_an_attackers_delay_does_not_slow_the_operator_elsewhere(tmp_path: Path) -> None:
    """Wrong passwords slow the address they come from, not the operator on another one."""
    admin = _admin_settings(tmp_path)
    app = FastAPI()
    app.include_router(build_admin_router(admin, failure_delay=0.2))
    for n in range(3):
        code, waited = await _timed_get(app, "203.0.113.9", f"guess-{n}")
        assert code == 401
        assert waited >= 0.2 * (n + 1) - 0.02
    code, waited = await _timed_get(app, "198.51.100.4", "typo")
    assert code == 401
    assert 0.18 <= waited < 0.4  # the operator's own first mistake
    code, waited = await _timed_get(app, "198.51.100.4", "right-one")
    assert code == 200
    assert waited < 0.2
    # Both at once: the attacker's next guess waits its 0.8 s; the operator gets in now.
    attacker, operator = await asyncio.gather(
        _timed_get(app, "203.0.113.9", "guess-4"), _timed_get(app, "198.51.100.4", "right-one")
    )
    assert attacker[0] == 401
    assert attacker[1] >= 0.78
    assert operator[0] == 200
    assert operator[1] < 0.2


def test_a_flood_of_addresses_does_not_reset_an_attackers_delay(tmp_path: Path) -> None:
    """Failures are kept for at most 10,000 addresses; a flood of new ones drops the oldest
    half, and the attacker who keeps guessing is among the newest, so keeps their delay."""
    guard = AdminGuard(_admin_settings(tmp_path), step=1.0, max_delay=1000.0)
    for _ in range(5):
        guard._delay("203.0.113.9")
    for n in range(10_001):
        guard._delay(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        if n % 1000 == 0:
            guard._delay("203.0.113.9")  # still guessing, slowly
    assert len(guard.failures) <= 10_000
    assert guard._delay("203.0.113.9") == 5 + 11 + 1
