"""The `drip` command: thin wrappers over the modules; how they speak is drip.cli.output."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress
from typer.core import TyperOption

from drip import __version__
from drip.cli.content import HtmlOut, TextPart, pack_app, preview
from drip.cli.operator import logs, subscribers_app
from drip.cli.output import PROBLEMS, Commands, console, err, fail, problem
from drip.cli.stats import stats
from drip.clock import parse_instant, utcnow
from drip.db import ensure_schema, get_engine, upgrade, upgrade_sql
from drip.keycheck import adopt_key
from drip.logs import configure as configure_logs
from drip.settings import Settings, SettingsError, load_settings, parse_processes

app = typer.Typer(
    cls=Commands,
    help="drip: a self-hosted email course and newsletter pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
newsletter_app = typer.Typer(
    help="Newsletters to every active subscriber who agreed to them.", no_args_is_help=True
)


def _show_version(value: bool) -> None:
    if value:
        print(f"drip {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """drip: a self-hosted email course and newsletter pipeline."""


def _flag_type(self: TyperOption, ctx: Any) -> str | None:
    """No `<bool>` beside an on/off flag in --help: it takes no value. (typer prints one.)"""
    return None if self.is_flag else _typer_display_type(self, ctx)


_typer_display_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]

app.add_typer(db_app, name="db")
app.add_typer(newsletter_app, name="newsletter")

DEV_STATE = Path(".drip")


def _ready(settings: Settings) -> None:
    """The schema is current and the secret key is the database's (drip.keycheck)."""
    engine = get_engine(settings.database_url)
    ensure_schema(engine)
    adopt_key(engine, settings)


def _dev_secret(path: Path) -> str:
    """A random value kept in .drip/ so links in caught mail keep working across restarts.

    Made readable by its owner only, from the first byte: the file is created 0600.
    """
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def _listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port and listening; OSError if it cannot be."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


@app.command()
def dev(
    host: str = "127.0.0.1",
    port: int = 8000,
    minutes_per_day: Annotated[
        float | None, typer.Option(help="compress the course: one course day lasts N minutes")
    ] = None,
) -> None:
    """Web app, scheduler and a local mail catcher in one process, on embedded defaults."""
    import uvicorn

    from drip.catcher import start_catcher
    from drip.sending.worker import preflight, run_worker
    from drip.web.app import create_app
    from drip.web.server import server_config

    base = load_settings()
    overrides: dict[str, Any] = {}
    if base.secret_key is None:  # neither DRIP_SECRET_KEY nor the key file: make the file
        overrides["secret_key"] = _dev_secret(base.secret_key_file)
    if base.admin_user is None:
        overrides["admin_user"] = "admin"
        overrides["admin_password"] = _dev_secret(DEV_STATE / "admin-password")
    if minutes_per_day is not None:
        overrides["minutes_per_day"] = minutes_per_day
    if "DRIP_WORKER_INTERVAL" not in os.environ:
        overrides["worker_interval"] = 5.0
    if "DRIP_BASE_URL" not in os.environ:
        overrides["base_url"] = f"http://{host}:{port}"
    settings = load_settings(**overrides)
    _ready(settings)
    preflight(settings)
    configure_logs(settings.log_format)
    # aiosmtpd logs every connection and command at INFO: a screenful per caught mail.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    try:
        catcher = start_catcher(settings.catcher_dir, settings.smtp_host, settings.smtp_port)
    except (OSError, RuntimeError) as exc:
        raise SettingsError(
            f"DRIP_SMTP_PORT: the mail catcher cannot listen on "
            f"{settings.smtp_host}:{settings.smtp_port} ({exc})"
        ) from None
    # Listen before saying "running": a busy port is one plain line, not a banner then a trace.
    try:
        listener = _listen(host, port)
    except OSError as exc:
        catcher.stop()
        fail(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "is another drip using it? Pick another port with --port"
        )
    # Show the password only when drip made it up; one the operator set stays unprinted.
    made = overrides.get("admin_password")
    login = f"password {made}" if made else "the password in DRIP_ADMIN_PASSWORD"
    out = console()
    # soft_wrap: a URL or the password is never broken across lines by rich; the
    # terminal wraps a long line as it would any other.
    for line in (
        f"drip dev is running on {settings.base_url}  (Ctrl-C stops)",
        f"  Sign up:      {settings.base_url}/",
        f"  Caught mail:  {settings.base_url}/admin/outbox",
        f"  Admin:        {settings.base_url}/admin",
        f"    user {settings.admin_user}",
        f"    {login}",
        f"  Mail catcher: {settings.smtp_host}:{settings.smtp_port}",
    ):
        out.print(line, soft_wrap=True, markup=False)

    async def main() -> None:
        stop = asyncio.Event()
        server = uvicorn.Server(
            server_config(create_app(settings), settings, host=host, port=port, log_level="warning")
        )
        worker = asyncio.create_task(run_worker(settings, stop, handle_signals=False))
        try:
            await server.serve(sockets=[listener])
        finally:
            stop.set()
            await worker

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        catcher.stop()


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """The web app only: signup, confirmation, unsubscribe and /admin."""
    import uvicorn

    from drip.web.app import create_app
    from drip.web.server import server_config

    settings = load_settings()
    _ready(settings)
    configure_logs(settings.log_format)
    # Bounded heads, a head-read timeout, tokens kept out of the access log: drip.web.server.
    uvicorn.Server(server_config(create_app(settings), settings, host=host, port=port)).run()


@app.command()
def worker(
    processes: Annotated[
        str | None,
        typer.Option(
            help="delivery processes, this one included: a number, or auto (one per core, "
            "no more than DRIP_SEND_RATE needs); DRIP_WORKER_PROCESSES when not given",
            metavar="N",
            show_default=False,
        ),
    ] = None,
) -> None:
    """The scheduler: a pass every DRIP_WORKER_INTERVAL seconds until SIGTERM, and the
    delivery processes beside it (--processes)."""
    from drip.sending.worker import preflight, run_worker

    settings = load_settings()
    if processes is not None:
        try:
            settings.worker_processes = parse_processes(processes)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--processes") from None
    _ready(settings)
    preflight(settings)
    configure_logs(settings.log_format)
    asyncio.run(run_worker(settings))


@app.command()
def tick(
    now: Annotated[
        str | None, typer.Option(help="run the pass as if it were this ISO-8601 time")
    ] = None,
) -> None:
    """One scheduler pass, then exit: queue what is due at --now and deliver the outbox."""
    from drip.sending.tick import run_pass

    settings = load_settings()
    _ready(settings)
    configure_logs(settings.log_format)
    try:
        when: datetime | None = parse_instant(now) if now else None
    except (ValueError, OverflowError):
        raise typer.BadParameter(f"not an ISO-8601 time: {now!r}", param_hint="--now") from None
    report = asyncio.run(run_pass(settings, when))
    counts = ", ".join(f"{n} {s}" for s, n in sorted(report.delivery.counts.items()))
    console().print(f"queued {report.queued} lessons; delivered: {counts or 'nothing due'}")
    if report.mailbox is not None:
        box = report.mailbox
        console().print(
            f"bounce mailbox: read {box.read}, recorded {box.recorded}, left {box.left}"
        )
    if report.mailbox_error:
        problem(report.mailbox_error)
    if report.delivery.halted:
        problem(f"stopped early, the rest is kept for the next pass: {report.delivery.halted}")
        raise typer.Exit(PROBLEMS)


@app.command()
def inbound(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (25 for a public MX)")] = 2525,
) -> None:
    """An SMTP server taking bounces and complaints for bounces+TAG@DRIP_BOUNCE_DOMAIN."""
    from drip.inbound import run_inbound

    settings = load_settings()
    settings.require_secret()
    if not settings.bounce_domain:
        raise SettingsError(
            "DRIP_BOUNCE_DOMAIN: not set; drip inbound takes mail for bounces+TAG@ that domain"
        )
    _ready(settings)
    configure_logs(settings.log_format)

    def ready() -> None:
        console().print(
            f"drip inbound: mail for bounces+TAG@{settings.bounce_domain} on {host}:{port}"
        )

    engine = get_engine(settings.database_url)
    try:
        asyncio.run(run_inbound(settings, engine, host, port, ready=ready))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port} ({exc.strerror or exc})")


@app.command()
def check(
    dns: Annotated[
        bool,
        typer.Option("--dns", help="also look up the sender domain's SPF, DKIM and DMARC records"),
    ] = False,
    smtp: Annotated[
        bool,
        typer.Option("--smtp", help="also connect to the SMTP server and try the login"),
    ] = False,
) -> None:
    """Validate settings, deliverability, database, templates, course and attachment."""
    from drip.check import course_changes, problems
    from drip.deliverability import dns_problems

    settings = load_settings()
    found = problems(settings)
    # What an edit of the course does to readers already on it: said, never a problem.
    for line in course_changes(settings):
        console().print(f"• {line}", markup=False, soft_wrap=True)
    if dns:
        report = dns_problems(settings)
        for line in report.found:
            console().print(f"✓ {line}", markup=False)
        found.extend(report.problems)
    if smtp:
        from drip.sending.probe import probe

        probed = asyncio.run(probe(settings))
        for line in probed.found:
            console().print(f"✓ {line}", markup=False)
        found.extend(probed.problems)
    for line in found:
        problem(f"✗ {line}")
    if found:
        raise typer.Exit(PROBLEMS)
    what = "settings, database, templates, course and information pack"
    extra = "".join([" and DNS records" if dns else "", " and the SMTP server" if smtp else ""])
    console().print(f"[green]✓[/] {what}{extra} are fine")


@db_app.command("upgrade")
def db_upgrade(
    sql: Annotated[
        bool, typer.Option("--sql", help="print the SQL it would run, run nothing")
    ] = False,
) -> None:
    """Apply every schema migration not yet applied."""
    settings = load_settings()
    engine = get_engine(settings.database_url)
    if sql:
        print(upgrade_sql(engine), end="")
        return
    upgrade(engine)
    console().print("database schema is up to date")


@app.command("backup")
def backup_command(
    file: Annotated[Path, typer.Argument(help="where to write the copy")],
) -> None:
    """A consistent copy of the whole database, taken while drip runs."""
    from drip.backup import backup

    settings = load_settings()
    copied = backup(settings.database_url, file)
    console().print(f"backed up {copied.summary()} to {file}")


@app.command("restore")
def restore_command(
    file: Annotated[Path, typer.Argument(help="a file made by drip backup")],
    force: Annotated[
        bool, typer.Option("--force", help="replace what a non-empty database holds")
    ] = False,
) -> None:
    """Load a backup into an empty database (SQLite backups also into PostgreSQL)."""
    from drip.backup import restore

    settings = load_settings()
    copied = restore(settings.database_url, file, force=force)
    console().print(f"restored {copied.summary()} from {file}")


def _when_at(at: str | None, now: datetime) -> datetime | None:
    """`--at ISO` as a UTC time, refused when unreadable or already past."""
    if at is None:
        return None
    try:
        when = parse_instant(at)
    except (ValueError, OverflowError):
        fail(f"--at {at!r}: not an ISO-8601 time, e.g. 2026-05-04T08:00:00+02:00")
    if when <= now:
        fail(f"--at {at}: that time has passed (now is {now:%Y-%m-%d %H:%M} UTC)")
    return when


@newsletter_app.command("send")
def newsletter_send(
    file: Annotated[
        Path, typer.Argument(help="Markdown with a front matter: ---, subject: ..., ---")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="render and count, queue nothing")
    ] = False,
    at: Annotated[
        str | None, typer.Option("--at", help="send it at this ISO-8601 time, not now")
    ] = None,
    again: Annotated[
        bool,
        typer.Option("--again", help="send even though this subject went out in the last 7 days"),
    ] = False,
) -> None:
    """Queue a newsletter for every active subscriber who agreed to newsletters, once; the
    worker or `drip tick` sends it."""
    from drip import newsletter
    from drip.db import read_scope, session_scope

    settings = load_settings()
    settings.require_secret()
    now = utcnow()
    when = _when_at(at, now)
    letter = newsletter.parse(file)
    newsletter.check(settings, letter)  # a broken template stops here, before anything is queued
    engine = get_engine(settings.database_url)
    _ready(settings)
    with session_scope(engine) as session:
        earlier = newsletter.recent_same_subject(session, letter, now)
    if earlier is not None and not again:
        went = earlier.send_at or earlier.created_at
        problem(
            f"{file}: a newsletter with the subject {letter.subject!r} went out "
            f"{went:%Y-%m-%d %H:%M} UTC, and this file is not the same; sending it would "
            "reach every reader again. Add --again to send it anyway."
        )
        raise typer.Exit(PROBLEMS)
    if dry_run:
        with read_scope(engine) as session:
            count = newsletter.count_recipients(session)
        console().print(
            f"dry run: {letter.subject!r} would go to {count} active subscribers "
            "who agreed to newsletters",
            soft_wrap=True,
        )
        return
    with Progress(console=err(), transient=True) as bar:
        task = bar.add_task("queuing", total=None)
        queued, _ = newsletter.queue(
            settings, engine, letter, now, progress=lambda n: bar.advance(task, n), at=when
        )
    timing = f" for {when:%Y-%m-%d %H:%M} UTC" if when is not None else ""
    console().print(
        f"queued {letter.subject!r}{timing} for {queued} subscribers (already queued ones skipped)",
        soft_wrap=True,
    )


@newsletter_app.command("preview")
def newsletter_preview(
    file: Annotated[
        Path, typer.Argument(help="Markdown with a front matter: ---, subject: ..., ---")
    ],
    text: TextPart = False,
    out: HtmlOut = None,
) -> None:
    """Show a newsletter file as a reader gets it (the sample reader's data); queues nothing."""
    from drip import newsletter
    from drip.cli.content import show

    settings = load_settings()
    show(newsletter.preview(settings, newsletter.parse(file)), text=text, out=out)


@app.command("send-test")
def send_test(
    name: Annotated[
        str,
        typer.Argument(
            help="an email in emails/ (a lesson, welcome, confirm...) or a newsletter file"
        ),
    ],
    to: Annotated[str, typer.Option("--to", help="the address to send the test to")],
) -> None:
    """Send one email (or a newsletter FILE) to one address now, marked as a test, outside
    the course."""
    from sqlmodel import Session

    from drip.clock import travelling_clock
    from drip.models import OutboxMessage, OutboxStatus
    from drip.sending.delivery import Delivery, worker_name
    from drip.testmail import send_test as queue_send_test

    settings = load_settings()
    settings.require_secret()
    engine = get_engine(settings.database_url)
    _ready(settings)
    configure_logs(settings.log_format)
    row_id, known = queue_send_test(settings, engine, name, to, utcnow())
    delivery = Delivery(
        settings, engine, worker=worker_name(), clock=travelling_clock(None), only={row_id}
    )
    asyncio.run(delivery.run())
    with Session(engine) as session:
        row = session.get(OutboxMessage, row_id)
        assert row is not None
        status, email, said = row.status, row.email, row.last_smtp_message
    data = "their subscriber data" if known else "sample data (not a subscriber)"
    if status == OutboxStatus.sent:
        console().print(f"sent a test of {name} to {email}, with {data}", soft_wrap=True)
        return
    if status in (OutboxStatus.queued, OutboxStatus.sending):
        # A running worker claimed it first (or the send rate held it): it goes with them.
        console().print(f"queued a test of {name} to {email}; a worker is sending it")
        return
    problem(f"test of {name} to {email} not sent ({status}): {said or 'see drip logs'}")
    raise typer.Exit(PROBLEMS)


@newsletter_app.command("resume")
def newsletter_resume() -> None:
    """Let newsletters go again after sender health paused them (see /admin)."""
    from drip import health

    settings = load_settings()
    engine = get_engine(settings.database_url)
    _ready(settings)
    if health.resume(engine, utcnow()):
        console().print("newsletter sending resumed; the next pass carries on where it stopped")
    else:
        console().print("newsletter sending was not paused")


webhooks_app = typer.Typer(
    help="Webhooks out: events POSTed to DRIP_WEBHOOK_URLS.", no_args_is_help=True
)


@webhooks_app.command("secret")
def webhooks_secret() -> None:
    """Print the key events are signed with, for the receivers (the only place it is shown)."""
    from drip import hooks

    settings = load_settings()
    console().print(hooks.signing_secret(settings), markup=False, soft_wrap=True)


app.add_typer(webhooks_app, name="webhooks")
app.add_typer(pack_app, name="pack", help="The information pack PDF.")
app.command("preview")(preview)
app.command("logs")(logs)
app.command("stats")(stats)
app.add_typer(
    subscribers_app,
    name="subscribers",
    help="List, import and export subscribers; pause, resume, skip or restart one's course.",
)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
