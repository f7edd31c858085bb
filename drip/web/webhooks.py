"""POST /webhooks/{ses,postmark,mailgun,sendgrid}: thin routes over drip.webhooks.

Each answers 401/403 to a request that does not prove its provider (and changes
nothing), 400 to a proven one it cannot read, 200 otherwise, and never a 5xx for
anything in a body. Verification and recording run in a thread: the SNS certificate
fetch and the database both block.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from drip.clock import utcnow
from drip.settings import Settings
from drip.webhooks import mailgun, postmark, sendgrid, ses
from drip.webhooks.events import Batch, Malformed, Refused
from drip.webhooks.recording import Replayed, record

log = logging.getLogger("drip.webhooks")
#: A webhook body may be larger than a form post (SES includes headers, SendGrid batches).
MAX_WEBHOOK_BODY = 512 * 1024


def build_webhook_router(settings: Settings, engine: Engine) -> APIRouter:
    router = APIRouter(prefix="/webhooks")
    certificates = ses.Certificates()

    async def handle(provider: str, parse: Callable[[], Batch | str]) -> JSONResponse:
        def work() -> JSONResponse:
            try:
                parsed = parse()
                if isinstance(parsed, str):
                    return JSONResponse({"status": parsed})
                recorded = record(settings, engine, parsed, utcnow())
            except Refused as exc:
                log.warning("%s webhook refused: %s", provider, exc.reason)
                headers = {"www-authenticate": 'Basic realm="drip"'} if exc.status == 401 else {}
                return JSONResponse({"error": exc.reason}, exc.status, headers=headers)
            except Replayed:
                log.warning("%s webhook refused: a replayed request", provider)
                return JSONResponse({"error": "this request was already accepted"}, 403)
            except Malformed as exc:
                return JSONResponse({"error": str(exc)}, 400)
            return JSONResponse({"status": "ok", "recorded": recorded})

        return await asyncio.to_thread(work)

    @router.post("/ses")
    async def ses_webhook(request: Request) -> JSONResponse:
        body = await request.body()
        return await handle("ses", lambda: ses.parse(settings, certificates, body))

    @router.post("/postmark")
    async def postmark_webhook(request: Request) -> JSONResponse:
        body = await request.body()
        authorization = request.headers.get("authorization")
        return await handle("postmark", lambda: postmark.parse(settings, authorization, body))

    @router.post("/mailgun")
    async def mailgun_webhook(request: Request) -> JSONResponse:
        body = await request.body()
        return await handle("mailgun", lambda: mailgun.parse(settings, body, utcnow()))

    @router.post("/sendgrid")
    async def sendgrid_webhook(request: Request) -> JSONResponse:
        body = await request.body()
        signature = request.headers.get(sendgrid.SIGNATURE_HEADER)
        timestamp = request.headers.get(sendgrid.TIMESTAMP_HEADER)
        return await handle(
            "sendgrid", lambda: sendgrid.parse(settings, signature, timestamp, body, utcnow())
        )

    return router
