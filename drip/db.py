"""The database engine: SQLite tuned for several processes, or PostgreSQL, same code.

SQLite allows one writer at a time. WAL lets readers carry on beside it, the busy
timeout makes a writer wait instead of failing, and every transaction starts with
BEGIN IMMEDIATE: a deferred read that later upgrades to a write fails with
SQLITE_BUSY whatever the timeout. `synchronous = FULL` syncs the WAL at every commit,
so what drip answered for (a signup's 303, a 250 recorded as sent) survives the machine
losing power, as it does on PostgreSQL; signups and delivery results are committed in
groups, so the cost is one sync per group (bench/durability.py measures it).

This module is also the one place where the two databases differ in SQL: a
conflict-ignoring insert, row locks (PostgreSQL's FOR UPDATE; SQLite needs none, its
BEGIN IMMEDIATE already holds the write lock), picking rows other transactions are
not holding, the database's own clock, a median of durations, and reports' settings;
and how a statement's parameters reach each driver, for the few statements run on the
driver's own cursor (`DriverStatement`). Other modules call these helpers and never ask
which database it is.
"""

from __future__ import annotations

import io
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    Connection,
    Engine,
    Select,
    Table,
    create_engine,
    event,
    func,
    inspect,
    literal,
    select,
    text,
    type_coerce,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert
from sqlmodel import Session, SQLModel

from drip.errors import DripError
from drip.models import UTCDateTime
from drip.turns import TAKE_TURNS, Turns, turns_of

MIGRATIONS = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 30_000
#: SQLite's `synchronous`: FULL makes every commit durable on power loss (NORMAL in WAL
#: mode may lose the last commits); bench/durability.py compares the two.
SQLITE_SYNCHRONOUS = "FULL"
READ_ONLY = "drip_read_only"


class DatabaseError(DripError):
    """The database cannot be used; the message says why in plain words."""


#: Where a helper needs the database: a session, a connection or the engine.
Bind = Session | Connection | Engine


def _is_sqlite(bind: Bind) -> bool:
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    return engine.dialect.name == "sqlite"


def is_postgresql(bind: Bind) -> bool:
    """For the few tasks that are different work on each database (backups), not SQL."""
    return not _is_sqlite(bind)


def in_process(bind: Bind) -> bool:
    """The database runs in this process (SQLite): a short write is CPU and a local sync,
    no network round trip, so it can run on an event loop's own thread."""
    return _is_sqlite(bind)


#: A SELECT of any columns.
AnySelect = Select[*tuple[Any, ...]]
SelectT = TypeVar("SelectT", bound=AnySelect)


def table_of(model: type[SQLModel] | Table) -> Table:
    """A model's Core table, for the statements that skip the ORM's per-row work."""
    table = model if isinstance(model, Table) else getattr(model, "__table__", None)
    assert isinstance(table, Table)
    return table


def insert_ignoring(
    bind: Bind, model: type[SQLModel] | Table, key: list[str] | None = None
) -> Insert:
    """A Core INSERT that skips rows whose unique `key` columns already exist
    (ON CONFLICT DO NOTHING; any unique constraint when `key` is None)."""
    dialect_insert = sqlite.insert if _is_sqlite(bind) else postgresql.insert
    return dialect_insert(table_of(model)).on_conflict_do_nothing(index_elements=key)


def upsert(bind: Bind, model: type[SQLModel] | Table) -> postgresql.Insert | sqlite.Insert:
    """A Core INSERT that takes ON CONFLICT clauses (`on_conflict_do_update`): both
    databases have them, each in its own dialect's class."""
    dialect_insert = sqlite.insert if _is_sqlite(bind) else postgresql.insert
    return dialect_insert(table_of(model))


def for_update(bind: Bind, stmt: SelectT, *, skip_locked: bool = False, of: Any = None) -> SelectT:
    """`stmt` locking the rows it reads until the transaction ends, where that takes
    a row lock: PostgreSQL. On SQLite, BEGIN IMMEDIATE already holds the one write lock.

    `skip_locked`: rows another transaction holds are left out, not waited for.
    """
    if _is_sqlite(bind):
        return stmt
    return stmt.with_for_update(skip_locked=skip_locked, of=of)


def unlocked(bind: Bind, pick: AnySelect) -> Any:
    """The rows of `pick` (one column) that no other transaction is holding, locked for
    this one, as something to test a column against: `column.in_(unlocked(...))`.

    On PostgreSQL the pick is a MATERIALIZED CTE with FOR UPDATE SKIP LOCKED: as a
    plain subquery, a nested-loop plan may run it again for each row, each time
    skipping the rows just updated, and so take every row. SQLite serialises writers.
    """
    if _is_sqlite(bind):
        return pick.scalar_subquery()
    picked = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
    return select(*picked.c)


def database_now(bind: Bind, plus: timedelta = timedelta(0)) -> ColumnElement[datetime]:
    """The database's own clock, `plus` an interval, as naive UTC like every stored time.

    Leases are timed by it, so workers whose clocks disagree still agree on when a
    lease runs out. PostgreSQL's is the server's `now()` (the transaction's start);
    SQLite has no server, and its 'now' is the clock of the machine that holds the
    file, which every process using that file shares. On SQLite the text matches how
    SQLAlchemy stores times (microseconds, six digits) so comparisons stay textual.
    """
    if _is_sqlite(bind):
        shift = f"{plus.total_seconds():+.6f} seconds"
        expression: ColumnElement[Any] = func.strftime("%Y-%m-%d %H:%M:%f", "now", shift).concat(
            "000"
        )
    else:
        expression = func.timezone("UTC", func.now()) + literal(plus)
    return type_coerce(expression, UTCDateTime())


def median_seconds(
    session: Session,
    start: ColumnElement[Any],
    end: ColumnElement[Any],
    *where: ColumnElement[bool],
) -> float | None:
    """The median of `end - start` in seconds over the rows `where` picks; None if none.

    PostgreSQL has `percentile_cont`; SQLite has no ordered-set aggregate, so it counts,
    then reads the middle one or two of the durations in order.
    """
    if not _is_sqlite(session):
        seconds = func.extract("epoch", end - start)
        found = session.execute(
            select(func.percentile_cont(0.5).within_group(seconds)).where(*where)
        ).scalar_one()
        return None if found is None else float(found)
    span = (func.julianday(end) - func.julianday(start)) * 86400.0
    count = int(session.execute(select(func.count()).where(*where)).scalar_one())
    if not count:
        return None
    middle = session.execute(
        select(span).where(*where).order_by(span).limit(2 - count % 2).offset((count - 1) // 2)
    ).scalars()
    values = [float(v) for v in middle]
    return sum(values) / len(values)


def reporting(session: Session) -> None:
    """Set up this transaction for a report of many counts (drip.funnel). PostgreSQL's JIT
    compiles each large count's plan for tens of milliseconds, more than it saves on
    plans that only walk an index and count: off for this transaction."""
    if not _is_sqlite(session):
        session.execute(text("SET LOCAL jit = off"))


def lock(session: Session, row: SQLModel) -> None:
    """Read `row` again, locked until the transaction ends: a second transaction doing
    the same waits, then sees what the first wrote (SQLite: BEGIN IMMEDIATE already did)."""
    if not _is_sqlite(session):
        session.refresh(row, with_for_update=True)
    else:
        session.refresh(row)


#: Rows as the driver returned them, each value converted as SQLAlchemy would.
DriverRows = list[tuple[Any, ...]]
_GIVEN = object()  # a parameter the caller gives, not a value bound in the statement
#: A Sized statement's parameter of one item: the item's key, then its place.
_PLACED = re.compile(r"(.+)_(\d+)")


@dataclass(frozen=True)
class _Form:
    """A statement as one driver takes it."""

    sql: str
    names: tuple[str, ...]
    #: Per parameter, in the driver's order: the place of the item it comes from (None:
    #: not an item's), its key there or in the parameters, its conversion, and its
    #: value when the statement binds it itself (already converted), else _GIVEN.
    binds: tuple[tuple[int | None, str, Callable[[Any], Any] | None, Any], ...]
    positional: bool
    #: Per column of the rows it returns (RETURNING, SELECT): its conversion.
    results: tuple[Callable[[Any], Any] | None, ...]
    returns: bool


def _compile(statement: ClauseElement, dialect: Dialect, *, placed: bool) -> _Form:
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    if (
        compiled.post_compile_params
        or compiled.literal_execute_params
        or compiled.escaped_bind_names
        or compiled.insert_prefetch
        or compiled.update_prefetch
    ):
        raise ValueError("a DriverStatement takes no expanding IN, literal or default values")
    by_name = {name: bind for bind, name in compiled.bind_names.items()}
    order = compiled.positiontup if dialect.positional else list(by_name)
    assert order is not None
    binds: list[tuple[int | None, str, Callable[[Any], Any] | None, Any]] = []
    for name in order:
        bind = by_name[name]
        if bind.callable is not None:
            raise ValueError("a DriverStatement takes no values computed at execution")
        if bind.required and bind.type._isnull:
            # Untyped, it would skip its column's conversion (naive UTC, SQLite's text).
            raise ValueError(f"a DriverStatement's parameter needs its type: {name}")
        convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if not bind.required:
            value = bind.effective_value
            binds.append((None, name, None, value if convert is None else convert(value)))
        elif placed and (item := _PLACED.fullmatch(name)):
            binds.append((int(item[2]), item[1], convert, _GIVEN))
        else:
            binds.append((None, name, convert, _GIVEN))
    columns = getattr(statement, "exported_columns", ())
    results = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
    return _Form(
        compiled.string, tuple(order), tuple(binds), dialect.positional, results, bool(columns)
    )


def _arguments(
    form: _Form, params: Mapping[str, Any], items: Sequence[Mapping[str, Any]] = ()
) -> Any:
    """The driver's parameters: `params`, and the `items` of a Sized statement (a place
    past the last item takes the last)."""
    values = []
    last = len(items) - 1
    for place, key, convert, fixed in form.binds:
        if fixed is not _GIVEN:
            values.append(fixed)
            continue
        if place is None:
            value = params[key]
        else:
            value = items[place if place <= last else last][key]
        values.append(value if convert is None else convert(value))
    if form.positional:
        return tuple(values)
    return dict(zip(form.names, values, strict=True))


def _connection(bind: Session | Connection) -> Connection:
    """The connection, in a transaction: begun as SQLAlchemy begins one (SQLite's BEGIN
    IMMEDIATE) if none is, since the driver's cursor bypasses SQLAlchemy's autobegin."""
    conn = bind.connection() if isinstance(bind, Session) else bind
    if not conn.in_transaction():
        conn.begin()
    return conn


def _on_driver(conn: Connection, form: _Form, args: Any) -> DriverRows:
    """Run on the connection's own driver cursor, in its transaction. A driver error is
    raised as SQLAlchemy raises it (a DBAPIError), and a connection found lost is
    invalidated, so the pool never hands it out again."""
    dbapi = conn.dialect.loaded_dbapi
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cursor = raw.cursor()
    try:
        cursor.execute(form.sql, args)
        rows: DriverRows = list(cursor.fetchall()) if form.returns else []
    except dbapi.Error as exc:
        lost = conn.dialect.is_disconnect(exc, raw, cursor)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            form.sql, args, exc, dbapi.Error, connection_invalidated=lost, dialect=conn.dialect
        ) from exc
    finally:  # on any way out, a driver error or not
        with suppress(dbapi.Error):
            cursor.close()
    if rows and any(form.results):
        converts = form.results
        return [
            tuple(v if f is None else f(v) for f, v in zip(converts, row, strict=True))
            for row in rows
        ]
    return rows


class DriverStatement:
    """A Core statement compiled once per database and run on the driver's own cursor.

    For the few statements every group commit of a delivery runs: SQLAlchemy's path
    around an execution (parameter processing, result set-up, events) costs several
    times what the driver does for these. The SQL, the parameters' order and each
    value's conversion (times as naive UTC, SQLite's dates as text) still come from
    SQLAlchemy's compiler and types, once per dialect; a driver's error is raised as
    SQLAlchemy's. Not for expanding IN lists (`Sized`) or Python-side column defaults,
    and not echoed to SQLAlchemy's log.
    """

    def __init__(self, statement: ClauseElement, *, placed: bool = False) -> None:
        self.statement = statement
        self._placed = placed
        self._forms: dict[tuple[str, str], _Form] = {}

    def form(self, dialect: Dialect) -> _Form:
        key = (dialect.name, dialect.driver)
        found = self._forms.get(key)
        if found is None:
            found = self._forms[key] = _compile(self.statement, dialect, placed=self._placed)
        return found

    def rows(self, bind: Session | Connection, params: Mapping[str, Any]) -> DriverRows:
        """Execute once; the rows it returns (RETURNING, SELECT), else none."""
        conn = _connection(bind)
        form = self.form(conn.dialect)
        return _on_driver(conn, form, _arguments(form, params))


#: The most items a Sized statement takes at once; more go in several.
SIZED_CHUNK = 16


class Sized:
    """A DriverStatement over a list of items (the ids of an IN list, the rows of an
    INSERT): `build(n)` makes it for n items, whose parameters it names by place, an
    item's `id` being `id_0`, `id_1`... (so the others' names do not end in `_` and a
    number). Compiled once per length; past SIZED_CHUNK items
    it runs in chunks. `pad`: lengths are rounded up to a power of two by repeating the
    last item, so only five lengths are ever compiled; right where a repeat changes
    nothing (an IN list, a CASE), not for rows to insert."""

    def __init__(self, build: Callable[[int], ClauseElement], *, pad: bool) -> None:
        self._build = build
        self._pad = pad
        self._sizes: dict[int, DriverStatement] = {}

    def _sized(self, size: int) -> DriverStatement:
        found = self._sizes.get(size)
        if found is None:
            found = self._sizes[size] = DriverStatement(self._build(size), placed=True)
        return found

    def rows(
        self,
        bind: Session | Connection,
        params: Mapping[str, Any],
        items: Sequence[Mapping[str, Any]],
    ) -> DriverRows:
        """Execute for these items, in chunks past SIZED_CHUNK; every chunk's rows."""
        conn = _connection(bind)
        rows: DriverRows = []
        for start in range(0, len(items), SIZED_CHUNK):
            chunk = items[start : start + SIZED_CHUNK]
            size = 1 << (len(chunk) - 1).bit_length() if self._pad else len(chunk)
            form = self._sized(size).form(conn.dialect)
            rows += _on_driver(conn, form, _arguments(form, params, chunk))
        return rows


def _tune_sqlite(engine: Engine) -> None:
    database = engine.url.database
    turns = turns_of(database) if database and database != ":memory:" else None
    if turns is not None:
        _give_back_turns(engine, turns)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" event issue BEGIN
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {SQLITE_SYNCHRONOUS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if options.get(READ_ONLY, False):
            conn.exec_driver_sql("BEGIN")
            return
        if turns is not None and options.get(TAKE_TURNS, False):
            # Given back by the commit or rollback, even that of a BEGIN that failed.
            turns.take(_driver_connection(conn.connection))
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _give_back_turns(engine: Engine, turns: Turns) -> None:
    """A turn ends once the driver has committed or rolled back, so the dialect's own
    commit and rollback are wrapped (SQLAlchemy's events come before them); and, however
    its transaction ended, when the connection goes back to the pool."""
    dialect = engine.dialect
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def do_commit(connection: Any) -> None:
        try:
            commit(connection)
        finally:
            turns.give_back(_driver_connection(connection))

    def do_rollback(connection: Any) -> None:
        try:
            rollback(connection)
        finally:
            turns.give_back(_driver_connection(connection))

    dialect.do_commit = do_commit  # type: ignore[method-assign,assignment]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign,assignment]

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, _record: Any) -> None:
        turns.give_back(dbapi_connection)


def _driver_connection(connection: Any) -> Any:
    """The driver's own connection, from the pool's proxy for it or itself."""
    return getattr(connection, "dbapi_connection", connection)


def _private_files(database: Path) -> None:
    """The database readable and writable by its owner only (0600): made so when new,
    tightened when not. SQLite gives its -wal and -shm files the database's mode."""
    database.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(database, os.O_RDWR | os.O_CREAT, 0o600))  # never truncates
    for path in (database, *(Path(f"{database}{end}") for end in ("-wal", "-shm", "-journal"))):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                path.chmod(mode & 0o700)
        except FileNotFoundError:
            continue
        except PermissionError:  # another user's file: theirs to tighten
            continue


@cache
def get_engine(url: str) -> Engine:
    """One engine per URL per process, shared by web, worker and CLI code."""
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            try:
                _private_files(Path(parsed.database))
            except OSError as exc:
                raise DatabaseError(
                    f"DRIP_DATABASE_URL: cannot reach the database ({exc.strerror}: "
                    f"{parsed.database})"
                ) from None
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        _tune_sqlite(engine)
    else:
        if parsed.drivername == "postgresql":
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A transaction: committed on success, rolled back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def read_scope(engine: Engine) -> Iterator[Session]:
    """A transaction that only reads: on SQLite it takes no write lock, so it never
    waits for, or holds up, a writer."""
    # Closing (not rolling back) ends the transaction and keeps loaded objects usable.
    with Session(engine.execution_options(**{READ_ONLY: True})) as session:
        yield session


def side_by_side(session: Session, *reads: Callable[[Session], Any]) -> list[Any]:
    """The results of independent reads of one report (drip.funnel), in order.

    On PostgreSQL each runs in its own transaction on its own connection, at once, so a
    report of several large counts uses the server's cores; each then sees its own
    snapshot, which may differ by the rows written meanwhile. On SQLite they run one
    after another in `session`.
    """
    if _is_sqlite(session):
        return [read(session) for read in reads]
    engine = session.get_bind()
    assert isinstance(engine, Engine)

    def run(read: Callable[[Session], Any]) -> Any:
        with read_scope(engine) as own:
            reporting(own)
            return read(own)

    with ThreadPoolExecutor(len(reads), thread_name_prefix="report") as pool:
        return list(pool.map(run, reads))


def _alembic_config(engine: Engine, output: io.StringIO | None = None) -> Any:
    from alembic.config import Config

    config = Config(output_buffer=output)
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every migration not yet applied (up to `revision`); a database that does
    not answer is a plain DatabaseError, not a driver's traceback."""
    from alembic import command

    _reachable(engine)
    command.upgrade(_alembic_config(engine), revision)


def upgrade_sql(engine: Engine) -> str:
    """The SQL `upgrade` would run on this database, without running it."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    _reachable(engine)
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    heads = ScriptDirectory.from_config(_alembic_config(engine)).get_heads()
    if set(current) == set(heads):
        return "-- the database schema is up to date: nothing to run\n"
    output = io.StringIO()
    start = f"{current[0]}:head" if current else "head"
    try:
        command.upgrade(_alembic_config(engine, output), start, sql=True)
    except CommandError:
        raise DatabaseError(
            "this upgrade rebuilds SQLite tables, which cannot be printed ahead: "
            "take a `drip backup FILE`, then run `drip db upgrade`"
        ) from None
    return output.getvalue()


def _reachable(engine: Engine) -> None:
    try:
        with engine.connect():
            pass
    except Exception as exc:  # noqa: BLE001 - any driver error means unreachable
        raise DatabaseError(
            f"DRIP_DATABASE_URL: cannot reach the database ({_first_line(exc)})"
        ) from None


def schema_state(engine: Engine) -> str:
    """'empty', 'current' or 'outdated'."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return "empty"
            current = set(MigrationContext.configure(conn).get_current_heads())
    except Exception as exc:  # noqa: BLE001 - any driver error means unreachable
        raise DatabaseError(
            f"DRIP_DATABASE_URL: cannot reach the database ({_first_line(exc)})"
        ) from None
    heads = set(ScriptDirectory.from_config(_alembic_config(engine)).get_heads())
    return "current" if current == heads else "outdated"


def ensure_schema(engine: Engine) -> None:
    """Create the schema on an empty database; refuse to run on an outdated one."""
    state = schema_state(engine)
    if state == "empty":
        upgrade(engine)
    elif state == "outdated":
        raise DatabaseError("the database schema is out of date: run `drip db upgrade`")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
