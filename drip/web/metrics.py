"""GET /metrics for Prometheus, open only to `Authorization: Bearer DRIP_METRICS_TOKEN`."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import Engine

from drip import metrics
from drip.clock import utcnow
from drip.settings import Settings


def build_metrics_router(settings: Settings, engine: Engine) -> APIRouter:
    router = APIRouter()
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None

    @router.get("/metrics", include_in_schema=False)
    async def scrape(request: Request) -> Response:
        if token is None:
            return Response("Not Found\n", 404, media_type="text/plain")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            return Response(
                "a bearer token is required\n",
                401,
                media_type="text/plain",
                headers={"www-authenticate": 'Bearer realm="drip metrics"'},
            )
        body = await run_in_threadpool(metrics.render, engine, utcnow)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    return router
