"""`drip worker`: APScheduler runs a pass every DRIP_WORKER_INTERVAL seconds.

APScheduler is only this process's timer; the database coordinates workers
(the outbox's leases, drip.sending.outbox). `coalesce` and `max_instances=1` keep
one pass at a time, and a generous misfire grace stops a busy machine from silently
skipping passes.
On SIGTERM/SIGINT the current pass finishes the messages on the wire, hands the
rest back, and the process exits.
With DRIP_WORKER_PROCESSES (or `--processes`) above 1, this process also keeps that many
minus one delivery processes running beside it (drip.sending.processes), and stops them
with it.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from drip.clock import utcnow
from drip.course import load_course
from drip.sending.delivery import worker_name
from drip.sending.message import check_pack
from drip.sending.processes import Deliverers
from drip.sending.tick import run_pass
from drip.settings import Settings

log = logging.getLogger("drip.sending.worker")


def preflight(settings: Settings) -> None:
    """Fail at start, not in front of a subscriber: secret, course, templates and pack."""
    settings.require_secret()
    load_course(settings.emails_dir)
    check_pack(settings.info_pack)


async def run_worker(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    handle_signals: bool = True,
) -> None:
    """Passes until `stop`, beside DRIP_WORKER_PROCESSES minus one delivery-only processes."""
    stop = stop or asyncio.Event()
    name = worker_name()
    busy = asyncio.Lock()
    others = Deliverers(settings, max(settings.worker_process_count - 1, 0))

    async def one_pass() -> None:
        async with busy:
            if stop.is_set():
                return
            try:
                report = await run_pass(settings, worker=name, stop=stop, queued_hook=others.wake)
            except Exception:  # a failed pass is logged; the next one tries again
                log.exception("scheduler pass failed")
                return
            if report.mailbox_error:
                log.warning("%s", report.mailbox_error)
            if report.mailbox and report.mailbox.read:
                box = report.mailbox
                log.info(
                    "bounce mailbox: read %d, recorded %d, left %d",
                    box.read,
                    box.recorded,
                    box.left,
                )
            counts = ", ".join(f"{k} {v}" for k, v in sorted(report.delivery.counts.items()))
            if report.queued or counts or report.delivery.halted:
                log.info(
                    "pass: queued %d; %s%s",
                    report.queued,
                    counts or "nothing delivered",
                    f"; stopped early: {report.delivery.halted}" if report.delivery.halted else "",
                )

    interval = settings.worker_interval
    scheduler = AsyncIOScheduler(
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": int(max(60, interval * 4)),
        }
    )
    scheduler.add_job(one_pass, "interval", seconds=interval, next_run_time=utcnow(), id="pass")
    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    scheduler.start()
    others.start()
    more = f", and {others.count} delivery-only process(es)" if others.count else ""
    log.info("worker %s: a pass every %gs%s", name, interval, more)
    try:
        await stop.wait()
    finally:
        others.terminate()  # they stop at the same time as this pass, not after it
        # Let the pass under way finish what is on the wire and release the rest, before
        # the scheduler's shutdown would cancel it mid-send.
        async with busy:
            scheduler.shutdown(wait=False)
        await others.wait()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("worker %s stopped", name)
