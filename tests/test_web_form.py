"""The signup form's own urlencoded parsing reads every body as Starlette's parser does."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.requests import Request

from drip.web.app import _fields

FORM = "application/x-www-form-urlencoded"


def _request(body: bytes, content_type: str) -> Request:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/subscribe",
        "query_string": b"",
        "headers": [(b"content-type", content_type.encode())],
    }
    return Request(scope, receive)


def _both(body: bytes) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(drip's reading, Starlette's form parser's reading) of the same body."""

    async def read() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        ours = await _fields(_request(body, FORM), wants_json=False)
        # A content type Starlette parses as a form but drip's fast path does not take.
        theirs = await _fields(_request(body, FORM.upper()), wants_json=False)
        return ours, theirs

    return asyncio.run(read())


PIECES = st.sampled_from(
    ["email", "name", "consent", "website", "timezone", "=", "&", "&&", "+", "%", "%4", "%40"]
    + ["%C3%A9", "%e9", "%zz", "%00", "%0D%0A", ";", "é", "\x00", "\r\n", "yes", "on", "a", " "]
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, max_size=25).map("".join))
def test_any_body_reads_as_starlette_reads_it(body: str) -> None:
    ours, theirs = _both(body.encode())
    assert ours == theirs


@hypothesis_settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["email", "name", "consent", "website", "timezone", "other"]),
        st.text(max_size=40),
    )
)
def test_a_browser_encoded_form_reads_back_as_typed(fields: dict[str, str]) -> None:
    ours, theirs = _both(urlencode(fields).encode())
    assert ours == theirs
    assert ours is not None
    for key in ("email", "name", "website", "timezone"):
        assert ours[key] == fields.get(key, "")
