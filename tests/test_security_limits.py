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


async def _timed_get(
    app: FastAPI, ip: str, password: str, forwarded: str | None = None
) -> tuple[int, float]:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    headers = _basic(password) | ({"X-Forwarded-For": forwarded} if forwarded else {})
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as client:
        started = time.monotonic()
        response = await client.get("/admin", headers=headers)
        return response.status_code, time.monotonic() - started


def _admin_settings(tmp_path: Path, **extra: object) -> Settings:
    """The login is all these tests are about: one SQLite file serves the dashboard."""
    url = f"sqlite:///{tmp_path / 'admin.db'}"
    upgrade(get_engine(url))
    return load_settings(
        _env_file=None,
        database_url=url,
        admin_user="admin",
        admin_password="right-one",
        secret_key="x" * 32,
        **extra,
    )


async def test_behind_a_proxy_an_attackers_guesses_never_get_the_operator_a_429(
    tmp_path: Path,
) -> None:
    """Behind one proxy every visitor had the proxy's address: an attacker keeping four
    guesses in flight filled its queue and the operator's right password got 429. With
    the proxy trusted, each is paced by their own address."""
    app = create_app(_admin_settings(tmp_path, trusted_proxies="127.0.0.1"))
    proxy = "127.0.0.1"
    attacker = [_timed_get(app, proxy, f"guess-{n}", "203.0.113.9") for n in range(6)]
    results = await asyncio.gather(*attacker, _timed_get(app, proxy, "right-one", "198.51.100.4"))
    guesses, (operator_code, operator_wait) = results[:-1], results[-1]
    assert operator_code == 200
    assert sorted(code for code, _ in guesses) == [401] * 4 + [429] * 2
    assert operator_wait < max(waited for _, waited in guesses)
