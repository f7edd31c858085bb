"""How every drip process logs: one line per event on stderr, text or JSON.

`configure(settings.log_format)` is called once by each long-running or scheduled command
(serve, worker, dev, tick, inbound). Everything goes through the standard logging module:
drip's own loggers, apscheduler's and uvicorn's (`uvicorn.error` and `uvicorn.access`,
which drip.web.server leaves unconfigured so they reach the root handler set here).

- text (the default): `2026-11-26T10:16:06Z INFO drip.sending.worker a pass every 5s`.
- json (DRIP_LOG_FORMAT=json): one object a line, rendered by structlog's
  ProcessorFormatter and JSONRenderer, with `timestamp` (ISO 8601, UTC), `level`,
  `logger`, `event`, and `exception` (the formatted traceback) when there is one.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Literal, TextIO

import structlog

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class UTCFormatter(logging.Formatter):
    """The text format: an ISO 8601 UTC timestamp, the level, the logger, the message."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, datefmt="%Y-%m-%dT%H:%M:%SZ")
        self.converter = _utc


def _utc(seconds: float | None) -> time.struct_time:
    return time.gmtime(seconds)


def json_formatter() -> logging.Formatter:
    """One JSON object per record, from any logger (structlog's or the standard library's)."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )


class DripHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler configure() installs (and replaces when called again). It writes
    to whatever `sys.stderr` is when a record comes, not the stream it was made with: a
    caller that swaps stderr (a test runner, a daemon closing its terminal) and closes
    the old one never leaves logging writing into a closed file."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def formatter(log_format: LogFormat) -> logging.Formatter:
    return json_formatter() if log_format == "json" else UTCFormatter()


def configure(log_format: LogFormat = "text", level: int = logging.INFO) -> None:
    """Route every logger to one stderr handler in `log_format`; safe to call again."""
    handler = DripHandler()
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, DripHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        for old in list(uvicorn_logger.handlers):
            uvicorn_logger.removeHandler(old)
        uvicorn_logger.propagate = True
    # "skipped: maximum number of running instances" is by design: one pass at a time.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
